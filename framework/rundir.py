"""Run directories: ``<output_dir>/<name>/<timestamp>/``, never reused."""

from __future__ import annotations

import time
from pathlib import Path


def create_run_dir(output_dir: str | Path, name: str) -> Path:
    """Make a fresh run directory; an existing one is never overwritten (a suffix is added)."""
    parent = Path(output_dir) / name
    parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        candidate = parent / (stamp if attempt == 0 else f"{stamp}-{attempt}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        (candidate / "checkpoints").mkdir()
        return candidate
    raise FileExistsError(f"{parent}: could not find a free run directory name")
