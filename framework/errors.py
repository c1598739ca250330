"""Errors a user can cause. The CLI prints them as one line and exits non-zero."""

from __future__ import annotations


def first_line(exc: BaseException, default: str = "") -> str:
    """The first line of an exception's message, so every error we print stays on one line."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else default or type(exc).__name__


class CrnnfwError(Exception):
    """Base class for user-facing errors: the message says what is wrong and what to do."""

    exit_code = 2


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
