"""The example plugin passes crnnfw's conformance kit and is found through its entry point."""

import json
import subprocess
import sys

import pytest
import torch

from crnnfw.testing import check_backbone
from crnnfw_resnet import ResNetBackbone, ResNetConfig


@pytest.mark.parametrize("height", [28, 32])
def test_resnet_conforms(height):
    torch.manual_seed(0)
    check_backbone(ResNetBackbone(ResNetConfig(), in_channels=1), in_channels=1, in_height=height)


def test_deeper_resnet_with_width_preserving_strides_conforms():
    torch.manual_seed(0)
    config = ResNetConfig(channels=[16, 32, 64, 64], blocks=[2, 1, 1, 1], strides=[[2, 2], [2, 1], [2, 1], [1, 1]])
    backbone = ResNetBackbone(config, in_channels=1)
    assert backbone.out_lengths(torch.tensor([100]))[0] == 50
    check_backbone(backbone, in_channels=1, in_height=32, widths=(37, 64, 101))


def test_crnnfw_finds_the_plugin_through_its_entry_point():
    listing = subprocess.run([sys.executable, "-m", "crnnfw", "plugins", "--json"], capture_output=True, text=True, check=True)
    plugin = next(p for p in json.loads(listing.stdout) if p["name"] == "resnet")
    assert plugin["distribution"] == "crnnfw-resnet" and plugin["error"] is None
    assert [c["name"] for c in plugin["components"]] == ["resnet"]
