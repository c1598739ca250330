"""Batched image augmentation: one affine warp per sample, computed for the whole batch."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class AugmentConfig:
    """Random affine augmentation applied to training batches (off by default)."""

    enabled: bool = False
    degrees: float = 10.0  # rotation in [-degrees, degrees]
    translate: float = 0.1  # shift up to this fraction of height/width
    scale_min: float = 0.9
    scale_max: float = 1.1
    shear: float = 0.0  # shear angle in [-shear, shear] degrees

    def __post_init__(self) -> None:
        if self.degrees < 0 or self.shear < 0:
            raise ValueError("augment.degrees and augment.shear must be >= 0")
        if not 0 <= self.translate < 1:
            raise ValueError(f"augment.translate must be in [0, 1), got {self.translate}")
        if not 0 < self.scale_min <= self.scale_max:
            raise ValueError(f"augment: need 0 < scale_min <= scale_max, got {self.scale_min} and {self.scale_max}")


class RandomAffine:
    """Warps each image of a float batch ``(N, C, H, W)`` by its own random affine map."""

    def __init__(self, config: AugmentConfig) -> None:
        self.config = config

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        cfg = self.config
        n = images.shape[0]

        def uniform(low: float, high: float) -> Tensor:
            return torch.rand(n, generator=generator) * (high - low) + low

        angle = uniform(-cfg.degrees, cfg.degrees) * (math.pi / 180)
        shear = uniform(-cfg.shear, cfg.shear) * (math.pi / 180)
        scale = uniform(cfg.scale_min, cfg.scale_max)
        tx = uniform(-cfg.translate, cfg.translate) * 2
        ty = uniform(-cfg.translate, cfg.translate) * 2
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([cos, -sin + torch.tan(shear) * cos, tx, sin, cos, ty], dim=1)
        if images.device.type == "cuda":  # drawn on the host: copied over pinned and asynchronously, no wait for the GPU
            theta = theta.pin_memory().to(images.device, non_blocking=True)
        theta = theta.to(images.device, images.dtype)
        grid = sampling_grid(theta.view(n, 2, 3), images.shape[-2], images.shape[-1])
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def sampling_grid(theta: Tensor, height: int, width: int) -> Tensor:
    """``F.affine_grid(theta, (N, C, height, width), align_corners=False)`` as two broadcast
    multiply-adds: the same grid, without the tiny batched matrix product that costs 6x more
    on CPUs whose small-matmul path is slow (AVX2)."""
    xs = (torch.arange(width, device=theta.device, dtype=theta.dtype) * 2 + 1) / width - 1
    ys = (torch.arange(height, device=theta.device, dtype=theta.dtype) * 2 + 1) / height - 1
    t = theta[:, :, :, None, None]  # (N, 2, 3, 1, 1): each output coordinate's three coefficients
    grid = t[:, :, 0] * xs + t[:, :, 1] * ys[:, None] + t[:, :, 2]  # (N, 2, H, W)
    return grid.permute(0, 2, 3, 1)


@dataclass
class TextAugmentConfig:
    """Augmentation for text lines, each part off at 0: small rotation, shear and perspective,
    horizontal and vertical scale, ink thickness, blur, noise, contrast and gamma, inversion and
    JPEG-like block loss.
    Every part is drawn per sample and applied to the whole batch at once; each sample keeps
    its width, and its padding stays background."""

    enabled: bool = False
    rotate: float = 1.5  # degrees, in [-rotate, rotate]
    shear: float = 10.0  # degrees of slant, in [-shear, shear]
    perspective: float = 0.06  # how much taller one end of a line may get than the other (fraction)
    scale_x: float = 0.12  # horizontal scale in [1 - scale_x, 1]: narrower only, so no character leaves the sample's width
    scale_y: float = 0.1  # vertical scale in [1 - scale_y, 1 + scale_y]
    thickness: float = 0.3  # probability of thicker or thinner ink (3 x 3 dilation or erosion, half each)
    blur: float = 0.3  # probability of a Gaussian blur (sigma 0.5 to 1.2 px)
    noise: float = 0.05  # Gaussian noise, standard deviation up to this
    contrast: float = 0.3  # ink intensity scaled in [1 - contrast, 1]
    gamma: float = 0.3  # gamma in [1 - gamma, 1 + gamma]
    invert: float = 0.0  # probability of inverting a sample (polarity mistakes in the wild)
    jpeg: float = 0.0  # probability of JPEG-like loss: detail averaged away within 8 x 8 blocks, and intensities quantised

    def __post_init__(self) -> None:
        for key in ("rotate", "shear", "perspective", "scale_x", "scale_y", "noise", "contrast", "gamma"):
            if getattr(self, key) < 0:
                raise ValueError(f"augment.{key} must be >= 0")
        if max(self.scale_x, self.scale_y, self.contrast, self.gamma) >= 1:
            raise ValueError("augment.scale_x, scale_y, contrast and gamma must be below 1")
        for key in ("thickness", "blur", "invert", "jpeg"):
            if not 0 <= getattr(self, key) <= 1:
                raise ValueError(f"augment.{key} is a probability in [0, 1]")


class TextAugment:
    """Applies :class:`TextAugmentConfig` to a float batch ``(N, C, H, W)`` in [0, 1] with its
    widths (light ink on a dark background, as every crnnfw dataset holds images)."""

    uses_widths = True  # splits pass each sample's width (see PackedSplit.batches)

    def __init__(self, config: TextAugmentConfig) -> None:
        self.config = config

    def __call__(self, images: Tensor, generator: torch.Generator | None = None, widths: Tensor | None = None) -> Tensor:
        cfg, (n, c, h, w) = self.config, images.shape
        widths = widths if widths is not None else torch.full((n,), w)

        def uniform(spread: float, centre: float = 0.0) -> Tensor:
            return ((torch.rand(n, generator=generator) * 2 - 1) * spread + centre).to(images.device)

        def chance(p: float) -> Tensor:
            return (torch.rand(n, generator=generator) < p).to(images.device)

        # Geometry in pixels about each sample's own centre, then normalised for grid_sample.
        angle, slant = uniform(cfg.rotate) * (math.pi / 180), torch.tan(uniform(cfg.shear) * (math.pi / 180))
        sx, sy, tilt = uniform(cfg.scale_x / 2, 1.0 - cfg.scale_x / 2), uniform(cfg.scale_y, 1.0), uniform(cfg.perspective)
        cx = (widths.to(images.device, images.dtype) / 2)[:, None, None]
        cy = h / 2
        xs = torch.arange(w, device=images.device, dtype=images.dtype)[None, None, :] + 0.5 - cx
        ys = torch.arange(h, device=images.device, dtype=images.dtype)[None, :, None] + 0.5 - cy
        cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
        rx, ry = cos * xs + sin * ys, -sin * xs + cos * ys  # where each output pixel comes from, rotated
        ry = ry / sy[:, None, None] / (1 + tilt[:, None, None] * xs / (2 * cx))  # perspective: height varies along x
        rx = rx / sx[:, None, None] + slant[:, None, None] * ry
        grid = torch.stack([(rx + cx) * 2 / w - 1, (ry + cy) * 2 / h - 1], dim=-1)
        out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

        if cfg.thickness:
            thick, thicker = chance(cfg.thickness), chance(0.5)
            for chosen, grow in ((thick & thicker, True), (thick & ~thicker, False)):
                index = chosen.nonzero().squeeze(1)
                if len(index):
                    out[index] = _morph(out[index], grow)
        if cfg.blur:
            sigma = uniform(0.35, 0.85).clamp(min=0.3)
            taps = torch.arange(-2, 3, device=images.device, dtype=images.dtype)
            kernel = torch.exp(-(taps[None] ** 2) / (2 * sigma[:, None] ** 2))
            kernel = kernel / kernel.sum(1, keepdim=True)
            kernel = torch.where(chance(cfg.blur)[:, None], kernel, (taps == 0).to(images.dtype)[None])  # unblurred: identity
            weight = (kernel[:, :, None] * kernel[:, None, :]).repeat_interleave(c, 0)[:, None]  # (N*C, 1, 5, 5)
            out = F.conv2d(out.reshape(1, n * c, h, w), weight, padding=2, groups=n * c).reshape(n, c, h, w)
        if cfg.gamma:
            out = out.clamp(min=0).pow(uniform(cfg.gamma, 1.0)[:, None, None, None])
        if cfg.contrast:
            out = out * uniform(cfg.contrast / 2, 1 - cfg.contrast / 2)[:, None, None, None]
        if cfg.noise:
            std = torch.rand(n, generator=generator).to(images.device) * cfg.noise
            out = out + torch.randn(out.shape, generator=generator).to(images.device) * std[:, None, None, None]
        out = out.clamp(0, 1)
        if cfg.jpeg:
            chosen, strength, levels = chance(cfg.jpeg), uniform(0.2, 0.5), 16 + (torch.rand(n, generator=generator) * 48).round()
            index = chosen.nonzero().squeeze(1)
            if len(index):
                out[index] = _blocky(out[index], strength[index], levels[index].to(images.device))
        if cfg.invert:
            out = torch.where(chance(cfg.invert)[:, None, None, None], 1 - out, out)
        inside = torch.arange(w, device=images.device)[None, :] < widths.to(images.device)[:, None]
        return out * inside[:, None, None, :].to(out.dtype)  # padding stays background


def _blocky(images: Tensor, strength: Tensor, levels: Tensor) -> Tensor:
    """What JPEG at a low quality does to a line, cheaply: each pixel pulled towards its 8 x 8
    block's mean by ``strength`` (blocking, lost detail), then ``levels`` intensity steps."""
    h, w = images.shape[-2:]
    means = F.avg_pool2d(images, 8, ceil_mode=True)  # edge blocks average their own pixels only
    means = means.repeat_interleave(8, -2).repeat_interleave(8, -1)[..., :h, :w]
    mixed = images + strength[:, None, None, None] * (means - images)
    steps = (levels - 1)[:, None, None, None]
    return (mixed * steps).round() / steps


def _morph(images: Tensor, grow: bool) -> Tensor:
    """3 x 3 dilation (``grow``) or erosion, as two separable passes of neighbour maxima or
    minima: a stride-1 max-pool costs ten times more on CPUs."""
    pick = torch.maximum if grow else torch.minimum
    fill = 0.0 if grow else 1.0
    for dim in (-1, -2):
        size = images.shape[dim]
        padded = F.pad(images, (1, 1, 0, 0) if dim == -1 else (0, 0, 1, 1), value=fill)
        images = pick(pick(padded.narrow(dim, 0, size), padded.narrow(dim, 1, size)), padded.narrow(dim, 2, size))
    return images
