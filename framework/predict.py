"""Prediction on users' image files with a trained model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

from .errors import ImageError
from .images import MAX_PIXELS, MAX_WIDTH, find_images, read_image
from .stages import Decoded
from .trained import Trained

#: Files read ahead, in batches: their images are sorted by width within this window (less
#: padding), and only this window's images are held in memory at once.
WINDOW_BATCHES = 4


@dataclass
class Prediction:
    """One file's text and confidence, or why it could not be read."""

    path: Path
    text: str | None = None
    confidence: float | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, str | float | None]:
        if self.error is not None:
            return {"file": str(self.path), "error": self.error}
        return {"file": str(self.path), "text": self.text, "confidence": self.confidence}


@torch.inference_mode()
def recognise(trained: Trained, images: list[torch.Tensor], beam: int = 1) -> Decoded:
    """Texts for ``(C, H, W_i)`` images of the model's height, right-padded into one batch."""
    widths = torch.tensor([image.shape[-1] for image in images])
    batch = torch.full((len(images), trained.spec.channels, trained.spec.height, int(widths.max())), trained.spec.background)
    for i, image in enumerate(images):
        batch[i, ..., : image.shape[-1]] = image
    device = next(trained.model.parameters()).device
    logits, lengths = trained.model(batch.to(device), widths.to(device))
    head = trained.model.head
    return head.decode_beam(logits.float(), lengths, beam) if beam > 1 else head.decode(logits.float(), lengths)


def predict_files(
    trained: Trained,
    paths: Iterable[str | Path],
    *,
    polarity: str = "auto",
    beam: int = 1,
    batch_size: int = 64,
    max_pixels: int = MAX_PIXELS,
    max_width: int | None = None,
) -> list[Prediction]:
    """A prediction per image file (folders expanded), in order; unreadable files carry their error.

    A file over ``max_pixels`` pixels, or wider than ``max_width`` px once scaled to the
    model's height (default: :data:`~crnnfw.images.MAX_WIDTH`, or the model's own
    ``max_width`` when wider), is that file's error, so memory stays bounded by the batch.
    Files are read ``WINDOW_BATCHES`` batches at a time, and each window's images are batched
    by similar width so little padding is computed.
    """
    limit = max_width if max_width is not None else max(MAX_WIDTH, trained.spec.max_width)
    found = find_images(paths)
    results = [Prediction(path, error=f"{path}: {problem}" if problem else None) for path, problem in found]
    todo = [index for index, (_, problem) in enumerate(found) if not problem]
    window = batch_size * WINDOW_BATCHES
    for start in range(0, len(todo), window):
        readable: list[tuple[int, torch.Tensor]] = []
        for index in todo[start : start + window]:
            try:
                readable.append((index, read_image(results[index].path, trained.spec, polarity, max_pixels=max_pixels, max_width=limit)))
            except ImageError as exc:
                results[index].error = str(exc)
        readable.sort(key=lambda item: item[1].shape[-1])
        for first in range(0, len(readable), batch_size):
            chunk = readable[first : first + batch_size]
            decoded = recognise(trained, [image for _, image in chunk], beam)
            for (index, _), text, confidence in zip(chunk, decoded.texts, decoded.confidences.tolist()):
                results[index].text, results[index].confidence = text, confidence
    return results
