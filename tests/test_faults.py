"""Faults a run must survive: a kill between the files an epoch commits, two processes on one
run, signals, a full disk, secrets in the environment. Each through the real CLI."""

from __future__ import annotations

import collections
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from crnnfw import atomic, checkpoint, interrupts

from .conftest import FP32, MNIST_CONFIG, read_jsonl

# Two short epochs; the second is better than the first, so it rewrites best.ckpt.
TINY = [FP32, "data.train_limit=512", "data.val_size=256", "data.test_limit=128", "trainer.epochs=2", "trainer.batch_size=32", "trainer.device=cpu"]


class Killed(BaseException):
    """Stands for SIGKILL: nothing in crnnfw catches it, so the files stay as the kill left them."""


def _crnnfw(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "crnnfw", *map(str, args)]


def _only_run(parent: Path) -> Path:
    (run_dir,) = parent.iterdir()
    return run_dir


def _leftovers(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.rglob(f"*{atomic.TMP_SUFFIX}")]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must end up identical to."""
    from crnnfw.cli import main

    out = tmp_path_factory.mktemp("straight")
    assert main(["run", str(MNIST_CONFIG), *TINY, f"output_dir={out}", "name=straight"]) == 0
    run_dir = _only_run(out / "straight")
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert rows[1]["val_accuracy"] > rows[0]["val_accuracy"], "the second epoch must improve for these cases to mean anything"
    return run_dir


# (what the kill interrupts, the file whose write it stops, which write of that file)
PHASES = [
    ("between last.ckpt and best.ckpt", "best.ckpt", 2),
    ("between best.ckpt and metrics.jsonl", "metrics.jsonl", 3),  # written at the start and after each epoch
    ("after the last epoch, before the summary", "summary.json", 1),
]


@pytest.mark.parametrize("phase, target, nth", PHASES, ids=[p[0] for p in PHASES])
def test_a_kill_between_an_epochs_files_is_repaired(phase, target, nth, straight, tmp_path, monkeypatch, cli, capsys):
    real_write = atomic.write_bytes
    seen = {"count": 0}

    def write_or_die(path, data):
        if Path(path).name == target:
            seen["count"] += 1
            if seen["count"] == nth:
                Path(path).with_name(f".{target}.killed{atomic.TMP_SUFFIX}").write_bytes(bytes(data)[:100])  # a save cut short
                raise Killed(phase)
        real_write(path, data)

    monkeypatch.setattr(atomic, "write_bytes", write_or_die)
    with pytest.raises(Killed):
        cli("run", MNIST_CONFIG, *TINY, f"output_dir={tmp_path}", "name=killed")
    capsys.readouterr()  # the killed run's output
    monkeypatch.setattr(atomic, "write_bytes", real_write)
    run_dir = _only_run(tmp_path / "killed")
    record = checkpoint.load(run_dir / "checkpoints" / "last.ckpt")
    assert record["epoch"] == 2 and record["best"]["epoch"] == 2

    # Before any repair, eval already scores the model last.ckpt says is best.
    scored = cli("eval", run_dir, "--json", "--out", tmp_path / "eval")
    assert scored.code == 0, scored.err
    assert checkpoint.load(json.loads(scored.out)["checkpoint"])["epoch"] == 2

    resumed = cli("run", "--resume", run_dir)
    assert resumed.code == 0, resumed.err
    assert _leftovers(run_dir) == []
    assert [r["epoch"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2]
    assert [r["val_accuracy"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [r["val_accuracy"] for r in read_jsonl(straight / "metrics.jsonl")]
    best, reference = checkpoint.load(run_dir / "checkpoints" / "best.ckpt"), checkpoint.load(straight / "checkpoints" / "best.ckpt")
    assert best["epoch"] == 2
    for name in reference["model"]:
        assert torch.equal(best["model"][name], reference["model"][name]), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best"] == json.loads((straight / "summary.json").read_text())["best"]
    assert (run_dir / "curves.png").is_file() and (run_dir / "predictions.png").is_file()
    again = cli("run", "--resume", run_dir)
    assert again.code == 1 and "already finished" in again.err


def test_a_signal_during_a_save_waits_for_the_file(tmp_path):
    """SIGINT arriving while a checkpoint is serialised: the file is still written whole, then
    the interrupt is raised."""

    class SignalWhilePickled:
        def __reduce__(self):
            os.kill(os.getpid(), signal.SIGINT)
            return (collections.OrderedDict, ((("saved", 7),),))  # a type weights_only loading admits

    path = tmp_path / "last.ckpt"
    with interrupts.as_interrupt(), pytest.raises(interrupts.Interrupted):
        checkpoint.save({"epoch": SignalWhilePickled()}, path)
    assert checkpoint.load(path)["epoch"] == {"saved": 7}
    assert _leftovers(tmp_path) == []


def _start(tmp_path: Path, name: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(_crnnfw("run", MNIST_CONFIG, *TINY, "trainer.epochs=6", f"output_dir={tmp_path}", f"name={name}", *extra), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(process: subprocess.Popen, parent: Path) -> Path:
    deadline = time.monotonic() + 300
    while not list(parent.glob("*/checkpoints/last.ckpt")):
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.05)
    return _only_run(parent)


def test_one_process_at_a_time_trains_in_a_run(tmp_path, cli):
    process = _start(tmp_path, "locked")
    run_dir = _wait_for_checkpoint(process, tmp_path / "locked")
    try:
        second = cli("run", "--resume", run_dir, "trainer.epochs=6")
        assert second.code != 0 and process.poll() is None
        (line,) = second.err.strip().splitlines()
        assert line.startswith("crnnfw: error: ") and f"pid {process.pid}" in line and "another crnnfw process" in line
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    rows = read_jsonl(run_dir / "metrics.jsonl")
    taken_over = cli("run", "--resume", run_dir)  # the dead process's lock is stale
    assert taken_over.code == 0, taken_over.err
    assert [r["epoch"] for r in read_jsonl(run_dir / "metrics.jsonl")] == list(range(1, 7)) and len(rows) < 6


def test_sigterm_is_an_interrupt_logged_and_resumable(tmp_path, cli):
    process = _start(tmp_path, "term")
    run_dir = _wait_for_checkpoint(process, tmp_path / "term")
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == interrupts.EXIT_CODE
    assert err.strip().splitlines() == ["crnnfw: interrupted"]
    log = (run_dir / "train.log").read_text()
    assert "interrupted (SIGTERM)" in log and f"crnnfw run --resume {run_dir}" in log
    assert _leftovers(run_dir) == []
    resumed = cli("run", "--resume", run_dir)
    assert resumed.code == 0, resumed.err


def test_sigint_while_torch_loads_is_one_line():
    process = subprocess.Popen(_crnnfw("config", MNIST_CONFIG), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # inside `import torch`
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    if process.returncode == 0:
        pytest.skip("the command finished before the signal came")
    assert process.returncode == interrupts.EXIT_CODE and err.strip().splitlines() == ["crnnfw: interrupted"], err


def _limited(limit_bytes: int, *args: str | Path) -> subprocess.CompletedProcess:
    """The CLI with files capped at ``limit_bytes`` (a write past it fails with EFBIG, as on a full disk)."""

    def cap() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run(_crnnfw(*args), capture_output=True, text=True, preexec_fn=cap, timeout=300)


@pytest.mark.parametrize("limit, failing", [(200, "config.yaml"), (1 << 20, "last.ckpt")], ids=["before the first save", "at a checkpoint"])
def test_a_full_disk_is_one_line_and_leaves_no_partial_file(limit, failing, tmp_path):
    result = _limited(limit, "run", MNIST_CONFIG, *TINY, f"output_dir={tmp_path}", "name=full")
    assert result.returncode != 0
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("crnnfw: error: ") and failing in line and "the disk is full" in line, line
    assert "Traceback" not in result.stdout + result.stderr
    run_dir = _only_run(tmp_path / "full")
    assert _leftovers(run_dir) == []
    assert not (run_dir / "checkpoints" / "last.ckpt").exists()


def test_resume_cleans_temporary_files_of_an_earlier_kill(straight, tmp_path, cli):
    run_dir = tmp_path / "copy"
    subprocess.run(["cp", "-r", straight, run_dir], check=True)
    (run_dir / "summary.json").unlink()
    stale = run_dir / "checkpoints" / f".last.ckpt.abc123{atomic.TMP_SUFFIX}"
    stale.write_bytes(b"half a checkpoint")
    resumed = cli("run", "--resume", run_dir)
    assert resumed.code == 0, resumed.err
    assert not stale.exists() and "left by an interrupted save" in resumed.out
    assert (run_dir / "summary.json").is_file()


def test_resume_last_follows_training_not_folder_times(straight, tmp_path, cli):
    parent = tmp_path / "runs" / "r"
    parent.mkdir(parents=True)
    older, newer = parent / "20260101-000000", parent / "20260102-000000"
    for target in (older, newer):
        subprocess.run(["cp", "-r", straight, target], check=True)
    now = time.time()
    os.utime(older / "checkpoints" / "last.ckpt", (now - 3600, now - 3600))
    (older / "eval-test").mkdir()  # what `crnnfw eval` of the older run does to its folder
    from crnnfw.resume import find_run

    assert find_run("last", str(MNIST_CONFIG), [f"output_dir={tmp_path / 'runs'}", "name=r"]) == newer


def _mnist_idx(folder: Path, count: int) -> None:
    """A small MNIST as IDX files, the layout data.root reads."""
    from crnnfw_plugins.mnist import load_mnist

    arrays = load_mnist()
    folder.mkdir(parents=True)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = arrays[f"{split}_images"][:count].numpy(), arrays[f"{split}_labels"][:count].numpy()
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(bytes.fromhex("00000803") + len(images).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + images.astype("uint8").tobytes())
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(bytes.fromhex("00000801") + len(labels).to_bytes(4, "big") + labels.astype("uint8").tobytes())


def test_environment_values_never_reach_a_file(tmp_path):
    secret = "tok-9f8e7d6c5b4a"
    data_root = tmp_path / f"data-{secret}"
    _mnist_idx(data_root, 600)
    env = {**os.environ, "CRNNFW_TEST_SECRET": str(data_root)}
    args = [
        "run",
        MNIST_CONFIG,
        FP32,
        "data.train_limit=256",
        "data.val_size=128",
        "data.test_limit=128",
        "trainer.epochs=1",
        f"output_dir={tmp_path / 'runs'}",
        "name=env",
        "data.root=${oc.env:CRNNFW_TEST_SECRET}",
    ]

    refused = subprocess.run(_crnnfw(*args), capture_output=True, text=True, env=env, timeout=300)
    assert refused.returncode == 2 and "--allow-env" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()

    allowed = subprocess.run(_crnnfw(*args, "--allow-env"), capture_output=True, text=True, env=env, timeout=300)
    assert allowed.returncode == 0, allowed.stderr
    run_dir = _only_run(tmp_path / "runs" / "env")
    for path in [p for p in run_dir.rglob("*") if p.is_file()]:
        assert secret.encode() not in path.read_bytes(), path
    assert secret not in allowed.stdout + allowed.stderr
    assert checkpoint.load(run_dir / "checkpoints" / "last.ckpt")["config"]["data"]["root"] == "<env:CRNNFW_TEST_SECRET>"

    again = subprocess.run(_crnnfw("run", "--resume", run_dir, "trainer.epochs=2", "--allow-env"), capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    assert all(secret.encode() not in p.read_bytes() for p in run_dir.rglob("*") if p.is_file())


def test_a_checkpoint_is_never_interpolated(straight, tmp_path, cli, monkeypatch):
    monkeypatch.setenv("CRNNFW_TEST_SECRET", "must-not-be-read")
    state = checkpoint.load(straight / "checkpoints" / "best.ckpt")
    state["config"]["data"]["root"] = "${oc.env:CRNNFW_TEST_SECRET}"
    path = tmp_path / "planted.ckpt"
    checkpoint.save(state, path)
    result = cli("eval", path)
    assert result.code != 0 and "${oc.env:CRNNFW_TEST_SECRET}" in result.err and "must-not-be-read" not in result.err
