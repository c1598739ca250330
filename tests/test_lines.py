"""The ``lines`` dataset end to end, on real image files written here: every label format, the
charset and its policies, the val split, image kinds, width policies, the decode cache,
``crnnfw data`` and a real training run read back by ``crnnfw predict``."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import crnnfw
from PIL import Image, ImageDraw, ImageFont

from crnnfw import config
from crnnfw.datasets import build_data
from crnnfw.plugins import get_registry

from .conftest import FP32, ROOT
from .test_labels import write_samples

LINES_CONFIG = ROOT / "configs" / "lines_ctc.yaml"
FONT = ImageFont.load_default(size=22)
WORDS = ["Überprüfung", "Привет мир", "数字 42", "NA", "0012", "a, b"]


def render(path: Path, text: str, *, ink: int = 20, paper: int = 235, mode: str = "L", pad: int = 6) -> Path:
    """``text`` drawn dark on light, 32 px high, as PNG or JPEG by the file name."""
    width = int(FONT.getlength(text)) + 2 * pad
    image = Image.new("L", (width, 32), paper)
    ImageDraw.Draw(image).text((pad, 3), text, fill=ink, font=FONT)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.convert(mode).save(path)
    return path


def labelled(folder: Path, words: list[str]) -> list[tuple[str, str]]:
    """One image per word in ``folder``; (file name, label) pairs."""
    pairs = [(f"w{i:03d}.png", word) for i, word in enumerate(words)]
    for name, word in pairs:
        render(folder / name, word)
    return pairs


def tsv(path: Path, pairs: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f"{name}\t{text}\n" for name, text in pairs), encoding="utf-8")
    return path


def checked(cli, *overrides: str, config_path: Path = LINES_CONFIG):
    result = cli("data", config_path, *overrides, "--json")
    return result, (json.loads(result.out) if result.out.strip().startswith("{") else None)


@pytest.fixture
def words(tmp_path) -> tuple[Path, list[tuple[str, str]]]:
    folder = tmp_path / "words"
    return folder, labelled(folder, WORDS)


@pytest.mark.parametrize("fmt", ["tsv", "csv", "json", "jsonl", "folder", "lmdb"])
def test_every_format_reads_the_same_samples(fmt, words, tmp_path, cli):
    folder, pairs = words
    if fmt in ("tsv", "csv", "json", "jsonl"):
        source = write_samples(fmt, folder, {}, pairs)
    elif fmt == "folder":
        source = tmp_path / "named"
        source.mkdir()
        for i, (name, text) in enumerate(pairs):  # Keras captcha style: the label, then a number
            (folder / name).rename(source / f"{text}_{i:04d}.png")
    else:
        pytest.importorskip("lmdb")
        source = tmp_path / "words.lmdb"
        converted = cli("data", "convert", tsv(folder / "labels.txt", pairs), source)
        assert converted.code == 0, converted.err
        assert f"{len(pairs)} samples" in converted.out
    result, report = checked(cli, f"data.train={source}", f"data.val={source}", f"data.test={source}", f"output_dir={tmp_path / 'runs'}")
    assert result.code == 0, result.err + result.out
    assert report["ok"] and report["splits"]["train"]["samples"] == len(pairs)
    assert set(report["charset"]) == set("".join(text for _, text in pairs))
    assert report["charset"]["Ü"] == 1 and report["charset"]["2"] == 2
    assert Path(report["pictures"][0]).is_file()


def test_val_is_held_out_the_same_way_every_time_and_never_trained_on(tmp_path):
    folder = tmp_path / "many"
    pairs = labelled(folder, [f"{i:03d}" for i in range(60)])
    source = tsv(folder / "labels.txt", pairs)

    def build():
        overrides = [f"data.train={source}", f"data.test={source}", "data.val_fraction=0.25", "data.cache=off"]
        cfg = config.resolve(config.load(LINES_CONFIG, overrides), get_registry())
        return build_data(cfg, get_registry())

    first, second = build(), build()
    assert first.val.places == second.val.places and first.train.places == second.train.places
    assert not set(first.val.places) & set(first.train.places)
    assert len(first.val) + len(first.train) == 60 and 5 <= len(first.val) <= 25
    assert any("held out of train" in note for note in first.notes)


def test_unknown_characters_error_drop_or_skip_and_are_counted(tmp_path, cli):
    folder = tmp_path / "chars"
    train = tsv(folder / "train.txt", labelled(folder, ["AB", "BA", "AAB"]))
    render(folder / "z.png", "AZ")
    test = tsv(folder / "test.txt", [("w000.png", "AB"), ("z.png", "AZ")])
    common = [f"data.train={train}", f"data.val={train}", f"data.test={test}", f"output_dir={tmp_path / 'runs'}"]
    result, report = checked(cli, *common)
    assert result.code == 1 and not report["ok"]
    (problem,) = report["problems"]
    assert problem["kind"] == "unknown character" and problem["where"].endswith("test.txt:2") and "Z" in problem["detail"]
    run = cli("run", LINES_CONFIG, *common, FP32)
    assert run.code != 0 and "unknown character" in run.err and "test.txt:2" in run.err
    assert not (tmp_path / "runs" / "lines_ctc").exists() or not any((tmp_path / "runs" / "lines_ctc").glob("2*"))
    _, dropped = checked(cli, *common, "data.unknown=drop")
    assert dropped["ok"] and dropped["splits"]["test"]["samples"] == 1
    assert any("dropped 1 samples" in note for note in dropped["notes"])
    _, skipped = checked(cli, *common, "data.unknown=skip")
    assert skipped["splits"]["test"]["samples"] == 2 and any("skipped 1 characters" in note for note in skipped["notes"])


def test_dictionary_file_case_folding_and_nfc(tmp_path, cli):
    folder = tmp_path / "dict"
    decomposed = "e\u0301t\u00e9"  # 'été' with one accent combining, one precomposed: one character after NFC
    train = tsv(folder / "train.txt", labelled(folder, ["AB C", decomposed.upper()]))
    dictionary = folder / "dict.txt"
    dictionary.write_text("a\nb\nc\n<space>\né\nt\nz\n", encoding="utf-8")
    result, report = checked(cli, f"data.train={train}", f"data.val={train}", f"data.test={train}", f"data.dictionary={dictionary}", "data.case=lower", f"output_dir={tmp_path / 'runs'}")
    assert result.code == 0, result.out
    assert list(report["charset"]) == list("abc é") + ["t", "z"]  # the dictionary's order
    assert report["charset"]["é"] == 2 and report["charset"][" "] == 1 and report["charset"]["z"] == 0


def test_data_check_counts_output_steps_per_character(tmp_path, cli):
    folder = tmp_path / "steps"
    render(folder / "tight.png", "ABCDEFGH", pad=2)
    render(folder / "loose.png", "AB", pad=60)
    source = tsv(folder / "labels.txt", [("tight.png", "ABCDEFGH"), ("loose.png", "AB")])
    result, report = checked(cli, f"data.train={source}", f"data.val={source}", f"data.test={source}", f"output_dir={tmp_path / 'runs'}")
    assert result.code == 0, result.out
    rows = report["splits"]["test"]["steps_per_character"]
    assert sum(count for _, count in rows) == 2 and rows[0][1] == 1 and rows[-1][1] == 1
    tight, loose = int(rows[0][0].split("-")[0]), int(rows[-1][0].split("-")[-1])
    assert 1 <= tight <= 4 and loose >= 12, rows  # about 26 steps for 8 characters, 37 for 2


def test_images_of_every_kind_come_out_alike(tmp_path):
    folder = tmp_path / "kinds"
    render(folder / "grey.png", "AB")
    render(folder / "colour.jpg", "AB", mode="RGB")
    render(folder / "palette.png", "AB", mode="P")
    render(folder / "light_on_dark.png", "AB", ink=230, paper=20)
    grey = np.asarray(Image.open(folder / "grey.png"), dtype=np.uint16)
    Image.fromarray(grey * 257).save(folder / "sixteen.png")  # 16 bits a pixel
    upright = Image.open(folder / "grey.png")
    exif = Image.Exif()
    exif[0x0112] = 8  # rotated 90 degrees: the viewer turns it back
    upright.rotate(-90, expand=True).save(folder / "rotated.jpg", exif=exif)
    names = ["grey.png", "colour.jpg", "palette.png", "light_on_dark.png", "sixteen.png", "rotated.jpg"]
    source = tsv(folder / "labels.txt", [(n, "AB") for n in names])
    cfg = config.resolve(config.load(LINES_CONFIG, [f"data.train={source}", f"data.val={source}", f"data.test={source}", "data.cache=off"]), get_registry())
    data = build_data(cfg, get_registry())
    batch = data.test.batch(torch.arange(len(names)))
    widths = batch.widths.tolist()
    assert max(widths) - min(widths) <= 1, widths  # the rotated JPEG was turned upright
    for i in range(len(names)):
        image = batch.images[i, 0, :, : widths[i]]
        assert image.shape[0] == 32
        assert float(image[:, :3].mean()) < 0.15 and float(image.max()) > 0.6, data.test.places[i]  # ink bright, paper dark


def test_too_wide_images_squeeze_drop_or_error(tmp_path, cli):
    folder = tmp_path / "wide"
    pairs = labelled(folder, ["AB", "AB AB AB AB AB AB"])
    source = tsv(folder / "labels.txt", pairs)
    common = [f"data.train={source}", f"data.val={source}", f"data.test={source}", "data.max_width=100", "data.cache=off", f"output_dir={tmp_path / 'runs'}"]
    _, squeezed = checked(cli, *common)
    assert squeezed["ok"] and squeezed["splits"]["test"]["widths"][-1][0].endswith("100")
    _, dropped = checked(cli, *common, "data.too_wide=drop")
    assert dropped["splits"]["test"]["samples"] == 1 and any("too wide (dropped)" in note for note in dropped["notes"])
    result, refused = checked(cli, *common, "data.too_wide=error")
    assert result.code == 1 and refused["problems"][0]["kind"] == "too wide" and refused["problems"][0]["where"].endswith("labels.txt:2")


def test_decoded_images_are_cached_by_content(tmp_path):
    folder = tmp_path / "cached"
    pairs = labelled(folder, ["AB", "BA", "ABBA"])
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    source = tsv(folder / "labels.txt", [pairs[0], ("broken.png", "AB"), *pairs[1:]])
    cache = tmp_path / "cache"
    overrides = [f"data.train={source}", f"data.val={source}", f"data.test={source}", f"data.cache_dir={cache}", "data.bad_samples=skip"]

    def build():
        return build_data(config.resolve(config.load(LINES_CONFIG, overrides), get_registry()), get_registry())

    first = build()
    (stored,) = cache.glob("lines-*.pt")
    again = build()
    assert list(cache.glob("lines-*.pt")) == [stored]
    assert torch.equal(first.test.pixels, again.test.pixels) and again.test.places == first.test.places
    assert len(again.test) == 3 and any("problem samples skipped" in note for note in again.notes)  # the broken one, counted
    render(folder / "w000.png", "AB", ink=120)  # same file, new content
    changed = build()
    assert len(list(cache.glob("lines-*.pt"))) == 2 and not torch.equal(changed.test.pixels, first.test.pixels)


def test_a_model_trained_from_files_reads_them_back(tmp_path, cli):
    """Digit strings drawn in one font: 4 epochs of 1,600 images (about 35 s on a 2-core EPYC) read
    all 200 test strings right (measured: 100% from the third epoch)."""
    rng = random.Random(0)
    folder = tmp_path / "digits"
    pairs = []
    for i in range(1800):
        text = "".join(rng.choice("0123456789") for _ in range(rng.randint(2, 4)))
        render(folder / f"{i:04d}.png", text, ink=rng.randint(0, 80), paper=rng.randint(180, 255))
        pairs.append((f"{i:04d}.png", text))
    train, test = tsv(folder / "train.txt", pairs[:1600]), tsv(folder / "test.txt", pairs[1600:])
    result = cli("run", LINES_CONFIG, FP32, f"data.train={train}", f"data.test={test}", "trainer.epochs=4", f"output_dir={tmp_path / 'runs'}", "name=digits")
    assert result.code == 0, result.err
    (run_dir,) = (tmp_path / "runs" / "digits").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final"]["test_cer"] <= 0.05 and summary["final"]["test_accuracy"] >= 0.9, summary["final"]
    predicted = [json.loads(line) for line in cli("predict", run_dir, *(folder / n for n, _ in pairs[1600:1700]), "--json").out.splitlines()]
    right = sum(p["text"] == text for p, (_, text) in zip(predicted, pairs[1600:1700]))
    assert right >= 90, predicted[:5]  # predict prepares the files as training did


def test_streamed_batches_decode_as_they_go_and_cover_the_split(tmp_path):
    folder = tmp_path / "stream"
    pairs = labelled(folder, [f"{i:02d}" * (1 + i % 3) for i in range(40)])
    render(folder / "later.png", "11")
    (folder / "broken.png").write_bytes(b"not an image")
    source = tsv(folder / "labels.txt", [*pairs, ("later.png", "11"), ("broken.png", "22")])
    overrides = [f"data.train={source}", f"data.val={source}", f"data.test={source}", "data.cache=stream", "data.workers=2"]
    with pytest.raises(crnnfw.DataProblems, match="undecodable image.*labels.txt:42: cannot read it as an image .not a format"):
        build_data(config.resolve(config.load(LINES_CONFIG, overrides), get_registry()), get_registry())  # from the headers, before training
    data = build_data(config.resolve(config.load(LINES_CONFIG, [*overrides, "data.bad_samples=skip"]), get_registry()), get_registry())
    assert len(data.train) == 41 and data.train.places[0].endswith("labels.txt:1")
    (folder / "later.png").write_bytes(b"overwritten after the data was read")
    batches = list(data.train.batches(8, shuffle=True, generator=torch.Generator().manual_seed(0)))
    texts = sorted(t for b in batches for t in b.target_texts(data.classes))
    assert texts == sorted(text for _, text in pairs)  # every readable sample once; the spoilt one left out
    assert data.train.failures == 1 and any("streamed" in note for note in data.notes)
    assert data.train.epoch_report() == "1 image could not be decoded and was left out of its batch"
    assert data.train.epoch_report() is None  # each failure is reported once
    spread = int(data.train.widths.max() - data.train.widths.min())
    for batch in batches:
        assert batch.images.shape[2] == 32 and batch.images.shape[-1] == int(batch.widths.max())
    assert sum(int(b.widths.max() - b.widths.min()) for b in batches) / len(batches) < spread / 2  # grouped by width
    memory = build_data(config.resolve(config.load(LINES_CONFIG, [*overrides[:3], "data.cache=auto", "data.bad_samples=skip", f"data.cache_dir={tmp_path / 'cache'}"]), get_registry()), get_registry())
    assert type(memory.train).__name__ == "PackedSplit"  # a small set fits in memory
