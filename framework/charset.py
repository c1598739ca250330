"""The charset is data: the characters a model reads, taken from the training labels or a
dictionary file, stored in checkpoints and exported models, checked against every label.

Labels are normalised the same way everywhere (Unicode NFC, then the configured case), so an
``é`` typed as one code point and one written as ``e`` plus a combining accent are one
character. A character outside the charset is never dropped silently: ``unknown: error``
stops with the places it occurs, ``drop`` leaves out the samples, ``skip`` the characters,
and both are counted.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .errors import DataError

CASES = ("keep", "lower", "upper")
UNKNOWN_POLICIES = ("error", "drop", "skip")
#: How a dictionary file writes the space character (a line holding one space also works).
SPACE_TOKEN = "<space>"


def normalise(text: str, case: str = "keep") -> str:
    """NFC, then ``lower``/``upper`` when asked: the form every label is compared in."""
    text = unicodedata.normalize("NFC", text)
    return text.lower() if case == "lower" else text.upper() if case == "upper" else text


def build_charset(labels: Iterable[str]) -> str:
    """Every character of the labels, once, sorted by code point."""
    return "".join(sorted(set("".join(labels))))


def read_dictionary(path: str | Path) -> str:
    """A PaddleOCR/MMOCR dictionary: one character per line (``<space>`` or a lone space for a
    space), in the file's order; blank lines are skipped. DataError names a bad file:line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data.dictionary: {path}: no such file; give a text file with one character per line")
    try:
        lines = path.read_bytes().decode("utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"data.dictionary: {path}: not UTF-8 text; save it as UTF-8") from None
    chars: list[str] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if line == " " or line.strip() == SPACE_TOKEN:
            char = " "
        else:
            char = normalise(line.strip())
            if not char:
                continue
        if len(char) != 1:
            raise DataError(f"data.dictionary: {path}:{number}: {line!r} is not one character (write a space as {SPACE_TOKEN})")
        if char in seen:
            raise DataError(f"data.dictionary: {path}:{number}: {char!r} is already on line {seen[char]}")
        seen[char] = number
        chars.append(char)
    if not chars:
        raise DataError(f"data.dictionary: {path}: holds no characters")
    return "".join(chars)


@dataclass
class Filtered:
    """What applying a charset did: the labels kept (by index), and every change counted."""

    kept: list[tuple[int, str]] = field(default_factory=list)  # (index, label as trained on)
    dropped: int = 0  # samples left out (``drop``, or a label that ``skip`` emptied)
    skipped: int = 0  # characters left out (``skip``)
    unknown: Counter = field(default_factory=Counter)  # character -> occurrences
    unknown_at: list[tuple[int, str, str]] = field(default_factory=list)  # (index, where, its unknown characters)

    def summary(self) -> str:
        """One line for the log, or '' when the charset covered every label."""
        if not self.unknown:
            return ""
        chars = "".join(sorted(self.unknown))
        done = f"skipped {self.skipped} characters, dropped {self.dropped} labels left empty" if self.skipped else f"dropped {self.dropped} samples"
        first = ", ".join(where for _, where, _ in self.unknown_at[:3])
        return f"{sum(self.unknown.values())} occurrences of {len(self.unknown)} characters outside the charset ({chars!r}, first at {first}): {done}"


def apply_charset(labels: Iterable[tuple[str, str]], charset: str, policy: str) -> Filtered:
    """Check ``(where, label)`` pairs against ``charset``. Under ``skip`` unknown characters are
    left out of their labels, under ``drop`` (and ``error``) their samples; ``unknown_at`` says
    where, for the caller to report or refuse."""
    allowed = set(charset)
    result = Filtered()
    for index, (where, label) in enumerate(labels):
        unknown = [c for c in label if c not in allowed]
        if not unknown:
            result.kept.append((index, label))
            continue
        result.unknown.update(unknown)
        result.unknown_at.append((index, where, "".join(dict.fromkeys(unknown))))
        if policy == "skip":
            kept = "".join(c for c in label if c in allowed)
            result.skipped += len(unknown)
            if kept:
                result.kept.append((index, kept))
                continue
        result.dropped += 1
    return result
