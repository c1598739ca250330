"""Export to ONNX and TorchScript with dynamic batch and width, and check the result against PyTorch.

Models are traced, so an exported graph keeps every operation on tensor shapes but freezes
Python decisions made from tensor values: a stage's ``forward`` must not branch on them (it
may branch on ``torch.jit.is_tracing()`` to take its general path while exporting). The
conformance kit runs the same export on each stage, so a plugin that breaks this rule fails
its own tests rather than a user's deployment.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import threading
import warnings
import zipfile
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from . import atomic
from .batch import pad_right
from .data import InputSpec
from .errors import ExportError, first_line
from .images import describe as describe_preprocessing
from .onnxio import INSTALL_HINT, compare, onnx_modules, onnx_session, run_onnx, to_onnx, to_torchscript  # noqa: F401  (run_onnx, compare: part of export's API)
from .stages import unpadded as unpadded_batches
from .trained import Trained
from .version import __version__

FORMATS = ("onnx", "torchscript")


def _example(spec: InputSpec, widths: Sequence[int], seed: int) -> tuple[Tensor, Tensor]:
    """Random images of the model's geometry at ``widths``, right-padded with the background."""
    generator = torch.Generator().manual_seed(seed)
    return pad_right([torch.rand(spec.channels, spec.height, width, generator=generator) for width in widths], spec.background)


def metadata(trained: Trained, unpadded: bool = False) -> dict[str, str]:
    """What a user needs to feed the exported model and decode its logits without crnnfw."""
    spec = trained.spec
    images = "every image as wide as its batch (batch 1, or equal widths)" if unpadded else "right-padded with the background"
    return {
        "producer": f"crnnfw {__version__}",
        "inputs": f"images: float32 (N, C, H, W) in [0, 1], {images}; widths: int64 (N,) each image's width",
        "padding": "unpadded" if unpadded else "masked",
        "outputs": "logits; lengths: int64 (N,) valid steps of each sample's logits",
        "input_channels": str(spec.channels),
        "input_height": str(spec.height),
        "min_width": str(spec.min_width),
        "max_width": str(spec.max_width),
        "polarity": spec.polarity,
        **({"ink_height": f"{spec.ink_height:.6g}"} if spec.ink_height else {}),
        "too_wide": spec.too_wide,
        "preprocessing": describe_preprocessing(spec),
        "classes": json.dumps(list(trained.classes)),
        **trained.model.head.export_metadata(),
    }


def verification_widths(model: nn.Module, spec: InputSpec) -> list[int]:
    """Widths around the model's own, including odd ones no stride divides, that the model
    accepts: one that reads a fixed number of steps (the ``flatten`` encoder) takes its own
    width only."""
    base = spec.min_width
    candidates = sorted({base, base + 13, 2 * base + 9, max(spec.max_width, base) + 7})
    return [width for width in candidates if width == base or _accepts(model, spec, [width])]


def _accepts(model: nn.Module, spec: InputSpec, widths: list[int]) -> bool:
    """Whether the model runs on a batch of these widths (it raises on widths it cannot read)."""
    model.eval()
    try:
        with torch.no_grad():
            model(*_example(spec, widths, seed=0))
    except (ValueError, RuntimeError):
        return False
    return True


def _trace_widths(model: nn.Module, spec: InputSpec, widths: list[int], unpadded: bool) -> list[int]:
    """A padded batch to trace with (unpadded: all at the widest), wider than every verified
    width when the model allows it, so the verification runs at sizes the trace never saw."""
    wide = [max(widths) + 20, widths[0] + 6]
    if not _accepts(model, spec, wide):
        wide = [max(widths), widths[0]]
    return [wide[0]] * 2 if unpadded else wide


def model_to_onnx(model: nn.Module, trace: tuple[Tensor, Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """A whole model, ``(images, widths) -> (logits, lengths)``, as ONNX with dynamic batch and
    width; sequence logits ``(N, T, C)`` get a dynamic step axis too."""
    model.eval()
    with torch.no_grad():
        logits, _ = model(*trace)
    axes = {"images": {0: "batch", 3: "width"}, "widths": {0: "batch"}, "lengths": {0: "batch"}, "logits": {0: "batch", **({1: "steps"} if logits.dim() == 3 else {})}}
    return to_onnx(model, trace, input_names=("images", "widths"), output_names=("logits", "lengths"), dynamic_axes=axes, metadata=metadata)


def default_output(trained: Trained, fmt: str) -> Path:
    """``RUN_DIR/<checkpoint name>.onnx`` (``.pt`` for TorchScript), or next to a checkpoint outside
    a run directory; ``<name>.<format>.<ext>`` where that would be the checkpoint itself (``model.pt``)."""
    suffix = ".onnx" if fmt == "onnx" else ".pt"
    folder = trained.run_dir or trained.path.parent
    output = folder / f"{trained.path.stem}{suffix}"
    return folder / f"{trained.path.stem}.{fmt}{suffix}" if _same_file(output, trained.path) else output


def export_model(trained: Trained, fmt: str, output: str | Path, unpadded: bool = False, force: bool = False) -> Path:
    """Write ``trained``'s model to ``output`` as ONNX (metadata inside) or TorchScript (metadata as an extra file).

    ``unpadded`` leaves the padding masks out of the graph (see :func:`crnnfw.unpadded`): faster,
    for callers whose batches are never padded (batch 1, or images of one width). The output is
    checked before the slow trace and again before writing (see :func:`check_output`); ``force``
    lets an existing file that is not a checkpoint be replaced.
    """
    if fmt not in FORMATS:
        raise ExportError(f"--format: '{fmt}' is not one of {', '.join(FORMATS)}")
    name = default_output(trained, fmt).name
    path = check_output(output, trained.path, name, force)
    with _interrupts_kept():
        widths = verification_widths(trained.model, trained.spec)
        trace = _example(trained.spec, _trace_widths(trained.model, trained.spec, widths, unpadded), seed=1)
        info = metadata(trained, unpadded)
        with unpadded_batches() if unpadded else contextlib.nullcontext():
            data = model_to_onnx(trained.model, trace, info) if fmt == "onnx" else _torchscript_file(trained.model, trace, info)
    check_output(output, trained.path, name, force)  # again: the trace took seconds, and the place may have changed
    atomic.write_bytes(path, data)
    return path


def check_output(output: str | Path, checkpoint: Path, name: str, force: bool = False) -> Path:
    """``output`` as a path export may write, or an ExportError saying why not.

    Export never writes over the checkpoint it reads, over any ``torch.save`` file (a checkpoint,
    even with ``force``), or to ``*.ckpt`` under a ``checkpoints`` folder (where runs keep theirs);
    it replaces another existing file only with ``force``. A folder, or a path ending in ``/``, is
    refused rather than guessed into (``name`` is the file the message suggests inside it).
    """
    text = str(output)
    path = Path(output)
    if os.path.isdir(path) or text.endswith(("/", os.sep)):
        what = "a folder" if os.path.isdir(path) else "a folder (it ends with '/')"
        raise ExportError(f"{text}: is {what}, not a file; give the file to write, e.g. -o {path / name}")
    if _same_file(path, checkpoint):
        raise ExportError(f"{path}: is the checkpoint being exported; export never writes over it, give another file with -o")
    resolved = Path(os.path.realpath(path))
    if path.suffix == ".ckpt" and "checkpoints" in (*path.parent.parts, *resolved.parent.parts):
        raise ExportError(f"{path}: is where a run keeps its checkpoints; export never writes there, even with --force; give another file with -o")
    if not os.path.lexists(path):
        return path
    if not os.path.isfile(path):
        raise ExportError(f"{path}: exists and is not a regular file; give another file with -o")
    if _is_torch_file(path):
        raise ExportError(f"{path}: is a checkpoint (a torch.save file); export never replaces one, even with --force; give another file with -o")
    if not force:
        raise ExportError(f"{path}: already exists; pass --force to replace it, or give another file with -o")
    return path


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: the same resolved path, or a hard link to it."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def _is_torch_file(path: Path) -> bool:
    """Whether ``path`` holds what ``torch.save`` writes (checkpoints do), not an exported model.

    A ``torch.save`` zip has a ``data.pkl`` and, unlike TorchScript's, no ``constants.pkl``; a
    legacy one is a pickle. A damaged zip counts as one: it may be a truncated checkpoint. ONNX
    files are protobufs and start with neither.
    """
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic.startswith(b"\x80"):
            return True
        if not magic.startswith(b"PK"):
            return False
        with zipfile.ZipFile(path) as archive:
            records = {name.rsplit("/", 1)[-1] for name in archive.namelist()}
    except zipfile.BadZipFile:
        return True
    except OSError as exc:
        raise ExportError(f"{path}: cannot read it to check whether it is a checkpoint ({exc.strerror or first_line(exc)}); give another file with -o") from None
    return "data.pkl" in records and "constants.pkl" not in records


@contextlib.contextmanager
def _interrupts_kept() -> Iterator[None]:
    """Ctrl-C (or SIGTERM, where a handler turns it into an exception) ends the block as that
    exception, even where torch or ONNX Runtime code catches it and raises another one, so the
    CLI reports an interrupt rather than a failed export."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised: list[BaseException] = []

    def keep(handler: Callable[[int, FrameType | None], Any]) -> Callable[[int, FrameType | None], Any]:
        def on_signal(signum: int, frame: FrameType | None) -> Any:
            try:
                return handler(signum, frame)
            except BaseException as exc:
                raised.append(exc)
                raise

        return on_signal

    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for signum, handler in previous.items():
        if callable(handler):
            signal.signal(signum, keep(handler))
    try:
        yield
    except Exception:
        if raised:
            raise raised[0] from None
        raise
    finally:
        for signum, handler in previous.items():
            if callable(handler):
                signal.signal(signum, handler)
    if raised:
        raise raised[0]


def _torchscript_file(model: nn.Module, trace: tuple[Tensor, Tensor], info: dict[str, str]) -> bytes:
    """The traced model as a TorchScript file, with the metadata as its extra file ``crnnfw.json``."""
    buffer = io.BytesIO()
    scripted = to_torchscript(model, trace)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream, still what C++ and mobile load
        torch.jit.save(scripted, buffer, _extra_files={"crnnfw.json": json.dumps(info)})
    return buffer.getvalue()


def check_verified(rows: list[dict[str, Any]], path: Path) -> None:
    """ExportError when any of ``verify_export``'s rows found the export disagreeing with PyTorch."""
    bad = [row for row in rows if not row["ok"]]
    if bad:
        raise ExportError(f"{path}: the exported model disagrees with PyTorch at widths {', '.join(str(r['widths']) for r in bad)}")


def verify_export(trained: Trained, path: Path, fmt: str, atol: float = 1e-4, unpadded: bool = False) -> list[dict[str, Any]]:
    """Run the exported model against PyTorch at several widths, alone and batched (an
    ``unpadded`` export: batched at one width).

    Each row: the widths, the largest logit difference, whether lengths and decoded texts
    agree, and ``ok`` when all three hold (logits within ``atol``). Ctrl-C ends it as an
    interrupt, also inside ONNX Runtime.
    """
    with _interrupts_kept():
        return _verification_rows(trained, path, fmt, atol, unpadded)


def _verification_rows(trained: Trained, path: Path, fmt: str, atol: float, unpadded: bool) -> list[dict[str, Any]]:
    """The rows of :func:`verify_export`."""
    if fmt == "onnx":
        session = onnx_session(path)

        def run(images: Tensor, widths: Tensor) -> list[Tensor]:
            return run_onnx(session, {"images": images, "widths": widths})
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            scripted = torch.jit.load(str(path), map_location="cpu")

        def run(images: Tensor, widths: Tensor) -> list[Tensor]:
            with torch.no_grad():
                return list(scripted(images, widths))

    widths = verification_widths(trained.model, trained.spec)
    cases = [[w] for w in widths] + [[widths[-1]] * max(2, len(widths)) if unpadded else list(reversed(widths))]
    rows = []
    head = trained.model.head
    for seed, case in enumerate(cases):
        images, width_tensor = _example(trained.spec, case, seed=100 + seed)
        with torch.no_grad():
            reference = trained.model(images, width_tensor)
        got = run(images, width_tensor)
        difference = (reference[0].float() - got[0].float()).abs().max().item()
        lengths_equal = torch.equal(reference[1].long(), got[1].long())
        texts_equal = lengths_equal and head.decode(reference[0].float(), reference[1]).texts == head.decode(got[0].float(), got[1].long()).texts
        rows.append({"widths": case, "max_abs_diff": difference, "lengths_equal": lengths_equal, "texts_equal": texts_equal, "ok": difference <= atol and lengths_equal and texts_equal})
    return rows
