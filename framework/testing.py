"""The conformance kit: checks a plugin author calls from their own tests.

Each ``check_*`` function builds small real inputs, runs the component against its stage
contract and raises :class:`ConformanceError` (an AssertionError, so pytest reports it like a
failed assert) naming the rule that broke::

    from crnnfw.testing import check_backbone, check_registered

    def test_my_backbone_conforms():
        check_backbone(MyBackbone(MyConfig(), in_channels=1), in_channels=1, in_height=32)

    def test_crnnfw_finds_it():
        check_registered("backbone", "my_backbone", distribution="my-backbone")
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from . import onnxio
from .batch import Batch, pad_right
from .errors import ExportError, first_line
from .stages import Backbone, Decoded, Head, Metrics, SequenceEncoder

#: Default widths: none divisible by 2, 4 or 8, so stride rounding is exercised.
WIDTHS = (29, 53, 67)


class ConformanceError(AssertionError):
    """A component breaks its stage contract."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConformanceError(message)


def _padded(samples: list[Tensor], extra: int) -> Tensor:
    """Right-pad ``(C, H, W_i)`` samples with zeros to the widest plus ``extra`` columns."""
    return pad_right(samples, 0.0, extra)[0]


def _check_gradients(module: nn.Module, loss: Tensor, what: str) -> None:
    """Every trainable parameter gets a finite, non-zero gradient (nothing to check without any)."""
    if not any(p.requires_grad for p in module.parameters()):
        return
    module.zero_grad(set_to_none=True)
    loss.backward()
    for name, param in module.named_parameters():
        if param.requires_grad:
            _require(param.grad is not None, f"{what}: no gradient reaches parameter '{name}'")
            _require(bool(torch.isfinite(param.grad).all()), f"{what}: the gradient of '{name}' is not finite")
            _require(bool(param.grad.abs().sum() > 0), f"{what}: the gradient of '{name}' is all zero")


def _as_tuple(outputs: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return outputs if isinstance(outputs, tuple) else (outputs,)


def _check_onnx(
    module: nn.Module,
    trace: tuple[Tensor, Tensor],
    runs: list[tuple[Tensor, Tensor]],
    names: tuple[tuple[str, str], tuple[str, ...]],
    axis: int,
    atol: float,
) -> None:
    """Export ``module`` traced on ``trace`` with dynamic batch and axis ``axis`` of the first input,
    then run ONNX Runtime on ``runs`` (other batch sizes and widths) against eager PyTorch."""
    (first, second), outputs = names
    module.eval()
    with torch.no_grad():
        traced_out = _as_tuple(module(*trace))
    dynamic = {first: {0: "batch", axis: "size"}, second: {0: "batch"}}
    for name, out in zip(outputs, traced_out):
        dynamic[name] = {0: "batch", **({1: "steps"} if out.dim() >= 3 and axis == 1 else {}), **({3: "steps"} if out.dim() == 4 else {})}
    size = trace[0].shape[axis]
    try:
        session = onnxio.onnx_session(onnxio.to_onnx(module, trace, input_names=(first, second), output_names=outputs, dynamic_axes=dynamic))
    except ExportError as exc:
        message = str(exc)
        if onnxio.INSTALL_HINT in message:
            message += ", or pass onnx=False to skip the export check"
        raise ConformanceError(message) from None
    for inputs in runs:
        with torch.no_grad():
            reference = _as_tuple(module(*inputs))
        where = f"exported at size {size}, run at batch {inputs[0].shape[0]} and size {inputs[0].shape[axis]}"
        try:
            got = onnxio.run_onnx(session, {first: inputs[0], second: inputs[1]})
        except Exception as exc:
            raise ConformanceError(
                f"ONNX: {where}: ONNX Runtime fails ({first_line(exc)}); a size computed in Python was frozen into the graph: derive sizes from tensor shapes and tensor ops"
            ) from None
        problem = onnxio.compare(reference, got, outputs, atol)
        _require(problem is None, f"ONNX: {where}: {problem}; the graph froze a value that depends on the input size")


def check_backbone(
    backbone: Backbone,
    *,
    in_channels: int = 1,
    in_height: int = 32,
    widths: Sequence[int] = WIDTHS,
    atol: float = 1e-5,
    seed: int = 0,
    onnx: bool = True,
) -> None:
    """Shapes, lengths, padding invariance, gradients and ONNX export of a backbone.

    - ``forward`` returns ``(N, out_channels, out_height(in_height), W')`` features and lengths
      equal to ``out_lengths(widths)``, each between 1 and ``W'``;
    - each sample's features over its valid steps are the same alone and inside a batch padded
      wider (eval mode, within ``atol``);
    - in train mode, the content of the padding does not change the valid features (through
      BatchNorm's batch statistics, say), and a loss over the valid features sends a finite,
      non-zero gradient to every trainable parameter;
    - with ``onnx`` (needs ``crnnfw[onnx]``), it exports to ONNX traced at one width and batch,
      and ONNX Runtime matches PyTorch (within 1e-4) at the other widths and batch sizes.
    """
    _require(isinstance(backbone, Backbone), f"{type(backbone).__name__} is not a crnnfw.Backbone")
    _require(isinstance(getattr(backbone, "out_channels", None), int) and backbone.out_channels > 0, "out_channels must be a positive int")
    generator = torch.Generator().manual_seed(seed)
    samples = [torch.rand(in_channels, in_height, w, generator=generator) for w in widths]
    images = _padded(samples, extra=19)
    width_tensor = torch.tensor(list(widths))
    backbone.eval()
    with torch.no_grad():
        features, lengths = backbone(images, width_tensor)
        expected = (len(widths), backbone.out_channels, backbone.out_height(in_height))
        _require(features.dim() == 4 and tuple(features.shape[:3]) == expected, f"features are {tuple(features.shape)}; declared (N, out_channels, out_height) is {expected}")
        promised = backbone.out_lengths(width_tensor)
        _require(torch.equal(lengths.cpu().long(), promised.cpu().long()), f"forward returned lengths {lengths.tolist()} for widths {list(widths)}; out_lengths says {promised.tolist()}")
        _require(int(lengths.min()) >= 1 and int(lengths.max()) <= features.shape[3], f"lengths {lengths.tolist()} must lie in 1..{features.shape[3]} (the feature-map width)")
        for i, sample in enumerate(samples):
            alone, alone_lengths = backbone(sample.unsqueeze(0), width_tensor[i : i + 1])
            n = int(alone_lengths[0])
            _require(n == int(lengths[i]), f"width {widths[i]}: length {n} alone but {int(lengths[i])} in a batch")
            difference = (features[i, ..., :n] - alone[0, ..., :n]).abs().max().item()
            _require(
                difference <= atol, f"width {widths[i]}: features differ by {difference:.2e} alone and inside a padded batch (padding leaks into valid steps; mask features past each sample's length)"
            )
    if onnx:
        trace_widths = [max(widths) + 11, max(widths) // 2 + 3]
        trace = (_padded([torch.rand(in_channels, in_height, w, generator=generator) for w in trace_widths], extra=4), torch.tensor(trace_widths))
        runs = [(images, width_tensor), (samples[0].unsqueeze(0), width_tensor[:1])]
        _check_onnx(backbone, trace, runs, (("images", "widths"), ("features", "lengths")), 3, max(atol, 1e-4))
    backbone.train()
    with torch.no_grad():  # train mode: what is in the padding must not reach valid steps (BatchNorm's batch statistics)
        noisy = images.clone()
        for i, width in enumerate(widths):
            noisy[i, ..., width:] = torch.rand(noisy[i, ..., width:].shape, generator=generator) * 5
        state = torch.get_rng_state()
        clean_features, _ = backbone(images, width_tensor)
        torch.set_rng_state(state)  # the same dropout masks
        noisy_features, _ = backbone(noisy, width_tensor)
        for i, n in enumerate(lengths.tolist()):
            difference = (clean_features[i, ..., :n] - noisy_features[i, ..., :n]).abs().max().item()
            _require(
                difference <= atol * 10,
                f"width {widths[i]}: in train mode, the padding's content changes valid features by {difference:.2e} "
                "(it reaches them through batch statistics or unmasked convolutions; mask features past each sample's length)",
            )
    features, lengths = backbone(images, width_tensor)
    mask = (torch.arange(features.shape[3]).unsqueeze(0) < lengths.unsqueeze(1)).to(features.dtype)
    _check_gradients(backbone, (features * mask[:, None, None, :]).pow(2).mean(), "backbone")


def check_encoder(
    encoder: SequenceEncoder,
    *,
    in_features: int,
    lengths: Sequence[int] = (3, 11, 17),
    atol: float = 1e-5,
    seed: int = 0,
    onnx: bool = True,
) -> None:
    """Shape, padding invariance, gradients and ONNX export of a sequence encoder.

    - ``forward(seq (N, T, in_features), lengths)`` returns ``(N, T, out_features)``;
    - steps past a sample's length, whatever they hold, do not change its valid steps, and a
      sample gives the same valid steps alone (eval mode, within ``atol``);
    - a loss over the valid steps sends gradients to every trainable parameter;
    - with ``onnx``, it exports with dynamic batch and length and ONNX Runtime matches PyTorch.
    """
    _require(isinstance(encoder, SequenceEncoder), f"{type(encoder).__name__} is not a crnnfw.SequenceEncoder")
    generator = torch.Generator().manual_seed(seed)
    steps = max(lengths) + 5
    seq = torch.randn(len(lengths), steps, in_features, generator=generator)
    length_tensor = torch.tensor(list(lengths))
    encoder.eval()
    with torch.no_grad():
        out = encoder(seq, length_tensor)
        _require(tuple(out.shape) == (len(lengths), steps, encoder.out_features), f"output is {tuple(out.shape)}; expected {(len(lengths), steps, encoder.out_features)}")
        noisy = seq.clone()
        for i, n in enumerate(lengths):
            noisy[i, n:] = 1e3 * torch.randn(steps - n, in_features, generator=generator)
        changed = encoder(noisy, length_tensor)
        for i, n in enumerate(lengths):
            alone = encoder(seq[i : i + 1, :n], length_tensor[i : i + 1])
            for other, how in ((changed[i, :n], "when the padding changes"), (alone[0], "alone and in a batch")):
                difference = (out[i, :n] - other).abs().max().item()
                _require(difference <= atol, f"length {n}: valid steps differ by {difference:.2e} {how}")
    if onnx:
        trace = (torch.randn(2, steps + 7, in_features, generator=generator), torch.tensor([steps + 7, steps - 2]))
        runs = [(seq, length_tensor), (seq[:1, : lengths[0]], length_tensor[:1])]
        _check_onnx(encoder, trace, runs, (("seq", "lengths"), ("encoded",)), 1, max(atol, 1e-4))
    encoder.train()
    out = encoder(seq, length_tensor)
    mask = (torch.arange(steps).unsqueeze(0) < length_tensor.unsqueeze(1)).to(out.dtype)
    _check_gradients(encoder, (out * mask.unsqueeze(-1)).pow(2).mean(), "encoder")


def check_head(head: Head, batch: Batch, *, in_features: int, steps: int = 20, seed: int = 0, onnx: bool = True) -> None:
    """Loss, decoding, metrics, gradients and ONNX export of a head on a real ``batch`` of targets.

    - ``loss`` is a finite scalar and sends gradients to every trainable parameter;
    - ``decode`` returns one text and one confidence in [0, 1] per sample;
    - ``metrics()`` accumulates the decoded batch and ``compute`` returns its ``main`` figure;
    - ``min_steps`` of a one-symbol label is at least 1;
    - with ``onnx``, ``forward`` exports with dynamic batch and length and ONNX Runtime matches PyTorch.
    """
    _require(isinstance(head, Head), f"{type(head).__name__} is not a crnnfw.Head")
    generator = torch.Generator().manual_seed(seed)
    n = len(batch)
    seq = torch.randn(n, steps, in_features, generator=generator)
    lengths = torch.full((n,), steps)
    head.train()
    logits = head(seq, lengths)
    loss = head.loss(logits, lengths, batch)
    _require(loss.dim() == 0 and bool(torch.isfinite(loss)), f"loss must be a finite scalar, got {loss}")
    _check_gradients(head, loss, "head")
    head.eval()
    with torch.no_grad():
        decoded = head.decode(head(seq, lengths), lengths)
    _require(isinstance(decoded, Decoded) and len(decoded.texts) == n and len(decoded.confidences) == n, "decode must return a crnnfw.Decoded with one text and one confidence per sample")
    _require(bool(((decoded.confidences >= 0) & (decoded.confidences <= 1)).all()), "confidences must lie in [0, 1]")
    metrics = head.metrics()
    _require(isinstance(metrics, Metrics), "metrics() must return a crnnfw.Metrics")
    metrics.update(decoded, batch)
    scores = metrics.compute()
    _require(metrics.main in scores, f"metrics.compute() lacks its main figure '{metrics.main}'")
    _require(head.min_steps(1) >= 1, "min_steps(1) must be at least 1")
    _require(all(isinstance(k, str) and isinstance(v, str) for k, v in head.export_metadata().items()), "export_metadata() must map strings to strings")
    if onnx:
        trace = (torch.randn(2, steps + 5, in_features, generator=generator), torch.tensor([steps + 5, steps]))
        runs = [(seq, lengths), (seq[:1, :3], lengths[:1].clamp(max=3))]
        _check_onnx(head, trace, runs, (("seq", "lengths"), ("logits",)), 1, 1e-4)


#: What each kind's factory is called with when ``check_registered`` builds it.
_PROBES = {
    "backbone": (Backbone, {"in_channels": 1, "in_height": 32}),
    "encoder": (SequenceEncoder, {"in_features": 8}),
    "head": (Head, {"in_features": 8, "classes": ("a", "b", "c")}),
}


def check_registered(kind: str, name: str, distribution: str | None = None, config: object | None = None) -> object:
    """The component as crnnfw finds it through the entry points: registered under ``name``
    by a plugin that loaded (from ``distribution``, when given), and built by its factory from
    ``config`` (default: its config class's defaults) into the right stage type. Returns what
    was built (None for a dataset, which is not built here: that would read its data).

    This catches what a component's own tests cannot: a misspelled hook, a wrong entry-point
    group, a factory that is not callable the way the engine calls it.
    """
    from .callbacks import Callback
    from .plugins import get_host

    host = get_host()
    names = [c.name for c in host.registry.all() if c.kind == kind]
    failed = [f"{p.name} ({p.distribution}): {p.error}" for p in host.plugins if p.error]
    _require(
        name in names,
        f"no {kind} named '{name}' is registered (registered: {', '.join(names) or 'none'}"
        + (f"; plugins that failed: {'; '.join(failed)}" if failed else "")
        + "); check the entry point in the [project.entry-points.crnnfw] group and the hook's name",
    )
    component = host.registry.get(kind, name)
    if distribution is not None:
        _require(component.distribution == distribution or component.distribution.startswith(f"{distribution} "), f"{kind} '{name}' comes from {component.distribution}, not {distribution}")
    if config is None:
        try:
            config = component.config()
        except TypeError as exc:
            raise ConformanceError(f"{kind} '{name}': its config class needs values ({first_line(exc)}); pass config=") from None
    if kind == "dataset":
        return None
    expected, arguments = _PROBES.get(kind, (Callback, {}))
    try:
        built = component.factory(config, **arguments)
    except TypeError as exc:
        signature = ", ".join(["config", *(f"{k}=..." for k in arguments)])
        raise ConformanceError(f"{kind} '{name}': its factory cannot be called as factory({signature}): {first_line(exc)}") from None
    _require(isinstance(built, expected), f"{kind} '{name}': its factory built a {type(built).__name__}, not a crnnfw.{expected.__name__}")
    return built
