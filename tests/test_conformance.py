"""Every built-in component passes the conformance kit that plugin authors use."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

import crnnfw
from crnnfw.testing import ConformanceError, check_backbone, check_encoder, check_head, check_registered
from crnnfw_plugins.cnn import CNNBackbone, CNNConfig
from crnnfw_plugins.cnn_chain import CNNChainBackbone, CNNChainConfig
from crnnfw_plugins.ctc import CTCConfig, CTCHead
from crnnfw_plugins.dense import DenseConfig, DenseEncoder, FlattenConfig, FlattenEncoder
from crnnfw_plugins.lstm import LSTMConfig, LSTMEncoder
from crnnfw_plugins.pixels import PixelsBackbone, PixelsConfig
from crnnfw_plugins.softmax import SoftmaxConfig, SoftmaxHead


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"padding": "valid", "batch_norm": True, "channels": [8, 16, 32], "pools": [[2, 2], [2, 2], [2, 1]]},
        {"channels": [16, 32, 64, 96], "pools": [[2, 2], [2, 2], [2, 1], [2, 1]], "batch_norm": True, "activation": "gelu"},
    ],
)
def test_cnn_conforms(options):
    torch.manual_seed(0)
    check_backbone(CNNBackbone(CNNConfig(**options), in_channels=1), in_channels=1, in_height=32)


@pytest.mark.parametrize("options", [{}, {"bidirectional": True}, {"cell": "gru", "bidirectional": True, "num_layers": 3}])
def test_lstm_conforms(options):
    torch.manual_seed(0)
    check_encoder(LSTMEncoder(LSTMConfig(hidden_size=16, **options), in_features=12), in_features=12)


@pytest.mark.parametrize("pool", ["last", "mean", "max"])
def test_softmax_conforms(pool):
    torch.manual_seed(0)
    batch = crnnfw.Batch(torch.zeros(4, 1, 8, 8), torch.full((4,), 8), torch.tensor([0, 1, 2, 1]))
    check_head(SoftmaxHead(SoftmaxConfig(pool=pool, hidden=[16]), in_features=12, classes=("a", "b", "c")), batch, in_features=12)


def test_ctc_conforms():
    torch.manual_seed(0)
    batch = crnnfw.Batch(torch.zeros(3, 1, 8, 8), torch.full((3,), 8), torch.tensor([[1, 2, 0], [3, 0, 0], [0, 1, 2]]), torch.tensor([2, 1, 3]))
    check_head(CTCHead(CTCConfig(), in_features=12, classes=tuple("0123")), batch, in_features=12)


class LeakyBackbone(crnnfw.Backbone):
    """A conv backbone that forgets to mask: padding leaks into the last valid columns."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.out_channels = 4

    def out_height(self, in_height: int) -> int:
        return in_height

    def out_lengths(self, widths):
        return widths

    def forward(self, images, widths):
        return self.conv(images + 1.0), widths


class DeadEncoder(crnnfw.SequenceEncoder):
    """Has a parameter that no gradient reaches."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_features, 4)
        self.unused = nn.Linear(4, 4)
        self.out_features = 4

    def forward(self, seq, lengths):
        return self.proj(seq)


class FrozenWidthBackbone(LeakyBackbone):
    """Masks correctly, but crops to a width read into Python: fine eagerly, frozen into an
    exported graph."""

    def forward(self, images, widths):
        features = self.conv(crnnfw.mask_padding(images, widths))
        return features[..., : int(widths.max())], widths


def test_the_kit_catches_contract_breaks():
    with pytest.raises(ConformanceError, match="padding leaks into valid steps"):
        check_backbone(LeakyBackbone(), in_height=8)
    with pytest.raises(ConformanceError, match="no gradient reaches parameter 'unused.weight'"):
        check_encoder(DeadEncoder(6), in_features=6)
    with pytest.raises(ConformanceError, match="is not a crnnfw.Backbone"):
        check_backbone(nn.Identity())
    with pytest.raises(ConformanceError, match="ONNX: exported at size .* froze a value"):
        check_backbone(FrozenWidthBackbone(), in_height=8)
    check_backbone(FrozenWidthBackbone(), in_height=8, onnx=False)  # eagerly it keeps the contract


@pytest.mark.parametrize("options, in_channels", [({"read": "rows", "width": 96}, 1), ({"read": "rows", "width": 90}, 3), ({"read": "columns"}, 1)])
def test_pixels_conforms(options, in_channels):
    torch.manual_seed(0)
    backbone = PixelsBackbone(PixelsConfig(**options), in_channels, 32)
    assert not list(backbone.parameters())  # it only moves data: the kit skips the gradient rule
    check_backbone(backbone, in_channels=in_channels, in_height=32)


@pytest.mark.parametrize(
    "stages",
    [
        None,  # the default: conv 30 5x5 valid, pool 2; conv 15 3x3 valid, pool 2
        [CNNConfig(channels=[8], kernel_size=5, pools=[[2, 2]]), CNNConfig(channels=[8, 16], kernel_size=3, padding="valid", batch_norm=True, pools=[[2, 1], [1, 1]])],
    ],
)
def test_cnn_chain_conforms(stages):
    torch.manual_seed(0)
    config = CNNChainConfig() if stages is None else CNNChainConfig(stages=stages)
    check_backbone(CNNChainBackbone(config, in_channels=1, in_height=32), in_channels=1, in_height=32)


@pytest.mark.parametrize(
    "options",
    [
        {"sizes": [16]},
        {"sizes": [16], "batch_norm": True, "rnn": LSTMConfig(hidden_size=8, num_layers=1)},
        {"sizes": [16, 8], "dropout": 0.1, "activation": "gelu", "rnn": LSTMConfig(hidden_size=8, bidirectional=True)},
    ],
)
def test_dense_conforms(options):
    torch.manual_seed(0)
    check_encoder(DenseEncoder(DenseConfig(**options), in_features=12), in_features=12)


# At least 29 steps: the kit traces the export on sequences of 29.
@pytest.mark.parametrize("options", [{"steps": 29, "sizes": [16]}, {"steps": 40, "sizes": [16, 8], "batch_norm": True, "dropout": 0.2}])
def test_flatten_conforms(options):
    torch.manual_seed(0)
    check_encoder(FlattenEncoder(FlattenConfig(**options), in_features=12), in_features=12)


def test_check_registered_catches_what_a_components_own_tests_cannot(extra_plugin):
    @dataclass
    class OneConfig:
        channels: int = 4

    class One(crnnfw.Backbone):
        def __init__(self, config, in_channels):  # lacks the keyword-only in_height the engine passes
            super().__init__()
            self.conv = torch.nn.Conv2d(in_channels, config.channels, 1)
            self.out_channels = config.channels

        def out_height(self, in_height):
            return in_height

        def out_lengths(self, widths):
            return widths

        def forward(self, images, widths):
            return self.conv(images), widths

    def crnnfw_register_backbone(register):  # misspelled: the plugin fails to load
        register("typo", One, config=OneConfig)

    def crnnfw_register_backbones(register):
        register("class_as_factory", One, config=OneConfig)
        register("right", lambda config, *, in_channels, in_height: One(config, in_channels), config=OneConfig)

    extra_plugin("typo_plugin", crnnfw_register_backbone=crnnfw_register_backbone)
    extra_plugin("class_plugin", crnnfw_register_backbones=crnnfw_register_backbones)
    with pytest.raises(ConformanceError, match="no backbone named 'typo'.*typo_plugin.*did you mean 'crnnfw_register_backbones'"):
        check_registered("backbone", "typo")
    with pytest.raises(ConformanceError, match=r"cannot be called as factory\(config, in_channels=..., in_height=...\)"):
        check_registered("backbone", "class_as_factory")
    with pytest.raises(ConformanceError, match="comes from registered in code, not acme"):
        check_registered("backbone", "right", distribution="acme")
    assert isinstance(check_registered("backbone", "right", distribution="registered in code"), One)


#: What a plugin builds on: the contract modules, which import nothing of the engine (config,
#: registry, trainer, checkpoints, export...), so a plugin and the kit stay small and stable.
CONTRACT = {"hookspecs", "stages", "batch", "data", "errors", "callbacks", "augment", "metrics", "testing", "onnxio", "version"}


@pytest.mark.parametrize("module", sorted(CONTRACT - {"version"}))
def test_contract_modules_import_nothing_from_the_engine(module):
    import ast

    from .conftest import ROOT

    tree = ast.parse((ROOT / "framework" / f"{module}.py").read_text())
    imported = {node.module.split(".")[0] if node.module else alias.name for node in tree.body if isinstance(node, ast.ImportFrom) and node.level == 1 for alias in node.names}
    assert imported <= CONTRACT, f"crnnfw.{module} imports {sorted(imported - CONTRACT)} from the engine"


def test_padding_that_reaches_batch_statistics_in_training_is_caught():
    class UnmaskedBatchNorm(crnnfw.Backbone):
        """A valid conv never reads padding into valid columns, but its BatchNorm's batch
        statistics read the padded ones: in eval mode it conforms, in training it leaks."""

        def __init__(self) -> None:
            super().__init__()
            self.conv, self.norm = nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4)
            self.out_channels = 4

        def out_height(self, in_height):
            return in_height - 2

        def out_lengths(self, widths):
            return widths - 2

        def forward(self, images, widths):
            return torch.relu(self.norm(self.conv(images))), self.out_lengths(widths)

    with pytest.raises(ConformanceError, match="in train mode, the padding's content changes valid features"):
        check_backbone(UnmaskedBatchNorm(), in_channels=1, in_height=16, onnx=False)
