"""Fine-tuning: start a model from the weights of another run that fit it."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .model import Model
from .trained import read_state


def _names(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def init_from(model: Model, source: str, classes: tuple[str, ...], say: Callable[[str], None]) -> tuple[Path, dict[str, list[str]]]:
    """Copy every tensor of ``source`` (checkpoint or run directory) whose name and shape match.

    When the source was trained on other classes, or its head decodes differently (another
    charset), the whole head starts fresh: its weights mean other symbols. Returns the
    checkpoint file used and the parameter names by outcome (``loaded``, ``reinitialised``,
    ``shape_differs``, ``new``, ``unused``), and reports them through ``say``.
    """
    file, state = read_state(source)
    weights = state["model"]
    own = model.state_dict()
    old_classes = tuple(state["classes"])
    same_task = old_classes == tuple(classes) and state["decoding"] == model.head.export_metadata()
    outcome: dict[str, list[str]] = {"loaded": [], "reinitialised": [], "shape_differs": [], "new": [], "unused": []}
    for key, tensor in own.items():
        if key.startswith("head.") and not same_task:
            outcome["reinitialised"].append(key)
        elif key not in weights:
            outcome["new"].append(key)
        elif weights[key].shape != tensor.shape:
            outcome["shape_differs"].append(key)
        else:
            outcome["loaded"].append(key)
    outcome["unused"] = [key for key in weights if key not in own]
    model.load_state_dict({key: weights[key] for key in outcome["loaded"]}, strict=False)

    count = sum(own[key].numel() for key in outcome["loaded"])
    say(f"init from {file}: loaded {len(outcome['loaded'])} of {len(own)} tensors ({count:,} values)")
    if outcome["reinitialised"]:
        why = f"{len(old_classes)} classes -> {len(classes)}" if old_classes != tuple(classes) else "its decoding differs"
        say(f"  re-initialised the head ({why}): {_names(outcome['reinitialised'])}")
    for label, key in (("skipped, shape differs", "shape_differs"), ("new, not in the checkpoint", "new"), ("unused from the checkpoint", "unused")):
        if outcome[key]:
            say(f"  {label}: {_names(outcome[key])}")
    return file, outcome
