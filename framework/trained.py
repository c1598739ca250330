"""A trained model loaded back from its checkpoint: what eval, predict, export and fine-tuning start from.

A checkpoint holds the resolved config, the classes and the input spec next to the weights,
so the model is rebuilt from the registry without the training data.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import torch
from omegaconf import DictConfig

from . import checkpoint
from . import config as config_mod
from .data import InputSpec
from .errors import CheckpointError, CrnnfwError
from .model import Model, assemble
from .plugins import get_host
from .rundir import CHECKPOINTS, best_checkpoint


@dataclass
class Trained:
    """A model in eval mode with everything needed to feed it and read its output."""

    model: Model
    cfg: DictConfig
    classes: tuple[str, ...]
    spec: InputSpec
    path: Path
    state: dict[str, Any]

    @property
    def run_dir(self) -> Path | None:
        """The run directory the checkpoint belongs to, when it sits in one."""
        parent = self.path.parent
        return parent.parent if parent.name == CHECKPOINTS else None


def checkpoint_path(path: str | Path) -> Path:
    """``path`` itself for a file; for a run directory the checkpoint of its best model."""
    path = Path(path)
    if path.is_dir():
        candidate = best_checkpoint(path)
        if candidate is not None:
            return candidate
        raise CheckpointError(f"{path}: a folder without checkpoints/best.ckpt or checkpoints/last.ckpt; give a run directory or a .ckpt file")
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file or run directory")
    return path


def read_state(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """The checkpoint file ``path`` names and its contents, checked to be a model checkpoint."""
    file = checkpoint_path(path)
    state = checkpoint.load(file)
    missing = [key for key in checkpoint.MODEL_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{file}: not a crnnfw model checkpoint (no {', '.join(missing)})")
    return file, state


def load_trained(path: str | Path, overrides: Sequence[str] = (), device: torch.device | str = "cpu") -> Trained:
    """Rebuild the model a checkpoint (or run directory) holds, with its weights, in eval mode.

    ``overrides`` change the stored config (e.g. ``data.test_limit=1000`` for eval); options
    that change the model's layers make the weights not fit, which is reported as such.
    """
    file, state = read_state(path)
    registry = get_host().registry
    spec = InputSpec(**state["input"])
    try:
        cfg = config_mod.apply_overrides(config_mod.from_container(state["config"]), overrides)
        if cfg.data.get("name") != state["config"]["data"].get("name"):
            _read_as_the_model(cfg, spec, registry)
        cfg = config_mod.resolve(cfg, registry, source=str(file))
    except CrnnfwError as exc:
        raise CheckpointError(f"{exc}{_plugin_hint(state)}") from None
    classes = tuple(state["classes"])
    model = assemble(cfg, registry, channels=spec.channels, height=spec.height, classes=classes)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"{file}: the weights do not fit the model its config builds ({detail})") from None
    model.to(device).eval()
    return Trained(model, cfg, classes, spec, file, state)


def _read_as_the_model(cfg: DictConfig, spec: InputSpec, registry: Any) -> None:
    """Another dataset given by override (``data.name=lines`` to score files) reads images as the
    model does: its ``height``, ``channels`` and ``ink_height`` default to the model's input. The
    swap left the section only the options the overrides gave, so an option it lacks is unset."""
    try:
        options = {f.name for f in fields(registry.get("dataset", cfg.data.name).config)}
    except CrnnfwError:
        return  # an unknown dataset is reported by resolve, with the names there are
    model = {"height": spec.height, "channels": spec.channels, "ink_height": spec.ink_height}
    for key, value in model.items():
        if key in options and key not in cfg.data and value is not None:
            cfg.data[key] = value


def _plugin_hint(state: dict[str, Any]) -> str:
    """Which distributions provided the checkpoint's components, for a 'not installed' error."""
    components = state.get("components") or {}
    wanted = sorted({f"{c['distribution']} {c['version']}" for c in components.values() if c.get("distribution") not in (None, "?", "crnnfw")})
    return f" (the checkpoint was trained with plugins from: {', '.join(wanted)}; install them)" if wanted else ""
