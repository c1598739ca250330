"""The Python API: train a model, load one, and read images with it, as the CLI does.

import crnnfw

run = crnnfw.train("configs/mnist_crnn.yaml", ["trainer.epochs=1"], output_dir="runs")
recognizer = crnnfw.load(run.run_dir)
[prediction] = recognizer.predict("digit.png")
print(prediction.text, prediction.confidence)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from . import atomic
from . import config as config_mod
from .data import DataModule
from .errors import ConfigError, CrnnfwError
from .images import MAX_PIXELS
from .plugins import get_host
from .predict import ImageInput, Prediction, predict_images
from .trained import Trained, load_trained


@dataclass(frozen=True)
class Run:
    """A finished training run: its directory and summary (``summary.json``)."""

    run_dir: Path
    summary: dict[str, Any]

    @property
    def history(self) -> list[dict[str, Any]]:
        """The per-epoch rows of ``metrics.jsonl``."""
        path = self.run_dir / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def load(self, device: torch.device | str = "cpu") -> "Recognizer":
        """The run's best model."""
        return load(self.run_dir, device=device)


def train(
    config: str | Path | Mapping[str, Any] | DictConfig,
    overrides: Sequence[str] = (),
    *,
    resume: str | Path | None = None,
    init_from: str | Path | None = None,
    allow_env: bool = False,
    **options: Any,
) -> Run:
    """Train what ``config`` (a YAML file, or a mapping) describes, like ``crnnfw run``.

    ``overrides`` are ``key=value`` strings; keyword ``options`` set top-level keys or merge
    into sections (``name="quick"``, ``trainer={"epochs": 1}``). ``resume`` continues a run
    directory (then ``config`` may be None), ``init_from`` fine-tunes from a checkpoint.
    """
    from .resume import resumed_config
    from .trainer import Trainer

    overrides = [*overrides, *_dotlist(options)]
    if resume is not None:
        if init_from is not None:
            raise ConfigError("train: resume continues a run and init_from starts a new one; give one of them")
        run_dir = Path(resume)
        fitted = Trainer(resumed_config(run_dir, overrides, allow_env=allow_env), resume=run_dir).fit()
        return Run(fitted.run_dir, fitted.summary)
    if init_from is not None:
        overrides.append(f"trainer.init_from={init_from}")
    fitted = Trainer(_resolved(config, overrides, allow_env, "train")).fit()
    return Run(fitted.run_dir, fitted.summary)


def _resolved(config: str | Path | Mapping[str, Any] | DictConfig, overrides: Sequence[str], allow_env: bool, caller: str) -> DictConfig:
    """A YAML file or a mapping, with ``overrides`` applied, validated against the registry."""
    if isinstance(config, (str, Path)):
        source, loaded = str(config), config_mod.load(config, list(overrides))
    elif isinstance(config, (Mapping, DictConfig)):
        source, loaded = "config", config_mod.apply_overrides(OmegaConf.create(dict(config) if isinstance(config, Mapping) else config), list(overrides))
    else:
        raise ConfigError(f"{caller}: config must be a YAML file or a mapping, not {type(config).__name__}")
    return config_mod.resolve(loaded, get_host().registry, source=source, allow_env=allow_env)


@dataclass(frozen=True)
class Built:
    """What a config describes, untrained: its resolved ``config``, its ``data`` (a
    ``crnnfw.DataModule``) and its ``model`` (an ``nn.Module`` taking ``(images, widths)`` and
    returning ``(logits, lengths)``; ``model.head`` has ``loss``, ``decode`` and ``metrics``)."""

    config: DictConfig
    data: DataModule
    model: torch.nn.Module


def build(config: str | Path | Mapping[str, Any] | DictConfig, overrides: Sequence[str] = (), *, allow_env: bool = False, **options: Any) -> Built:
    """The data and the model a config describes, checked as ``crnnfw run`` checks them
    before training, for a loop of your own, a notebook or a benchmark (arguments as for
    :func:`train`)."""
    from .datasets import build_data
    from .model import build_model

    cfg = _resolved(config, [*overrides, *_dotlist(options)], allow_env, "build")
    registry = get_host().registry
    data = build_data(cfg, registry)
    return Built(cfg, data, build_model(cfg, data, registry))


def _dotlist(options: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Keyword options as ``key=value`` overrides (nested mappings as dotted keys)."""
    out = []
    for key, value in options.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out += _dotlist(value, f"{dotted}.")
        else:
            out.append(f"{dotted}={json.dumps(value) if not isinstance(value, str) else value}")
    return out


def load(checkpoint: str | Path, device: torch.device | str = "cpu", overrides: Sequence[str] = ()) -> "Recognizer":
    """A trained model from a checkpoint file or a run directory (its best model), ready to
    read images. ``overrides`` change the stored config, e.g. the data to evaluate on."""
    return Recognizer(load_trained(checkpoint, overrides, device=device))


class Recognizer:
    """A trained model with what it needs to read images: its classes, its input spec and its
    config. Calling it is ``predict``."""

    def __init__(self, trained: Trained) -> None:
        self._trained = trained

    @property
    def classes(self) -> tuple[str, ...]:
        """What the model reads: the characters of a sequence model, the labels of a classifier."""
        return self._trained.classes

    @property
    def config(self) -> DictConfig:
        """The resolved config the model was trained with (and any overrides given to ``load``)."""
        return self._trained.cfg

    @property
    def checkpoint(self) -> Path:
        return self._trained.path

    @property
    def run_dir(self) -> Path | None:
        """The run directory the checkpoint belongs to, when it sits in one."""
        return self._trained.run_dir

    @property
    def device(self) -> torch.device:
        return next(self._trained.model.parameters()).device

    def to(self, device: torch.device | str) -> "Recognizer":
        """Move the model to ``device``; returns the recognizer."""
        self._trained.model.to(device)
        return self

    def predict(
        self,
        images: ImageInput | Iterable[ImageInput],
        *,
        batch_size: int = 64,
        beam: int = 1,
        polarity: str = "auto",
        max_pixels: int = MAX_PIXELS,
        max_width: int | None = None,
    ) -> list[Prediction]:
        """A prediction per image, in order; a folder path stands for its image files.

        Images may be paths, PIL images, numpy arrays ``(H, W[, C])`` or tensors ``(H, W)`` /
        ``(C, H, W)``, one or a list; an image that cannot be read has ``error`` set instead of
        ``text``. The preprocessing is ``crnnfw predict``'s.
        """
        if isinstance(images, (str, Path, torch.Tensor, np.ndarray, Image.Image)):
            images = [images]
        return predict_images(self._trained, images, polarity=polarity, beam=beam, batch_size=batch_size, max_pixels=max_pixels, max_width=max_width)

    __call__ = predict

    def evaluate(self, split: str = "test", out: str | Path | None = None) -> dict[str, Any]:
        """Scores on a split of the config's dataset (``load(..., overrides=...)`` picks another
        dataset): ``{"checkpoint", "split", "samples", "scores", "report", "confusion"}``, as
        ``crnnfw eval --json``. With ``out``, the pictures and ``eval.json`` are written there too."""
        from . import pictures
        from .datasets import build_data
        from .evaluation import evaluate
        from .hardware import hardware
        from .model import check_model, stage_names
        from .precision import choose

        if split not in ("train", "val", "test"):
            raise ConfigError(f"evaluate: split '{split}' is not one of train, val, test")
        trained, cfg = self._trained, self._trained.cfg
        data = build_data(cfg, get_host().registry)
        if tuple(data.classes) != trained.classes:
            raise CrnnfwError(f"eval: the data's classes {''.join(data.classes)!r} are not the model's {''.join(trained.classes)!r}")
        if (data.channels, data.height) != (trained.spec.channels, trained.spec.height):
            raise CrnnfwError(
                f"eval: the data's images are {data.channels} x {data.height} px (channels x height), the model was trained "
                f"on {trained.spec.channels} x {trained.spec.height}; set the data options (e.g. data.height) to match"
            )
        check_model(trained.model, data, names=stage_names(cfg))  # another dataset may not suit the head (class labels, sequences)
        samples = getattr(data, split)
        precision = choose(cfg.trainer.precision, hardware(self.device)).precision
        result = evaluate(trained.model, samples, cfg.trainer.eval_batch_size, self.device, precision, keep=48)
        payload = {"checkpoint": str(trained.path), "split": split, "samples": len(samples), "scores": result.scores, "report": result.metrics.report(), "confusion": result.metrics.confusion()}
        if out is not None:
            folder = Path(out)
            folder.mkdir(parents=True, exist_ok=True)
            payload["pictures"] = [str(p) for p in pictures.draw_evaluation(folder, result, trained.classes, split=split)]
            atomic.write_text(folder / "eval.json", json.dumps(payload, indent=2) + "\n")
        return payload

    def export(self, path: str | Path, format: str = "onnx", *, verify: bool = False, unpadded: bool = False, force: bool = False) -> Path:
        """Write the model as ONNX or TorchScript (see ``crnnfw export``); ``verify`` checks the
        file against PyTorch at several widths and raises ExportError on a mismatch."""
        from .export import check_verified, export_model, verify_export

        written = export_model(self._trained, format, path, unpadded=unpadded, force=force)
        if verify:
            check_verified(verify_export(self._trained, written, format, unpadded=unpadded), written)
        return written
