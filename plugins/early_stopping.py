"""Early stopping: end training when the val metric has not improved for ``patience`` epochs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import crnnfw


@dataclass
class EarlyStoppingConfig:
    patience: int = 3  # epochs without improvement before stopping
    min_delta: float = 0.0  # an epoch improves only by more than this

    def __post_init__(self) -> None:
        if self.patience < 1:
            raise ValueError(f"patience: must be >= 1, got {self.patience}")
        if self.min_delta < 0:
            raise ValueError(f"min_delta: must be >= 0, got {self.min_delta}")


class EarlyStopping(crnnfw.Callback):
    """Decides from the run's history alone, so a resumed run stops where the uninterrupted
    one would have."""

    def __init__(self, config: EarlyStoppingConfig) -> None:
        self.config = config

    def on_epoch_end(self, state: crnnfw.FitState, row: dict[str, Any]) -> None:
        key = f"val_{state.monitor}"
        best_value, best_epoch = None, 0
        for past in state.history:
            value = past[key]
            better = best_value is None or (value > best_value + self.config.min_delta if state.higher_is_better else value < best_value - self.config.min_delta)
            if better:
                best_value, best_epoch = value, past["epoch"]
        waited = state.epoch - best_epoch
        if waited >= self.config.patience and state.epoch < state.epochs:
            state.stop = f"early stopping: {key} has not improved by more than {self.config.min_delta:g} for {waited} epochs (best {best_value:.4f} at epoch {best_epoch})"
            state.records["early_stopping"] = {"stopped_after_epoch": state.epoch, "best_epoch": best_epoch, "monitor": key, "patience": self.config.patience, "min_delta": self.config.min_delta}
