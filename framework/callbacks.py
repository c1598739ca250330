"""Trainer callbacks: code that runs at the training loop's events, chosen in the config
(``trainer.callbacks``) and registered by plugins through ``crnnfw_register_callbacks``.

A callback subclasses :class:`Callback` and overrides the events it needs. Each event gets the
:class:`FitState`, which it may read, and on which ``on_epoch_end`` may ask the loop to stop.
Callbacks never force a device sync: ``on_step`` comes only at the steps where the loop reads
the loss back anyway.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig


@dataclass
class FitState:
    """What the loop knows, as callbacks see it. ``stop`` (a reason) ends training after the
    current epoch; ``records`` go into ``summary.json`` under ``callbacks``."""

    cfg: DictConfig
    run_dir: Path
    model: torch.nn.Module
    monitor: str  # the val metric that decides the best epoch, e.g. "accuracy"
    higher_is_better: bool
    epochs: int  # trainer.epochs: the most the run trains (max_steps, max_minutes or a stop may end it sooner)
    epoch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)
    stop: str | None = None
    records: dict[str, Any] = field(default_factory=dict)


class Callback:
    """Base class: every event does nothing. Override the ones you need."""

    def on_fit_start(self, state: FitState) -> None:
        """Before the first epoch (also of a resumed run, with its history)."""

    def on_epoch_start(self, state: FitState) -> None:
        """Before each epoch's first step; ``state.epoch`` is the epoch starting."""

    def on_train_batch_end(self, state: FitState) -> None:
        """After every optimizer step (``state.step`` counts it), with no loss: reading the
        loss back would sync the device each step. For per-step work on the weights."""

    def on_step(self, state: FitState, loss: float, lr: float) -> None:
        """At the steps where the loop reads the loss back (every ``min(10, log_every)``
        steps and at the end of an epoch): the running mean loss of the epoch so far."""

    def on_evaluate_start(self, state: FitState) -> None:
        """Before an epoch's val and test splits are scored (and before the final score of a
        resumed run that had finished): the weights in ``state.model`` now are the ones scored,
        chosen as best and saved in the epoch's checkpoints."""

    def on_evaluate_end(self, state: FitState) -> None:
        """After the epoch was scored and committed (its checkpoints written); training goes on
        from here."""

    def on_epoch_end(self, state: FitState, row: dict[str, Any]) -> None:
        """After an epoch was evaluated, with its ``metrics.jsonl`` row, before it is committed.
        Set ``state.stop`` to end training after this epoch."""

    def on_checkpoint(self, state: FitState, path: Path) -> None:
        """After a checkpoint file was written (``last.ckpt``, and ``best.ckpt`` when best)."""

    def on_exception(self, state: FitState, error: BaseException) -> None:
        """When training fails or is interrupted, before the error goes on to the caller."""

    def on_fit_end(self, state: FitState, summary: dict[str, Any]) -> None:
        """After ``summary.json`` was written."""

    def state_dict(self) -> dict[str, Any]:
        """What this callback must get back to carry on bit-exactly after a resume (tensors and
        builtins), saved in every checkpoint; nothing by default."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what :meth:`state_dict` gave, when a run resumes (after the model's weights
        were loaded, before ``on_fit_start``)."""
