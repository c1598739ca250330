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
