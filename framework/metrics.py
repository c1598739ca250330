"""Sequence metrics shared by heads: edit distance, character error rate, exact match."""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance (insertions, deletions, substitutions all cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


class SequenceScores:
    """Accumulates exact-match accuracy, CER, normalised edit distance and a per-length breakdown.

    - ``accuracy``: fraction of strings predicted exactly.
    - ``cer``: total edit distance over total reference length.
    - ``ned``: mean of edit distance / max(len(reference), len(prediction)).
    - ``accuracy_len{n}``: exact-match accuracy of references with ``n`` characters.

    :meth:`per_length` gives the same breakdown with counts and CER, as table rows.
    """

    def __init__(self) -> None:
        self.count = 0
        self.exact = 0
        self.edits = 0
        self.ref_chars = 0
        self.ned_sum = 0.0
        self.by_length: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])  # exact, count, edits

    def add(self, predictions: Sequence[str], references: Sequence[str]) -> None:
        for hyp, ref in zip(predictions, references, strict=True):
            distance = 0 if hyp == ref else edit_distance(hyp, ref)
            self.count += 1
            self.exact += distance == 0
            self.edits += distance
            self.ref_chars += len(ref)
            self.ned_sum += distance / max(len(ref), len(hyp), 1)
            bucket = self.by_length[len(ref)]
            bucket[0] += distance == 0
            bucket[1] += 1
            bucket[2] += distance

    def compute(self) -> dict[str, float]:
        out = {
            "accuracy": self.exact / self.count if self.count else 0.0,
            "cer": self.edits / self.ref_chars if self.ref_chars else 0.0,
            "ned": self.ned_sum / self.count if self.count else 0.0,
        }
        for length in sorted(self.by_length):
            right, total, _ = self.by_length[length]
            out[f"accuracy_len{length}"] = right / total
        return out

    def per_length(self) -> list[dict[str, float | int]]:
        """One row per reference length: how many, exact-match accuracy and CER."""
        return [{"length": length, "count": total, "accuracy": right / total, "cer": edits / (length * total) if length else 0.0} for length, (right, total, edits) in sorted(self.by_length.items())]
