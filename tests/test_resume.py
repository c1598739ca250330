"""Exact resume after SIGKILL, and data-parallel training with torchrun, through the real CLI."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from crnnfw import checkpoint

from .conftest import FP32, MNIST_CONFIG, read_jsonl

# On the CPU, where every kernel is deterministic (cuDNN's convolution gradients are not).
SMALL = [FP32, "data.train_limit=2048", "data.val_size=256", "data.test_limit=256", "trainer.epochs=4", "trainer.batch_size=64", "trainer.log_every=8", "trainer.device=cpu"]


def _crnnfw(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "crnnfw", *map(str, args)]


def _partial(path: Path) -> dict | None:
    """The mid-epoch progress a last.ckpt records, or None (an epoch's end, or not there yet)."""
    try:
        return checkpoint.load(path, weights=False).get("partial")
    except Exception:  # not written yet
        return None


def test_a_run_killed_mid_epoch_resumes_to_bit_identical_weights(tmp_path, cli):
    """SIGKILL just after a mid-epoch checkpoint (trainer.checkpoint_every): the resumed run
    replays the epoch's data order to that batch and ends where the uninterrupted one did."""
    args = [*SMALL, "trainer.epochs=2", "trainer.checkpoint_every=10", f"output_dir={tmp_path}"]  # 32 steps an epoch
    assert cli("run", MNIST_CONFIG, *args, "name=straight").code == 0
    (straight,) = (tmp_path / "straight").iterdir()

    process = subprocess.Popen(_crnnfw("run", MNIST_CONFIG, *args, "name=killed"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seed = int(os.environ.get("CRNNFW_KILL_SEED", random.randrange(1 << 16)))  # CRNNFW_KILL_SEED=N replays a failure
    wanted = random.Random(seed).randint(1, 4)  # which mid-epoch checkpoint to kill after
    deadline, seen = time.monotonic() + 300, set()
    while len(seen) < wanted:
        assert process.poll() is None and time.monotonic() < deadline, f"{process.stderr.read().decode()} (kill seed {seed})"
        found = _partial(next(iter((tmp_path / "killed").glob("*/checkpoints/last.ckpt")), Path("none")))
        if found:
            seen.add((found["epoch"], found["batches"]))
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    (killed,) = (tmp_path / "killed").iterdir()
    before = checkpoint.load(killed / "checkpoints" / "last.ckpt")
    assert before.get("partial"), f"the run passed its mid-epoch checkpoint before the kill (kill seed {seed})"

    resumed = cli("run", "--resume", killed)
    assert resumed.code == 0, f"{resumed.err} (kill seed {seed})"
    assert f"resumed in epoch {before['partial']['epoch']} after its batch {before['partial']['batches']}" in resumed.out

    a = checkpoint.load(straight / "checkpoints" / "last.ckpt")
    b = checkpoint.load(killed / "checkpoints" / "last.ckpt")
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"]
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), f"{name} (kill seed {seed})"
    assert a["best"] == b["best"]
    assert [r["epoch"] for r in read_jsonl(killed / "metrics.jsonl")] == [1, 2]
    assert [r["test_accuracy"] for r in read_jsonl(killed / "metrics.jsonl")] == [r["test_accuracy"] for r in read_jsonl(straight / "metrics.jsonl")]


def test_resume_guards(tmp_path, cli):
    args = ["run", MNIST_CONFIG, FP32, "data.train_limit=256", "data.val_size=128", "data.test_limit=128", "trainer.epochs=1", f"output_dir={tmp_path}", "name=r"]
    assert cli(*args).code == 0
    (run_dir,) = (tmp_path / "r").iterdir()
    files = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}

    done = cli("run", "--resume", run_dir)
    assert done.code == 1 and "already finished its 1 epochs" in done.err
    changed = cli("run", "--resume", run_dir, "trainer.optimizer.lr=0.1")
    assert changed.code == 2 and "would make it a different run" in changed.err
    assert cli("run", "--resume", tmp_path / "nope").code == 2
    both = cli("run", "--resume", run_dir, "--init-from", run_dir)
    assert both.code == 2 and "use one of them" in both.err
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == files  # refusals change nothing

    more = cli("run", MNIST_CONFIG, "--resume", "last", "trainer.epochs=2", f"output_dir={tmp_path}", "name=r")
    assert more.code == 0, more.err
    assert [r["epoch"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2]


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    """gloo on CPU: 2 ranks x 32 images against 1 process x 64, same data order and augmentation."""
    common = [
        FP32,
        "data.train_limit=1024",
        "data.val_size=512",
        "data.test_limit=512",
        "trainer.epochs=2",
        "trainer.batch_size=64",
        "trainer.num_threads=1",
        "trainer.device=cpu",
        f"output_dir={tmp_path}",
    ]
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run(
        [str(torchrun), "--standalone", "--nproc-per-node", "2", "--no-python", str(Path(sys.executable).with_name("crnnfw")), "run", str(MNIST_CONFIG), *common, "name=ddp"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert ddp.stdout.count("best val accuracy") == 1  # only rank 0 prints
    single = subprocess.run(_crnnfw("run", MNIST_CONFIG, *common, "name=single"), capture_output=True, text=True, env=env, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]

    (ddp_dir,), (single_dir,) = (tmp_path / "ddp").iterdir(), (tmp_path / "single").iterdir()
    ddp_rows, single_rows = read_jsonl(ddp_dir / "metrics.jsonl"), read_jsonl(single_dir / "metrics.jsonl")
    assert [r["step"] for r in ddp_rows] == [r["step"] for r in single_rows] == [16, 32]
    for a, b in zip(ddp_rows, single_rows):
        # Same data, same averaged gradients; only float summation order differs (measured: < 0.05%).
        assert abs(a["train_loss"] - b["train_loss"]) <= 0.005 * b["train_loss"]
        assert abs(a["test_loss"] - b["test_loss"]) <= 0.005 * b["test_loss"]
        assert abs(a["test_accuracy"] - b["test_accuracy"]) <= 0.02
    summary = json.loads((ddp_dir / "summary.json").read_text())
    assert summary["processes"] == 2
    assert [p.name for p in (tmp_path / "ddp").iterdir()] == [ddp_dir.name]  # one run directory, written by rank 0
