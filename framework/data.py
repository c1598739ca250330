"""Datasets as in-memory tensors, sliced and augmented a whole batch at a time.

A dataset plugin returns a :class:`DataModule`. Its splits yield :class:`Batch` objects;
:class:`TensorSplit` covers data that fits in memory as uint8 images (the fast path: no
per-sample Python code), and any object with the same two methods may stand in its place
(for instance a split that composes new samples every epoch).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Iterator, Protocol

import torch
from torch import Tensor

from omegaconf import DictConfig

from .batch import Batch
from .config import component_config
from .errors import CrnnfwError, DataError, first_line
from .registry import Registry

BatchTransform = Callable[[Tensor, torch.Generator], Tensor]


class Split(Protocol):
    """What the trainer needs of a split."""

    def __len__(self) -> int: ...

    def batches(self, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None) -> Iterator[Batch]:
        """Yield batches covering the split once (the last one may be smaller)."""
        ...


def on_device(split: Split, device: torch.device) -> Split:
    """The split with its data moved to ``device`` once, when it knows how (``split.to``); a
    split without that method (one that composes samples on the fly) is left on the host and
    its batches are copied one at a time."""
    to = getattr(split, "to", None)
    return to(device) if callable(to) else split


@dataclass
class DataModule:
    """A dataset: its splits, its vocabulary and the image geometry (height, width range) the model is built for."""

    train: Split
    test: Split
    classes: tuple[str, ...]
    channels: int
    height: int
    min_width: int
    max_width: int
    #: For sequence labels: label length -> the narrowest image width it comes with.
    narrowest: dict[int, int] | None = None
    #: ``light-on-dark`` (bright ink on a dark background, like MNIST) or ``dark-on-light`` (scans);
    #: prediction turns users' images this way round.
    polarity: str = "light-on-dark"
    #: Share of the image height the ink fills (MNIST: 20/28, digits size-normalised in a
    #: 28-pixel frame); prediction frames users' images the same way. None: images fill the height.
    ink_height: float | None = None


POLARITIES = ("light-on-dark", "dark-on-light")


@dataclass(frozen=True)
class InputSpec:
    """What a trained model expects of an image: saved in checkpoints and exported models."""

    channels: int
    height: int
    min_width: int
    max_width: int
    polarity: str
    ink_height: float | None

    @property
    def background(self) -> float:
        """The pixel value of empty space (and of padding) in the model's polarity."""
        return 0.0 if self.polarity == "light-on-dark" else 1.0

    @classmethod
    def of(cls, data: DataModule) -> "InputSpec":
        return cls(data.channels, data.height, data.min_width, data.max_width, data.polarity, data.ink_height)


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

    def to(self, device: torch.device | str) -> "TensorSplit":
        """The same split held on ``device`` (a GPU: batches are then cut and augmented there)."""
        lengths = self.target_lengths.to(device) if self.target_lengths is not None else None
        return TensorSplit(self.images.to(device), self.targets.to(device), widths=self.widths.to(device),
                           target_lengths=lengths, transform=self.transform)

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
            images = raw.images.float().div_(255.0)
            if self.transform is not None:
                images = self.transform(images, generator)
            yield replace(raw, images=images)


def build_data(cfg: DictConfig, registry: Registry) -> DataModule:
    """The dataset a resolved config names, checked to be usable."""
    component = registry.get("dataset", cfg.data.name, key="data.name")
    options = component_config(registry, cfg, "data")
    try:
        data = component.factory(options)
    except CrnnfwError:
        raise
    except Exception as exc:
        raise DataError(
            f"data: dataset '{cfg.data.name}' (plugin '{component.provider}') could not be built: "
            f"{type(exc).__name__}: {first_line(exc)}"
        ) from exc
    if not isinstance(data, DataModule):
        raise DataError(
            f"data: dataset '{cfg.data.name}' (plugin '{component.provider}') returned "
            f"{type(data).__name__}, not a crnnfw.DataModule"
        )
    if data.polarity not in POLARITIES:
        raise DataError(f"data: dataset '{cfg.data.name}' declares polarity '{data.polarity}'; use one of {', '.join(POLARITIES)}")
    for split in ("train", "test"):
        if len(getattr(data, split)) == 0:
            raise DataError(f"data: dataset '{cfg.data.name}' has an empty {split} split; check data.root and the limits")
    return data
