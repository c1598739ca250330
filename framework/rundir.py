"""Run directories: ``<output_dir>/<name>/<timestamp>/``, never reused, trained in by one process
at a time, and consistent after a kill at any instant.

``checkpoints/last.ckpt`` is the run's record: an epoch has happened when it says so. The other
files an epoch writes (``best.ckpt``, ``metrics.jsonl``) come after it, and ``repair`` brings
them back in line with it when a kill fell between.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
import time
from pathlib import Path
from typing import IO, Any

from . import atomic, checkpoint
from .errors import ConfigError, TrainingError

LOCK_NAME = ".lock"
CHECKPOINTS = "checkpoints"


def checkpoint_file(run_dir: Path, which: str = "last") -> Path:
    """``RUN/checkpoints/last.ckpt`` (the run's record) or ``best.ckpt`` (its best model)."""
    return run_dir / CHECKPOINTS / f"{which}.ckpt"


_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_name(name: str, key: str = "name") -> None:
    """A run name becomes one folder: no separators, no ``..``, nothing hidden."""
    if not _SAFE_NAME.fullmatch(name) or len(name) > 100:
        raise ConfigError(f"{key}: '{name}' is not usable as a run name; use letters, digits, '.', '_' and '-' (at most 100, not starting with '.' or '-'), without '/'")


def create_run_dir(output_dir: str | Path, name: str) -> Path:
    """Make a fresh run directory; an existing one is never overwritten (a suffix is added)."""
    check_name(name)
    root = Path(output_dir)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"output_dir: {root} is a file, not a folder; give a folder for the runs")
    parent = root / name
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"output_dir: cannot make {parent} ({exc.strerror or exc})") from None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        candidate = parent / (stamp if attempt == 0 else f"{stamp}-{attempt}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        (candidate / CHECKPOINTS).mkdir()
        return candidate
    raise ConfigError(f"{parent}: could not find a free run directory name")


class RunLock:
    """An exclusive ``flock`` on ``RUN/.lock`` while a process trains in ``RUN``.

    The kernel drops the lock when its process dies however it dies, so a lock file left by a
    killed run is simply taken over; the file records the holder's PID and host for the message,
    and is removed when the holder ends normally.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_NAME
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        while True:
            handle = open(self.path, "a+", encoding="utf-8")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "a process"
                handle.close()
                raise TrainingError(f"{self.path.parent}: another crnnfw process ({holder}) is training in this run directory; wait for it to end or stop it, then resume") from None
            if _same_inode(handle, self.path):
                break
            handle.close()  # the holder removed the file as we opened it: lock the new one
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self.path.unlink(missing_ok=True)
            self._file.close()  # closing the descriptor releases the flock
            self._file = None


def _same_inode(handle: IO[str], path: Path) -> bool:
    try:
        return os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def latest_run(parent: Path) -> Path | None:
    """The run under ``parent`` that trained last, by its own record: the time its
    ``last.ckpt`` was written (not the folder's, which ``crnnfw eval`` changes)."""
    runs = [p for p in parent.glob("*") if checkpoint_file(p).is_file()]
    if not runs:
        return None
    return max(runs, key=lambda p: (checkpoint_file(p).stat().st_mtime_ns, p.name))


def best_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint holding the run's best model. ``best.ckpt``, unless a kill fell between
    writing ``last.ckpt`` and ``best.ckpt`` in the epoch that was best: then ``last.ckpt``."""
    best, last = checkpoint_file(run_dir, "best"), checkpoint_file(run_dir)
    if not last.is_file():
        return best if best.is_file() else None
    record = checkpoint.load(last, weights=False)
    if record.get("partial"):  # taken within an epoch: not a model of any finished epoch
        return best if best.is_file() else last
    if record["best"].get("epoch") == record["epoch"] and (not best.is_file() or checkpoint.load(best, weights=False)["epoch"] != record["epoch"]):
        return last
    return best if best.is_file() else last


def repair(run_dir: Path, state: dict[str, Any], history: list[dict[str, Any]]) -> list[str]:
    """Make the run's files agree with ``last.ckpt`` (``state``): remove temporary files left by
    a kill, rewrite a stale ``best.ckpt`` and ``metrics.jsonl``. Returns what it did."""
    done = [f"removed {p.name}, left by an interrupted save" for p in atomic.remove_leftovers(run_dir / CHECKPOINTS) + atomic.remove_leftovers(run_dir)]
    last = checkpoint_file(run_dir)
    if not state.get("partial") and best_checkpoint(run_dir) == last and state["best"].get("epoch") == state["epoch"]:
        atomic.write_bytes(checkpoint_file(run_dir, "best"), last.read_bytes())
        done.append(f"best.ckpt rewritten from last.ckpt (epoch {state['epoch']}, the best; a kill had cut its save)")
    return done
