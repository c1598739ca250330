"""Lightning-style precision strings and the autocast context each one means."""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context for a precision string (``32-true``: none)."""
    if precision == "32-true":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float16
    return torch.autocast(device.type, dtype=dtype)
