"""The ``pixels`` backbone: the raw pixels as the sequence, for models with no convolution.

The row-LSTM and MLP tutorials feed MNIST's pixels straight to an LSTM or a dense layer. This
backbone lets them keep the engine's stages: it learns nothing and only decides which image
axis is the sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

import crnnfw


@dataclass
class PixelsConfig:
    read: str = "rows"  # rows: one step per image row | columns: one step per image column
    width: int = 28  # rows only: pixels per row (features per step and channel); narrower images are zero-padded

    def __post_init__(self) -> None:
        if self.read not in ("rows", "columns"):
            raise ValueError(f"read: '{self.read}' is not one of rows, columns")
        if self.width < 1:
            raise ValueError(f"width must be >= 1, got {self.width}")


class PixelsBackbone(crnnfw.Backbone):
    """Hands the pixels on unchanged, as a sequence of rows or of columns.

    ``columns``: the features are the images and each sample's length is its width, so padding
    columns sit past the length as usual.

    ``rows``: every sample has one step per image row (its length is the image height), and a
    step holds the row's ``width`` pixels per channel, as features ``(N, C*width, 1, H)``.
    Columns past a sample's width are zeroed and the row is zero-padded to ``width``, so a
    sample reads the same alone or inside a batch padded wider. Rows cannot grow, so an image
    wider than ``width`` is an error rather than a silent crop (an exported graph, which
    cannot raise, crops).
    """

    def __init__(self, config: PixelsConfig, in_channels: int, in_height: int) -> None:
        super().__init__()
        self.rows = config.read == "rows"
        self.width = config.width
        self.in_height = in_height
        self.out_channels = in_channels * config.width if self.rows else in_channels

    @classmethod
    def from_config(cls, config: PixelsConfig, *, in_channels: int, in_height: int) -> "PixelsBackbone":
        return cls(config, in_channels, in_height)

    def out_height(self, in_height: int) -> int:
        return 1 if self.rows else in_height

    def out_lengths(self, widths: Tensor) -> Tensor:
        return torch.full_like(widths, self.in_height) if self.rows else widths

    def forward(self, images: Tensor, widths: Tensor) -> tuple[Tensor, Tensor]:
        if not self.rows:
            return images, widths
        h, w = images.shape[2], images.shape[3]
        if h != self.in_height:
            raise ValueError(f"images are {h} rows tall; this backbone was built for {self.in_height}")
        # Only a batch wider than `width` can hold an image that does not fit (asking costs a sync);
        # an exported graph crops instead of raising.
        if not torch.jit.is_tracing() and w > self.width and bool((widths > self.width).any()):
            raise ValueError(f"an image is {int(widths.max())} px wide; read: rows takes at most width={self.width}")
        # Pad by a constant and crop to a constant, so the traced graph suits every batch width.
        x = F.pad(crnnfw.mask_padding(images, widths), (0, self.width))[..., : self.width]
        features = x.transpose(2, 3).flatten(1, 2).unsqueeze(2)  # (N, C * width, 1, H)
        return features, self.out_lengths(widths)
