"""A third-party crnnfw plugin: a ResNet-style backbone from torchvision's ``BasicBlock``.

Stages downsample the height more than the width (strides such as (2, 1)), so a text line
keeps one sequence step per few pixels of width. Written only against crnnfw's public API.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, conv1x1

import crnnfw

__version__ = "0.1.0"


@dataclass
class ResNetConfig:
    stem_channels: int = 32  # a 3x3 conv before the residual stages
    channels: List[int] = field(default_factory=lambda: [32, 64, 128])  # one residual stage per entry
    blocks: List[int] = field(default_factory=lambda: [1, 1, 1])  # BasicBlocks per stage
    strides: List[List[int]] = field(default_factory=lambda: [[2, 2], [2, 2], [2, 1]])  # (height, width) stride of each stage's first block

    def __post_init__(self) -> None:
        if not self.channels or not len(self.channels) == len(self.blocks) == len(self.strides):
            raise ValueError("channels, blocks and strides need one entry per stage")
        if any(len(s) != 2 or min(s) < 1 for s in self.strides) or min(self.blocks) < 1:
            raise ValueError("each stride is [height, width] >= 1 and each stage has >= 1 block")


class ResNetBackbone(crnnfw.Backbone):
    """Stem conv, then residual stages; features past each sample's width are zeroed before
    every 3x3 convolution so padding never reaches a valid step."""

    def __init__(self, config: ResNetConfig, in_channels: int) -> None:
        super().__init__()
        self.config = config
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, config.stem_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(config.stem_channels),
            nn.ReLU(inplace=True),
        )
        blocks: list[BasicBlock] = []
        previous = config.stem_channels
        for channels, count, stride in zip(config.channels, config.blocks, config.strides):
            stride = tuple(stride)
            downsample = None
            if stride != (1, 1) or previous != channels:
                downsample = nn.Sequential(conv1x1(previous, channels, stride), nn.BatchNorm2d(channels))
            blocks.append(BasicBlock(previous, channels, stride, downsample))
            blocks += [BasicBlock(channels, channels) for _ in range(count - 1)]
            previous = channels
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = previous

    @classmethod
    def from_config(cls, config: ResNetConfig, *, in_channels: int, in_height: int) -> "ResNetBackbone":
        return cls(config, in_channels)

    @staticmethod
    def _shrink(size, stride: int):
        return (size - 1) // stride + 1  # a 3x3 conv with padding 1

    def out_height(self, in_height: int) -> int:
        for block in self.blocks:
            in_height = self._shrink(in_height, block.conv1.stride[0])
        return in_height

    def out_lengths(self, widths: Tensor) -> Tensor:
        for block in self.blocks:
            widths = self._shrink(widths, block.conv1.stride[1])
        return widths

    def _block(self, block: BasicBlock, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """torchvision's BasicBlock.forward, with masks before each 3x3 convolution."""
        out_lengths = self._shrink(lengths, block.conv1.stride[1])
        identity = x if block.downsample is None else block.downsample(x)
        out = block.relu(block.bn1(block.conv1(crnnfw.mask_padding(x, lengths))))
        out = block.bn2(block.conv2(crnnfw.mask_padding(out, out_lengths)))
        return block.relu(out + identity), out_lengths

    def forward(self, images: Tensor, widths: Tensor) -> tuple[Tensor, Tensor]:
        x, lengths = self.stem(crnnfw.mask_padding(images, widths)), widths
        for block in self.blocks:
            x, lengths = self._block(block, x, lengths)
        return x, lengths


@crnnfw.hookimpl
def crnnfw_register_backbones(register):
    register("resnet", ResNetBackbone.from_config, config=ResNetConfig, description="ResNet stages of torchvision BasicBlocks with width-preserving strides")
