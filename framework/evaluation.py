"""Evaluation: the head's metrics over a whole split, in large batches, with a few examples kept for pictures."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from .batch import Batch
from .data import Split
from .distributed import Group
from .model import Model
from .precision import autocast
from .stages import Decoded, Metrics


@dataclass
class Example:
    """One evaluated image (cropped to its width) with the model's text and the truth."""

    image: Tensor
    text: str
    truth: str
    confidence: float

    @property
    def correct(self) -> bool:
        return self.text == self.truth


@dataclass
class Evaluation:
    """Scores (``loss`` and the head's figures), the filled metrics accumulator and kept examples."""

    scores: dict[str, float]
    metrics: Metrics
    examples: list[Example] = field(default_factory=list)


@torch.inference_mode()
def evaluate(
    model: Model,
    split: Split,
    batch_size: int,
    device: torch.device,
    precision: str = "32-true",
    *,
    keep: int = 0,
    group: Group | None = None,
) -> Evaluation:
    """Evaluate ``model`` on ``split``; keep up to ``keep`` examples, a quarter of them mistakes when there are any.

    Examples are taken a few from each batch, so they span the split (sequence splits run
    narrowest first).

    In a distributed job each rank evaluates every ``world``-th batch and the head's metrics
    are fed all ranks' results, so every rank returns the scores of the whole split.
    """
    group = group or Group()
    was_training = model.training
    model.eval()
    metrics = model.head.metrics()
    loss_sum = torch.zeros((), device=device)
    count = 0
    right: list[Example] = []
    wrong: list[Example] = []
    shared: list[tuple[Decoded, Batch]] = []  # this rank's results, for the other ranks' metrics
    per_batch = math.ceil(keep * batch_size / max(len(split), 1))
    for index, batch in enumerate(split.batches(batch_size, shuffle=False)):
        if index % group.world != group.rank:
            continue
        batch = batch.to(device, non_blocking=True)
        with autocast(device, precision):
            logits, lengths = model(batch.images, batch.widths)
        loss_sum += model.head.loss(logits.float(), lengths, batch) * len(batch)
        count += len(batch)
        decoded = model.head.decode(logits.float(), lengths)
        if group.enabled:
            shared.append((_to_cpu(decoded), replace(batch, images=batch.images[:0]).to("cpu")))
        else:
            metrics.update(decoded, batch)
        if len(right) < keep or len(wrong) < keep // 4:
            truths = batch.target_texts(model.head.classes)
            taken = {True: 0, False: 0}
            for i, (text, truth) in enumerate(zip(decoded.texts, truths)):
                pile = right if text == truth else wrong
                if len(pile) < keep and taken[pile is right] < per_batch:
                    taken[pile is right] += 1
                    width = int(batch.widths[i])
                    pile.append(Example(batch.images[i, ..., :width].float().cpu(), text, truth, float(decoded.confidences[i])))
    model.train(was_training)
    for results in group.gather(shared) if group.enabled else []:
        for decoded, batch in results:
            metrics.update(decoded, batch)
    mistakes = wrong[: keep // 4]
    examples = mistakes + right[: keep - len(mistakes)]
    loss, _ = group.mean(loss_sum, count)
    return Evaluation({"loss": loss, **metrics.compute()}, metrics, examples)


def _to_cpu(decoded: Decoded) -> Decoded:
    indices = decoded.indices.cpu() if decoded.indices is not None else None
    return Decoded(decoded.texts, decoded.confidences.cpu(), indices)
