"""The captcha dataset: the captcha package's unseedable randomness made reproducible."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import ROOT

pytest.importorskip("captcha")

DIGEST = """
import hashlib
from crnnfw import config
from crnnfw.datasets import build_data
from crnnfw.plugins import get_registry
cfg = config.resolve(config.load("{config}", ["data.val_size=8", "data.test_size=8", "data.train_size=8"]), get_registry())
data = build_data(cfg, get_registry())
test = data.test
print(hashlib.sha256(test.pixels.numpy().tobytes() + test.targets.numpy().tobytes()).hexdigest(), *test.target_lengths.tolist())
"""


def test_the_test_split_is_the_same_in_every_process():
    code = DIGEST.format(config=ROOT / "configs" / "captcha_ctc.yaml")
    first, second = (subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300) for _ in range(2))
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    lengths = [int(n) for n in first.stdout.split()[1:]]
    assert len(lengths) == 8 and all(4 <= n <= 6 for n in lengths)


def test_training_images_are_fresh_each_epoch_and_val_differs_from_test():
    import torch

    from crnnfw import config
    from crnnfw.datasets import build_data
    from crnnfw.plugins import get_registry

    cfg = config.resolve(config.load(ROOT / "configs" / "captcha_ctc.yaml", ["data.val_size=16", "data.test_size=16", "data.train_size=32", "data.workers=1"]), get_registry())
    data = build_data(cfg, get_registry())
    assert not torch.equal(data.val.targets, data.test.targets) and data.height == 60 == data.val.pixels.shape[1]
    assert set(data.classes) == set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    generator = torch.Generator().manual_seed(0)
    epochs = [[text for b in data.train.batches(16, shuffle=True, generator=generator) for text in b.target_texts(data.classes)] for _ in range(2)]
    assert len(epochs[0]) == len(epochs[1]) == 32  # drawn in a worker process, every image
    assert all(4 <= len(text) <= 6 and set(text) <= set(data.classes) for text in epochs[0])
    assert set(epochs[0]).isdisjoint(epochs[1])  # fresh strings, not the first epoch's again
