"""Checkpoints: plain dicts of tensors and builtins, written atomically, read with weights_only."""

from __future__ import annotations

import itertools
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, first_line
from .version import __version__

FORMAT_VERSION = 2  # 2: adds the input spec and the head's decoding


def save(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` so a crash never leaves a half-written file there.

    The bytes go to a temporary file in the same folder, are fsynced, then renamed over
    ``path`` (an atomic replace on POSIX and Windows).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format_version": FORMAT_VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint safely (no arbitrary objects), with a clear error for a bad file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if not (magic.startswith(b"PK") or magic.startswith(b"\x80")):  # torch.save's zip, or its legacy pickle
        kind = "an empty file" if not magic else "another file type"
        raise CheckpointError(f"{path}: not a readable checkpoint ({kind}); give a .ckpt file a crnnfw run wrote")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = f"such as {found.group(1)}" if found else "that need code to load"
        raise CheckpointError(
            f"{path}: refused: it holds Python objects ({what}), not just tensors and plain values; "
            "crnnfw never runs code from checkpoints"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or damaged: {first_line(exc).split('. ')[0]})") from None
    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError(f"{path}: not a crnnfw checkpoint (no format_version)")
    written_by = str(state.get("crnnfw_version", "unknown"))
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {state['format_version']} (written by crnnfw {written_by}) is not supported by "
            f"crnnfw {__version__} (format {FORMAT_VERSION}); use the crnnfw version that wrote it"
        )
    if _release(written_by) > _release(__version__):
        raise CheckpointError(f"{path}: written by crnnfw {written_by}, newer than this crnnfw {__version__}; upgrade crnnfw to read it")
    return state


def _release(version: str) -> tuple[int, ...]:
    """``0.1.0`` as (0, 1, 0); an unreadable version as the oldest."""
    parts = []
    for part in version.split(".")[:3]:
        digits = "".join(itertools.takewhile(str.isdigit, part))
        parts.append(int(digits) if digits else 0)
    return tuple(parts)
