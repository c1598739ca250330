"""Lightning-style precision strings, what ``auto`` picks on this machine, and the autocast
context each one means.

``auto`` exists because the fastest precision is a property of the hardware: bf16 doubles the
speed of a CPU with bf16 units (AMX, AVX512-BF16) and is emulated, several times slower than
fp32, on every other CPU.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .hardware import Hardware

PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed")


@dataclass(frozen=True)
class Choice:
    """The precision a run trains with, how it came about, and a warning when it is a slow one."""

    precision: str
    requested: str
    reason: str | None = None  # why ``auto`` chose it
    warning: str | None = None

    def __str__(self) -> str:
        return f"auto -> {self.precision}: {self.reason}" if self.reason else self.precision


def choose(requested: str, hw: Hardware) -> Choice:
    """Resolve ``trainer.precision`` for a device.

    ``auto``: bf16-mixed where bf16 is native; else 16-mixed on a GPU and 32-true on a CPU.
    An explicit choice is kept, with a warning when it is bf16 emulated on a CPU.
    """
    if requested == "auto":
        if hw.native_bf16:
            return Choice("bf16-mixed", requested, f"{hw.name} has native bf16")
        fallback = "16-mixed" if hw.device_type == "cuda" else "32-true"
        return Choice(fallback, requested, f"{hw.name} has no native bf16")
    if requested == "bf16-mixed" and hw.device_type == "cpu" and not hw.native_bf16:
        return Choice(
            requested, requested, warning=(f"warning: trainer.precision=bf16-mixed: {hw.name} has no native bf16, so it is emulated and many times slower than 32-true; use trainer.precision=auto")
        )
    return Choice(requested, requested)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context for a resolved precision string (``32-true``: none)."""
    if precision == "32-true":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float16
    return torch.autocast(device.type, dtype=dtype)
