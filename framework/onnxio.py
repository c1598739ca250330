"""ONNX and TorchScript tracing, ONNX Runtime sessions and output comparison: the pieces both
``crnnfw export`` and the conformance kit (``crnnfw.testing``) use. Only torch and, when
installed, onnx and onnxruntime: nothing of the engine."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn

from .errors import ExportError, first_line

OPSET = 17
INSTALL_HINT = "install the ONNX extra: pip install 'crnnfw[onnx]'"


def onnx_modules() -> tuple[Any, Any]:
    """The ``onnx`` and ``onnxruntime`` modules, or an ExportError saying how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise ExportError(f"ONNX export needs the onnx and onnxruntime packages ({first_line(exc)}); {INSTALL_HINT}") from None
    return onnx, onnxruntime


@contextlib.contextmanager
def _tracing(module: nn.Module) -> Iterator[None]:
    """Eval mode, no grad and no tracer warnings while tracing; errors become ExportError.

    The tracer warns about Python values frozen into the graph; the checks here run the
    graph at other sizes instead, which catches the ones that matter.
    """
    was_training = module.training
    module.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            yield
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"{type(module).__name__} does not export: {type(exc).__name__}: {first_line(exc)}") from exc
    finally:
        module.train(was_training)


def to_onnx(
    module: nn.Module,
    inputs: tuple[Tensor, ...],
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: dict[str, dict[int, str]],
    metadata: dict[str, str] | None = None,
) -> bytes:
    """Trace ``module`` on ``inputs`` into an ONNX model (bytes) with the given dynamic axes and metadata."""
    onnx, _ = onnx_modules()
    buffer = io.BytesIO()
    with _tracing(module):
        torch.onnx.export(
            module,
            inputs,
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
        )
    model = onnx.load_from_string(buffer.getvalue())
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    return model.SerializeToString()


def to_torchscript(module: nn.Module, inputs: tuple[Tensor, ...]) -> torch.jit.ScriptModule:
    """Trace ``module`` on ``inputs`` into TorchScript (for C++ and mobile runtimes)."""
    with _tracing(module):
        return torch.jit.trace(module, inputs, check_trace=False)


def onnx_session(model: bytes | str | Path, threads: int = 0) -> Any:
    """An ONNX Runtime CPU session for a model given as bytes or a file (``threads`` 0: ONNX Runtime's default)."""
    _, ort = onnx_modules()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_onnx(session: Any, inputs: dict[str, Tensor]) -> list[Tensor]:
    """Run an ONNX Runtime session on torch tensors; the outputs come back as torch tensors.

    Inputs the graph does not use (lengths, for a stage that ignores them) were dropped by the
    exporter and are not fed.
    """
    wanted = {i.name for i in session.get_inputs()}
    feeds = {name: value.detach().cpu().numpy() for name, value in inputs.items() if name in wanted}
    return [torch.from_numpy(out) for out in session.run(None, feeds)]


def compare(reference: Sequence[Tensor], candidate: Sequence[Tensor], names: Sequence[str], atol: float) -> str | None:
    """None when every output matches in shape and within ``atol``; else what differs."""
    for name, ref, got in zip(names, reference, candidate):
        ref = ref.detach().cpu()
        if tuple(ref.shape) != tuple(got.shape):
            return f"'{name}' has shape {tuple(got.shape)}, PyTorch gives {tuple(ref.shape)}"
        if ref.is_floating_point():
            difference = (ref.float() - got.float()).abs().max().item() if ref.numel() else 0.0
            if not difference <= atol:
                return f"'{name}' differs from PyTorch by {difference:.2e} (tolerance {atol:.0e})"
        elif not torch.equal(ref.long(), got.long()):
            return f"'{name}' is {got.tolist()}, PyTorch gives {ref.tolist()}"
    return None
