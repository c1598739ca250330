"""Assemble backbone, encoder and head into one model, and check it before training."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from .batch import pad_right
from .config import component_config
from .data import SPLITS, DataModule
from .errors import ModelError, first_line
from .registry import STAGES, Registry
from .stages import Backbone, Head, SequenceEncoder


def collapse_height(features: Tensor, mode: str) -> Tensor:
    """Features ``(N, D, H, W)`` to a sequence ``(N, W, D*H)`` (flatten) or ``(N, W, D)`` (mean).

    A fixed op rather than adaptive pooling, so exported models keep a dynamic width.
    """
    if mode == "mean":
        return features.mean(dim=2).transpose(1, 2)
    return features.permute(0, 3, 1, 2).flatten(2)


class Model(nn.Module):
    """Backbone -> height collapse -> sequence encoder -> head."""

    def __init__(self, backbone: Backbone, encoder: SequenceEncoder, head: Head, collapse: str = "flatten") -> None:
        super().__init__()
        self.backbone = backbone
        self.encoder = encoder
        self.head = head
        self.collapse = collapse

    def forward(self, images: Tensor, widths: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(logits, lengths)``: the head's logits and each sample's sequence length."""
        features, lengths = self.backbone(images, widths)
        seq = collapse_height(features, self.collapse)
        seq = self.encoder(seq, lengths)
        return self.head(seq, lengths), lengths


def _build(registry: Registry, cfg: DictConfig, section: str, kind: str, expected: type, **kwargs: Any) -> Any:
    """Build one stage from its config section and check it is the right kind of module."""
    name = OmegaConf.select(cfg, f"{section}.name")
    component = registry.get(kind, name, key=f"{section}.name")
    options = component_config(registry, cfg, section)
    try:
        stage = component.factory(options, **kwargs)
    except Exception as exc:
        raise ModelError(f"{section}: {kind} '{name}' (plugin '{component.provider}') could not be built: {type(exc).__name__}: {exc}") from exc
    if not isinstance(stage, expected):
        raise ModelError(f"{section}: {kind} '{name}' (plugin '{component.provider}') returned {type(stage).__name__}, not a crnnfw.{expected.__name__}")
    return stage


def assemble(cfg: DictConfig, registry: Registry, *, channels: int, height: int, classes: tuple[str, ...]) -> Model:
    """The model a resolved config describes for images of ``channels`` x ``height`` and these classes.

    Needs no data, so a checkpoint's model can be rebuilt from its config and input spec alone.
    """
    collapse = cfg.model.collapse
    backbone = _build(registry, cfg, "model.backbone", "backbone", Backbone, in_channels=channels, in_height=height)
    out_height = backbone.out_height(height)
    if out_height < 1:
        raise ModelError(f"model.backbone: '{cfg.model.backbone.name}' shrinks images of height {height} to nothing; use less pooling or taller images")
    in_features = backbone.out_channels * (out_height if collapse == "flatten" else 1)
    encoder = _build(registry, cfg, "model.encoder", "encoder", SequenceEncoder, in_features=in_features)
    head = _build(registry, cfg, "model.head", "head", Head, in_features=encoder.out_features, classes=tuple(classes))
    return Model(backbone, encoder, head, collapse)


def build_model(cfg: DictConfig, data: DataModule, registry: Registry) -> Model:
    """The model a resolved config describes, sized for ``data`` and checked by :func:`check_model`."""
    model = assemble(cfg, registry, channels=data.channels, height=data.height, classes=data.classes)
    check_model(model, data, names=stage_names(cfg))
    return model


def stage_names(cfg: DictConfig) -> dict[str, str]:
    """Each stage's component name, so an error names the one that breaks."""
    return {s: OmegaConf.select(cfg, f"model.{s}.name") for s in STAGES}


def check_model(model: Model, data: DataModule, names: dict[str, str] | None = None) -> None:
    """Run a dummy batch through every stage at the data's widths; raise ModelError naming the stage that breaks."""
    names = names or {}
    widths_list = sorted({data.min_width, data.max_width, (data.min_width + data.max_width) // 2 + 1} - {0})
    widths_list = [w for w in widths_list if data.min_width <= w <= data.max_width] or [data.max_width]
    images, widths = pad_right([torch.rand(data.channels, data.height, w, generator=torch.Generator().manual_seed(i)) for i, w in enumerate(widths_list)])
    shape, device = tuple(images.shape), next(model.parameters()).device  # a loaded model may sit on a GPU
    images, widths = images.to(device), widths.to(device)

    def stage(kind: str) -> str:
        return f"{kind} '{names[kind]}'" if kind in names else kind

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            try:
                features, lengths = model.backbone(images, widths)
            except Exception as exc:
                raise ModelError(f"{stage('backbone')} fails on a {shape} batch of widths {widths_list}: {exc}") from exc
            expected_height = model.backbone.out_height(data.height)
            if features.dim() != 4 or features.shape[1] != model.backbone.out_channels or features.shape[2] != expected_height:
                raise ModelError(f"{stage('backbone')} returned features {tuple(features.shape)}; its declarations promise (N, {model.backbone.out_channels}, {expected_height}, W')")
            promised = model.backbone.out_lengths(widths)
            if not torch.equal(lengths.cpu(), promised.cpu()) or int(lengths.max()) > features.shape[3]:
                raise ModelError(
                    f"{stage('backbone')} returned lengths {lengths.tolist()} for widths {widths_list}; out_lengths() says {promised.tolist()} and the feature map is {features.shape[3]} wide"
                )
            if int(lengths.min()) < 1:
                raise ModelError(f"{stage('backbone')} leaves no sequence steps for images {data.min_width} px wide. Pool less along the width (model.backbone.pools) or use wider images")
            seq = collapse_height(features, model.collapse)
            try:
                encoded = model.encoder(seq, lengths)
            except Exception as exc:
                raise ModelError(f"{stage('encoder')} fails on a sequence {tuple(seq.shape)}: {exc}") from exc
            if tuple(encoded.shape) != (seq.shape[0], seq.shape[1], model.encoder.out_features):
                raise ModelError(f"{stage('encoder')} returned {tuple(encoded.shape)}; expected {(seq.shape[0], seq.shape[1], model.encoder.out_features)}")
            _check_label_lengths(model, data, stage)
            for split in SPLITS:
                _check_label_fit(model, getattr(data, split), split, stage)
            try:
                logits = model.head(encoded, lengths)
                model.head.decode(logits, lengths)
            except Exception as exc:
                raise ModelError(f"{stage('head')} fails on a sequence {tuple(encoded.shape)}: {exc}") from exc
            batch = next(iter(data.test.batches(2, shuffle=False))).to(device)
            try:
                logits, lengths = model(batch.images, batch.widths)
                model.head.loss(logits, lengths, batch)
            except Exception as exc:
                raise ModelError(
                    f"{stage('head')} cannot compute its loss on this dataset's batches ({first_line(exc)}); "
                    "pair a classification head (softmax) with class labels and a sequence head (ctc) with label sequences"
                ) from exc
    finally:
        model.train(was_training)


def _check_label_lengths(model: Model, data: DataModule, stage) -> None:
    """Every label must fit the steps the backbone leaves for its narrowest image."""
    failing = []
    for label_length, width in sorted((data.narrowest or {}).items()):
        steps = int(model.backbone.out_lengths(torch.tensor([width]))[0])
        need = model.head.min_steps(label_length)
        if steps < need:
            failing.append((label_length, width, steps, need))
    if failing:
        label_length, width, steps, need = failing[-1]
        also = f" (labels of {', '.join(str(f[0]) for f in failing[:-1])} characters do not fit either)" if len(failing) > 1 else ""
        plural = "s" if label_length != 1 else ""
        raise ModelError(
            f"labels of {label_length} character{plural} come in images as narrow as {width} px, which "
            f"{stage('backbone')} turns into {steps} steps; {stage('head')} needs at least {need}{also}. "
            "Pool less along the width (model.backbone.pools) or use wider images"
        )


@dataclass(frozen=True)
class Misfit:
    """A sample whose label needs more steps than the model leaves at its image's width."""

    place: str  # the split's ``places`` entry (``labels.txt:12``), else ``sample N``
    length: int
    width: int
    steps: int
    needs: int


def label_misfits(model: Model, split: Any) -> list[Misfit]:
    """Every in-memory sample (a split with ``widths``, ``targets`` and ``target_lengths``
    tensors) whose label does not fit the steps its own width gives; [] for other splits."""
    lengths = getattr(split, "target_lengths", None)
    widths, targets = getattr(split, "widths", None), getattr(split, "targets", None)
    if not all(isinstance(t, torch.Tensor) for t in (lengths, widths, targets)):
        return []
    widths, targets, lengths = widths.cpu(), targets.cpu(), lengths.cpu()
    steps = model.backbone.out_lengths(widths)
    need = model.head.steps_needed(targets, lengths)
    places = getattr(split, "places", None)
    return [Misfit(places[i] if places else f"sample {i}", int(lengths[i]), int(widths[i]), int(steps[i]), int(need[i])) for i in (steps < need).nonzero().squeeze(1).tolist()]


def _check_label_fit(model: Model, split: Any, name: str, stage) -> None:
    """Every in-memory sample's label must fit the steps its own image width gives (CTC needs a
    blank between repeated characters): a label the model cannot emit would train as an
    infinite or zeroed loss. Splits that compose samples on the fly are covered by
    :func:`_check_label_lengths`."""
    failing = label_misfits(model, split)
    if not failing:
        return
    shown = ", ".join(f"{m.place} ({m.length} characters, {m.width} px -> {m.steps} steps, needs {m.needs})" for m in failing[:3])
    raise ModelError(
        f"{len(failing)} {name} label{'s are' if len(failing) != 1 else ' is'} too long for {'their' if len(failing) != 1 else 'its'} image width: {stage('backbone')} gives fewer steps than "
        f"{stage('head')} needs, first at {shown}. Pool less along the width (model.backbone.pools), use wider images "
        "or shorter labels"
    )
