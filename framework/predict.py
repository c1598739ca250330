"""Prediction on users' images (files, or PIL images, arrays and tensors) with a trained model."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Union

import numpy as np
import torch
from PIL import Image

from .batch import pad_right
from .errors import ImageError
from .images import MAX_PIXELS, MAX_WIDTH, find_images, in_memory, prepare, read_image
from .stages import Decoded
from .trained import Trained

#: Files read ahead, in batches: their images are sorted by width within this window (less
#: padding), and only this window's images are held in memory at once.
WINDOW_BATCHES = 4


@dataclass
class Prediction:
    """One image's text and confidence, or why it could not be read. ``path`` is the file's, or
    None for an image given in memory (``index`` is then its place in the input)."""

    path: Path | None
    text: str | None = None
    confidence: float | None = None
    error: str | None = None
    index: int | None = None

    def as_dict(self) -> dict[str, str | float | int | None]:
        where: dict[str, str | int | None] = {"file": str(self.path)} if self.path is not None else {"index": self.index}
        if self.error is not None:
            return {**where, "error": self.error}
        return {**where, "text": self.text, "confidence": self.confidence}


@torch.inference_mode()
def recognise(trained: Trained, images: list[torch.Tensor], beam: int = 1) -> Decoded:
    """Texts for ``(C, H, W_i)`` images of the model's height, right-padded into one batch."""
    batch, widths = pad_right(images, trained.spec.background)
    device = next(trained.model.parameters()).device
    logits, lengths = trained.model(batch.to(device), widths.to(device))
    head = trained.model.head
    return head.decode_beam(logits.float(), lengths, beam) if beam > 1 else head.decode(logits.float(), lengths)


#: What ``predict_images`` reads: a file or folder path, a PIL image, an ``(H, W[, C])`` numpy
#: array or an ``(H, W)`` / ``(C, H, W)`` tensor (uint8, uint16, bool or float in [0, 1]).
ImageInput = Union[str, Path, Image.Image, np.ndarray, torch.Tensor]


def predict_images(
    trained: Trained,
    images: Iterable[ImageInput],
    *,
    polarity: str = "auto",
    beam: int = 1,
    batch_size: int = 64,
    max_pixels: int = MAX_PIXELS,
    max_width: int | None = None,
) -> list[Prediction]:
    """A prediction per image, in order (a folder path stands for its image files), with the
    preprocessing ``crnnfw predict`` applies. Images are read ``WINDOW_BATCHES`` batches at a
    time, and each window is batched by similar width so little padding is computed."""
    limit = max_width if max_width is not None else max(MAX_WIDTH, trained.spec.max_width)
    results: list[Prediction] = []
    loaders: list[tuple[int, Callable[[], torch.Tensor]]] = []
    for position, image in enumerate(images):
        if isinstance(image, (str, Path)):
            for path, problem in find_images([image]):
                results.append(Prediction(path, error=f"{path}: {problem}" if problem else None))
                if not problem:
                    loaders.append((len(results) - 1, functools.partial(read_image, path, trained.spec, polarity, max_pixels=max_pixels, max_width=limit)))
        else:
            results.append(Prediction(None, index=position))
            name = f"image {position}"
            loaders.append((len(results) - 1, lambda image=image, name=name: prepare(in_memory(image, name, max_pixels), trained.spec, polarity, max_width=limit, name=name)))
    window = batch_size * WINDOW_BATCHES
    for start in range(0, len(loaders), window):
        readable: list[tuple[int, torch.Tensor]] = []
        for index, load in loaders[start : start + window]:
            try:
                readable.append((index, load()))
            except ImageError as exc:
                results[index].error = str(exc)
        readable.sort(key=lambda item: item[1].shape[-1])
        for first in range(0, len(readable), batch_size):
            chunk = readable[first : first + batch_size]
            decoded = recognise(trained, [image for _, image in chunk], beam)
            for (index, _), text, confidence in zip(chunk, decoded.texts, decoded.confidences.tolist()):
                results[index].text, results[index].confidence = text, confidence
    return results
