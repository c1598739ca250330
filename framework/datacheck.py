"""``crnnfw data CONFIG``: what a dataset holds and everything wrong with it, before training.

Counts per split, the charset with each character's frequency, histograms of label length,
image width and output steps per character (whole steps, rounded down), and every problem
with its place: what the dataset itself reports (missing or undecodable images, empty labels,
unknown characters, duplicates ...) and labels too long for the steps the model leaves at
their image's width. ``samples.png`` shows training images as
the model will see them, with their labels.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from . import pictures
from .data import SPLITS
from .datasets import build_data
from .errors import CrnnfwError, DataProblems, Problem
from .model import assemble, check_model, label_misfits
from .registry import Registry

#: Splits without their samples in memory (composed on the fly) are summarised from this many.
SAMPLED = 2000


@dataclass
class DataCheck:
    """The check's findings; ``ok`` is false when any problem is an error."""

    problems: list[Problem] = field(default_factory=list)
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    charset: dict[str, int] = field(default_factory=dict)  # character (or class) -> occurrences in train
    notes: list[str] = field(default_factory=list)
    pictures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "splits": self.splits, "charset": self.charset, "notes": self.notes, "pictures": self.pictures, "problems": [vars(p) for p in self.problems]}


def _arrays(split: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, bool]:
    """Widths, targets and target lengths of a split's samples (every one when held in
    memory, else the first ``SAMPLED`` of an epoch), and whether that is all of them."""
    if all(isinstance(getattr(split, name, None), torch.Tensor) for name in ("widths", "targets")):
        return split.widths.cpu(), split.targets.cpu(), getattr(split, "target_lengths", None), True
    widths, targets, lengths, seen = [], [], [], 0
    for batch in split.batches(256, shuffle=True, generator=torch.Generator().manual_seed(0)):
        widths.append(batch.widths.cpu())
        targets.append(batch.targets.cpu())
        if batch.target_lengths is not None:
            lengths.append(batch.target_lengths.cpu())
        seen += len(batch)
        if seen >= SAMPLED:
            break
    longest = max(t.shape[1] for t in targets) if targets[0].dim() == 2 else 0
    padded = [torch.nn.functional.pad(t, (0, longest - t.shape[1])) if longest else t for t in targets]
    return torch.cat(widths), torch.cat(padded), torch.cat(lengths) if lengths else None, False


def histogram(values: torch.Tensor, bins: int = 8) -> list[tuple[str, int]]:
    """``(range, count)`` rows over at most ``bins`` equal ranges of whole numbers."""
    low, high = int(values.min()), int(values.max())
    step = max(1, math.ceil((high - low + 1) / bins))
    rows = []
    for start in range(low, high + 1, step):
        end = min(start + step - 1, high)
        count = int(((values >= start) & (values <= end)).sum())
        rows.append((str(start) if start == end else f"{start}-{end}", count))
    return rows


def _label_fit(model: Any, split: Any, name: str) -> list[Problem]:
    """Samples whose label needs more steps than the model leaves at their image's width."""
    return [Problem(name, "label too long", m.place, f"{m.length} characters need {m.needs} steps; {m.width} px gives {m.steps}") for m in label_misfits(model, split)]


def check_data(cfg: DictConfig, registry: Registry, out: Path | None = None, source: str = "config") -> DataCheck:
    """Read the data a resolved config names and check it against the model it builds
    (``source``, the config file, names the model's problems)."""
    result = DataCheck()
    try:
        data = build_data(cfg, registry)
    except DataProblems as exc:
        result.problems = list(exc.problems)
        return result
    result.notes = list(data.notes)
    classes = data.classes
    try:
        model = assemble(cfg, registry, channels=data.channels, height=data.height, classes=data.classes)
    except CrnnfwError as exc:
        model = None
        result.problems.append(Problem("model", "check", source, str(exc)))
    for name in SPLITS:
        split = getattr(data, name)
        widths, targets, lengths, complete = _arrays(split)
        info: dict[str, Any] = {"samples": len(split), "summarised_from": len(widths) if not complete else len(split), "widths": histogram(widths)}
        if lengths is not None:
            info["label_lengths"] = histogram(lengths)
            if model is not None:  # how tightly the characters sit in the model's output steps
                info["steps_per_character"] = histogram(model.backbone.out_lengths(widths) // lengths.clamp(min=1))
        result.splits[name] = info
        if name == "train":
            if lengths is not None:
                valid = torch.arange(targets.shape[1]) < lengths[:, None]
                counts = Counter(targets[valid].tolist())
            else:
                counts = Counter(targets.tolist())
            result.charset = {classes[i]: counts.get(i, 0) for i in range(len(classes))}
    if model is not None:
        try:
            for name in SPLITS:
                result.problems += _label_fit(model, getattr(data, name), name)
            if not result.problems:  # the build-time check: stage contracts, labels of splits composed on the fly
                check_model(model, data)
        except CrnnfwError as exc:
            result.problems.append(Problem("model", "check", source, str(exc)))
    if out is not None:
        result.pictures.append(str(pictures.samples_png(data, out / "samples.png")))
    return result
