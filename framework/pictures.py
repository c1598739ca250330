"""Pictures of a run, drawn with Pillow (no plotting library needed): test predictions,
learning curves and, for classification, the confusion matrix."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

from .evaluation import Evaluation, Example

if TYPE_CHECKING:
    from .data import DataModule

WHITE, BLACK, GREY, LIGHT = (255, 255, 255), (20, 20, 20), (120, 120, 120), (225, 225, 225)
GREEN, RED, BLUE, ORANGE = (20, 130, 60), (200, 30, 30), (31, 119, 180), (255, 127, 14)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _to_pil(image: torch.Tensor, height: int) -> Image.Image:
    """A ``(C, H, W)`` float image in [0, 1] as a Pillow image ``height`` pixels tall."""
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    mode = "L" if array.shape[0] == 1 else "RGB"
    pixels = array[0] if mode == "L" else array[:3].permute(1, 2, 0)
    picture = Image.fromarray(pixels.contiguous().numpy(), mode=mode).convert("RGB")
    width = max(1, round(picture.width * height / picture.height))
    return picture.resize((width, height), Image.Resampling.NEAREST)


def predictions_png(examples: Sequence[Example], path: Path, *, split: str = "test", columns: int | None = None, cell_height: int = 56, title: str | None = None) -> Path:
    """A grid of images, each captioned 'prediction (truth)'; mistakes framed and captioned in red.

    With ``title`` the examples are labelled samples rather than predictions: captioned with
    their text alone, under that title."""
    pictures = [_to_pil(e.image, cell_height) for e in examples]
    font = _font(13)
    cell_width = max([p.width for p in pictures] + [96]) + 8
    columns = columns or max(1, min(len(examples), 1000 // cell_width))
    rows = math.ceil(len(examples) / columns)
    caption = 34
    canvas = Image.new("RGB", (columns * cell_width, rows * (cell_height + caption + 8) + 28), WHITE)
    draw = ImageDraw.Draw(canvas)
    mistakes = sum(not e.correct for e in examples)
    heading = title or f"{split} predictions: {len(examples) - mistakes} right, {mistakes} wrong (wrong first, red)"
    draw.text((6, 6), heading, fill=BLACK, font=font)
    for index, (example, picture) in enumerate(zip(examples, pictures)):
        x = (index % columns) * cell_width + 4
        y = (index // columns) * (cell_height + caption + 8) + 28
        colour = GREEN if example.correct else RED
        canvas.paste(picture, (x, y))
        draw.rectangle((x - 2, y - 2, x + picture.width + 1, y + picture.height + 1), outline=colour, width=2)
        shown = example.text if len(example.text) <= 14 else example.text[:12] + "..."
        draw.text((x, y + cell_height + 3), shown if title else f"{shown} {example.confidence:.2f}", fill=colour, font=font)
        if not example.correct:
            draw.text((x, y + cell_height + 18), f"truth {example.truth}", fill=GREY, font=font)
    canvas.save(path)
    return path


def _panel(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], title: str, series: dict[str, tuple[list[float], tuple[int, int, int]]]) -> None:
    """One line chart: epochs along x, each named series in its colour, axes with min/max labels."""
    font = _font(13)
    left, top, right, bottom = box
    draw.text((left, top - 22), title, fill=BLACK, font=font)
    draw.rectangle(box, outline=GREY)
    values = [v for points, _ in series.values() for v in points if math.isfinite(v)]
    if not values:
        return
    low, high = min(values), max(values)
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    pad = (high - low) * 0.06
    low, high = low - pad, high + pad
    epochs = max(len(points) for points, _ in series.values())

    def xy(i: int, v: float) -> tuple[float, float]:
        x = left + (right - left) * (i / max(epochs - 1, 1))
        return x, bottom - (bottom - top) * (v - low) / (high - low)

    for fraction in (0.25, 0.5, 0.75):
        y = bottom - (bottom - top) * fraction
        draw.line((left, y, right, y), fill=LIGHT)
        draw.text((right + 4, y - 7), f"{low + (high - low) * fraction:.4g}", fill=GREY, font=font)
    for i in range(epochs):
        x, _ = xy(i, low)
        draw.text((x - 4, bottom + 4), str(i + 1), fill=GREY, font=font)
    for legend_row, (name, (points, colour)) in enumerate(series.items()):
        line = [xy(i, v) for i, v in enumerate(points) if math.isfinite(v)]
        if len(line) > 1:
            draw.line(line, fill=colour, width=2)
        for x, y in line:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
        y = top + 14 + 16 * legend_row
        draw.line((left + 8, y, left + 24, y), fill=colour, width=2)
        draw.text((left + 30, y - 8), name, fill=colour, font=font)


def curves_png(history: Sequence[dict[str, Any]], main: str, path: Path) -> Path:
    """Loss and the main metric per epoch, train, val and test, side by side."""
    canvas = Image.new("RGB", (1000, 400), WHITE)
    draw = ImageDraw.Draw(canvas)

    def column(key: str) -> list[float]:
        return [float(row.get(key, math.nan)) for row in history]

    _panel(draw, (50, 50, 430, 350), "loss", {"train": (column("train_loss"), BLUE), "val": (column("val_loss"), GREEN), "test": (column("test_loss"), ORANGE)})
    _panel(draw, (550, 50, 930, 350), main, {"train (sampled batches)": (column(f"train_{main}"), BLUE), "val": (column(f"val_{main}"), GREEN), "test": (column(f"test_{main}"), ORANGE)})
    draw.text((450, 375), "epoch", fill=GREY, font=_font(13))
    canvas.save(path)
    return path


def confusion_png(counts: Sequence[Sequence[int]], classes: Sequence[str], path: Path) -> Path:
    """The confusion matrix, truth down and prediction across; off-diagonal cells shaded by count."""
    n = len(classes)
    cell = max(28, min(60, 640 // max(n, 1)))
    margin = 80
    canvas = Image.new("RGB", (margin + n * cell + 20, margin + n * cell + 20), WHITE)
    draw = ImageDraw.Draw(canvas)
    font = _font(12 if cell < 40 else 14)
    off_diagonal = [counts[t][p] for t in range(n) for p in range(n) if t != p]
    worst = max(off_diagonal + [1])
    draw.text((margin, 8), "prediction (across)", fill=BLACK, font=font)
    draw.text((6, 30), "truth (down)", fill=BLACK, font=font)
    for i, name in enumerate(classes):
        draw.text((margin + i * cell + cell // 3, margin - 22), name, fill=BLACK, font=font)
        draw.text((margin - 24, margin + i * cell + cell // 3), name, fill=BLACK, font=font)
    for t in range(n):
        for p in range(n):
            value = counts[t][p]
            if t == p:
                fill = (200, 230, 205)
            else:
                shade = int(255 - 200 * min(1.0, value / worst)) if value else 255
                fill = (255, shade, shade)
            box = (margin + p * cell, margin + t * cell, margin + (p + 1) * cell, margin + (t + 1) * cell)
            draw.rectangle(box, fill=fill, outline=LIGHT)
            if value:
                draw.text((box[0] + 3, box[1] + cell // 3), str(value), fill=BLACK, font=font)
    canvas.save(path)
    return path


def draw_evaluation(folder: Path, evaluation: Evaluation, classes: Sequence[str], split: str = "test") -> list[Path]:
    """``predictions.png`` and, for classification, ``confusion.png`` in ``folder``."""
    written = [predictions_png(evaluation.examples, folder / "predictions.png", split=split)] if evaluation.examples else []
    counts = evaluation.metrics.confusion()
    if counts is not None:
        written.append(confusion_png(counts, classes, folder / "confusion.png"))
    return written


def draw_run(run_dir: Path, history: Sequence[dict[str, Any]], evaluation: Evaluation, main: str, classes: Sequence[str]) -> list[Path]:
    """Every picture of a finished run: predictions and confusion of the final model, and the curves."""
    return [*draw_evaluation(run_dir, evaluation, classes), curves_png(history, main, run_dir / "curves.png")]


def samples_png(data: "DataModule", path: Path, count: int = 32) -> Path:
    """Training images as the model sees them (augmented, in its polarity), with their labels."""
    batch = next(iter(data.train.batches(count, shuffle=True, generator=torch.Generator().manual_seed(0))))
    texts = batch.target_texts(data.classes)
    examples = [Example(batch.images[i, ..., : int(batch.widths[i])].cpu(), text, text, 1.0) for i, text in enumerate(texts)]
    path.parent.mkdir(parents=True, exist_ok=True)
    return predictions_png(examples, path, title=f"train samples as the model sees them ({data.height} px high), with their labels")
