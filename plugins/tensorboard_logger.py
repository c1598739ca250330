"""A TensorBoard logger: the loss and learning rate at each step the loop reads them, every
metric of each epoch, and the run's pictures at the end (``tensorboard --logdir runs``).
Needs the ``tensorboard`` extra: ``pip install 'crnnfw[tensorboard]'``."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image

import crnnfw

PICTURES = ("predictions.png", "curves.png", "confusion.png", "samples.png")


@dataclass
class TensorBoardConfig:
    log_dir: Optional[str] = None  # where the event files go (default: RUN/tensorboard, so `tensorboard --logdir runs` finds every run)
    pictures: bool = True  # also log the run's pictures (predictions, curves, confusion, samples) when it ends


class TensorBoardLogger(crnnfw.Callback):
    def __init__(self, config: TensorBoardConfig) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise crnnfw.ConfigError("trainer.callbacks: tensorboard needs the tensorboard package: pip install 'crnnfw[tensorboard]'") from None
        self.config = config
        self._writer_class = SummaryWriter
        self.writer: Any = None

    def on_fit_start(self, state: crnnfw.FitState) -> None:
        folder = Path(self.config.log_dir) if self.config.log_dir else state.run_dir / "tensorboard"
        self.writer = self._writer_class(log_dir=str(folder), purge_step=state.step or None)  # a resumed run replaces what came after its checkpoint

    def on_step(self, state: crnnfw.FitState, loss: float, lr: float) -> None:
        self.writer.add_scalar("train/loss", loss, state.step)
        self.writer.add_scalar("train/lr", lr, state.step)

    def on_epoch_end(self, state: crnnfw.FitState, row: dict[str, Any]) -> None:
        for key, value in row.items():
            if key not in ("epoch", "step") and isinstance(value, numbers.Real):
                split, _, metric = key.partition("_")
                self.writer.add_scalar(f"{split}/{metric}" if metric else key, value, state.epoch)
        self.writer.flush()

    def on_fit_end(self, state: crnnfw.FitState, summary: dict[str, Any]) -> None:
        if self.config.pictures:
            for name in PICTURES:
                path = state.run_dir / name
                if path.is_file():
                    with Image.open(path) as picture:
                        self.writer.add_image(f"pictures/{path.stem}", np.asarray(picture.convert("RGB")), state.step, dataformats="HWC")
        self.writer.close()

    def on_exception(self, state: crnnfw.FitState, error: BaseException) -> None:
        if self.writer is not None:
            self.writer.close()
