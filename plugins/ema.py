"""An exponential moving average of the weights: scored, chosen as best and saved in place of the
trained weights, which stay what the optimizer steps on.

The average follows every optimizer step with ``decay`` (warmed up as ``(1 + n) / (10 + n)``
over the first steps, so early weights fade out fast). Between ``on_evaluate_start`` and
``on_evaluate_end`` the model holds the average, so the epoch's scores, ``best.ckpt`` and
``last.ckpt`` are the average's; the weights not in the model at a checkpoint travel in the
callback's state, so a resumed run carries on bit-exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

import crnnfw


@dataclass
class EMAConfig:
    decay: float = 0.999  # weight of the old average at each step
    warmup: bool = True  # decay grows as (1 + n) / (10 + n) up to ``decay`` over the first steps

    def __post_init__(self) -> None:
        if not 0.0 < self.decay < 1.0:
            raise ValueError(f"decay: must lie in (0, 1), got {self.decay}")


class EMA(crnnfw.Callback):
    """Averages every floating-point parameter and buffer (BatchNorm's running statistics too);
    integer buffers (batch counts) are the trained model's."""

    def __init__(self, config: EMAConfig) -> None:
        self.config = config
        self.updates = 0
        self.swapped = False  # whether the model holds the average now
        self.shadow: list[torch.Tensor] = []  # the weights not in the model: the average, or the trained ones while swapped
        self.tensors: list[torch.Tensor] = []  # the model's floating-point parameters and buffers, found once
        self._saved: dict[str, Any] | None = None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._saved = state

    def on_fit_start(self, state: crnnfw.FitState) -> None:
        self.tensors = [t.detach() for t in (*state.model.parameters(), *state.model.buffers()) if t.is_floating_point()]
        saved, self._saved = self._saved, None
        if saved is None:
            self.shadow = [t.clone() for t in self.tensors]
            return
        self.updates = saved["updates"]
        self.shadow = [s.to(t.device) for s, t in zip(saved["shadow"], self.tensors)]
        if saved["swapped"]:  # the checkpoint's weights are the average: put the trained ones back
            self._swap()
        self.swapped = False

    def on_train_batch_end(self, state: crnnfw.FitState) -> None:
        self.updates += 1
        n = self.updates
        decay = min(self.config.decay, (1 + n) / (10 + n)) if self.config.warmup else self.config.decay
        torch._foreach_lerp_(self.shadow, self.tensors, 1.0 - decay)

    def on_evaluate_start(self, state: crnnfw.FitState) -> None:
        if not self.swapped:
            self._swap()
            self.swapped = True
        state.records["ema"] = {"decay": self.config.decay, "warmup": self.config.warmup, "updates": self.updates}

    def on_evaluate_end(self, state: crnnfw.FitState) -> None:
        if self.swapped:
            self._swap()
            self.swapped = False

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "swapped": self.swapped, "shadow": [s.to("cpu", copy=True) for s in self.shadow]}

    def _swap(self) -> None:
        """Exchange the model's weights and the shadow's, in place (the optimizer keeps its tensors)."""
        for model_tensor, shadow in zip(self.tensors, self.shadow):
            held = model_tensor.clone()
            model_tensor.copy_(shadow)
            shadow.copy_(held)
