"""`crnnfw export` under faults: outputs that would overwrite a checkpoint, folders, unwritable
places, a full disk and Ctrl-C.

Every refusal or failure ends with exactly one ``crnnfw: error:`` line, a non-zero exit and no
traceback, and leaves every file as it was: no checkpoint changed, no partial or ``.tmp`` file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .conftest import FP32, MNIST_CONFIG

QUICK = [FP32, "data.train_limit=256", "data.val_size=128", "data.test_limit=128", "trainer.epochs=1"]

#: ``python -c`` bodies: the real CLI, under a file size limit smaller than the export, and
#: with a verification that runs ONNX Runtime until it is interrupted (it takes well under a
#: second otherwise, too short to send a signal into reliably).
DISK_FULL = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit a write fails with EFBIG instead of killing the process
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from crnnfw.cli import main
sys.exit(main(sys.argv[2:]))
"""
ENDLESS_VERIFY = """
import sys, time
from crnnfw import export
from crnnfw.cli import main
run_onnx = export.run_onnx
def endless(session, inputs):
    print("verifying", flush=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        outputs = run_onnx(session, inputs)
    return outputs
export.run_onnx = endless
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """One tiny finished run, and a folder holding copies of its checkpoint under export-like names."""
    from crnnfw.cli import main

    root = tmp_path_factory.mktemp("export_faults")
    assert main(["run", str(MNIST_CONFIG), *QUICK, f"output_dir={root / 'runs'}", "name=tiny"]) == 0
    (run_dir,) = (root / "runs" / "tiny").iterdir()
    files = root / "files"
    files.mkdir()
    for name in ("model.pt", "model.onnx"):
        shutil.copy(run_dir / "checkpoints" / "best.ckpt", files / name)
    (files / "notes.onnx").write_text("not a model, but somebody's file\n")
    (files / "link.onnx").symlink_to(run_dir / "checkpoints" / "best.ckpt")
    return root, run_dir, files


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden ones too) with its sha256."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_one_error(code: int, err: str, phrase: str) -> None:
    """A failure reported as one ``crnnfw: error:`` line holding ``phrase``, with no traceback."""
    assert code != 0
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("crnnfw: error: "), err
    assert phrase in lines[0], err


def no_temporary_files(root: Path) -> bool:
    """Whether no ``.tmp`` file is left anywhere under ``root``."""
    return not [p for p in root.rglob("*") if p.name.endswith(".tmp")]


REFUSALS = [
    ("the input itself", ["{ckpt}", "-o", "{ckpt}", "--force"], "is the checkpoint being exported"),
    ("the input spelled another way", ["{ckpt}", "-o", "{run}/checkpoints/../checkpoints/best.ckpt", "--force"], "is the checkpoint being exported"),
    ("a link to the input", ["{ckpt}", "-o", "{files}/link.onnx", "--force"], "is the checkpoint being exported"),
    ("the run's other checkpoint", ["{run}", "-o", "{run}/checkpoints/last.ckpt", "--force"], "where a run keeps its checkpoints"),
    ("a new file among the checkpoints", ["{run}", "-o", "{run}/checkpoints/exported.ckpt"], "where a run keeps its checkpoints"),
    ("a checkpoint named like an export, onto itself", ["{files}/model.onnx", "-o", "{files}/model.onnx", "--force"], "is the checkpoint being exported"),
    ("another checkpoint", ["{run}", "--format", "torchscript", "-o", "{files}/model.pt", "--force"], "is a checkpoint (a torch.save file)"),
    ("an existing file without --force", ["{run}", "-o", "{files}/notes.onnx"], "already exists; pass --force"),
    ("an existing folder", ["{run}", "-o", "{files}"], "is a folder, not a file"),
    ("a new path ending in a slash", ["{run}", "-o", "{root}/newdir/"], "ends with '/'"),
]


@pytest.mark.parametrize("args, phrase", [case[1:] for case in REFUSALS], ids=[case[0] for case in REFUSALS])
def test_refused_outputs_change_nothing(workspace, cli, args, phrase):
    root, run_dir, files = workspace
    places = {"root": root, "run": run_dir, "ckpt": run_dir / "checkpoints" / "best.ckpt", "files": files}
    before = snapshot(root)
    result = cli("export", *(arg.format(**places) for arg in args))
    assert_one_error(result.code, result.err, phrase)
    assert snapshot(root) == before
    assert not (root / "newdir").exists()


@pytest.fixture
def unwritable(tmp_path):
    """A path in a folder nobody may create files in."""
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        yield locked / "model.onnx"
        locked.chmod(0o755)
        return
    target = Path("/sys/crnnfw-export-test.onnx")  # root may write into a 0o555 folder; sysfs takes no new files even from root
    try:
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    except OSError:
        yield target
    else:
        target.unlink()
        pytest.skip("running as root where /sys takes new files")


def test_unwritable_folder(workspace, cli, unwritable):
    root, run_dir, _ = workspace
    before = snapshot(root)
    result = cli("export", run_dir, "-o", unwritable)
    assert_one_error(result.code, result.err, "cannot write there")
    assert str(unwritable) in result.err and not unwritable.exists()
    assert not [p for p in unwritable.parent.iterdir() if p.name.endswith(".tmp")]
    assert snapshot(root) == before


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated upstream, still what C++ loads
def test_default_name_is_never_the_checkpoint(workspace, cli):
    """A checkpoint called model.pt exports to model.torchscript.pt, one called model.onnx to
    model.onnx.onnx; a second export to an existing name needs --force."""
    _, _, files = workspace
    checkpoints = {name: hashlib.sha256((files / name).read_bytes()).hexdigest() for name in ("model.pt", "model.onnx")}

    scripted = cli("export", files / "model.pt", "--format", "torchscript")
    assert scripted.code == 0, scripted.err
    assert f"wrote {files / 'model.torchscript.pt'}" in scripted.out
    torch.jit.load(str(files / "model.torchscript.pt"))
    again = cli("export", files / "model.pt", "--format", "torchscript")
    assert_one_error(again.code, again.err, "model.torchscript.pt: already exists; pass --force")
    forced = cli("export", files / "model.pt", "--format", "torchscript", "--force")  # over an earlier TorchScript export
    assert forced.code == 0, forced.err

    onnx = cli("export", files / "model.onnx", "--verify")
    assert onnx.code == 0, onnx.err
    assert f"wrote {files / 'model.onnx.onnx'}" in onnx.out and "verified against PyTorch" in onnx.out
    assert {name: hashlib.sha256((files / name).read_bytes()).hexdigest() for name in checkpoints} == checkpoints
    assert no_temporary_files(files)


def test_force_replaces_an_unrelated_file_and_the_default_export_verifies(workspace, cli, tmp_path):
    root, run_dir, _ = workspace
    checkpoints = snapshot(run_dir / "checkpoints")
    default = cli("export", run_dir, "--verify")
    assert default.code == 0, default.err
    assert f"wrote {run_dir / 'best.onnx'}" in default.out and "verified against PyTorch" in default.out

    notes = tmp_path / "notes.onnx"
    notes.write_text("an old file\n")
    notes.chmod(0o644)
    forced = cli("export", run_dir, "-o", notes, "--force", "--verify")
    assert forced.code == 0, forced.err
    assert notes.read_bytes() == (run_dir / "best.onnx").read_bytes()
    assert snapshot(run_dir / "checkpoints") == checkpoints
    assert no_temporary_files(root) and no_temporary_files(tmp_path)


def test_full_disk_leaves_nothing(workspace, tmp_path):
    """A file size limit below the export's size: the write fails with EFBIG, as on a full disk."""
    root, run_dir, _ = workspace
    before = snapshot(root)
    output = tmp_path / "new" / "model.onnx"
    limit = 256 * 1024
    result = subprocess.run([sys.executable, "-c", DISK_FULL, str(limit), "export", str(run_dir), "-o", str(output)], capture_output=True, text=True, timeout=120)
    assert_one_error(result.returncode, result.stderr, "disk is full")
    assert str(output) in result.stderr
    assert list(tmp_path.iterdir()) == []  # neither the file, its temporary, nor the folder made for it
    assert snapshot(root) == before


def test_ctrl_c_during_verification(workspace, tmp_path):
    root, run_dir, _ = workspace
    checkpoints = snapshot(run_dir / "checkpoints")
    output = tmp_path / "model.onnx"
    child = subprocess.Popen([sys.executable, "-c", ENDLESS_VERIFY, "export", str(run_dir), "-o", str(output), "--verify"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in child.stdout:
            if line.startswith("verifying"):
                child.send_signal(signal.SIGINT)
                break
        out, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 130, err
    assert err.strip().splitlines() == ["crnnfw: interrupted"]
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # written whole before verifying
    assert snapshot(run_dir / "checkpoints") == checkpoints


def _interrupting(function, wrap_as: type[Exception] | None = None):
    """``function`` with a real SIGINT arriving inside it; ``wrap_as`` mimics library code that
    catches the KeyboardInterrupt and raises its own exception instead."""

    def interrupted(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            return function(*args, **kwargs)
        except KeyboardInterrupt as exc:
            if wrap_as is None:
                raise
            raise wrap_as("interrupted while exporting") from exc

    return interrupted


@pytest.mark.parametrize("wrap_as", [None, RuntimeError], ids=["plain", "wrapped by the library"])
def test_ctrl_c_while_tracing(workspace, cli, tmp_path, monkeypatch, wrap_as):
    root, run_dir, _ = workspace
    before = snapshot(root)
    monkeypatch.setattr(torch.onnx, "export", _interrupting(torch.onnx.export, wrap_as))
    try:
        result = cli("export", run_dir, "-o", tmp_path / "model.onnx")
    except KeyboardInterrupt:
        pytest.fail("the interrupt escaped the CLI")
    assert result.code == 130 and result.err.strip().splitlines() == ["crnnfw: interrupted"], result.err
    assert list(tmp_path.iterdir()) == []
    assert snapshot(root) == before


def test_ctrl_c_while_writing(workspace, cli, tmp_path, monkeypatch):
    """SIGINT once the bytes are in the temporary file: it goes, and so does the folder made for it."""
    root, run_dir, _ = workspace
    before = snapshot(root)
    monkeypatch.setattr(os, "fsync", _interrupting(os.fsync))
    try:
        result = cli("export", run_dir, "-o", tmp_path / "new" / "model.onnx")
    except KeyboardInterrupt:
        pytest.fail("the interrupt escaped the CLI")
    monkeypatch.undo()
    assert result.code == 130 and result.err.strip().splitlines() == ["crnnfw: interrupted"], result.err
    assert list(tmp_path.iterdir()) == []
    assert snapshot(root) == before
