"""The ``multidigit`` dataset: strings of MNIST digits in images whose width follows the content.

Training strings are composed afresh every epoch from the first 55,000 MNIST training digits;
the val split is composed once from the other 5,000 (the usual MNIST cut, so no digit image is
both trained and validated on) and the test split from the MNIST test digits, each with a
fixed seed, so both are the same on every machine.
Composition is batched: one ``grid_sample`` per digit slot places that slot's digit, with its
own scale, spacing and vertical jitter, in every image of the batch at once.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

import crnnfw

from .mnist import CLASSES, load_mnist

INK = 32  # a column with a pixel above this is part of a digit's ink


@dataclass
class MultiDigitConfig:
    root: Optional[str] = None  # MNIST IDX folder (as for the mnist dataset); unset: the offline copy
    min_digits: int = 1
    max_digits: int = 8
    height: int = 32  # image height in px; width follows the content
    train_size: int = 60000  # strings composed afresh every epoch
    val_size: int = 2000  # strings composed once from the held-out training digits
    test_size: int = 10000
    val_seed: int = 4321  # fixes the val split
    test_seed: int = 1234  # fixes the test split
    gap_min: int = -3  # px between neighbouring digits' ink; negative values overlap them
    gap_max: int = 12
    cell_min: int = 12  # narrow digits (a '1') still advance at least this many px
    scale_min: float = 0.85  # per-digit scale of the 28 px MNIST digit
    scale_max: float = 1.1
    jitter: int = 2  # vertical offset in [-jitter, jitter] px
    margin: int = 4  # blank columns at each end
    augment: crnnfw.AugmentConfig = field(  # per-digit warp of training strings (off: only scale, spacing, jitter)
        default_factory=lambda: crnnfw.AugmentConfig(enabled=False, degrees=8.0, translate=0.0, scale_min=1.0, scale_max=1.0, shear=8.0)
    )

    def __post_init__(self) -> None:
        problems = [
            (self.min_digits < 1 or self.max_digits < self.min_digits, "min_digits must be >= 1 and <= max_digits"),
            (self.height < 8, "height must be >= 8"),
            (self.gap_max < self.gap_min, "gap_max must be >= gap_min"),
            (self.cell_min < 1, "cell_min must be >= 1"),
            (not 0 < self.scale_min <= self.scale_max, "need 0 < scale_min <= scale_max"),
            (min(self.train_size, self.val_size, self.test_size) < 1, "train_size, val_size and test_size must be >= 1"),
            (self.jitter < 0 or self.margin < 0, "jitter and margin must be >= 0"),
        ]
        for failed, message in problems:
            if failed:
                raise ValueError(message)


@dataclass(frozen=True)
class DigitBank:
    """MNIST digits with the columns their ink spans."""

    images: Tensor  # (M, 28, 28) uint8
    labels: Tensor  # (M,) int64
    left: Tensor  # (M,) first ink column
    right: Tensor  # (M,) last ink column

    @classmethod
    def from_arrays(cls, images: Tensor, labels: Tensor) -> "DigitBank":
        ink = images.amax(dim=1) > INK  # (M, 28) columns holding ink
        left = ink.float().argmax(dim=1)
        right = 27 - ink.flip(1).float().argmax(dim=1)
        return cls(images, labels, left, right)


def compose(
    bank: DigitBank,
    count: int,
    cfg: MultiDigitConfig,
    generator: torch.Generator | None,
    warp: crnnfw.BatchTransform | None = None,
) -> crnnfw.Batch:
    """``count`` new digit strings as a right-padded uint8 batch (images still uint8).

    ``warp`` (training augmentation) is applied to each slot's digits before they are placed.
    """
    k = cfg.max_digits
    g = generator

    def uniform(low: float, high: float, shape) -> Tensor:
        return torch.rand(shape, generator=g) * (high - low) + low

    counts = torch.randint(cfg.min_digits, cfg.max_digits + 1, (count,), generator=g)
    valid = torch.arange(k).unsqueeze(0) < counts.unsqueeze(1)  # (count, k)
    index = torch.randint(0, len(bank.labels), (count, k), generator=g)
    scale = uniform(cfg.scale_min, cfg.scale_max, (count, k))
    ink = (bank.right[index] - bank.left[index] + 1).float() * scale
    advance = ink.clamp(min=cfg.cell_min) * valid
    gaps = torch.randint(cfg.gap_min, cfg.gap_max + 1, (count, k), generator=g).float()
    gaps[:, 0] = 0
    gaps = gaps * valid
    cell_start = cfg.margin + advance.cumsum(1) - advance + gaps.cumsum(1)
    ink_start = cell_start + (advance - ink) / 2
    widths = (2 * cfg.margin + advance.sum(1) + gaps.sum(1)).ceil().long()
    top = (cfg.height - 28 * scale) / 2 + torch.randint(-cfg.jitter, cfg.jitter + 1, (count, k), generator=g)

    # Scaling and shifting are separable, so each slot's digit is resampled with two small
    # batched matrix products: rows (count, H, 28) @ digit (count, 28, 28) @ columns (count, 28, W).
    width = int(widths.max())
    xs = torch.arange(width).float() + 0.5
    ys = torch.arange(cfg.height).float() + 0.5
    canvas = torch.zeros(count, cfg.height, width)
    for slot in range(int(counts.max())):
        s = scale[:, slot, None]
        u = (xs - ink_start[:, slot, None]) / s + bank.left[index[:, slot]].float().unsqueeze(1)  # source column
        v = (ys - top[:, slot, None]) / s  # source row
        rows = _bilinear_weights(v)  # (count, H, 28)
        cols = _bilinear_weights(u) * valid[:, slot, None, None]  # (count, W, 28)
        digits = bank.images[index[:, slot]].float()
        if warp is not None:
            digits = warp(digits.unsqueeze(1), generator).squeeze(1)
        canvas = torch.maximum(canvas, rows @ digits @ cols.transpose(1, 2))
    canvas = canvas.unsqueeze(1)
    targets = bank.labels[index] * valid
    return crnnfw.Batch(canvas.round_().clamp_(0, 255).to(torch.uint8), widths, targets, counts)


def _bilinear_weights(coords: Tensor) -> Tensor:
    """Weights ``(..., 28)`` of the 28 source pixels for bilinear sampling at ``coords`` (pixel units, edges at 0 and 28)."""
    centres = torch.arange(28).float() + 0.5
    return (1 - (coords.unsqueeze(-1) - centres).abs()).clamp_(min=0)


def narrowest(cfg: MultiDigitConfig) -> dict[int, int]:
    """The narrowest image each string length can come in (every cell at its minimum)."""
    return {
        n: math.floor(2 * cfg.margin + n * cfg.cell_min + (n - 1) * min(cfg.gap_min, 0))
        for n in range(cfg.min_digits, cfg.max_digits + 1)
    }


class ComposedSplit:
    """Training strings composed afresh every epoch.

    Strings are composed 16 batches at a time and grouped by width, so a batch holds strings
    of similar width and little of it is padding; the groups come out in random order.
    """

    chunk_batches = 16

    def __init__(self, bank: DigitBank, cfg: MultiDigitConfig) -> None:
        self.bank = bank
        self.cfg = cfg
        self.warp = crnnfw.RandomAffine(cfg.augment) if cfg.augment.enabled else None

    def __len__(self) -> int:
        return self.cfg.train_size

    def batches(self, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None) -> Iterator[crnnfw.Batch]:
        chunk = batch_size * self.chunk_batches
        for start in range(0, self.cfg.train_size, chunk):
            pool = compose(self.bank, min(chunk, self.cfg.train_size - start), self.cfg, generator, self.warp)
            groups = pool.widths.argsort().split(batch_size)
            for g in torch.randperm(len(groups), generator=generator).tolist():
                index = groups[g]
                widths = pool.widths[index]
                images = pool.images[index, ..., : int(widths.max())].float().div_(255.0)
                yield crnnfw.Batch(images, widths, pool.targets[index], pool.target_lengths[index])


#: The last this many MNIST training digits compose the val split, never a training string.
VAL_DIGITS = 5000


def _digits(root: Optional[str], split: str) -> DigitBank:
    """The digits each split composes from: train and val divide MNIST's training set."""
    arrays = load_mnist(root)
    if split == "test":
        return DigitBank.from_arrays(arrays["test_images"], arrays["test_labels"])
    part = slice(-VAL_DIGITS, None) if split == "val" else slice(0, -VAL_DIGITS)
    return DigitBank.from_arrays(arrays["train_images"][part], arrays["train_labels"][part])


@functools.lru_cache(maxsize=8)
def _fixed_split(root: Optional[str], frozen: tuple, split: str) -> crnnfw.TensorSplit:
    """The val or test split: composed once, from its own digits and seed."""
    cfg = MultiDigitConfig(**dict(frozen))
    bank = _digits(root, split)
    size, seed = (cfg.val_size, cfg.val_seed) if split == "val" else (cfg.test_size, cfg.test_seed)
    generator = torch.Generator().manual_seed(seed)
    parts = [compose(bank, min(1000, size - start), cfg, generator) for start in range(0, size, 1000)]
    width = max(p.images.shape[-1] for p in parts)
    images = torch.cat([F.pad(p.images, (0, width - p.images.shape[-1])) for p in parts])
    return crnnfw.TensorSplit(
        images,
        torch.cat([p.targets for p in parts]),
        widths=torch.cat([p.widths for p in parts]),
        target_lengths=torch.cat([p.target_lengths for p in parts]),
    )


def multidigit_data(config: MultiDigitConfig) -> crnnfw.DataModule:
    """The ``multidigit`` dataset factory."""
    frozen = tuple(sorted((k, v) for k, v in asdict(config).items() if k not in ("root", "train_size", "augment")))
    limits = narrowest(config)
    cell_max = max(28 * config.scale_max, config.cell_min)
    widest = math.ceil(2 * config.margin + config.max_digits * cell_max + (config.max_digits - 1) * config.gap_max)
    return crnnfw.DataModule(
        train=ComposedSplit(_digits(config.root, "train"), config),
        val=_fixed_split(config.root, frozen, "val"),
        test=_fixed_split(config.root, frozen, "test"),
        classes=CLASSES,
        channels=1,
        height=config.height,
        min_width=min(limits.values()),
        max_width=widest,
        narrowest=limits,
        ink_height=20 * (config.scale_min + config.scale_max) / 2 / config.height,  # MNIST's 20 px ink, scaled
    )
