"""The ``cnn_chain`` backbone: several ``cnn`` backbones run one after another.

The ``cnn`` backbone uses one kernel size and one padding for all its convs; a model such as
the Keras tutorials' "larger CNN" (conv 5x5, pool, conv 3x3, pool) needs one per conv. A chain
of ``cnn`` stages gives that without a second conv implementation: each stage is a complete
``cnn`` backbone, so masking and width bookkeeping stay the ``cnn`` backbone's own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from torch import Tensor, nn

import crnnfw

from .cnn import CNNBackbone, CNNConfig


def _lenet_pair() -> List[CNNConfig]:
    return [
        CNNConfig(channels=[30], kernel_size=5, padding="valid", pools=[[2, 2]]),
        CNNConfig(channels=[15], kernel_size=3, padding="valid", pools=[[2, 2]]),
    ]


@dataclass
class CNNChainConfig:
    stages: List[CNNConfig] = field(default_factory=_lenet_pair)  # cnn backbones run in order, each with the options of `crnnfw plugins show cnn`

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("stages: give at least one cnn stage")


class CNNChainBackbone(crnnfw.Backbone):
    """Each stage's features and lengths are the next stage's images and widths.

    Heights and lengths are composed from each stage's own declarations, so they stay exact.
    """

    def __init__(self, config: CNNChainConfig, in_channels: int, in_height: int) -> None:
        super().__init__()
        self.stages = nn.ModuleList()
        channels, height = in_channels, in_height
        for stage_config in config.stages:
            stage = CNNBackbone.from_config(stage_config, in_channels=channels, in_height=height)
            self.stages.append(stage)
            channels, height = stage.out_channels, stage.out_height(height)
        self.out_channels = channels

    @classmethod
    def from_config(cls, config: CNNChainConfig, *, in_channels: int, in_height: int) -> "CNNChainBackbone":
        return cls(config, in_channels, in_height)

    def out_height(self, in_height: int) -> int:
        for stage in self.stages:
            in_height = stage.out_height(in_height)
        return in_height

    def out_lengths(self, widths: Tensor) -> Tensor:
        for stage in self.stages:
            widths = stage.out_lengths(widths)
        return widths

    def forward(self, images: Tensor, widths: Tensor) -> tuple[Tensor, Tensor]:
        x, lengths = images, widths
        for stage in self.stages:
            x, lengths = stage(x, lengths)
        return x, lengths
