"""The ``cnn`` backbone: conv stages that keep track of every sample's width."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch
from torch import Tensor, nn

import crnnfw

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "leaky_relu": nn.LeakyReLU}
NON_DECREASING = ("relu", "leaky_relu")  # max(f(a), f(b)) == f(max(a, b))


@dataclass
class CNNConfig:
    channels: List[int] = field(default_factory=lambda: [32, 64, 128, 256])  # one conv per entry
    kernel_size: int = 3
    padding: str = "same"  # same | valid
    pools: List[List[int]] = field(default_factory=lambda: [[2, 2], [2, 2], [2, 1], [1, 1]])  # (height, width) max-pool after each conv; [1, 1] = none
    batch_norm: bool = False
    activation: str = "relu"  # relu | gelu | silu | leaky_relu
    dropout: float = 0.0  # channel dropout after each pooling
    channels_last: bool = True  # NHWC memory: oneDNN's and cuDNN's fast layout for convolutions
    pool_first: bool = False  # max-pool straight after each conv: norm and activation see fewer values

    def __post_init__(self) -> None:
        if not self.channels:
            raise ValueError("channels: give at least one conv")
        if len(self.pools) != len(self.channels):
            raise ValueError(f"pools has {len(self.pools)} entries but channels has {len(self.channels)}; give one [h, w] pool per conv")
        if any(len(p) != 2 or min(p) < 1 for p in self.pools):
            raise ValueError("pools: each entry is [height, width] with both >= 1")
        if self.padding not in ("same", "valid"):
            raise ValueError(f"padding: '{self.padding}' is not one of same, valid")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation: '{self.activation}' is not one of {', '.join(ACTIVATIONS)}")
        if self.kernel_size < 1 or not 0 <= self.dropout < 1:
            raise ValueError("kernel_size must be >= 1 and dropout in [0, 1)")


class CNNBackbone(crnnfw.Backbone):
    """Conv -> (batch norm) -> activation -> (max-pool, dropout), once per entry of ``channels``
    (pooling goes before a ReLU, which is equivalent and cheaper). With ``pool_first``, conv ->
    max-pool -> (batch norm) -> activation: another net (its norm sees pooled maps), cheaper on
    a CPU, where batch norm over a full-resolution map costs several times its convolution.

    Features past each sample's width are zeroed before every convolution, so a sample padded
    inside a wide batch sees the same zeros as one processed alone, and in training the padding's
    content never reaches BatchNorm's batch statistics.
    """

    def __init__(self, config: CNNConfig, in_channels: int) -> None:
        super().__init__()
        self.config = config
        self.same = config.padding == "same"
        self.blocks = nn.ModuleList()
        previous = in_channels
        for channels, (ph, pw) in zip(config.channels, config.pools):
            layers: list[nn.Module] = [nn.Conv2d(previous, channels, config.kernel_size, padding="same" if self.same else 0, bias=not config.batch_norm)]
            pool = [nn.MaxPool2d((ph, pw))] if (ph, pw) != (1, 1) else []
            if config.pool_first:
                layers += pool
                pool = []
            if config.batch_norm:
                layers.append(nn.BatchNorm2d(channels))
            # Max-pooling commutes with a non-decreasing activation: pooling first gives the
            # same values and gradients, and activates ph * pw times fewer values.
            activation = [ACTIVATIONS[config.activation]()]
            layers += pool + activation if config.activation in NON_DECREASING else activation + pool
            if config.dropout > 0:
                layers.append(nn.Dropout2d(config.dropout))
            self.blocks.append(nn.Sequential(*layers))
            previous = channels
        self.out_channels = previous
        if config.channels_last:
            # NHWC weights make every convolution produce NHWC maps: an input of one channel is
            # NCHW and NHWC at once, and would otherwise keep the whole stack NCHW.
            self.to(memory_format=torch.channels_last)

    @classmethod
    def from_config(cls, config: CNNConfig, *, in_channels: int, in_height: int) -> "CNNBackbone":
        return cls(config, in_channels)

    def _shrink(self, size: Tensor | int, axis: int) -> Tensor | int:
        """The size after every block along one axis (0: height, 1: width).

        As few steps as give the same result: each is a kernel launch on a GPU and a node in an
        exported graph. Without 'valid' shrinking, consecutive floor divisions are one
        (floor(floor(x / a) / b) == floor(x / (a * b))).
        """
        shrink = 0 if self.same else self.config.kernel_size - 1
        divisor = 1
        for pool in self.config.pools:
            if shrink:
                size = size // divisor - shrink if divisor > 1 else size - shrink
                divisor = 1
            divisor *= pool[axis]
        return size // divisor if divisor > 1 else size

    def out_height(self, in_height: int) -> int:
        return self._shrink(in_height, 0)

    def out_lengths(self, widths: Tensor) -> Tensor:
        return self._clamp(self._shrink(widths, 1))

    def _clamp(self, lengths: Tensor) -> Tensor:
        """Lengths below zero (only 'valid' convolutions shrink a narrow image that far) as zero."""
        return lengths if self.same else lengths.clamp(min=0)

    def forward(self, images: Tensor, widths: Tensor) -> tuple[Tensor, Tensor]:
        layout = torch.channels_last if self.config.channels_last else torch.contiguous_format
        x = images.contiguous(memory_format=layout)
        # One mask, shrunk with the map: after a width pool of p, column j is valid exactly when
        # input column (j + 1) * p - 1 was (floor(length / p) columns), so a strided slice of the
        # mask replaces recomputing it from the lengths (one node instead of seven in an exported graph).
        masked = crnnfw.masks_needed(widths, images.shape[-1])
        if not self.same:  # 'valid' convolutions never read padding into valid columns, but in
            # training BatchNorm's batch statistics would read the padded ones: zero them first
            lengths = widths
            for block, (_, pw) in zip(self.blocks, self.config.pools):
                x = block(crnnfw.mask_padding(x, lengths) if masked else x)
                lengths = self._clamp((lengths - (self.config.kernel_size - 1)) // pw)
            return x, self.out_lengths(widths)
        keep = crnnfw.length_mask(widths, images.shape[-1])[:, None, None] if masked else None
        for block, (_, pw) in zip(self.blocks, self.config.pools):
            if keep is not None:
                if keep.dtype != x.dtype:
                    keep = keep.to(x.dtype)
                x = x * keep
                keep = keep[..., pw - 1 :: pw] if pw > 1 else keep
            x = block(x)
        return x, self.out_lengths(widths)
