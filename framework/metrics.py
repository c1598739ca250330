"""Sequence metrics shared by heads: edit distance, character error rate, exact match."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Sequence


def edit_operations(truth: Sequence, read: Sequence) -> list[tuple[str, str]]:
    """The edits of one cheapest alignment turning ``truth`` into ``read``: ``(truth, read)``
    pairs, with ``""`` for nothing (a character lost or added). Of equally cheap alignments, it
    pairs characters where the two strings have as many left, and puts a lost or added one where
    they do not: ``AOJ`` read as ``A0`` is ``O`` read as ``0`` and a lost ``J``."""
    rows = [list(range(len(read) + 1))]
    for i, x in enumerate(truth, start=1):
        row = [i]
        for j, y in enumerate(read, start=1):
            row.append(min(rows[-1][j] + 1, row[j - 1] + 1, rows[-1][j - 1] + (x != y)))
        rows.append(row)
    edits: list[tuple[str, str]] = []
    i, j = len(truth), len(read)
    while i or j:
        same = bool(i and j) and truth[i - 1] == read[j - 1]
        diagonal = bool(i and j) and rows[i][j] == rows[i - 1][j - 1] + (not same)
        lost = bool(i) and rows[i][j] == rows[i - 1][j] + 1
        added = bool(j) and rows[i][j] == rows[i][j - 1] + 1
        if diagonal and (same or not (lost and i > j or added and j > i)):
            if not same:
                edits.append((truth[i - 1], read[j - 1]))
            i, j = i - 1, j - 1
        elif lost and (i > j or not added):
            edits.append((truth[i - 1], ""))
            i -= 1
        else:
            edits.append(("", read[j - 1]))
            j -= 1
    return edits[::-1]


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance (insertions, deletions, substitutions all cost 1)."""
    return len(edit_operations(a, b))


class SequenceScores:
    """Accumulates exact-match accuracy, CER, normalised edit distance and a per-length breakdown.

    - ``accuracy``: fraction of strings predicted exactly.
    - ``cer``: total edit distance over total reference length.
    - ``ned``: mean of edit distance / max(len(reference), len(prediction)).
    - ``accuracy_len{n}``: exact-match accuracy of references with ``n`` characters.

    :meth:`per_length` gives the same breakdown with counts and CER, as table rows, and
    :meth:`char_errors` the most frequent character errors (``O`` read as ``0``, a lost ``J``), which
    show look-alikes the data cannot tell apart and characters the model keeps missing.
    """

    def __init__(self) -> None:
        self.count = 0
        self.exact = 0
        self.edits = 0
        self.ref_chars = 0
        self.ned_sum = 0.0
        self.by_length: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])  # exact, count, edits
        self.edit_counts: Counter[tuple[str, str]] = Counter()

    def add(self, predictions: Sequence[str], references: Sequence[str]) -> None:
        for hyp, ref in zip(predictions, references, strict=True):
            edits = [] if hyp == ref else edit_operations(ref, hyp)
            self.edit_counts.update(edits)
            distance = len(edits)
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

    def char_errors(self, top: int = 20) -> list[dict[str, str | int]]:
        """The ``top`` most frequent character errors, as rows: ``truth`` read as ``read``
        (``""`` for a lost or an added character) ``count`` times, most frequent first."""
        return [{"truth": truth, "read": read, "count": count} for (truth, read), count in self.edit_counts.most_common(top)]
