"""``crnnfw new-plugin``: write a ready plugin package that already passes the conformance kit."""

from __future__ import annotations

import keyword
import re
from pathlib import Path

from .errors import CrnnfwError
from .version import __version__

PYPROJECT = """[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "0.1.0"
description = "A crnnfw backbone plugin"
requires-python = ">=3.10"
dependencies = ["crnnfw>={crnnfw_version},<{next_minor}"]  # a crnnfw minor release may change the plugin contract

[project.optional-dependencies]
test = ["pytest>=8", "crnnfw[onnx]"]  # the conformance kit also checks ONNX export

# crnnfw discovers the plugin through this entry-point group.
[project.entry-points.crnnfw]
{package} = "{package}"

[tool.setuptools]
packages = ["{package}"]
"""

MODULE = '''"""{dist}: a crnnfw backbone plugin.

Edit the layers in ``{cls}.__init__``; keep ``out_height`` and ``out_lengths`` in step with
them, and run the tests (``pytest tests``): crnnfw's conformance kit checks the contract.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from torch import Tensor, nn

import crnnfw


@dataclass
class {cls}Config:
    channels: List[int] = field(default_factory=lambda: [32, 64, 128])  # one 3x3 conv block per entry
    pool_widths: List[int] = field(default_factory=lambda: [2, 2, 1])  # width pooling after each block (height is always halved)

    def __post_init__(self) -> None:
        if not self.channels or len(self.channels) != len(self.pool_widths):
            raise ValueError("channels and pool_widths need one entry per block")


class {cls}(crnnfw.Backbone):
    """Conv blocks that zero the features past each sample's width before every convolution."""

    def __init__(self, config: {cls}Config, in_channels: int) -> None:
        super().__init__()
        self.pool_widths = list(config.pool_widths)
        self.blocks = nn.ModuleList()
        previous = in_channels
        for channels, pool_width in zip(config.channels, config.pool_widths):
            self.blocks.append(nn.Sequential(
                nn.Conv2d(previous, channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(),
                nn.MaxPool2d((2, pool_width)),
            ))
            previous = channels
        self.out_channels = previous

    @classmethod
    def from_config(cls, config: {cls}Config, *, in_channels: int, in_height: int) -> "{cls}":
        return cls(config, in_channels)

    def out_height(self, in_height: int) -> int:
        return in_height // 2 ** len(self.blocks)

    def out_lengths(self, widths: Tensor) -> Tensor:
        for pool_width in self.pool_widths:
            widths = widths // pool_width
        return widths

    def forward(self, images: Tensor, widths: Tensor) -> tuple[Tensor, Tensor]:
        x, lengths = images, widths
        for block, pool_width in zip(self.blocks, self.pool_widths):
            x = crnnfw.mask_padding(x, lengths)
            x = block(x)
            lengths = lengths // pool_width
        return x, lengths


@crnnfw.hookimpl
def crnnfw_register_backbones(register):
    register("{package}", {cls}.from_config, config={cls}Config, description="{dist} backbone")
'''

TEST = '''"""The backbone keeps crnnfw's stage contract (shapes, lengths, padding, gradients, ONNX export)."""

import torch

from crnnfw.testing import check_backbone, check_registered
from {package} import {cls}, {cls}Config


def test_crnnfw_finds_and_builds_it():
    backbone = check_registered("backbone", "{package}", distribution="{dist}")
    assert isinstance(backbone, {cls})


def test_backbone_conforms():
    torch.manual_seed(0)
    check_backbone({cls}({cls}Config(), in_channels=1), in_channels=1, in_height=32)


def test_backbone_conforms_on_mnist_sized_images():
    torch.manual_seed(0)
    check_backbone({cls}({cls}Config(), in_channels=1), in_channels=1, in_height=28, widths=(28, 31, 45))
'''

README = """# {dist}

A backbone plugin for crnnfw, registered as `{package}`.

```sh
pip install -e .                   # into the environment that has crnnfw
crnnfw plugins                     # lists '{package}'
crnnfw plugins show {package}      # its options
pip install -e '.[test]'          # pytest and the ONNX packages the conformance kit uses
pytest tests                       # crnnfw's conformance kit
# from a crnnfw checkout (or any config of yours):
crnnfw run configs/mnist_crnn.yaml model.backbone.name={package}
```
"""


def new_plugin(name: str, directory: Path) -> Path:
    """Write a backbone plugin package named ``name`` under ``directory``; return its folder."""
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", name):
        raise CrnnfwError(f"new-plugin: '{name}' is not a valid package name; use letters, digits, '-' and '_'")
    package = name.replace("-", "_").lower()
    if keyword.iskeyword(package):
        raise CrnnfwError(f"new-plugin: '{name}' is a Python keyword; choose another name")
    target = directory / name
    if target.exists():
        raise CrnnfwError(f"new-plugin: {target} already exists; choose another name or folder")
    cls = "".join(part.capitalize() for part in package.split("_"))
    cls = cls if cls.endswith("Backbone") else cls + "Backbone"
    major, minor = (int(part) for part in __version__.split(".")[:2])
    values = {"dist": name, "package": package, "cls": cls, "crnnfw_version": f"{major}.{minor}", "next_minor": f"{major}.{minor + 1}"}
    files = {
        "pyproject.toml": PYPROJECT,
        f"{package}/__init__.py": MODULE,
        f"tests/test_{package}.py": TEST,
        "README.md": README,
    }
    for relative, template in files.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**values))
    return target
