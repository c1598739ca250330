"""The Python API: crnnfw.train, crnnfw.load and the Recognizer, on real MNIST runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import crnnfw

from .conftest import FP32, MNIST_CONFIG


@pytest.fixture(scope="module")
def digits():
    """Ten real MNIST test digits (uint8 28x28) and their labels."""
    from crnnfw_plugins.mnist import MNISTConfig, mnist_data

    data = mnist_data(MNISTConfig(train_limit=1, test_limit=10))
    return data.test.images[:, 0].numpy(), [str(t) for t in data.test.targets.tolist()]


def test_every_kind_of_image_reads_the_same(short_run, digits, tmp_path):
    images, labels = digits
    recognizer = crnnfw.load(short_run)
    assert recognizer.classes == tuple("0123456789") and recognizer.run_dir == short_run
    Image.fromarray(images[0]).save(tmp_path / "first.png")
    as_file, as_pil, as_array, as_tensor, as_float = recognizer.predict(
        [
            tmp_path / "first.png",
            Image.fromarray(images[0]),
            images[0],
            torch.from_numpy(images[0])[None],
            images[0] / 255.0,
        ]
    )
    assert as_file.path == tmp_path / "first.png" and as_pil.path is None and as_pil.index == 1
    texts = {p.text for p in (as_file, as_pil, as_array, as_tensor, as_float)}
    assert len(texts) == 1 and texts.pop() in "0123456789" and as_file.text
    confidences = [p.confidence for p in (as_file, as_pil, as_array, as_tensor, as_float)]
    assert max(confidences) - min(confidences) < 1e-4
    batch = recognizer(list(images))  # calling it is predict
    assert sum(p.text == label for p, label in zip(batch, labels)) >= 8
    [single] = recognizer.predict(images[3])  # one array is one image, not a list of rows
    assert single.text == batch[3].text


def test_bad_images_carry_their_error_and_the_rest_are_read(short_run, digits):
    images, _ = digits
    results = crnnfw.load(short_run).predict([images[0], np.zeros((2, 3, 4, 5)), images[1] * 2.0, "nowhere.png", images[1]])
    assert results[0].text and results[4].text
    assert "is not an image" in results[1].error and results[1].text is None
    assert "float pixels must lie in [0, 1]" in results[2].error
    assert "no such file" in results[3].error
    assert json.loads(json.dumps(results[1].as_dict()))["index"] == 1


def test_evaluate_and_export(short_run, tmp_path):
    summary = json.loads((short_run / "summary.json").read_text())
    recognizer = crnnfw.load(short_run)
    payload = recognizer.evaluate("test", out=tmp_path / "eval")
    assert payload["scores"]["accuracy"] == pytest.approx(summary["best"]["test"]["accuracy"], abs=1e-6)
    assert (tmp_path / "eval" / "eval.json").is_file() and payload["pictures"]
    assert recognizer.evaluate("val")["samples"] == 1000
    written = recognizer.export(tmp_path / "model.onnx", verify=True)
    assert written.stat().st_size > 100_000
    with pytest.raises(crnnfw.CrnnfwError, match="already exists; pass --force"):
        recognizer.export(tmp_path / "model.onnx")


def test_another_dataset_reads_images_as_the_model_does(short_run):
    """Swapping the dataset by override (files through ``lines``) keeps the model's input: the
    MNIST model's 28 px, one channel and ink framing, unless the override says otherwise."""
    files = ["data.name=lines", "data.train=labels.txt", "data.test=labels.txt", "data.charset=0123456789"]
    data = crnnfw.load(short_run, overrides=files).config.data
    assert (data.height, data.channels, data.ink_height) == (28, 1, pytest.approx(20 / 28))
    assert crnnfw.load(short_run, overrides=[*files, "data.ink_height=null"]).config.data.ink_height is None
    assert crnnfw.load(short_run, overrides=["data.test_limit=100"]).config.data.name == "mnist"


def test_train_from_a_mapping_with_keyword_options(tmp_path):
    config = {"name": "api", "data": {"name": "mnist", "train_limit": 512, "val_size": 128, "test_limit": 128}}
    run = crnnfw.train(config, [FP32], output_dir=str(tmp_path), trainer={"epochs": 2, "batch_size": 64})
    assert run.run_dir.parent == tmp_path / "api"
    assert [row["epoch"] for row in run.history] == [1, 2] and run.summary["epochs"] == 2
    text = run.load().predict(np.zeros((28, 28), dtype=np.uint8))[0].text
    assert len(text) == 1 and text in "0123456789"
    more = crnnfw.train(None, resume=run.run_dir, trainer={"epochs": 3})
    assert more.run_dir == run.run_dir and [row["epoch"] for row in more.history] == [1, 2, 3]
    with pytest.raises(crnnfw.ConfigError, match="trainer.epoch"):
        crnnfw.train(MNIST_CONFIG, ["trainer.epoch=3"])


def test_build_gives_the_checked_model_and_data_a_run_would_train(tmp_path):
    built = crnnfw.build(MNIST_CONFIG, [FP32, "data.train_limit=128", "data.val_size=64", "data.test_limit=64"], trainer={"batch_size": 32})
    assert built.config.trainer.batch_size == 32 and len(built.data.train) == 128 and len(built.data.val) == 64
    batch = next(built.data.train.batches(32, shuffle=False))
    logits, lengths = built.model(batch.images, batch.widths)
    assert logits.shape == (32, len(built.data.classes)) and built.model.head.loss(logits, lengths, batch).detach().item() > 0
    with pytest.raises(crnnfw.ConfigError, match="model.backbone.name: unknown backbone 'nope'"):
        crnnfw.build(MNIST_CONFIG, ["model.backbone.name=nope"])
    facts = crnnfw.machine()
    assert facts["threads"] >= 1 and facts["cpu_capability"] and isinstance(facts["native_bf16"], bool)


def test_the_api_docs_run_as_written(tmp_path, monkeypatch):
    """Every code block of docs/api.md, in order, in one namespace (the blocks build on each other)."""
    import re

    from .conftest import ROOT

    text = (ROOT / "docs" / "api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 3
    monkeypatch.chdir(ROOT)  # the docs name configs/ relative to the checkout
    code = "\n".join(blocks).replace("/tmp/crnnfw-api", str(tmp_path))
    namespace: dict = {}
    exec(compile(code, "docs/api.md", "exec"), namespace)
    assert namespace["run"].summary["epochs"] == 1
    assert len(namespace["predictions"]) == 4 and all(p.text for p in namespace["predictions"])
    assert namespace["path"].is_file()
