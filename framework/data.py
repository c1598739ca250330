"""Datasets as in-memory tensors, sliced and augmented a whole batch at a time.

A dataset plugin returns a :class:`DataModule`. Its splits yield :class:`Batch` objects;
:class:`TensorSplit` covers data that fits in memory as uint8 images (the fast path: no
per-sample Python code), and any object with the same two methods may stand in its place
(for instance a split that composes new samples every epoch).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Protocol

import torch
from torch import Tensor


from .batch import Batch
from .errors import DataError

BatchTransform = Callable[[Tensor, torch.Generator], Tensor]


class Split(Protocol):
    """What the trainer needs of a split.

    A split may also have ``epoch_report() -> str | None``: what went wrong while it produced
    the last epoch's batches (samples it had to leave out), which the trainer logs and keeps in
    the summary's ``data_notes``.
    """

    def __len__(self) -> int: ...

    def batches(self, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None) -> Iterator[Batch]:
        """Yield batches covering the split once (the last one may be smaller)."""
        ...


def apply_transform(transform: BatchTransform, batch: Batch, generator: torch.Generator | None) -> Tensor:
    """``transform`` on the batch's images; one that declares ``uses_widths`` also gets each
    sample's width, so it can keep the padding background."""
    if getattr(transform, "uses_widths", False):
        return transform(batch.images, generator, widths=batch.widths)
    return transform(batch.images, generator)


def on_device(split: Split, device: torch.device) -> Split:
    """The split with its data moved to ``device`` once, when it knows how (``split.to``); a
    split without that method (one that composes samples on the fly) is left on the host and
    its batches are copied one at a time."""
    to = getattr(split, "to", None)
    return to(device) if callable(to) else split


@dataclass
class DataModule:
    """A dataset: its splits, its vocabulary and the image geometry (height, width range) the model is built for.

    ``val`` picks the best checkpoint and drives every early decision; ``test`` is only reported.
    A dataset without its own ``val`` gets one held out of ``train`` by the engine
    (``trainer.val_fraction``, seeded), when ``train`` can be subset (a :class:`TensorSplit`).
    """

    train: Split
    test: Split
    classes: tuple[str, ...]
    channels: int
    height: int
    min_width: int
    max_width: int
    #: For sequence labels of splits not held in memory (composed afresh each epoch): label
    #: length -> the narrowest image width it comes with. In-memory splits are checked sample by sample.
    narrowest: dict[int, int] | None = None
    #: ``light-on-dark`` (bright ink on a dark background, like MNIST) or ``dark-on-light`` (scans);
    #: prediction turns users' images this way round.
    polarity: str = "light-on-dark"
    #: Share of the image height the ink fills (MNIST: 20/28, digits size-normalised in a
    #: 28-pixel frame); prediction frames users' images the same way. None: images fill the height.
    ink_height: float | None = None
    #: The validation split; None: held out of ``train`` when the data is built.
    val: Split | None = None
    #: What becomes of an image wider than ``max_width`` at the model's height: ``keep`` it
    #: (a model that reads any width), or ``squeeze`` it to ``max_width``.
    too_wide: str = "keep"
    #: What reading the data changed, counted (samples dropped, characters skipped ...): logged
    #: with the run and kept in its summary, so nothing is left out silently.
    notes: list[str] = field(default_factory=list)


SPLITS = ("train", "val", "test")


POLARITIES = ("light-on-dark", "dark-on-light")
TOO_WIDE = ("keep", "squeeze")


@dataclass(frozen=True)
class InputSpec:
    """What a trained model expects of an image: saved in checkpoints and exported models."""

    channels: int
    height: int
    min_width: int
    max_width: int
    polarity: str
    ink_height: float | None
    too_wide: str = "keep"  # ``squeeze``: images wider than max_width are narrowed to it

    @property
    def background(self) -> float:
        """The pixel value of empty space (and of padding) in the model's polarity."""
        return 0.0 if self.polarity == "light-on-dark" else 1.0

    @classmethod
    def of(cls, data: DataModule) -> "InputSpec":
        return cls(data.channels, data.height, data.min_width, data.max_width, data.polarity, data.ink_height, data.too_wide)


class TensorSplit:
    """A split held as uint8 images ``(N, C, H, W)`` (right-padded), widths and targets.

    ``transform`` (training augmentation) receives each float batch in ``[0, 1]`` and the
    split's random generator.
    """

    def __init__(
        self,
        images: Tensor,
        targets: Tensor,
        *,
        widths: Tensor | None = None,
        target_lengths: Tensor | None = None,
        transform: BatchTransform | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise DataError(f"TensorSplit expects uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if len(images) == 0:
            raise DataError("the dataset split is empty")
        if len(targets) != len(images):
            raise DataError(f"{len(images)} images but {len(targets)} targets")
        self.images = images
        self.targets = targets
        self.widths = widths if widths is not None else torch.full((len(images),), images.shape[-1], dtype=torch.long)
        self.target_lengths = target_lengths
        self.transform = transform
        self.varied_widths = bool((self.widths != self.widths[0]).any())

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: Tensor) -> "TensorSplit":
        """The samples at ``index`` (a long tensor), with the same transform."""
        lengths = self.target_lengths[index] if self.target_lengths is not None else None
        return TensorSplit(self.images[index], self.targets[index], widths=self.widths[index], target_lengths=lengths, transform=self.transform)

    def to(self, device: torch.device | str) -> "TensorSplit":
        """The same split held on ``device`` (a GPU: batches are then cut and augmented there)."""
        lengths = self.target_lengths.to(device) if self.target_lengths is not None else None
        return TensorSplit(self.images.to(device), self.targets.to(device), widths=self.widths.to(device), target_lengths=lengths, transform=self.transform)

    def batches(self, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None) -> Iterator[Batch]:
        """Random batches when ``shuffle``; otherwise in order of width (stable: images of equal
        width keep their stored order), so evaluation batches carry little padding."""
        n = len(self.images)
        if shuffle:
            order = torch.randperm(n, generator=generator).to(self.images.device)
        else:
            order = self.widths.argsort(stable=True) if self.varied_widths else None
        # Equal widths and class targets: nothing to cut, so no size is read back per batch.
        crop = self.varied_widths or self.target_lengths is not None
        whole = Batch(self.images, self.widths, self.targets, self.target_lengths)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size] if order is not None else slice(start, start + batch_size)
            raw = whole.select(idx, crop=crop)  # uint8, padding cut
            batch = replace(raw, images=raw.images.float().div_(255.0))
            yield replace(batch, images=apply_transform(self.transform, batch, generator)) if self.transform is not None else batch


def encode_labels(texts: list[str], classes: str | tuple[str, ...]) -> tuple[Tensor, Tensor]:
    """Label texts as class ids right-padded to the longest ``(N, L)``, and their lengths ``(N,)``."""
    index = {c: i for i, c in enumerate(classes)}
    lengths = torch.tensor([len(t) for t in texts], dtype=torch.long)
    targets = torch.zeros(len(texts), int(lengths.max()) if len(texts) else 0, dtype=torch.long)
    for row, text in enumerate(texts):
        targets[row, : len(text)] = torch.tensor([index[c] for c in text], dtype=torch.long)
    return targets, lengths


class PackedSplit:
    """Images of many widths held side by side in one uint8 tensor ``(C, H, total width)``,
    with each sample's offset and width, and label sequences: in-memory data whose widths vary
    widely (text lines) without padding every image to the widest.

    Batches are cut with one gather, never a loop over samples. Shuffled batches group images
    of similar width (sorted within random chunks of 16 batches, the groups in random order),
    so little of a batch is padding; unshuffled ones run narrowest first. ``places`` (optional)
    names each sample's origin, e.g. ``labels.txt:12``, for messages.
    """

    chunk_batches = 16

    def __init__(self, pixels: Tensor, offsets: Tensor, widths: Tensor, targets: Tensor, target_lengths: Tensor, *, transform: BatchTransform | None = None, places: list[str] | None = None) -> None:
        if pixels.dtype != torch.uint8 or pixels.dim() != 3:
            raise DataError(f"PackedSplit expects uint8 pixels (C, H, total width), got {pixels.dtype} {tuple(pixels.shape)}")
        if len(widths) == 0:
            raise DataError("the dataset split is empty")
        self.pixels, self.offsets, self.widths = pixels, offsets, widths
        self.targets, self.target_lengths = targets, target_lengths
        self.transform = transform
        self.places = places

    @classmethod
    def from_images(cls, images: list[Tensor], texts: list[str], classes: str | tuple[str, ...], *, transform: BatchTransform | None = None, places: list[str] | None = None) -> "PackedSplit":
        """A split of uint8 ``(C, H, W_i)`` images and their label texts over ``classes``."""
        widths = torch.tensor([image.shape[-1] for image in images], dtype=torch.long)
        targets, lengths = encode_labels(texts, classes)
        return cls(torch.cat(images, dim=-1), widths.cumsum(0) - widths, widths, targets, lengths, transform=transform, places=places)

    def __len__(self) -> int:
        return len(self.widths)

    def subset(self, index: Tensor) -> "PackedSplit":
        """The samples at ``index`` (sharing the pixels)."""
        places = [self.places[i] for i in index.tolist()] if self.places is not None else None
        return PackedSplit(self.pixels, self.offsets[index], self.widths[index], self.targets[index], self.target_lengths[index], transform=self.transform, places=places)

    def to(self, device: torch.device | str) -> "PackedSplit":
        """The same split held on ``device``."""
        return PackedSplit(
            self.pixels.to(device), self.offsets.to(device), self.widths.to(device), self.targets.to(device), self.target_lengths.to(device), transform=self.transform, places=self.places
        )

    def batch(self, index: Tensor) -> Batch:
        """The samples at ``index`` as a float batch right-padded with zeros (the background)."""
        widths = self.widths[index]
        width = int(widths.max())
        steps = torch.arange(width, device=widths.device)
        valid = steps < widths[:, None]  # (B, W)
        columns = torch.where(valid, self.offsets[index, None] + steps, 0)
        images = self.pixels[:, :, columns].permute(2, 0, 1, 3)  # (B, C, H, W)
        images = images.float().mul_(valid[:, None, None].float().div_(255.0))
        lengths = self.target_lengths[index]
        return Batch(images, widths, self.targets[index, : int(lengths.max())], lengths)

    def batches(self, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None) -> Iterator[Batch]:
        if shuffle:
            order = torch.randperm(len(self), generator=generator).to(self.widths.device)
            chunk = batch_size * self.chunk_batches
            groups = []
            for start in range(0, len(order), chunk):
                part = order[start : start + chunk]
                groups += list(part[self.widths[part].argsort(stable=True)].split(batch_size))
            ordered = [groups[g] for g in torch.randperm(len(groups), generator=generator).tolist()]
        else:
            ordered = list(self.widths.argsort(stable=True).split(batch_size))
        for index in ordered:
            batch = self.batch(index)
            if self.transform is not None:
                batch = replace(batch, images=apply_transform(self.transform, batch, generator))
            yield batch


#: The seed of the engine's held-out val split: fixed, so runs with different seeds (and a
#: fine-tuning run after its parent) validate on the same samples and never train on them.
VAL_SEED = 0


def held_out(count: int, fraction: float, seed: int = VAL_SEED) -> Tensor:
    """Boolean ``(count,)``: which samples a seeded ``fraction`` holds out for validation.

    Drawn with torch's CPU generator from ``seed`` alone, so every machine holds out the same
    samples; at least one sample is held out and one kept.
    """
    chosen = max(1, min(count - 1, round(count * fraction)))
    mask = torch.zeros(count, dtype=torch.bool)
    mask[torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:chosen]] = True
    return mask
