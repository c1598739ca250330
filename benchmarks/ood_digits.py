"""Digit strings as a user's files would look: an out-of-distribution set for the multidigit model.

Written independently of ``crnnfw_plugins.multidigit`` (it shares no code with it, which a test
checks) and with other choices, the way a user's scans differ from any generator: each digit
is cut to its ink and resized with Pillow to its own height and width; digits sit on a
sloping, waving baseline with their bottoms level; spacing runs from overlapping to wide;
the file's resolution varies from line to line; a third are dark ink on light paper; some are
blurred, noisy or saved as JPEG. Digits come from the MNIST *test* set, which the model never
trains on.

    python benchmarks/ood_digits.py OUT_DIR [--count 1000] [--seed 7]

writes ``OUT_DIR/images/*.png|jpg`` and ``OUT_DIR/labels.txt`` (``path<TAB>digits``), which
``crnnfw predict RUN OUT_DIR/images`` reads, and ``crnnfw eval RUN data.name=lines
data.test=OUT_DIR/labels.txt ...`` scores.
"""

from __future__ import annotations

import argparse
import io
import math
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


def one_line(rng: np.random.Generator, crops: list[np.ndarray], labels: np.ndarray, length: int) -> tuple[Image.Image, str]:
    """A digit string of ``length`` digits, as a greyscale Pillow image, and its text."""
    height = int(rng.integers(14, 45))  # the file's resolution: a digit's height in px
    picks = rng.integers(0, len(crops), length)
    slope = rng.uniform(-0.08, 0.08)
    wave, period, phase = rng.uniform(0, 0.12) * height, rng.uniform(3, 8) * height, rng.uniform(0, 2 * math.pi)
    pieces, x = [], 0.0
    for i, pick in enumerate(picks):
        crop = crops[pick]
        h = max(4, round(height * rng.uniform(0.8, 1.15)))
        w = max(1, round(crop.shape[1] * h / crop.shape[0] * rng.uniform(0.85, 1.2)))
        glyph = np.asarray(Image.fromarray(crop).resize((w, h), Image.LANCZOS), dtype=np.float32)
        if i:
            x += height * rng.uniform(-0.12, 0.3)
        bottom = slope * x + wave * math.sin(2 * math.pi * x / period + phase)
        pieces.append((glyph, round(x), bottom))
        x += w
    top = min(round(b) - g.shape[0] for g, _, b in pieces)
    lowest = max(round(b) for _, _, b in pieces)
    left_margin, right_margin, top_margin, bottom_margin = rng.integers(2, 9, 4)
    width = max(x0 + g.shape[1] for g, x0, _ in pieces) + left_margin + right_margin
    canvas = np.zeros((lowest - top + top_margin + bottom_margin, width), dtype=np.float32)
    for glyph, x0, bottom in pieces:
        y0 = round(bottom) - glyph.shape[0] - top + top_margin
        x1 = x0 + left_margin
        region = canvas[y0 : y0 + glyph.shape[0], x1 : x1 + glyph.shape[1]]
        np.maximum(region, glyph, out=region)
    alpha = np.clip(canvas / 255.0, 0, 1)
    if rng.random() < 0.3:
        paper, ink = rng.uniform(170, 250), rng.uniform(0, 90)
    else:
        paper, ink = rng.uniform(0, 50), rng.uniform(190, 255)
    pixels = paper + (ink - paper) * alpha + rng.normal(0, rng.uniform(0, 8), alpha.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if rng.random() < 0.2:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8)))
    return image, "".join(str(int(labels[p])) for p in picks)


def write_set(out: str | Path, count: int = 1000, seed: int = 7, min_digits: int = 1, max_digits: int = 8) -> Path:
    """``count`` strings (lengths in turn from ``min_digits`` to ``max_digits``) under ``out``;
    returns the label file."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    crops, labels = digit_crops()
    lines = []
    for n in range(count):
        image, text = one_line(rng, crops, labels, min_digits + n % (max_digits - min_digits + 1))
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
    args = parser.parse_args()
    print(f"wrote {args.count} strings: {write_set(args.out, args.count, args.seed)}")


if __name__ == "__main__":
    main()
