"""Using a trained model through the CLI: eval, predict on real image files, export, fine-tuning."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from crnnfw import checkpoint

from .conftest import FP32, MNIST_CONFIG


@pytest.fixture(scope="module")
def digits():
    """Ten real MNIST test digits (uint8 28x28) and their labels."""
    from crnnfw_plugins.mnist import MNISTConfig, mnist_data

    data = mnist_data(MNISTConfig(train_limit=1, test_limit=10))
    return data.test.images[:, 0].numpy(), [str(t) for t in data.test.targets.tolist()]


def test_eval_prints_and_saves_the_metrics(short_run, cli):
    summary = json.loads((short_run / "summary.json").read_text())
    result = cli("eval", short_run, "--json")
    assert result.code == 0, result.err
    payload = json.loads(result.out)
    assert payload["checkpoint"].endswith("best.ckpt") and payload["samples"] == 2000
    assert payload["scores"]["accuracy"] == pytest.approx(summary["best"]["test"]["accuracy"], abs=1e-9)
    val = json.loads(cli("eval", short_run, "--json", "--split", "val", "--out", short_run / "eval-val").out)
    assert val["split"] == "val" and val["scores"]["accuracy"] == pytest.approx(summary["best"]["value"], abs=1e-9)
    rows = payload["report"]["per_class"]
    assert [r["class"] for r in rows] == list("0123456789") and sum(r["count"] for r in rows) == 2000
    confusion = np.array(payload["confusion"])
    assert confusion.sum() == 2000 and np.trace(confusion) == round(payload["scores"]["accuracy"] * 2000)
    folder = short_run / "eval-test"
    assert {p.name for p in folder.iterdir()} == {"predictions.png", "confusion.png", "eval.json"}
    assert Image.open(folder / "confusion.png").size[0] > 300

    table = cli("eval", short_run / "checkpoints" / "last.ckpt", "data.val_size=500", "data.test_limit=500")
    assert table.code == 0
    assert "per class" in table.out and "confusion" in table.out and "500 samples" in table.out


def test_eval_of_a_sequence_model_breaks_down_by_length(tmp_path, cli):
    run = cli(
        "run", "configs/multidigit_ctc.yaml", "data.train_size=512", "data.val_size=200", "data.test_size=200", "trainer.epochs=1", "trainer.batch_size=32", FP32, f"output_dir={tmp_path}", "name=ctc"
    )
    assert run.code == 0, run.err
    (run_dir,) = (tmp_path / "ctc").iterdir()
    assert {"predictions.png", "curves.png"} <= {p.name for p in run_dir.iterdir()}
    assert not (run_dir / "confusion.png").exists()
    payload = json.loads(cli("eval", run_dir, "--json").out)
    lengths = payload["report"]["per_length"]
    assert sum(r["count"] for r in lengths) == 200 and [r["length"] for r in lengths] == sorted(r["length"] for r in lengths)
    assert payload["confusion"] is None and {"accuracy", "cer", "ned", "loss"} <= set(payload["scores"])
    errors = payload["report"]["char_errors"]  # the most frequent character errors, most frequent first
    counts = [row["count"] for row in errors]
    assert errors and counts == sorted(counts, reverse=True) and all(row["truth"] != row["read"] for row in errors)
    assert sum(counts) <= round(payload["scores"]["cer"] * sum(r["count"] * r["length"] for r in lengths))


def test_eval_refuses_what_is_not_a_run(tmp_path, cli):
    result = cli("eval", tmp_path)
    assert result.code == 2 and "without checkpoints/best.ckpt" in result.err
    (tmp_path / "x.ckpt").write_bytes(b"not a checkpoint")
    result = cli("eval", tmp_path / "x.ckpt")
    assert result.code == 2 and "x.ckpt" in result.err and "Traceback" not in result.err


def _save_variants(folder, digits):
    """The same digits drawn the ways users' files come: the reference PNG and its variants."""
    images, labels = digits
    folder.mkdir()
    made = {}
    for i, (image, label) in enumerate(zip(images, labels)):
        Image.fromarray(image).save(folder / f"{i}_plain.png")
        made[f"{i}_plain.png"] = label
    image = images[0]
    Image.fromarray(255 - image).resize((140, 140), Image.Resampling.BILINEAR).save(folder / "v_inverted_scan.jpg", quality=95)
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., 3] = image  # black ink whose shape is only in the alpha channel
    Image.fromarray(rgba, "RGBA").save(folder / "v_rgba.png")
    Image.fromarray(image.astype(np.uint16) * 257).save(folder / "v_16bit.png")
    wide = np.full((50, 160), 255, np.uint8)
    wide[11:39, 66:94] = 255 - image  # dark on light, far wider than tall
    Image.fromarray(wide).convert("RGB").save(folder / "v_wide.bmp")
    Image.fromarray(image[2:26, 8:20]).save(folder / "v_narrow.png")
    return made


def test_predict_reads_real_files_of_every_kind(tmp_path, short_run, cli, digits):
    folder = tmp_path / "images"
    truth = _save_variants(folder, digits)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    result = cli("predict", short_run, folder, tmp_path / "missing.png", "--json")
    assert result.code == 1
    rows = {json.loads(line)["file"].split("/")[-1]: json.loads(line) for line in result.out.splitlines()}
    assert len(rows) == len(truth) + 5 + 2
    assert "broken.png: cannot read it as an image" in rows["broken.png"]["error"]
    assert "no such file" in rows["missing.png"]["error"]
    assert "broken.png" in result.err and "missing.png" in result.err and "Traceback" not in result.err
    right = sum(rows[name]["text"] == label for name, label in truth.items())
    assert right >= 8, rows
    first = rows["0_plain.png"]["text"]
    for variant in ("v_inverted_scan.jpg", "v_rgba.png", "v_16bit.png", "v_wide.bmp"):
        assert rows[variant]["text"] == first, (variant, rows[variant])
        assert 0 <= rows[variant]["confidence"] <= 1
    narrow = rows["v_narrow.png"]["text"]
    assert len(narrow) == 1 and narrow in "0123456789", narrow  # a class, even for an image narrower than the model's input


def test_predict_table_polarity_override_and_exit_code(tmp_path, short_run, cli, digits):
    folder = tmp_path / "images"
    _save_variants(folder, digits)
    table = cli("predict", short_run, folder / "0_plain.png", folder / "v_wide.bmp")
    assert table.code == 0 and "0_plain.png" in table.out and "confidence" in table.out
    forced = cli("predict", short_run, folder / "v_wide.bmp", "--json", "--polarity", "dark-on-light")
    auto = cli("predict", short_run, folder / "v_wide.bmp", "--json")
    assert json.loads(forced.out)["text"] == json.loads(auto.out)["text"]
    with pytest.raises(SystemExit) as exit_info:  # argparse's own usage error
        cli("predict", short_run, folder / "0_plain.png", "--beam", "0")
    assert exit_info.value.code == 2


def test_onnx_export_round_trip_at_several_widths(tmp_path, short_run, cli, digits):
    output = tmp_path / "model.onnx"
    result = cli("export", short_run, "--output", output, "--verify")
    assert result.code == 0, result.err
    assert result.out.count(": ok") >= 4 and "widths [28]" in result.out and "widths [41]" in result.out

    # What a deployment does with onnxruntime and numpy alone (docs/export.md).
    import onnxruntime

    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["decoder"] == "argmax" and meta["input_height"] == "28" and meta["polarity"] == "light-on-dark"
    classes = json.loads(meta["classes"])
    images, labels = digits
    batch = images[:, None].astype(np.float32) / 255
    logits, lengths = session.run(None, {"images": batch, "widths": np.full(len(batch), 28, np.int64)})
    onnx_texts = [classes[i] for i in logits.argmax(-1)]
    assert sum(text == label for text, label in zip(onnx_texts, labels)) >= 8

    folder = tmp_path / "png"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i}.png")
    predicted = [json.loads(line)["text"] for line in cli("predict", short_run, folder, "--json").out.splitlines()]
    assert predicted == onnx_texts


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated upstream, still what C++ loads
def test_unpadded_export_is_smaller_and_says_so(tmp_path, short_run, cli):
    """--unpadded drops the padding masks: fewer nodes, verified on batches of one width, and the
    metadata tells a deployment not to pad."""
    import onnx

    masked, lean = tmp_path / "masked.onnx", tmp_path / "lean.onnx"
    assert cli("export", short_run, "-o", masked).code == 0
    result = cli("export", short_run, "-o", lean, "--unpadded", "--verify")
    assert result.code == 0, result.err
    assert "unpadded" in result.out.splitlines()[0]
    rows = [line.strip() for line in result.out.splitlines() if line.strip().startswith("widths")]
    assert len(rows) >= 5 and all(row.endswith(": ok") for row in rows)
    batched = rows[-1].split("]")[0].removeprefix("widths [").split(", ")
    assert len(batched) >= 2 and len(set(batched)) == 1
    graphs = [onnx.load(str(path)) for path in (masked, lean)]
    meta = [{p.key: p.value for p in graph.metadata_props} for graph in graphs]
    assert meta[0]["padding"] == "masked" and meta[1]["padding"] == "unpadded" and "as wide as its batch" in meta[1]["inputs"]
    assert len(graphs[1].graph.node) < len(graphs[0].graph.node) - 20

    scripted = cli("export", short_run, "--format", "torchscript", "-o", tmp_path / "lean.pt", "--unpadded", "--verify")
    assert scripted.code == 0 and scripted.out.count(": ok") >= 5, scripted.err
    files: dict[str, bytes] = {"crnnfw.json": b""}
    torch.jit.load(str(tmp_path / "lean.pt"), _extra_files=files)
    assert json.loads(files["crnnfw.json"])["padding"] == "unpadded"


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated upstream, still what C++ loads
def test_torchscript_export(tmp_path, short_run, cli):
    result = cli("export", short_run / "checkpoints" / "last.ckpt", "--format", "torchscript", "-o", tmp_path / "m.pt", "--verify")
    assert result.code == 0, result.err
    files: dict[str, bytes] = {"crnnfw.json": b""}
    scripted = torch.jit.load(str(tmp_path / "m.pt"), _extra_files=files)
    assert json.loads(files["crnnfw.json"])["input_height"] == "28"
    logits, lengths = scripted(torch.zeros(2, 1, 28, 45), torch.tensor([45, 30]))
    assert logits.shape == (2, 10) and lengths.tolist() == [11, 7]


def test_fine_tuning_loads_what_fits(tmp_path, short_run, cli):
    same = cli(
        "run",
        MNIST_CONFIG,
        "--init-from",
        short_run,
        FP32,
        "data.train_limit=512",
        "data.val_size=1000",
        "data.test_limit=1000",
        "trainer.epochs=1",
        "trainer.optimizer.lr=0.0002",
        f"output_dir={tmp_path}",
        "name=same",
    )
    assert same.code == 0, same.err
    assert "loaded 18 of 18 tensors" in same.out and "re-initialised" not in same.out
    (run_dir,) = (tmp_path / "same").iterdir()
    assert json.loads((run_dir / "summary.json").read_text())["final"]["test_accuracy"] >= 0.93
    assert checkpoint.load(run_dir / "checkpoints" / "last.ckpt")["config"]["trainer"]["init_from"] == str(short_run / "checkpoints" / "best.ckpt")
    assert "loaded 18 of 18 tensors" in (run_dir / "train.log").read_text()


def test_fine_tuning_across_charsets_reinitialises_the_head(tmp_path, short_run, cli):
    """MNIST digits (softmax over 10 classes) to strings over an 11-character CTC charset."""
    result = cli(
        "run",
        MNIST_CONFIG,
        "--init-from",
        short_run,
        FP32,
        "data.name=multidigit",
        "data.height=28",
        "data.cell_min=12",
        "data.gap_min=0",
        "data.train_size=256",
        "data.val_size=64",
        "data.test_size=64",
        "model.head.name=ctc",
        "model.head.charset=0123456789-",
        "trainer.epochs=1",
        "trainer.batch_size=32",
        f"output_dir={tmp_path}",
        "name=ctc",
    )
    assert result.code == 0, result.err
    assert "re-initialised the head" in result.out and "head.classifier" in result.out
    loaded = next(line for line in result.out.splitlines() if "loaded" in line)
    assert "loaded 16 of 18 tensors" in loaded  # the backbone (8) and the encoder (8)
    assert "unused from the checkpoint" in result.out


def test_init_from_a_missing_checkpoint_fails_first(tmp_path, cli):
    result = cli("run", MNIST_CONFIG, "--init-from", tmp_path / "nope.ckpt", f"output_dir={tmp_path}")
    assert result.code == 2 and "nope.ckpt: no such checkpoint" in result.err
    assert not any(tmp_path.iterdir())


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_a_fixed_width_model_exports_at_its_own_width(tmp_path, cli):
    """The fast recipe's flatten encoder reads exactly 7 steps: export traces and verifies at 28 px only."""
    fast = MNIST_CONFIG.parent / "mnist_fast.yaml"
    assert cli("run", fast, FP32, "data.train_limit=256", "data.val_size=100", "data.test_limit=100", "trainer.epochs=1", f"output_dir={tmp_path}", "name=fast").code == 0
    (run_dir,) = (tmp_path / "fast").iterdir()
    for fmt in ("onnx", "torchscript"):
        result = cli("export", run_dir, "--format", fmt, "-o", tmp_path / f"fast.{fmt}", "--verify")
        assert result.code == 0, result.err
        rows = [line for line in result.out.splitlines() if line.strip().startswith("widths")]
        assert rows and all(row.strip().startswith("widths [28]:") and row.endswith(": ok") for row in rows), result.out
