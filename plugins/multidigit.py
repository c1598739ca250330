"""The ``multidigit`` dataset: strings of MNIST digits in images whose width follows the content.

Training strings are composed afresh every epoch from the first 55,000 MNIST training digits;
the val split is composed once from the other 5,000 (the usual MNIST cut, so no digit image is
both trained and validated on) and the test split from the MNIST test digits, each with a
fixed seed, so both are the same on every machine.
Every split has the variety of real digit strings (see :class:`MultiDigitConfig`): digits of
different heights and widths within a line, spacing from overlapping to wide gaps, a sloping
and drifting baseline, thin and thick strokes, ink and paper levels, texture, blur and noise.
Composition is batched: two small matrix products per digit slot place that slot's digit in
every image of the batch at once.
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
#: A 28 px digit frame is scaled to at most this share of the image height, so a flat string
#: (a row of short digits) is not stretched into wide giants to fill its line height.
MAX_ZOOM = 1.6
CROP = 77  # a row with a pixel above this holds ink for predict's crop (0.3 of full scale)


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
    line_height_min: float = 0.55  # the string's ink spans this share of the image height ...
    line_height_max: float = 0.68  # ... up to this (predict frames a file's ink at the middle of the range)
    gap_min: int = -3  # px between neighbouring digits' ink in the image; negative values overlap them
    gap_max: int = 10
    cell_min: int = 6  # narrow digits (a '1') still advance at least this many px
    scale_min: float = 0.55  # per-digit height, relative to the tallest a string can have
    scale_max: float = 1.0
    aspect_min: float = 0.8  # per-digit width scale on top of the height scale
    aspect_max: float = 1.25
    align_spread: float = 1.0  # digits of different heights align anywhere from their tops (0) to their bottoms (1) over this range around the centre
    slope: float = 0.05  # baseline slope in [-slope, slope] px of rise per px along the string
    drift: float = 0.8  # baseline random walk: px (of a 28 px digit) per digit, standard deviation
    jitter: int = 2  # per-digit vertical offset in [-jitter, jitter] px of a 28 px digit
    margin_min: int = 2  # blank columns at each end, in [margin_min, margin_max] px
    margin_max: int = 8
    thickness: float = 0.6  # strokes thinned or thickened by up to this share of a 3 x 3 erosion / dilation
    ink_min: float = 0.6  # the ink's brightest level in [ink_min, 1]
    background_max: float = 0.25  # paper level in [0, background_max] (light ink on dark paper: predict turns files so)
    texture: float = 0.06  # amplitude of a smooth paper texture
    noise: float = 0.04  # pixel noise: standard deviation up to this
    blur: float = 0.3  # share of strings blurred (3 x 3 Gaussian)
    augment: crnnfw.AugmentConfig = field(  # per-digit warp of training strings (off: the variety above only)
        default_factory=lambda: crnnfw.AugmentConfig(enabled=False, degrees=8.0, translate=0.0, scale_min=1.0, scale_max=1.0, shear=8.0)
    )

    def __post_init__(self) -> None:
        problems = [
            (self.min_digits < 1 or self.max_digits < self.min_digits, "min_digits must be >= 1 and <= max_digits"),
            (self.height < 8, "height must be >= 8"),
            (not 0 < self.line_height_min <= self.line_height_max <= 1, "need 0 < line_height_min <= line_height_max <= 1"),
            (self.gap_max < self.gap_min, "gap_max must be >= gap_min"),
            (self.cell_min < 1 or self.cell_min + min(self.gap_min, 0) < 1, "cell_min must be >= 1 and cell_min + gap_min >= 1 (each digit advances)"),
            (not 0 < self.scale_min <= self.scale_max <= 1, "need 0 < scale_min <= scale_max <= 1"),
            (not 0 < self.aspect_min <= self.aspect_max, "need 0 < aspect_min <= aspect_max"),
            (min(self.train_size, self.val_size, self.test_size) < 1, "train_size, val_size and test_size must be >= 1"),
            (min(self.jitter, self.margin_min, self.slope, self.drift, self.align_spread) < 0, "jitter, margin_min, slope, drift and align_spread must be >= 0"),
            (self.margin_max < self.margin_min, "margin_max must be >= margin_min"),
            (not 0 <= self.thickness <= 1, "thickness must lie in [0, 1]"),
            (not 0 <= self.background_max < self.ink_min <= 1, "need 0 <= background_max < ink_min <= 1"),
            (min(self.texture, self.noise) < 0 or not 0 <= self.blur <= 1, "texture and noise must be >= 0, blur in [0, 1]"),
        ]
        for failed, message in problems:
            if failed:
                raise ValueError(message)

    @property
    def ink_height(self) -> float:
        """The share of the image height a string's ink fills, on average: how predict frames files."""
        return (self.line_height_min + self.line_height_max) / 2


@dataclass(frozen=True)
class DigitBank:
    """MNIST digits with the box their ink spans (columns above INK, rows above predict's crop level)."""

    images: Tensor  # (M, 28, 28) uint8
    labels: Tensor  # (M,) int64
    left: Tensor  # (M,) first ink column
    right: Tensor  # (M,) last ink column
    top: Tensor  # (M,) first ink row
    bottom: Tensor  # (M,) last ink row

    @classmethod
    def from_arrays(cls, images: Tensor, labels: Tensor) -> "DigitBank":
        left, right = _extent(images.amax(dim=1) > INK)
        top, bottom = _extent(images.amax(dim=2) > CROP)
        return cls(images, labels, left, right, top, bottom)


def _extent(ink: Tensor) -> tuple[Tensor, Tensor]:
    """First and last True index of each row of ``ink`` ``(M, 28)``."""
    return ink.float().argmax(dim=1), ink.shape[1] - 1 - ink.flip(1).float().argmax(dim=1)


def compose(
    bank: DigitBank,
    count: int,
    cfg: MultiDigitConfig,
    generator: torch.Generator | None,
    warp: crnnfw.BatchTransform | None = None,
    paper: bool = True,
) -> crnnfw.Batch:
    """``count`` new digit strings as a right-padded uint8 batch (with ``paper`` False: only
    their ink, to be put on paper later with :func:`on_paper`, batch by batch).

    Each string is laid out in a digit's own units (a 28 px MNIST frame), with per-digit height
    and width, alignment, slope, drift and jitter; then scaled so its ink spans the drawn line
    height, and framed as ``predict`` frames a file (its ink box centred, margins at the ends),
    so a file and a training string of the same digits look alike to the model. ``warp``
    (training augmentation) is applied to each slot's digits before they are placed.
    """
    k, g = cfg.max_digits, generator

    def uniform(low: float, high: float, shape) -> Tensor:
        return torch.rand(shape, generator=g) * (high - low) + low

    counts = torch.randint(cfg.min_digits, cfg.max_digits + 1, (count,), generator=g)
    valid = torch.arange(k).unsqueeze(0) < counts.unsqueeze(1)  # (count, k)
    index = torch.randint(0, len(bank.labels), (count, k), generator=g)

    # Vertical layout in digit units: each digit's frame top and height.
    sy = uniform(cfg.scale_min, cfg.scale_max, (count, k))
    sx = sy * uniform(cfg.aspect_min, cfg.aspect_max, (count, k))
    align = 0.5 + uniform(-cfg.align_spread / 2, cfg.align_spread / 2, (count, 1))  # 0: tops level, 1: bottoms level
    slope = uniform(-cfg.slope, cfg.slope, (count, 1))
    walk = (torch.randn(count, k, generator=g) * cfg.drift).cumsum(1)
    jitter = torch.randint(-cfg.jitter, cfg.jitter + 1, (count, k), generator=g).float()
    centre = torch.arange(k).float() * 20.0  # a digit's rough advance, for the slope
    top = 28 * (1 - sy) * align + slope * centre + walk + jitter
    ink_top = top + sy * bank.top[index].float()
    ink_bottom = top + sy * (bank.bottom[index].float() + 1)
    far = torch.tensor(1e9)
    y0 = torch.where(valid, ink_top, far).amin(1, keepdim=True)
    y1 = torch.where(valid, ink_bottom, -far).amax(1, keepdim=True)

    # Scaled to the drawn line height and centred: now in image pixels.
    box = uniform(cfg.line_height_min, cfg.line_height_max, (count, 1)) * cfg.height
    f = (box / (y1 - y0)).clamp(max=MAX_ZOOM * cfg.height / 28)
    sy, sx = sy * f, sx * f
    top = (top - y0) * f + (cfg.height - box) / 2

    # Horizontal layout in image pixels.
    ink = (bank.right[index] - bank.left[index] + 1).float() * sx
    advance = ink.clamp(min=cfg.cell_min) * valid
    gaps = torch.randint(cfg.gap_min, cfg.gap_max + 1, (count, k), generator=g).float()
    gaps[:, 0] = 0
    gaps = gaps * valid
    margins = torch.randint(cfg.margin_min, cfg.margin_max + 1, (count, 2), generator=g).float()
    cell_start = margins[:, :1] + advance.cumsum(1) - advance + gaps.cumsum(1)
    ink_start = cell_start + (advance - ink) / 2
    widths = (margins.sum(1) + advance.sum(1) + gaps.sum(1)).ceil().long()

    # Scaling and shifting are separable, so each slot's digit is resampled with two small
    # batched matrix products, rows (count, H, 28) @ digit (count, 28, 28) @ columns (count, 28, S),
    # over only the S columns its 28 px frame can reach (not the string's whole width: 4-5x
    # less work), then laid on the canvas with a per-string offset.
    width = int(widths.max())
    reach = sx.clamp(min=1.0)  # how far past its frame a source pixel's filter reaches, in image px
    span = math.ceil(30 * float(reach.max())) + 2  # 28 * sx + 2 * reach, and the flooring
    first = (ink_start - bank.left[index].float() * sx - reach).floor().long() - 1  # (count, k): each frame's first column
    columns = torch.arange(span)
    ys = torch.arange(cfg.height).float() + 0.5
    canvas = torch.zeros(count, cfg.height, span + width + span)  # a span of room at each side
    for slot in range(int(counts.max())):
        xs = (first[:, slot, None] + columns).float() + 0.5  # (count, S) image columns
        u = (xs - ink_start[:, slot, None]) / sx[:, slot, None] + bank.left[index[:, slot]].float().unsqueeze(1)  # source column
        v = (ys - top[:, slot, None]) / sy[:, slot, None]  # source row
        rows = _resampling_weights(v, sy[:, slot])  # (count, H, 28)
        cols = _resampling_weights(u, sx[:, slot]) * valid[:, slot, None, None]  # (count, S, 28)
        digits = bank.images[index[:, slot]].float()
        if warp is not None:
            digits = warp(digits.unsqueeze(1), generator).squeeze(1)
        at = (first[:, slot, None] + span + columns).view(count, 1, span).expand(count, cfg.height, span)
        canvas.scatter_reduce_(2, at, rows @ digits @ cols.transpose(1, 2), reduce="amax")
    images = canvas[..., span : span + width].unsqueeze(1).div_(255.0)
    if paper:
        images = on_paper(images, widths, cfg, g)
    targets = bank.labels[index] * valid
    return crnnfw.Batch(images.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8), widths, targets, counts)


def _resampling_weights(coords: Tensor, scale: Tensor) -> Tensor:
    """Weights ``(..., 28)`` of the 28 source pixels at ``coords`` (pixel units, edges at 0 and 28):
    bilinear, widened where the digit shrinks (``scale`` < 1, one per sample) so it is antialiased."""
    shrink = scale.clamp(max=1.0).view(-1, *([1] * (coords.dim() - 1)), 1)
    centres = torch.arange(28).float() + 0.5
    return (1 - (coords.unsqueeze(-1) - centres).abs() * shrink).clamp_(min=0) * shrink


def on_paper(ink: Tensor, widths: Tensor, cfg: MultiDigitConfig, g: torch.Generator | None) -> Tensor:
    """Strings ``(N, 1, H, W)`` of ink in [0, 1] as drawn on paper: stroke thickness, ink and
    paper levels, smooth texture, blur and noise, each drawn per string from its range; zero
    (padding) past each string's width."""
    n = ink.shape[0]

    def per_string(low: float, high: float) -> Tensor:
        return torch.rand(n, 1, 1, 1, generator=g) * (high - low) + low

    thick = per_string(-cfg.thickness, cfg.thickness)
    dilated = _across_3x3(ink, torch.maximum)
    eroded = -_across_3x3(-ink, torch.maximum)
    ink = torch.where(thick > 0, ink + thick * (dilated - ink), ink - thick * (eroded - ink))
    blurred = _across_3x3(ink, lambda a, b: a + b, centre=2.0) / 16
    ink = torch.where(torch.rand(n, 1, 1, 1, generator=g) < cfg.blur, blurred, ink)
    paper = per_string(0.0, cfg.background_max)
    level = per_string(cfg.ink_min, 1.0)
    h, w = ink.shape[-2:]
    coarse = torch.rand(n, 1, max(2, h // 8), max(2, w // 8), generator=g) * 2 - 1
    texture = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False) * per_string(0.0, cfg.texture)
    noise = torch.randn(ink.shape, generator=g) * per_string(0.0, cfg.noise)
    inside = torch.arange(w) < widths.view(-1, 1, 1, 1)
    return (paper + (level - paper) * ink + texture + noise).clamp_(0, 1).mul_(inside)


def _across_3x3(x: Tensor, combine, centre: float = 1.0) -> Tensor:
    """``combine`` over each pixel's 3 x 3 neighbourhood of ``(N, 1, H, W)`` (zeros outside), as
    two passes of shifted views: 3 x 3 max for dilation, and with ``+`` and ``centre=2`` the
    [1 2 1] x [1 2 1] Gaussian sum; several times faster on CPU than max_pool2d or conv2d here."""
    for dim in (3, 2):
        padded = F.pad(x, (1, 1, 0, 0) if dim == 3 else (0, 0, 1, 1))
        size = x.shape[dim]
        middle = padded.narrow(dim, 1, size)
        x = combine(combine(padded.narrow(dim, 0, size), middle * centre if centre != 1.0 else middle), padded.narrow(dim, 2, size))
    return x


def narrowest(cfg: MultiDigitConfig) -> dict[int, int]:
    """The narrowest image each string length can come in (every cell at its minimum)."""
    return {n: math.floor(2 * cfg.margin_min + n * cfg.cell_min + (n - 1) * min(cfg.gap_min, 0)) for n in range(cfg.min_digits, cfg.max_digits + 1)}


class ComposedSplit:
    """Training strings composed afresh every epoch.

    Strings are composed 16 batches at a time and grouped by width, so a batch holds strings
    of similar width and little of it is padding; the groups come out in random order, each
    put on paper as it goes out (so no effect is spent on another string's padding).
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
            pool = compose(self.bank, min(chunk, self.cfg.train_size - start), self.cfg, generator, self.warp, paper=False)
            groups = pool.widths.argsort().split(batch_size)
            for g in torch.randperm(len(groups), generator=generator).tolist():
                index = groups[g]
                widths = pool.widths[index]
                ink = pool.images[index, ..., : int(widths.max())].float().div_(255.0)
                yield crnnfw.Batch(on_paper(ink, widths, self.cfg, generator), widths, pool.targets[index], pool.target_lengths[index])


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
    cell_max = max(config.height * MAX_ZOOM * config.scale_max * config.aspect_max, config.cell_min)
    widest = math.ceil(2 * config.margin_max + config.max_digits * cell_max + (config.max_digits - 1) * config.gap_max)
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
        ink_height=config.ink_height,
    )
