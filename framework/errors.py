"""Errors a user can cause. The CLI prints them as one line and exits non-zero."""

from __future__ import annotations

from dataclasses import dataclass


def first_line(exc: BaseException, default: str = "") -> str:
    """The first line of an exception's message, so every error we print stays on one line."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else default or type(exc).__name__


class CrnnfwError(Exception):
    """Base class for user-facing errors: the message says what is wrong and what to do."""

    exit_code = 2

    def report(self, prog: str) -> str:
        """What a command prints for this error: one ``PROG: error:`` line per line of the
        message (a DataProblems has one per kind of problem), the class name if it has none."""
        return "\n".join(f"{prog}: error: {line}" for line in str(self).splitlines() or [type(self).__name__])


class ConfigError(CrnnfwError):
    """A config file or override is invalid."""


class PluginError(CrnnfwError):
    """A plugin failed to load or registered something invalid."""


class DataError(CrnnfwError):
    """Data is missing, corrupt or inconsistent with the model."""


class ModelError(CrnnfwError):
    """The assembled model breaks a stage contract."""


class CheckpointError(CrnnfwError):
    """A checkpoint cannot be read or does not fit."""


class TrainingError(CrnnfwError):
    """Training cannot go on (for example a non-finite loss)."""

    exit_code = 1


class ExportError(CrnnfwError):
    """A model cannot be exported, or the exported model disagrees with PyTorch."""


class ImageError(CrnnfwError):
    """An image file cannot be read."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one sample or label file, with its place (``labels.txt:12``)."""

    split: str
    kind: str  # "missing image", "unknown character", ...
    where: str
    detail: str


class DataProblems(DataError):
    """The data has errors: the message has one line per kind of problem, with its count and
    first places; ``problems`` holds every one (``crnnfw data CONFIG`` lists them all).
    ``hint`` (optional) says what else the user can do, e.g. which option skips such samples."""

    def __init__(self, problems: list[Problem], hint: str = "") -> None:
        self.problems = problems
        by_kind: dict[str, list[Problem]] = {}
        for problem in problems:
            by_kind.setdefault(problem.kind, []).append(problem)
        lines = []
        for kind, found in by_kind.items():
            splits = ", ".join(sorted({p.split for p in found}))
            first = "; ".join(f"{p.where}: {p.detail}" for p in found[:3])
            lines.append(f"data: {len(found)} x {kind} ({splits}), first {first}")
        lines[-1] += f" (`crnnfw data CONFIG` lists every problem{'; ' + hint if hint else ''})"
        super().__init__("\n".join(lines))
