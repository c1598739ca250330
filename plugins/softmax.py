"""The ``softmax`` head: one class per image, read from the encoded sequence."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import crnnfw


@dataclass
class SoftmaxConfig:
    pool: str = "last"  # last (last valid step) | mean | max (over valid steps)
    hidden: List[int] = field(default_factory=list)  # dense ReLU layers before the classifier
    dropout: float = 0.0  # before each dense layer
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if self.pool not in ("last", "mean", "max"):
            raise ValueError(f"pool: '{self.pool}' is not one of last, mean, max")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


class Accuracy(crnnfw.Metrics):
    """Top-1 accuracy and error count, from a confusion matrix that also gives per-class figures."""

    main = "accuracy"

    def __init__(self, classes: tuple[str, ...]) -> None:
        self.classes = classes
        self.counts = torch.zeros(len(classes), len(classes), dtype=torch.long)  # [truth, prediction]

    def update(self, decoded: crnnfw.Decoded, batch: crnnfw.Batch) -> None:
        n = len(self.classes)
        pairs = batch.targets.cpu() * n + decoded.indices.cpu()
        self.counts += torch.bincount(pairs, minlength=n * n).view(n, n)

    def compute(self) -> dict[str, float]:
        total = int(self.counts.sum())
        correct = int(self.counts.diagonal().sum())
        return {"accuracy": correct / total if total else 0.0, "errors": total - correct}

    def report(self) -> dict[str, list[dict[str, float | int | str]]]:
        support = self.counts.sum(1).tolist()
        predicted = self.counts.sum(0).tolist()
        hits = self.counts.diagonal().tolist()
        rows = [
            {"class": name, "count": support[i], "recall": hits[i] / support[i] if support[i] else 0.0, "precision": hits[i] / predicted[i] if predicted[i] else 0.0, "errors": support[i] - hits[i]}
            for i, name in enumerate(self.classes)
        ]
        return {"per_class": rows}

    def confusion(self) -> list[list[int]]:
        return self.counts.tolist()


class SoftmaxHead(crnnfw.Head):
    """Pools the valid steps of the sequence, then dense layers and a classifier."""

    def __init__(self, config: SoftmaxConfig, in_features: int, classes: tuple[str, ...]) -> None:
        super().__init__()
        self.config = config
        self.classes = tuple(classes)
        layers: list[nn.Module] = []
        width = in_features
        for size in [*config.hidden, len(self.classes)]:
            if config.dropout > 0:
                layers.append(nn.Dropout(config.dropout))
            layers.append(nn.Linear(width, size))
            layers.append(nn.ReLU())
            width = size
        self.classifier = nn.Sequential(*layers[:-1])

    @classmethod
    def from_config(cls, config: SoftmaxConfig, *, in_features: int, classes: tuple[str, ...]) -> "SoftmaxHead":
        return cls(config, in_features, classes)

    def forward(self, seq: Tensor, lengths: Tensor) -> Tensor:
        if self.config.pool == "last":
            # A one-hot sum rather than advanced indexing: the latter's backward (index_put)
            # breaks torch.compile under bf16 autocast on CUDA.
            last = (lengths - 1).clamp(min=0).to(seq.device).unsqueeze(1)
            pick = torch.arange(seq.shape[1], device=seq.device).unsqueeze(0) == last
            pooled = torch.where(pick.unsqueeze(-1), seq, 0).sum(1)
        else:
            mask = crnnfw.length_mask(lengths.to(seq.device), seq.shape[1]).unsqueeze(-1)
            if self.config.pool == "mean":
                pooled = (seq * mask).sum(1) / mask.sum(1).clamp(min=1)
            else:
                pooled = seq.masked_fill(~mask, float("-inf")).amax(1)
        return self.classifier(pooled)

    def loss(self, logits: Tensor, lengths: Tensor, batch: crnnfw.Batch) -> Tensor:
        if batch.targets.dim() != 1:
            raise ValueError("the softmax head needs one class label per image, but the batch holds label sequences")
        return F.cross_entropy(logits.float(), batch.targets, label_smoothing=self.config.label_smoothing)

    def decode(self, logits: Tensor, lengths: Tensor) -> crnnfw.Decoded:
        confidences, indices = logits.float().softmax(-1).max(-1)
        return crnnfw.Decoded([self.classes[i] for i in indices.tolist()], confidences, indices)

    def metrics(self) -> crnnfw.Metrics:
        return Accuracy(self.classes)
