"""The model zoo (configs/zoo): every config builds, trains a few steps, and is the tutorial's model.

The parameter counts are worked out layer by layer from each tutorial's architecture, so a
config that drifts from its tutorial (a kernel size, a layer width, a missing layer) fails here.
"""

from __future__ import annotations

import json
import math
import runpy

import pytest
import torch

from crnnfw_plugins.dense import FlattenConfig, FlattenEncoder
from crnnfw_plugins.pixels import PixelsBackbone, PixelsConfig

from .conftest import FP32, ROOT

ZOO = ROOT / "configs" / "zoo"


def conv(cin: int, cout: int, k: int, bias: bool = True) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def dense(cin: int, cout: int, bias: bool = True) -> int:
    return cin * cout + (cout if bias else 0)


def bn(channels: int) -> int:
    return 2 * channels  # weight and bias; the running statistics are buffers


def lstm(cin: int, hidden: int) -> int:
    return 4 * hidden * (cin + hidden) + 8 * hidden  # PyTorch keeps two bias vectors per gate


EXPECTED_PARAMETERS = {
    "crnn": conv(1, 32, 3) + conv(32, 64, 3) + conv(64, 128, 3) + conv(128, 256, 3) + lstm(256 * 3, 128) + lstm(128, 128) + dense(128, 10),
    "cnn_bn_lstm": conv(1, 32, 3, False)
    + bn(32)
    + conv(32, 32, 3, False)
    + bn(32)
    + conv(32, 64, 3, False)
    + bn(64)
    + conv(64, 64, 3, False)
    + bn(64)
    + dense(64 * 4, 128, False)
    + bn(128)
    + lstm(128, 128)
    + dense(128, 10),
    "row_lstm": lstm(28, 50) + dense(50, 10),
    "cnn_lstm": conv(1, 32, 3) + conv(32, 64, 3) + dense(64 * 5, 128) + lstm(128, 128) + lstm(128, 128) + dense(128, 10),
    "cnn_simple": conv(1, 32, 5) + dense(32 * 14 * 14, 128) + dense(128, 10),
    "cnn_improved": conv(1, 30, 5) + conv(30, 15, 3) + dense(15 * 5 * 5, 128) + dense(128, 50) + dense(50, 10),
    "mlp": dense(784, 784) + dense(784, 10),
}


def test_every_zoo_config_is_known_to_the_test_and_the_benchmark():
    benchmark = runpy.run_path(str(ROOT / "benchmarks" / "zoo.py"))
    configs = {p.stem for p in ZOO.glob("*.yaml")}
    assert configs == set(EXPECTED_PARAMETERS)
    assert configs == {entry.config for entry in benchmark["ZOO"]}


@pytest.mark.parametrize("model", sorted(EXPECTED_PARAMETERS))
def test_zoo_config_trains_a_few_steps(model, cli, tmp_path):
    result = cli(
        "run",
        ZOO / f"{model}.yaml",
        FP32,
        "data.train_limit=96",
        "trainer.batch_size=32",
        "data.val_size=100",
        "data.test_limit=100",
        "trainer.eval_batch_size=100",
        "trainer.epochs=1",
        f"output_dir={tmp_path}",
    )
    assert result.code == 0, result.err
    (summary_path,) = tmp_path.glob("*/*/summary.json")
    summary = json.loads(summary_path.read_text())
    assert summary["steps"] == 3
    assert math.isfinite(summary["final"]["train_loss"]) and math.isfinite(summary["final"]["test_loss"])
    assert summary["parameters"] == EXPECTED_PARAMETERS[model]
    assert all(c["plugin"] == "builtins" for c in summary["components"].values())


def test_pixel_rows_refuse_an_image_wider_than_a_row():
    backbone = PixelsBackbone(PixelsConfig(read="rows", width=28), in_channels=1, in_height=28)
    features, lengths = backbone(torch.rand(2, 1, 28, 40), torch.tensor([28, 20]))  # padding past 28 is cropped
    assert tuple(features.shape) == (2, 28, 1, 28) and lengths.tolist() == [28, 28]
    with pytest.raises(ValueError, match="an image is 40 px wide; read: rows takes at most width=28"):
        backbone(torch.rand(2, 1, 28, 40), torch.tensor([40, 20]))


def test_flatten_refuses_a_sequence_longer_than_its_steps():
    encoder = FlattenEncoder(FlattenConfig(steps=5, sizes=[8]), in_features=3)
    assert tuple(encoder(torch.randn(2, 9, 3), torch.tensor([5, 2])).shape) == (2, 9, 8)
    with pytest.raises(ValueError, match="a sequence has 7 steps; flatten reads at most steps=5"):
        encoder(torch.randn(2, 9, 3), torch.tensor([7, 2]))
