"""Prediction on users' image files with a trained model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

from .errors import ImageError
from .images import find_images, read_image
from .stages import Decoded
from .trained import Trained


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
    trained: Trained, paths: Iterable[str | Path], *, polarity: str = "auto", beam: int = 1, batch_size: int = 64
) -> list[Prediction]:
    """A prediction per image file (folders expanded), in order; unreadable files carry their error.

    Images are batched by similar width so little padding is computed.
    """
    results: list[Prediction] = []
    readable: list[tuple[int, torch.Tensor]] = []
    for path, problem in find_images(paths):
        results.append(Prediction(path, error=f"{path}: {problem}" if problem else None))
        if problem:
            continue
        try:
            readable.append((len(results) - 1, read_image(path, trained.spec, polarity)))
        except ImageError as exc:
            results[-1].error = str(exc)
    readable.sort(key=lambda item: item[1].shape[-1])
    for start in range(0, len(readable), batch_size):
        chunk = readable[start : start + batch_size]
        decoded = recognise(trained, [image for _, image in chunk], beam)
        for (index, _), text, confidence in zip(chunk, decoded.texts, decoded.confidences.tolist()):
            results[index].text, results[index].confidence = text, confidence
    return results
