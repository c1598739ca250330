"""The ``printed`` dataset (text rendered offline with TrueType fonts) and ``crnnfw data render``."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import ImageDraw, ImageFont

from crnnfw import DataError, config
from crnnfw.datasets import build_data
from crnnfw.plugins import get_registry
from crnnfw_plugins.printed import PrintedConfig, coverage, lookalikes, printed_data

from .conftest import ROOT
from .test_lines import labelled, tsv

LINES_CONFIG = ROOT / "configs" / "lines_ctc.yaml"
DEJAVU = Path("/usr/share/fonts/truetype/dejavu")
SMALL = ["data.name=printed", "data.train_size=64", "data.val_size=16", "data.test_size=24", "data.workers=1"]
DIGEST = """
import hashlib
from crnnfw import config
from crnnfw.datasets import build_data
from crnnfw.plugins import get_registry
cfg = config.resolve(config.load({path!r}, {overrides!r}), get_registry())
data = build_data(cfg, get_registry())
print(hashlib.sha256(data.test.pixels.numpy().tobytes() + repr(data.test.targets.tolist()).encode()).hexdigest())
"""


def test_the_test_split_is_the_same_in_another_process():
    cfg = config.resolve(config.load(LINES_CONFIG, SMALL), get_registry())
    data = build_data(cfg, get_registry())
    here = hashlib.sha256(data.test.pixels.numpy().tobytes() + repr(data.test.targets.tolist()).encode()).hexdigest()
    there = subprocess.run([sys.executable, "-c", DIGEST.format(path=str(LINES_CONFIG), overrides=SMALL)], capture_output=True, text=True, check=True).stdout.strip()
    assert here == there
    assert len(data.test) == 24 and data.test.pixels.shape[1] == 32 and len(data.classes) >= 70
    batch = next(data.train.batches(16, shuffle=True))
    assert batch.images.shape[0] == 16 and float(batch.images.max()) > 0.5  # light ink on dark, like every dataset


def test_glyph_coverage_is_checked_so_no_box_is_drawn(tmp_path):
    builtin = ImageFont.load_default(size=24)
    assert coverage(builtin, "Ab 1数") == {"A", "b", " ", "1"}  # Pillow's font has no CJK glyph
    empty = tmp_path / "no_fonts"
    empty.mkdir()
    with pytest.raises(DataError, match="no font has a glyph for every character"):
        printed_data(PrintedConfig(charset="AB数", fonts=str(empty), train_size=4, val_size=2, test_size=2))
    data = printed_data(PrintedConfig(charset="AB", fonts=str(empty), train_size=4, val_size=2, test_size=2))
    assert any("Pillow's built-in font" in note for note in data.notes)  # said, not silent
    lines = tmp_path / "text.txt"
    lines.write_text("AB\n数字\nBA\n", encoding="utf-8")
    data = printed_data(PrintedConfig(text_file=str(lines), fonts=str(empty), train_size=4, val_size=4, test_size=4))
    assert set(data.classes) == {"A", "B"} and any("1 of 3 text lines left out" in note for note in data.notes)


def test_render_writes_files_the_lines_dataset_reads_back(tmp_path, cli):
    out = tmp_path / "rendered"
    result = cli("data", "render", LINES_CONFIG, out, "12", *SMALL, "--split", "test")
    assert result.code == 0, result.err
    pairs = [line.split("\t", 1) for line in (out / "labels.txt").read_text(encoding="utf-8").splitlines()]
    assert len(pairs) == 12 and all((out / name).is_file() for name, _ in pairs)
    cfg = config.resolve(config.load(LINES_CONFIG, SMALL), get_registry())
    data = build_data(cfg, get_registry())
    everything = data.test.batch(torch.arange(len(data.test))).target_texts(data.classes)
    texts = [text for _, text in pairs]
    assert len(set(texts)) == 12 and set(texts) <= set(everything)
    mean = sum(map(len, everything)) / len(everything)  # 12 of 24: drawn over the split, not its 12 narrowest
    assert sum(map(len, texts)) / 12 > mean - 3 > sum(sorted(map(len, everything))[:12]) / 12, (texts, everything)
    again = cli("data", "render", LINES_CONFIG, out, "20", *SMALL)
    assert again.code != 0 and "already exists" in again.err
    read = cli("data", LINES_CONFIG, f"data.train={out / 'labels.txt'}", f"data.val={out / 'labels.txt'}", f"data.test={out / 'labels.txt'}", f"output_dir={tmp_path / 'runs'}", "--json")
    assert read.code == 0, read.out


def test_render_writes_samples_without_training_augmentation(tmp_path, cli):
    folder = tmp_path / "words"
    source = tsv(folder / "labels.txt", labelled(folder, ["AB", "CD", "EF", "GH"]))
    common = [f"data.train={source}", f"data.val={source}", f"data.test={source}", "data.cache=off", "--split", "train"]
    plain = cli("data", "render", LINES_CONFIG, tmp_path / "plain", "4", *common)
    augmented = cli("data", "render", LINES_CONFIG, tmp_path / "augmented", "4", *common, "data.augment.enabled=true", "data.augment.noise=0.5")
    assert plain.code == 0 and augmented.code == 0, plain.err + augmented.err
    assert (tmp_path / "plain" / "labels.txt").read_text() == (tmp_path / "augmented" / "labels.txt").read_text()
    for name in sorted((tmp_path / "plain" / "images").iterdir()):
        assert name.read_bytes() == (tmp_path / "augmented" / "images" / name.name).read_bytes()


@pytest.mark.skipif(not (DEJAVU / "DejaVuSans.ttf").is_file(), reason="needs the DejaVu fonts (Debian's fonts-dejavu-core)")
def test_random_strings_draw_lookalikes_only_in_fonts_that_tell_them_apart(tmp_path, monkeypatch):
    fonts = tmp_path / "fonts"
    fonts.mkdir()
    for name in ("DejaVuSans.ttf", "DejaVuSansMono.ttf"):
        shutil.copy(DEJAVU / name, fonts / name)
    sans, mono = str(fonts / "DejaVuSans.ttf"), str(fonts / "DejaVuSansMono.ttf")
    sizes = range(18, 31)
    # Sans: l and I are two plain bars under a pixel apart; Mono's O is the narrow oval Sans draws for 0
    assert lookalikes((sans, mono), "lIxo1O0", sizes) == ({"l", "I"}, {"O"})
    assert lookalikes((mono,), "lIxo1O0", sizes) == (set(),)

    drawn: list[tuple[str, str]] = []  # (character, font file) of every character drawn on a line
    real = ImageDraw.ImageDraw.text

    def spy(self, xy, text, fill=None, font=None, *args, **kwargs):
        if fill != 255:  # the glyph probes draw at full ink; lines never do
            drawn.append((text, Path(font.path).name))
        return real(self, xy, text, fill, font, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", spy)
    data = printed_data(PrintedConfig(charset="lIxo", fonts=str(fonts), train_size=4, val_size=4, test_size=80))
    assert any("1 of 2 fonts draw I l like another character (DejaVuSans.ttf)" in note for note in data.notes), data.notes
    assert {font for char, font in drawn if char in "lI"} == {"DejaVuSansMono.ttf"}
    assert "DejaVuSans.ttf" in {font for _, font in drawn}  # still drawing the lines without l or I

    drawn.clear()
    data = printed_data(PrintedConfig(charset="xoO0", fonts=str(fonts), train_size=4, val_size=4, test_size=80))
    assert any("1 of 2 fonts draw O like another character (DejaVuSansMono.ttf)" in note for note in data.notes), data.notes
    assert {font for char, font in drawn if char == "O"} == {"DejaVuSans.ttf"}
    assert {font for char, font in drawn if char == "0"} == {"DejaVuSans.ttf", "DejaVuSansMono.ttf"}

    (fonts / "DejaVuSansMono.ttf").unlink()
    data = printed_data(PrintedConfig(charset="lIxo", fonts=str(fonts), train_size=4, val_size=4, test_size=8))
    assert any("every font draws I l like another character" in note for note in data.notes), data.notes
    assert len(data.test) == 8
