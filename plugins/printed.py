"""The ``printed`` dataset: text lines rendered with TrueType fonts, offline.

Text comes from random strings over ``charset`` or from the lines of ``text_file``; fonts from
``fonts`` (a folder), else the system's font folders, else Pillow's built-in font (said in the
run's notes). A font is used for a text only when it has a glyph for every character, so no
character is ever drawn as an empty box; and random strings, which have no context to tell
look-alikes apart, draw a character only in fonts whose glyph for it differs from every other
character's, in that font and in the others (DejaVu Sans draws ``l`` and ``I`` alike, and ``0`` as
DejaVu Sans Mono draws ``O``). Size, letter spacing, baseline, ink and paper tone and light noise
vary per sample. Training lines are rendered afresh every epoch, in
DataLoader worker processes; the val and test splits are rendered once from their own seeds,
so with the same fonts they are the same on every machine. Images go through crnnfw's one
preprocessing, as files read by the ``lines`` dataset do.
"""

from __future__ import annotations

import functools
import os
import random
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

import crnnfw
from crnnfw.data import InputSpec
from crnnfw.images import prepare

#: Letters, digits, punctuation and the space: 82 characters.
PRINTABLE = string.digits + string.ascii_letters + " .,:;!?'\"()-/&%#+*=@"
FONT_FOLDERS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.local/share/fonts", "~/.fonts", "/Library/Fonts", "C:/Windows/Fonts")
PROBE_SIZE = 24


@dataclass
class PrintedConfig:
    charset: str = PRINTABLE  # the characters random strings are drawn from (and the model reads)
    text_file: Optional[str] = None  # UTF-8 text: its non-empty lines are drawn instead of random strings
    min_length: int = 1  # random strings: 1 to 24 characters
    max_length: int = 24
    fonts: Optional[str] = None  # folder of .ttf/.otf/.ttc files; unset: the system's fonts, else Pillow's built-in font
    height: int = 32
    font_size_min: int = 18  # px, before scaling to the height
    font_size_max: int = 30
    spacing_max: int = 2  # extra px between letters, 0 to this, one value per line
    noise: float = 0.04  # standard deviation of Gaussian pixel noise (0 to 1 scale)
    train_size: int = 20000  # lines rendered afresh every epoch
    val_size: int = 1000
    test_size: int = 2000
    val_seed: int = 11
    test_seed: int = 12
    workers: int = 0  # rendering processes for training lines (0: one per core)
    augment: crnnfw.TextAugmentConfig = field(default_factory=crnnfw.TextAugmentConfig)  # on top of the rendering's own variety

    def __post_init__(self) -> None:
        if not self.charset or len(set(self.charset)) != len(self.charset):
            raise ValueError("charset must be non-empty without repeated characters")
        if not 1 <= self.min_length <= self.max_length:
            raise ValueError("need 1 <= min_length <= max_length")
        if not 6 <= self.font_size_min <= self.font_size_max:
            raise ValueError("need 6 <= font_size_min <= font_size_max")
        if min(self.train_size, self.val_size, self.test_size) < 1 or self.height < 8:
            raise ValueError("train_size, val_size and test_size must be >= 1, height >= 8")


def font_files(folder: str | None) -> list[Path]:
    """TrueType/OpenType files in ``folder`` (or the system's font folders), sorted."""
    roots = [Path(folder).expanduser()] if folder else [Path(f).expanduser() for f in FONT_FOLDERS]
    if folder and not roots[0].is_dir():
        raise crnnfw.DataError(f"data.fonts: {folder} is not a folder; give a folder of .ttf/.otf files or unset it")
    found = [p for root in roots if root.is_dir() for p in root.rglob("*") if p.suffix.lower() in (".ttf", ".otf", ".ttc")]
    return sorted(found)


def coverage(font: ImageFont.FreeTypeFont, chars: str) -> set[str]:
    """The characters ``font`` has a glyph for: a missing one renders as the font's .notdef box
    (or nothing), which is what a code point no font has renders as."""
    missing = _drawn(font, "\U0010fffd")
    covered = {" "} & set(chars)
    for char in set(chars) - {" "}:
        drawn = _drawn(font, char)
        if drawn != missing and any(drawn):
            covered.add(char)
    return covered


def _drawn(font: ImageFont.FreeTypeFont, char: str) -> bytes:
    image = Image.new("L", (3 * PROBE_SIZE, 2 * PROBE_SIZE), 0)
    ImageDraw.Draw(image).text((PROBE_SIZE // 2, 4), char, fill=255, font=font)
    return image.tobytes()


@functools.lru_cache(maxsize=16)
def lookalikes(font_files: tuple[str, ...], chars: str, sizes: range) -> tuple[frozenset[str], ...]:
    """For each of ``font_files``, the characters of ``chars`` that random strings must not be
    drawn with in it, because no reader could tell which was meant.

    Glyphs are compared on a shared baseline from their left ink, at every size in ``sizes``
    (hinting makes a pair alike at some sizes only). Two characters of one font are alike when
    no pixel differs by half the pair's peak ink or more (a thin font's hairlines are faint, so
    the peak is each pair's own), and both leave that font (DejaVu Sans's ``l`` and ``I``). Across
    fonts a line shows only some of its font and the scale varies, so the bound is 0.6 of the peak,
    and of the two glyphs the one least like its own character in the other fonts leaves (DejaVu
    Sans Mono's ``O`` is the narrow oval the other DejaVu Sans fonts draw for ``0``).
    Pairs are screened with matrix products per size (clear ink against clear paper); the
    few left are compared exactly.
    """
    chars = "".join(sorted(set(chars) - {" "}))
    nodes = [(f, c) for f in range(len(font_files)) for c in chars]
    out: set[tuple[int, str]] = set()  # (font, character) pairs alike within a font
    across: set[tuple[int, int]] = set()  # node index pairs alike across fonts
    atypical = np.zeros(len(nodes))  # how unlike its character's mean glyph each glyph is, summed over sizes
    for size in sizes:
        glyphs = _glyphs([_open(path, size) for path in font_files], chars, size)
        peak = glyphs.max(axis=(1, 2), keepdims=True)
        shape = (glyphs / np.maximum(peak, 1)).reshape(len(font_files), len(chars), -1)
        atypical += np.abs(shape - shape.mean(axis=0)).mean(axis=2).ravel()
        for i, j in _unclashing(glyphs >= 0.8 * peak, glyphs < 0.2 * peak, np.tile(np.arange(len(chars)), len(font_files))):
            same_font = nodes[i][0] == nodes[j][0]
            if np.abs(glyphs[i] - glyphs[j]).max() < (0.5 if same_font else 0.6) * max(peak[i, 0, 0], peak[j, 0, 0]):
                if same_font:
                    out |= {nodes[i], nodes[j]}
                else:
                    across.add((i, j))
    for i, j in sorted(across):
        if not {nodes[i], nodes[j]} & out:
            out.add(nodes[i] if atypical[i] >= atypical[j] else nodes[j])
    return tuple(frozenset(c for g, c in out if g == f) for f in range(len(font_files)))


def _glyphs(fonts: list[ImageFont.FreeTypeFont], chars: str, size: int) -> np.ndarray:
    """Every character in every font, ``(fonts x chars, H, W)``: on a shared baseline, cut at its left ink."""
    side = 3 * size
    stack = np.zeros((len(fonts) * len(chars), side, side), dtype=np.uint8)
    for k, (font, char) in enumerate((font, char) for font in fonts for char in chars):
        image = Image.new("L", (side, side), 0)
        ImageDraw.Draw(image).text((size, 2 * size), char, fill=255, font=font, anchor="ls")
        left = (image.getbbox() or (0,))[0]
        stack[k, :, : side - left] = np.frombuffer(image.crop((left, 0, side, side)).tobytes(), dtype=np.uint8).reshape(side, side - left)
    rows, columns = stack.any(axis=(0, 2)), np.nonzero(stack.any(axis=(0, 1)))[0]
    return stack[:, rows, : columns[-1] + 1 if len(columns) else 1].astype(np.int16)  # the rows and columns some glyph inks


def _unclashing(ink: np.ndarray, paper: np.ndarray, labels: np.ndarray, block: int = 2048) -> Iterator[tuple[int, int]]:
    """Pairs ``i < j`` of glyphs of different ``labels`` where neither has clear ink on the
    other's clear paper, screened on 2 x 2 cells (ink anywhere in a cell against paper all over
    it: 4x fewer products, still sound) and in blocks of rows, so memory stays bounded for
    large font folders."""
    n, height, width = ink.shape
    cells = ((0, 0), (0, height % 2), (0, width % 2))
    ink = np.pad(ink, cells).reshape(n, -1, 2, (width + 1) // 2, 2).any(axis=(2, 4)).reshape(n, -1).astype(np.float32)
    paper = np.pad(paper, cells, constant_values=True).reshape(n, -1, 2, (width + 1) // 2, 2).all(axis=(2, 4)).reshape(n, -1).astype(np.float32)
    for start in range(0, n, block):
        rows = np.arange(start, min(start + block, n))
        clash = ink[rows] @ paper[start:].T + paper[rows] @ ink[start:].T  # columns before the block were its rows earlier
        keep = (clash == 0) & (labels[rows, None] != labels[None, start:]) & (rows[:, None] < np.arange(start, n)[None, :])
        for i, j in zip(*np.nonzero(keep)):
            yield int(rows[i]), start + int(j)


@dataclass(frozen=True)
class Font:
    source: str  # file path, or "" for Pillow's built-in font
    covers: frozenset  # characters it has a glyph for
    distinct: frozenset  # of those, the ones random strings may be drawn with (see lookalikes)

    def at(self, size: int) -> ImageFont.FreeTypeFont:
        return _open(self.source, size)


def _open(source: str, size: int) -> ImageFont.FreeTypeFont:
    """The font file ``source`` at ``size`` px ("": Pillow's built-in font)."""
    return ImageFont.truetype(source, size) if source else ImageFont.load_default(size=size)


def usable_fonts(config: PrintedConfig) -> tuple[list[Font], str]:
    """Fonts covering at least one character, and a note saying where they came from."""
    chars = config.charset + (Path(config.text_file).read_text(encoding="utf-8") if config.text_file else "")
    fonts = []
    for path in font_files(config.fonts):
        try:
            covers = coverage(_open(str(path), PROBE_SIZE), chars)
        except OSError:
            continue  # not a font Pillow can read
        if covers - {" "}:
            fonts.append(Font(str(path), frozenset(covers), frozenset(covers)))
    if fonts:
        return fonts, f"printed: {len(fonts)} fonts from {config.fonts or 'the system font folders'}"
    drawn = frozenset(coverage(_open("", PROBE_SIZE), chars))
    builtin = Font("", drawn, drawn)
    where = config.fonts or "the system font folders (" + ", ".join(FONT_FOLDERS[:2]) + ")"
    return [builtin], f"printed: no usable fonts in {where}; using Pillow's built-in font only (set data.fonts to a folder of .ttf files)"


class Renderer:
    """Draws sample ``i`` of a stream from ``seed``: the same text, font and look every time."""

    def __init__(self, config: PrintedConfig, fonts: list[Font], texts: list[str] | None) -> None:
        self.config, self.fonts, self.texts = config, fonts, texts
        self.spec = InputSpec(1, config.height, 8, 4096, "light-on-dark", None)

    def text(self, rng: random.Random) -> str:
        if self.texts:
            return rng.choice(self.texts)
        length = rng.randint(self.config.min_length, self.config.max_length)
        text = "".join(rng.choice(self.config.charset) for _ in range(length)).strip()
        return text or rng.choice(self.config.charset.replace(" ", "") or "x")

    def render(self, seed: int, index: int) -> tuple[torch.Tensor, str]:
        """A uint8 ``(1, height, W)`` image, light ink on dark (the model's polarity), and its text."""
        rng = random.Random(seed * 1_000_003 + index)
        text = self.text(rng)
        drawable = [f for f in self.fonts if set(text) <= f.covers]  # never empty: the factory keeps only drawable texts
        unclear = [len(set(text) - f.distinct) for f in drawable]  # look-alikes it would draw: the fewest
        fewest = min(unclear)
        fonts = [f for f, n in zip(drawable, unclear) if n == fewest]
        font = rng.choice(fonts).at(rng.randint(self.config.font_size_min, self.config.font_size_max))
        spacing = rng.randint(0, self.config.spacing_max)  # one tracking per line, as type is set: a gap wider than it is a space
        advances = [font.getlength(c) + spacing for c in text]
        ascent, descent = font.getmetrics()
        pad = rng.randint(2, 8)
        width = int(sum(advances)) + 2 * pad
        height = ascent + descent + rng.randint(2, 10)
        paper, ink = rng.randint(170, 255), rng.randint(0, 90)
        image = Image.new("L", (max(width, 1), height), paper)
        draw = ImageDraw.Draw(image)
        x, y = float(pad), rng.randint(0, height - ascent - descent)
        for char, advance in zip(text, advances):
            draw.text((x, y + rng.randint(-1, 1)), char, fill=ink, font=font)
            x += advance
        array = np.asarray(image, dtype=np.float32)[..., None] / 255.0
        if self.config.noise:
            array = np.clip(array + np.random.default_rng(rng.getrandbits(32)).normal(0, self.config.noise, array.shape), 0, 1)
        return prepare(array.astype(np.float32), self.spec, "dark-on-light").mul(255).round_().to(torch.uint8), text


class _Stream(torch.utils.data.Dataset):
    def __init__(self, renderer: Renderer, seed: int, count: int) -> None:
        self.renderer, self.seed, self.count = renderer, seed, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[np.ndarray, str]:
        image, text = self.renderer.render(self.seed, index)
        return image.numpy(), text  # by value: see lines._by_value


def _pack(rows: list[tuple[torch.Tensor, str]], classes: str, transform=None) -> crnnfw.PackedSplit:
    return crnnfw.PackedSplit.from_images([image for image, _ in rows], [text for _, text in rows], classes, transform=transform)


class RenderedSplit:
    """Training lines rendered afresh every epoch (a seed drawn from the run's generator), in
    worker processes, 16 batches at a time grouped by width."""

    chunk_batches = 16

    def __init__(self, renderer: Renderer, classes: str, transform=None) -> None:
        self.renderer, self.classes, self.transform = renderer, classes, transform

    def __len__(self) -> int:
        return self.renderer.config.train_size

    def batches(self, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None) -> Iterator[crnnfw.Batch]:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        stream = _Stream(self.renderer, seed, len(self))
        workers = self.renderer.config.workers or os.cpu_count() or 1
        loader = torch.utils.data.DataLoader(stream, batch_size=batch_size * self.chunk_batches, num_workers=workers, collate_fn=list)
        for chunk in loader:
            packed = _pack([(torch.from_numpy(image), text) for image, text in chunk], self.classes, self.transform)
            for batch in packed.batches(batch_size, shuffle=shuffle, generator=generator):
                yield batch


def printed_data(config: PrintedConfig) -> crnnfw.DataModule:
    """The ``printed`` dataset factory."""
    texts = None
    if config.text_file:
        path = Path(config.text_file)
        if not path.is_file():
            raise crnnfw.DataError(f"data.text_file: {path}: no such file")
        texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not texts:
            raise crnnfw.DataError(f"data.text_file: {path}: holds no text lines")
    fonts, note = usable_fonts(config)
    notes = [note]
    if texts:  # each line is drawn only in fonts that cover it; lines no font covers are left out, counted
        kept = [t for t in texts if any(set(t) <= f.covers for f in fonts)]
        if len(kept) < len(texts):
            notes.append(f"printed: {len(texts) - len(kept)} of {len(texts)} text lines left out: no font has all their glyphs")
        texts = kept
        if not texts:
            raise crnnfw.DataError("data.text_file: no line can be drawn: no font has all its glyphs; set data.fonts")
        wanted = set("".join(texts))
    else:  # random strings mix any characters: only fonts with the whole charset draw them
        wanted = set(config.charset)
        fonts = [f for f in fonts if wanted <= f.covers]
        if not fonts:
            raise crnnfw.DataError(
                f"data.charset: no font has a glyph for every character ({note.split(': ', 1)[1]}); set data.fonts to a folder of fonts that do, or leave the missing characters out of data.charset"
            )
        fonts, distinct_note = _distinct(fonts, config)
        notes += distinct_note
    return rendered_data(Renderer(config, fonts, texts), "".join(sorted(wanted)), notes)


def _distinct(fonts: list[Font], config: PrintedConfig) -> tuple[list[Font], list[str]]:
    """``fonts`` with what each draws distinctly, and notes saying which look-alikes go where.

    A character drawn like another (see lookalikes) is drawn with the other fonts; one that
    every font draws like another stays drawable everywhere, and the note says so.
    """
    sizes = range(config.font_size_min, config.font_size_max + 1)
    left_out = lookalikes(tuple(f.source for f in fonts), config.charset, sizes)
    everywhere = frozenset.intersection(*left_out)
    notes = []
    for chars in sorted({frozenset(a - everywhere) for a in left_out} - {frozenset()}, key=sorted):
        names = [Path(f.source).name or "Pillow's built-in font" for f, a in zip(fonts, left_out) if a - everywhere == chars]
        listed = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        notes.append(f"printed: {len(names)} of {len(fonts)} fonts draw {' '.join(sorted(chars))} like another character ({listed}): lines holding them use the other fonts")
    if everywhere:
        chars = " ".join(sorted(everywhere))
        notes.append(f"printed: every font draws {chars} like another character: no reader can tell them apart in random strings; add fonts (data.fonts) or leave them out of data.charset")
    return [Font(f.source, f.covers, f.covers - (a - everywhere)) for f, a in zip(fonts, left_out)], notes


def rendered_data(renderer: Any, classes: str, notes: list[str]) -> crnnfw.DataModule:
    """A DataModule of rendered samples: val and test drawn once from their seeds, train afresh
    every epoch. ``renderer`` has ``render(seed, index)`` and a ``config`` with the sizes,
    seeds, height, workers and augment options (``printed`` and ``captcha`` both)."""
    config = renderer.config

    def fixed(seed: int, count: int) -> crnnfw.PackedSplit:
        return _pack([renderer.render(seed, i) for i in range(count)], classes)

    val, test = fixed(config.val_seed, config.val_size), fixed(config.test_seed, config.test_size)
    widest = int(max(val.widths.max(), test.widths.max()))
    transform = crnnfw.TextAugment(config.augment) if config.augment.enabled else None
    return crnnfw.DataModule(
        train=RenderedSplit(renderer, classes, transform), val=val, test=test, classes=tuple(classes), channels=1, height=config.height, min_width=8, max_width=2 * widest, notes=notes
    )
