"""Digit strings as a user's files would look: an out-of-distribution set for the multidigit model.

Written independently of ``crnnfw_plugins.multidigit`` (it shares no code with it, which a test
checks) and with other choices, the way a user's scans differ from any generator: each digit
is cut to its ink and resized with Pillow to its own height and width; digits sit on a
sloping, waving baseline with their bottoms level; spacing runs from overlapping to wide;
the file's resolution varies from line to line; a third are dark ink on light paper; some are
blurred, noisy or saved as JPEG. Digits come from the MNIST *test* set, which the model never
trains on.

    python benchmarks/ood_digits.py OUT_DIR [--count 1000] [--seed 7] [--variation NAME]

writes ``OUT_DIR/images/*.png|jpg`` and ``OUT_DIR/labels.txt`` (``path<TAB>digits``), which
``crnnfw predict RUN OUT_DIR/images`` reads, and ``crnnfw eval RUN data.name=lines
data.test=OUT_DIR/labels.txt ...`` scores. ``--variation`` pushes one of its ranges further
(``VARIATIONS``: tighter packing, taller and shorter digits, thin strokes, ...), to find what a
model has not learnt to read.
"""

from __future__ import annotations

import argparse
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from crnnfw_plugins.mnist import load_mnist


def digit_crops() -> tuple[list[np.ndarray], np.ndarray]:
    """Each MNIST test digit cut to the box of its ink (pixels above 0), and its label."""
    arrays = load_mnist()
    images, labels = arrays["test_images"].numpy(), arrays["test_labels"].numpy()
    crops = []
    for image in images:
        rows, cols = np.nonzero(image > 0)
        crops.append(image[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1])
    return crops, labels


@dataclass(frozen=True)
class Style:
    """The composer's ranges. The defaults make the benchmark's set; ``VARIATIONS`` change one."""

    resolution: tuple[int, int] = (14, 45)  # a digit's height in px, per file
    slope: float = 0.08  # baseline rise per px, up to
    wave: float = 0.12  # baseline wave amplitude, up to this share of the digit height
    heights: tuple[float, float] = (0.8, 1.15)  # each digit's height, relative to the file's
    widths: tuple[float, float] = (0.85, 1.2)  # each digit's width scale on top
    gaps: tuple[float, float] = (-0.12, 0.3)  # space between neighbours, in digit heights (negative: overlap)
    margins: tuple[int, int] = (2, 9)  # px of paper around the ink, each side
    stroke: int = 0  # > 0: strokes thickened by a max filter of this size; < 0: thinned by a min filter
    dark: float = 0.3  # share of files with dark ink on light paper ...
    paper: tuple[float, float] = (170, 250)  # ... that paper's level ...
    ink: tuple[float, float] = (0, 90)  # ... and that ink's
    noise: float = 8  # pixel noise, standard deviation up to
    blur: float = 0.2  # share of files blurred ...
    blur_radius: tuple[float, float] = (0.3, 0.8)  # ... by a Gaussian of this radius


VARIATIONS = {
    "as_drawn": Style(),
    "tight": Style(gaps=(-0.25, 0.0)),
    "wide_gaps": Style(gaps=(0.3, 1.0)),
    "heights": Style(heights=(0.6, 1.4)),
    "steep": Style(slope=0.15),
    "small": Style(resolution=(10, 16)),
    "large": Style(resolution=(60, 120)),
    "margins": Style(margins=(20, 80)),
    "thick": Style(stroke=3),
    "thin": Style(stroke=-3),
    "faint": Style(dark=1.0, paper=(150, 200), ink=(80, 120)),
    "noisy": Style(noise=25),
    "blurry": Style(blur=1.0, blur_radius=(0.8, 1.5)),
}


def one_line(rng: np.random.Generator, crops: list[np.ndarray], labels: np.ndarray, length: int, style: Style = Style()) -> tuple[Image.Image, str]:
    """A digit string of ``length`` digits, as a greyscale Pillow image, and its text."""
    height = int(rng.integers(*style.resolution))  # the file's resolution: a digit's height in px
    picks = rng.integers(0, len(crops), length)
    slope = rng.uniform(-style.slope, style.slope)
    wave, period, phase = rng.uniform(0, style.wave) * height, rng.uniform(3, 8) * height, rng.uniform(0, 2 * math.pi)
    pieces, x = [], 0.0
    for i, pick in enumerate(picks):
        crop = crops[pick]
        h = max(4, round(height * rng.uniform(*style.heights)))
        w = max(1, round(crop.shape[1] * h / crop.shape[0] * rng.uniform(*style.widths)))
        glyph = np.asarray(Image.fromarray(crop).resize((w, h), Image.LANCZOS), dtype=np.float32)
        if i:
            x += height * rng.uniform(*style.gaps)
        bottom = slope * x + wave * math.sin(2 * math.pi * x / period + phase)
        pieces.append((glyph, round(x), bottom))
        x += w
    top = min(round(b) - g.shape[0] for g, _, b in pieces)
    lowest = max(round(b) for _, _, b in pieces)
    left_margin, right_margin, top_margin, bottom_margin = rng.integers(*style.margins, 4)
    width = max(x0 + g.shape[1] for g, x0, _ in pieces) + left_margin + right_margin
    canvas = np.zeros((lowest - top + top_margin + bottom_margin, width), dtype=np.float32)
    for glyph, x0, bottom in pieces:
        y0 = round(bottom) - glyph.shape[0] - top + top_margin
        x1 = x0 + left_margin
        region = canvas[y0 : y0 + glyph.shape[0], x1 : x1 + glyph.shape[1]]
        np.maximum(region, glyph, out=region)
    if style.stroke:
        strokes = ImageFilter.MaxFilter(style.stroke) if style.stroke > 0 else ImageFilter.MinFilter(-style.stroke)
        canvas = np.asarray(Image.fromarray(canvas.astype(np.uint8)).filter(strokes), dtype=np.float32)
    alpha = np.clip(canvas / 255.0, 0, 1)
    if rng.random() < style.dark:
        paper, ink = rng.uniform(*style.paper), rng.uniform(*style.ink)
    else:
        paper, ink = rng.uniform(0, 50), rng.uniform(190, 255)
    pixels = paper + (ink - paper) * alpha + rng.normal(0, rng.uniform(0, style.noise), alpha.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if rng.random() < style.blur:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(*style.blur_radius)))
    return image, "".join(str(int(labels[p])) for p in picks)


def write_set(out: str | Path, count: int = 1000, seed: int = 7, min_digits: int = 1, max_digits: int = 8, style: Style = Style()) -> Path:
    """``count`` strings (lengths in turn from ``min_digits`` to ``max_digits``) under ``out``;
    returns the label file."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    crops, labels = digit_crops()
    lines = []
    for n in range(count):
        image, text = one_line(rng, crops, labels, min_digits + n % (max_digits - min_digits + 1), style)
        jpeg = rng.random() < 0.15
        name = f"images/{n:05d}.{'jpg' if jpeg else 'png'}"
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=int(rng.integers(70, 96))) if jpeg else image.save(buffer, format="PNG")
        (out / name).write_bytes(buffer.getvalue())
        lines.append(f"{name}\t{text}\n")
    labels_file = out / "labels.txt"
    labels_file.write_text("".join(lines), encoding="utf-8")
    return labels_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--variation", choices=sorted(VARIATIONS), default="as_drawn")
    args = parser.parse_args()
    print(f"wrote {args.count} strings: {write_set(args.out, args.count, args.seed, style=VARIATIONS[args.variation])}")


if __name__ == "__main__":
    main()
