"""The batch every stage and the trainer agree on."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor


@dataclass
class Batch:
    """Images right-padded to the widest one, each sample's real width, and targets.

    ``targets`` holds class ids ``(N,)`` for classification, or label ids ``(N, L)`` right-padded
    with ``target_lengths`` ``(N,)`` for sequences.
    """

    images: Tensor
    widths: Tensor
    targets: Tensor
    target_lengths: Tensor | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def select(self, index: slice | Tensor, *, crop: bool = True) -> "Batch":
        """The samples at ``index``, with padding beyond their widest image (and longest label)
        cut off; ``crop=False`` skips the cut, which reads sizes back from a GPU on every call."""
        widths = self.widths[index]
        lengths = self.target_lengths[index] if self.target_lengths is not None else None
        images, targets = self.images[index], self.targets[index]
        if crop and len(widths):
            images = images[..., : int(widths.max())]
            if lengths is not None:
                targets = targets[:, : int(lengths.max())]
        return Batch(images, widths, targets, lengths)

    def target_texts(self, classes: tuple[str, ...]) -> list[str]:
        """Each sample's target as text: its class name, or its label's characters joined."""
        rows = self.targets.cpu().tolist()
        if self.target_lengths is None:
            return [classes[i] for i in rows]
        return ["".join(classes[i] for i in row[:n]) for row, n in zip(rows, self.target_lengths.cpu().tolist())]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        """The same batch with every tensor on ``device``."""
        moved = {f.name: (v.to(device, non_blocking=non_blocking) if isinstance(v, Tensor) else v) for f in fields(self) for v in [getattr(self, f.name)]}
        return Batch(**moved)


def pad_right(images: list[Tensor], value: float = 0.0, extra: int = 0) -> tuple[Tensor, Tensor]:
    """``(C, H, W_i)`` images as one ``(N, C, H, max W_i + extra)`` batch, right-padded with
    ``value`` (the background), and their widths: the layout every stage is given."""
    widths = torch.tensor([image.shape[-1] for image in images], dtype=torch.long)
    batch = images[0].new_full((len(images), *images[0].shape[:-1], int(widths.max()) + extra), value)
    for i, image in enumerate(images):
        batch[i, ..., : image.shape[-1]] = image
    return batch, widths
