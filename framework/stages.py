"""The three stage interfaces every model is assembled from, and what they hand each other.

Lengths flow through every stage: a backbone turns per-sample image widths into per-sample
sequence lengths, the encoder and head ignore steps past each sample's length. A sample's
result is therefore the same alone or inside a batch padded to a wider image.
"""

from __future__ import annotations

import contextlib
import json
from abc import ABC, abstractmethod
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from .batch import Batch


def length_mask(lengths: Tensor, size: int) -> Tensor:
    """Boolean ``(N, size)`` mask, True at steps before each sample's length."""
    return torch.arange(size, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


_UNPADDED: ContextVar[bool] = ContextVar("crnnfw_unpadded", default=False)


@contextlib.contextmanager
def unpadded() -> Iterator[None]:
    """Promise that every image in the batches run inside fills its batch's width (batch 1, or
    equal widths), so padding masks are left out: ``crnnfw export --unpadded`` traces under it,
    for a smaller and faster graph."""
    token = _UNPADDED.set(True)
    try:
        yield
    finally:
        _UNPADDED.reset(token)


def masks_needed(lengths: Tensor, size: int) -> bool:
    """Whether a stage must mask padding: whether some sample is shorter than ``size``, the
    width (or number of steps) its batch was padded to.

    Never inside :func:`unpadded`. Always while tracing or compiling, since the graph must serve
    any later batch, and on a GPU, where asking costs a device sync and masking is cheaper.
    Otherwise only when a sample is short (never for MNIST), so unpadded batches skip the work.
    """
    if _UNPADDED.get():
        return False
    if lengths.device.type != "cpu" or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return True
    return bool((lengths < size).any())


def mask_padding(features: Tensor, lengths: Tensor) -> Tensor:
    """Zero the columns of ``(N, C, H, W)`` features at or past each sample's length.

    Call it before a convolution that reads across the width, so a sample padded inside a
    wide batch sees the same zeros at its edge as one processed alone. Inside
    :func:`unpadded` there is no padding to zero, and the features come back as they are.
    """
    if _UNPADDED.get():
        return features
    # One broadcast comparison: (W,) against (N, 1, 1, 1) gives the (N, 1, 1, W) mask directly.
    columns = torch.arange(features.shape[-1], device=lengths.device)
    return features * (columns < lengths.reshape(-1, 1, 1, 1)).to(features.dtype)


class Backbone(nn.Module, ABC):
    """Images ``(N, C, H, W)`` with widths ``(N,)`` to features ``(N, D, H', W')`` with lengths.

    Subclasses set ``out_channels`` and implement ``out_height`` and ``out_lengths`` so the
    engine computes sizes instead of guessing them; ``forward`` must return exactly
    ``out_lengths(widths)`` as the lengths.
    """

    out_channels: int

    @abstractmethod
    def out_height(self, in_height: int) -> int:
        """Height of the feature map for an input of ``in_height`` rows."""

    @abstractmethod
    def out_lengths(self, widths: Tensor) -> Tensor:
        """Feature-map width (sequence length) for each input width."""

    @abstractmethod
    def forward(self, images: Tensor, widths: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(features, lengths)``."""


class SequenceEncoder(nn.Module, ABC):
    """A sequence ``(N, T, in_features)`` to ``(N, T, out_features)``, padding-aware."""

    out_features: int

    @abstractmethod
    def forward(self, seq: Tensor, lengths: Tensor) -> Tensor:
        """Encode; steps at or past ``lengths`` must not affect the steps before them."""


@dataclass
class Decoded:
    """What a head's ``decode`` returns: one text and confidence per sample.

    ``indices`` carries class ids for classification heads (None for sequence heads) so
    metrics can be computed without going through strings.
    """

    texts: list[str]
    confidences: Tensor
    indices: Tensor | None = None


class Metrics(ABC):
    """Accumulates evaluation results batch by batch; ``compute`` returns named figures."""

    #: The figure used to pick the best checkpoint.
    main: str
    #: Whether a larger ``main`` is better.
    higher_is_better: bool = True
    #: The figures shown in the epoch table (None: all); every figure is saved regardless.
    table: tuple[str, ...] | None = None

    @abstractmethod
    def update(self, decoded: Decoded, batch: Batch) -> None:
        """Add one batch of predictions and their targets."""

    @abstractmethod
    def compute(self) -> dict[str, float | int]:
        """The figures over everything added so far (must include ``main``)."""

    def breakdown(self, scores: dict[str, float | int]) -> str:
        """An optional line printed under the epoch's table row (e.g. accuracy per length)."""
        return ""

    def report(self) -> dict[str, list[dict[str, Any]]]:
        """Named tables ``crnnfw eval`` prints and saves (e.g. per class, per length): each a
        list of rows sharing their keys. Optional."""
        return {}

    def confusion(self) -> list[list[int]] | None:
        """Classification only: ``counts[truth][prediction]`` over everything added, drawn as
        ``confusion.png``. Optional."""
        return None


class Head(nn.Module, ABC):
    """Owns the task: logits from the sequence, the loss, decoding and metrics."""

    classes: tuple[str, ...]

    @abstractmethod
    def forward(self, seq: Tensor, lengths: Tensor) -> Tensor:
        """Logits from the encoded sequence."""

    @abstractmethod
    def loss(self, logits: Tensor, lengths: Tensor, batch: Batch) -> Tensor:
        """A scalar training loss for the batch's targets."""

    @abstractmethod
    def decode(self, logits: Tensor, lengths: Tensor) -> Decoded:
        """Predictions with confidences."""

    @abstractmethod
    def metrics(self) -> Metrics:
        """A fresh metrics accumulator for this task."""

    def decode_beam(self, logits: Tensor, lengths: Tensor, beam_width: int) -> Decoded:
        """Beam-search decoding (``crnnfw predict --beam N``) where the task has one; by default
        the same as :meth:`decode`, which is exact for one label per image."""
        return self.decode(logits, lengths)

    def export_metadata(self) -> dict[str, str]:
        """How to decode the logits without crnnfw: stored in exported models' metadata.

        The default describes one class per image: ``argmax`` over ``(N, classes)`` logits.
        """
        return {"decoder": "argmax", "classes": json.dumps(list(self.classes))}

    def min_steps(self, label_length: int) -> int:
        """The most sequence steps a label of ``label_length`` symbols can need from this head.

        The engine checks it against the narrowest images of data it cannot see sample by
        sample (strings composed afresh each epoch), before training.
        """
        return 1

    def steps_needed(self, targets: Tensor, lengths: Tensor) -> Tensor:
        """The fewest sequence steps each label needs: ``(N,)`` for padded ``targets`` ``(N, L)``
        with ``lengths``. The engine checks every in-memory sample with it before training.

        The default is :meth:`min_steps` of each label's length; a head whose need depends on
        the label itself (CTC: a blank between repeated characters) overrides it.
        """
        table = {n: self.min_steps(n) for n in lengths.unique().tolist()}
        return torch.tensor([table[n] for n in lengths.tolist()], dtype=torch.long)
