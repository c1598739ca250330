"""Checkpoints: plain dicts of tensors and builtins, written atomically, read with weights_only."""

from __future__ import annotations

import io
import itertools
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, TypedDict

import torch

from . import atomic, interrupts
from .errors import CheckpointError, first_line
from .version import __version__

FORMAT_VERSION = 2  # 2: adds the input spec and the head's decoding

#: Most bytes a checkpoint's records may hold once read (their uncompressed sizes, from the
#: zip's directory, checked before anything is read): 4 GiB, a billion fp32 weights; crnnfw
#: models take a few MB.
MAX_BYTES = 4 * 2**30
#: torch.save stores its records uncompressed; a compressed record larger than
#: ``COMPRESSED_RECORD_BYTES`` that inflates more than ``MAX_RATIO``-fold is a zip bomb, not
#: a re-zipped checkpoint (weights barely compress).
COMPRESSED_RECORD_BYTES = 2**20
MAX_RATIO = 100


class Model(TypedDict):
    """What every checkpoint holds, and all that eval, predict, export and fine-tuning read."""

    model: dict[str, torch.Tensor]  # the weights (state_dict of the plain model)
    config: dict[str, Any]  # the resolved run config, which rebuilds the model from the registry
    classes: list[str]
    input: dict[str, Any]  # the InputSpec: how images are framed for this model
    decoding: dict[str, Any]  # the head's decoding (e.g. CTC's blank), as exported models carry it


class Record(Model, total=False):
    """A training run's checkpoint (``last.ckpt``, ``best.ckpt``): the model, and all a resume
    needs to carry on as if never stopped."""

    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any]
    epoch: int  # finished epochs
    step: int  # optimizer steps taken
    best: dict[str, Any]  # the best val metric so far: value, epoch, test scores then
    train_seconds: float
    planned_steps: int | None  # the steps the run will take (fewer than its epochs allow when planned to trainer.max_minutes)
    history: list[dict[str, Any]]  # metrics.jsonl's rows: the checkpoint is the run's record
    components: dict[str, dict[str, str]]  # per stage: component, plugin, distribution, version
    crnnfw_version: str
    rng: dict[str, Any]  # python, torch (per rank), data generator, cuda (per rank)
    stopped: str | None  # why a callback ended training, if one did
    callback_records: dict[str, Any]
    callback_states: list[dict[str, Any]]  # each callback's state_dict(), in config order
    metrics: dict[str, dict[str, float]]  # the epoch's val and test scores
    partial: dict[str, Any]  # a mid-epoch checkpoint: the epoch, batches done, data order, running loss


#: The keys without which a file is not a crnnfw model checkpoint.
MODEL_KEYS = tuple(sorted(Model.__required_keys__))


def save(state: Record, path: str | Path) -> None:
    """Write ``state`` to ``path`` so a crash, a signal or a full disk never leaves a
    half-written file there (or a temporary one beside it).

    The checkpoint is serialised in memory, then written atomically (``crnnfw.atomic``) with
    SIGINT and SIGTERM held until it is in place.
    """
    with interrupts.deferred():
        buffer = io.BytesIO()
        torch.save({"format_version": FORMAT_VERSION, **state}, buffer)
        atomic.write_bytes(path, buffer.getbuffer())


def load(path: str | Path, weights: bool = True) -> dict[str, Any]:
    """Read a checkpoint safely (no arbitrary objects), with a clear error for a bad file.

    ``weights=False`` maps the tensors instead of reading them: for a look at the record
    (epoch, best) of a large checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if not (magic.startswith(b"PK") or magic.startswith(b"\x80")):  # torch.save's zip, or its legacy pickle
        kind = "an empty file" if not magic else "another file type"
        raise CheckpointError(f"{path}: not a readable checkpoint ({kind}); give a .ckpt file a crnnfw run wrote")
    if magic.startswith(b"PK"):
        _check_archive(path, mapped=not weights)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=not weights and magic.startswith(b"PK"))
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = f"such as {found.group(1)}" if found else "that need code to load"
        raise CheckpointError(f"{path}: refused: it holds Python objects ({what}), not just tensors and plain values; crnnfw never runs code from checkpoints") from None
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


def _check_archive(path: Path, mapped: bool = False) -> None:
    """Refuse a zip that holds a zip bomb (see :data:`MAX_RATIO`), or whose records would take
    more than :data:`MAX_BYTES` once read (not when ``mapped``: torch maps them instead), from
    its directory alone: nothing is decompressed."""
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or damaged: its zip directory is unreadable, {first_line(exc)}); give a .ckpt file a crnnfw run wrote") from None
    for record in records:
        ratio = record.file_size / max(1, record.compress_size)
        if record.compress_type != zipfile.ZIP_STORED and record.file_size > COMPRESSED_RECORD_BYTES and ratio > MAX_RATIO:
            raise CheckpointError(
                f"{path}: refused: its record {record.filename} would inflate {ratio:,.0f}-fold to {record.file_size:,} bytes "
                "(a zip bomb; torch.save never compresses); give a .ckpt file a crnnfw run wrote"
            )
    total = sum(record.file_size for record in records)
    if total > MAX_BYTES and not mapped:
        raise CheckpointError(f"{path}: refused: its records would take {total:,} bytes in memory, more than the {MAX_BYTES:,} a checkpoint may (crnnfw.checkpoint.MAX_BYTES)")


def _release(version: str) -> tuple[int, ...]:
    """``0.1.0`` as (0, 1, 0); an unreadable version as the oldest."""
    parts = []
    for part in version.split(".")[:3]:
        digits = "".join(itertools.takewhile(str.isdigit, part))
        parts.append(int(digits) if digits else 0)
    return tuple(parts)
