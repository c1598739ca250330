"""Files written whole or not at all: a kill, a full disk or a read-only folder never leaves a
half-written file, or a temporary one, where crnnfw writes."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

from .errors import CrnnfwError

#: Temporary files are hidden names ending in this, next to their target.
TMP_SUFFIX = ".tmp"

_DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


class WriteError(CrnnfwError):
    """A file could not be written (disk full, no permission); nothing partial is left."""

    exit_code = 1


def write_bytes(path: str | Path, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, fsynced, then
    renamed over ``path``, then the folder fsynced so the rename survives a power cut. On any
    failure, an interrupt included, the temporary file and the folders made for it are removed."""
    path = Path(path)
    tmp: str | None = None
    created = [folder for folder in (path.parent, *path.parent.parents) if not os.path.lexists(folder)][::-1]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would hide a shared run's files from its group
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise write_error(path, exc) from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
            for folder in reversed(created):
                with contextlib.suppress(OSError):
                    folder.rmdir()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> None:
    """``write_bytes`` for UTF-8 text."""
    write_bytes(path, text.encode("utf-8"))


def write_error(path: Path, exc: OSError) -> WriteError:
    """One line for a failed write, saying whether the disk is full."""
    reason = exc.strerror or str(exc)
    if exc.errno in _DISK_FULL:
        return WriteError(f"{path}: the disk is full ({reason}); nothing was written: free some space and try again")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return WriteError(f"{path}: cannot write there ({reason}); give a path in a folder you can write to")
    return WriteError(f"{path}: cannot write it ({reason})")


def remove_leftovers(folder: Path) -> list[Path]:
    """Delete temporary files an earlier, killed process left in ``folder``; return them."""
    removed = []
    for leftover in folder.glob(f".*{TMP_SUFFIX}"):
        if leftover.is_file():
            leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed
