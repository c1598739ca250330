"""Stage contracts: lengths, padding invariance, and the build-time check."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import crnnfw
from crnnfw import ModelError, config
from crnnfw.datasets import build_data
from crnnfw.model import build_model
from crnnfw.plugins import get_registry
from crnnfw_plugins.cnn import CNNBackbone, CNNConfig
from crnnfw_plugins.lstm import LSTMConfig, LSTMEncoder
from crnnfw_plugins.softmax import SoftmaxConfig, SoftmaxHead

from .conftest import MNIST_CONFIG


def padded(samples: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad (C, H, W_i) images into one batch."""
    width = max(s.shape[-1] for s in samples)
    batch = torch.zeros(len(samples), *samples[0].shape[:-1], width)
    for i, s in enumerate(samples):
        batch[i, ..., : s.shape[-1]] = s
    return batch, torch.tensor([s.shape[-1] for s in samples])


@pytest.mark.parametrize("cell, bidirectional", [("lstm", False), ("lstm", True), ("gru", True)])
def test_encoder_is_padding_invariant(cell, bidirectional):
    torch.manual_seed(0)
    encoder = LSTMEncoder(LSTMConfig(hidden_size=16, num_layers=2, bidirectional=bidirectional, cell=cell), in_features=8).eval()
    seq = torch.randn(3, 20, 8)
    lengths = torch.tensor([20, 7, 13])
    with torch.no_grad():
        together = encoder(seq, lengths)
        assert together.shape == (3, 20, 16 * (2 if bidirectional else 1))
        for i, n in enumerate(lengths.tolist()):
            alone = encoder(seq[i : i + 1, :n], lengths[i : i + 1])
            torch.testing.assert_close(together[i, :n], alone[0], atol=1e-6, rtol=0)
        garbage = seq.clone()
        garbage[1, 7:] = 1e3  # whatever sits in the padding must not leak in
        torch.testing.assert_close(encoder(garbage, lengths)[1, :7], together[1, :7], atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "padding, pools",
    [
        ("same", [[2, 2], [1, 1], [2, 1]]),
        ("same", [[2, 3], [1, 2], [2, 1]]),  # width pools of 3 then 2: odd remainders at every step
        ("valid", [[2, 2], [1, 1], [2, 1]]),
    ],
)
def test_cnn_reports_lengths_and_is_padding_invariant(padding, pools):
    torch.manual_seed(0)
    cfg = CNNConfig(channels=[4, 8, 8], pools=pools, padding=padding, batch_norm=True)
    backbone = CNNBackbone(cfg, in_channels=1).eval()
    samples = [torch.rand(1, 32, w) for w in (41, 17, 64)]
    images, widths = padded(samples)
    with torch.no_grad():
        features, lengths = backbone(images, widths)
        assert torch.equal(lengths, backbone.out_lengths(widths))
        shrink = 0 if padding == "same" else 2
        expected = []
        for w in (41, 17, 64):
            for _, pool_width in pools:
                w = (w - shrink) // pool_width
            expected.append(w)
        assert lengths.tolist() == expected
        assert features.shape[:3] == (3, 8, backbone.out_height(32))
        for i, s in enumerate(samples):
            alone, n = backbone(s.unsqueeze(0), widths[i : i + 1])
            n = int(n)
            torch.testing.assert_close(features[i, :, :, :n], alone[0, :, :, :n], atol=1e-5, rtol=0)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")  # the tracer export uses
def test_unpadded_leaves_the_masks_out_of_a_traced_graph():
    """Under crnnfw.unpadded() a traced backbone and BiLSTM have no padding masks: same results
    for unpadded batches, different ones for padded batches (what the masks were for)."""
    torch.manual_seed(0)
    backbone = CNNBackbone(CNNConfig(channels=[4, 8], pools=[[2, 2], [2, 1]]), in_channels=1).eval()
    encoder = LSTMEncoder(LSTMConfig(hidden_size=8, num_layers=1, bidirectional=True), in_features=8 * 8).eval()

    class Stages(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone, self.encoder = backbone, encoder

        def forward(self, images, widths):
            features, lengths = self.backbone(images, widths)
            return self.encoder(crnnfw.collapse_height(features, "flatten"), lengths), lengths

    model = Stages()
    trace = (torch.rand(2, 1, 32, 48), torch.tensor([48, 48]))
    with torch.no_grad():
        masked = torch.jit.trace(model, trace)
        with crnnfw.unpadded():
            lean = torch.jit.trace(model, trace)
            features = torch.rand(2, 3, 4, 5)
            assert crnnfw.mask_padding(features, torch.tensor([1, 2])) is features
            assert not crnnfw.masks_needed(torch.tensor([1, 5]), 5)
        assert crnnfw.masks_needed(torch.tensor([1, 5]), 5) and not crnnfw.masks_needed(torch.tensor([5, 5]), 5)
        kinds = [[node.kind() for node in graph.inlined_graph.nodes()] for graph in (masked, lean)]
        assert "aten::lt" in kinds[0] and "aten::gather" in kinds[0]
        assert "aten::lt" not in kinds[1] and "aten::gather" not in kinds[1] and len(kinds[1]) < len(kinds[0])
        same_width = (torch.rand(3, 1, 32, 36), torch.tensor([36, 36, 36]))
        torch.testing.assert_close(lean(*same_width)[0], masked(*same_width)[0], atol=1e-6, rtol=0)
        padded_batch = (torch.rand(2, 1, 32, 36), torch.tensor([36, 21]))
        assert not torch.allclose(lean(*padded_batch)[0][1, :5], masked(*padded_batch)[0][1, :5], atol=1e-4)


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_cnn_blocks_compute_conv_activation_pool(activation):
    """Pooling before a ReLU (cheaper) gives what conv -> activation -> pool gives, values and gradients."""
    torch.manual_seed(0)
    backbone = CNNBackbone(CNNConfig(channels=[6, 8], pools=[[2, 2], [2, 1]], activation=activation), in_channels=1)
    images = torch.randn(3, 1, 16, 20, requires_grad=True)
    features, _ = backbone(images, torch.full((3,), 20))
    expected = images
    for block in backbone.blocks:
        conv, pool = block[0], next(m for m in block if isinstance(m, torch.nn.MaxPool2d))
        activate = next(m for m in block if not isinstance(m, (torch.nn.Conv2d, torch.nn.MaxPool2d)))
        expected = pool(activate(conv(expected)))
    torch.testing.assert_close(features, expected)
    grad = torch.randn_like(features)
    (got,) = torch.autograd.grad(features, images, grad)
    (want,) = torch.autograd.grad(expected, images, grad)
    torch.testing.assert_close(got, want)


def test_cnn_pool_first_pools_before_batch_norm_and_keeps_lengths():
    """``pool_first`` normalises pooled maps (a quarter of the values after a 2x2 pool), with the
    same output shapes and lengths as the default order, and padding still never changes a sample."""
    torch.manual_seed(0)
    options = dict(channels=[6, 8], pools=[[2, 2], [2, 1]], batch_norm=True)
    first = CNNBackbone(CNNConfig(pool_first=True, **options), in_channels=1)
    default = CNNBackbone(CNNConfig(**options), in_channels=1)
    assert [type(m).__name__ for m in first.blocks[0]] == ["Conv2d", "MaxPool2d", "BatchNorm2d", "ReLU"]
    assert [type(m).__name__ for m in default.blocks[0]] == ["Conv2d", "BatchNorm2d", "MaxPool2d", "ReLU"]
    images, widths = torch.randn(3, 1, 16, 20), torch.tensor([20, 13, 7])
    features, lengths = first(images, widths)
    keep = crnnfw.length_mask(widths, 20)[:, None, None].float()
    (conv, pool, norm, activate), later = first.blocks
    expected = activate(norm(pool(conv(images * keep)))) * keep[..., 1::2]
    conv, pool, norm, activate = later
    expected = activate(norm(pool(conv(expected))))
    torch.testing.assert_close(features, expected)
    assert features.shape == default(images, widths)[0].shape
    assert lengths.tolist() == default.out_lengths(widths).tolist() == [10, 6, 3]
    first.eval()
    alone = first(images[2:, :, :, :7], widths[2:])[0]
    torch.testing.assert_close(first(images, widths)[0][2:, :, :, :3], alone)


def test_softmax_head_reads_the_last_valid_step():
    head = SoftmaxHead(SoftmaxConfig(pool="last"), in_features=4, classes=tuple("ab")).eval()
    seq = torch.randn(2, 6, 4)
    lengths = torch.tensor([6, 3])
    changed = seq.clone()
    changed[1, 3:] = 99.0
    torch.testing.assert_close(head(seq, lengths), head(changed, lengths))
    changed[1, 3:] = float("nan")  # whatever sits past the length never reaches the result
    torch.testing.assert_close(head(seq, lengths), head(changed, lengths))
    decoded = head.decode(head(seq, lengths), lengths)
    assert decoded.texts == [head.classes[i] for i in decoded.indices.tolist()]
    assert ((decoded.confidences > 0.5) & (decoded.confidences <= 1)).all()


@dataclass
class LiarConfig:
    extra_steps: int = 1


class LyingBackbone(crnnfw.Backbone):
    """Claims fewer steps than it returns: the build-time check must catch it."""

    def __init__(self, extra: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.out_channels = 4
        self.extra = extra

    def out_height(self, in_height: int) -> int:
        return in_height

    def out_lengths(self, widths: torch.Tensor) -> torch.Tensor:
        return widths

    def forward(self, images, widths):
        return self.conv(images), widths + self.extra


def register_liar(register):
    register("liar", lambda cfg, in_channels, in_height: LyingBackbone(cfg.extra_steps), config=LiarConfig)


def config_with_backbone(folder, name: str):
    """A small MNIST config whose backbone is ``name`` with its default options."""
    path = folder / f"{name}.yaml"
    path.write_text(f"model:\n  backbone:\n    name: {name}\ndata:\n  name: mnist\n  train_limit: 64\n  test_limit: 64\n")
    return path


def test_build_time_check_names_the_stage_that_breaks(extra_plugin, tmp_path):
    extra_plugin("liar_plugin", crnnfw_register_backbones=register_liar)
    registry = get_registry()
    cfg = config.resolve(config.load(config_with_backbone(tmp_path, "liar")), registry)
    data = build_data(cfg, registry)
    with pytest.raises(ModelError, match=r"backbone 'liar' returned lengths \[29\] for widths \[28\]; out_lengths\(\) says \[28\]"):
        build_model(cfg, data, registry)

    bad_head = config.resolve(config.load(MNIST_CONFIG, ["model.backbone.pools=[[4,2],[4,2],[2,1],[2,1]]", "data.train_limit=64", "data.val_size=64", "data.test_limit=64"]), registry)
    with pytest.raises(ModelError, match="model.backbone: 'cnn' shrinks images of height 28 to nothing"):
        build_model(bad_head, data, registry)


def test_component_checks_name_the_config_key(cli):
    result = cli("config", MNIST_CONFIG, "model.backbone.channels=[8,8]")
    assert result.code == 2
    assert result.err == f"crnnfw: error: {MNIST_CONFIG}: model.backbone: pools has 4 entries but channels has 2; give one [h, w] pool per conv\n"
    assert "model.encoder: cell: 'gru2' is not one of lstm, gru" in cli("config", MNIST_CONFIG, "model.encoder.cell=gru2").err
    assert "model.head: pool: 'avg' is not one of last, mean, max" in cli("config", MNIST_CONFIG, "model.head.pool=avg").err


def test_factory_failures_name_the_stage(extra_plugin, cli, tmp_path):
    def register_failing(register):
        def build(cfg, in_channels, in_height):
            raise RuntimeError("no GPU kernels for this")

        register("failing", build, config=LiarConfig)

    extra_plugin("failing_plugin", crnnfw_register_backbones=register_failing)
    result = cli("run", config_with_backbone(tmp_path, "failing"))
    assert result.code == 2
    assert "model.backbone: backbone 'failing' (plugin 'failing_plugin') could not be built: RuntimeError: no GPU kernels for this" in result.err
