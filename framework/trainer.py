"""The trainer: one loop for every task, talking to the model's head only through
``loss``, ``decode`` and ``metrics``. Read ``Trainer.fit`` top to bottom."""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from . import checkpoint
from .config import as_container, to_yaml
from .data import Split, build_data
from .errors import ConfigError, TrainingError
from .model import Model, build_model
from .plugins import get_host
from .progress import Reporter
from .rundir import create_run_dir
from .version import __version__


@dataclass
class FitResult:
    """Where the run went and how it ended."""

    run_dir: Path
    summary: dict[str, Any]


def select_device(name: str) -> torch.device:
    """``auto`` is the GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)  # the config check admits only cpu, cuda and cuda:N
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device: '{name}' asked for, but no CUDA GPU is available; use auto or cpu")
    count = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.index is not None and device.index >= count:
        raise ConfigError(f"trainer.device: '{name}' asked for, but this machine has {count} CUDA GPU(s); use cuda:0 to cuda:{count - 1}")
    return device


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context for a Lightning-style precision string."""
    if precision == "32-true":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def build_optimizer(model: torch.nn.Module, cfg: DictConfig) -> torch.optim.Optimizer:
    """Optimizer from ``trainer.optimizer``; no weight decay on biases and norm weights."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    optimizer = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return optimizer(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def lr_factor(step: int, total: int, steps_per_epoch: int, cfg: DictConfig) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based) of ``total`` steps."""
    if cfg.name == "onecycle":
        rise = max(1, int(total * cfg.pct_start))
        if step < rise:
            return 0.04 + 0.96 * step / rise
        progress = (step - rise) / max(1, total - rise)
        return cfg.final_lr_ratio + (1 - cfg.final_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    if cfg.name == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return cfg.final_lr_ratio + (1 - cfg.final_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if cfg.name == "step":
        return cfg.gamma ** ((step - warmup) // max(1, cfg.step_epochs * steps_per_epoch))
    return 1.0


@torch.inference_mode()
def evaluate(model: Model, split: Split, batch_size: int, device: torch.device, precision: str = "32-true") -> dict[str, float]:
    """The head's metrics and the mean loss over a whole split, in large batches."""
    was_training = model.training
    model.eval()
    metrics = model.head.metrics()
    loss_sum = torch.zeros((), device=device)
    count = 0
    for batch in split.batches(batch_size, shuffle=False):
        batch = batch.to(device, non_blocking=True)
        with autocast(device, precision):
            logits, lengths = model(batch.images, batch.widths)
        loss_sum += model.head.loss(logits.float(), lengths, batch) * len(batch)
        count += len(batch)
        metrics.update(model.head.decode(logits.float(), lengths), batch)
    model.train(was_training)
    return {"loss": float(loss_sum) / max(count, 1), **metrics.compute()}


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python and torch; return the generator that orders and augments the data."""
    random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def component_versions(cfg: DictConfig) -> dict[str, dict[str, str]]:
    """For each stage, its component name and the plugin and distribution that provided it."""
    host = get_host()
    by_plugin = {p.name: p for p in host.plugins}
    out = {}
    for kind, section in (("dataset", "data"), ("backbone", "model.backbone"), ("encoder", "model.encoder"), ("head", "model.head")):
        name = cfg.data.name if section == "data" else cfg.model[section.split(".")[1]].name
        component = host.registry.get(kind, name)
        plugin = by_plugin.get(component.provider)
        out[kind] = {
            "name": name,
            "plugin": component.provider,
            "distribution": plugin.distribution if plugin else "?",
            "version": plugin.version if plugin else "?",
        }
    return out


class Trainer:
    """Trains the model a resolved config describes and writes a run directory."""

    def __init__(self, cfg: DictConfig, reporter: Reporter | None = None) -> None:
        self.cfg = cfg
        self.reporter = reporter or Reporter(log_every=cfg.trainer.log_every)

    def fit(self) -> FitResult:
        cfg, t, out = self.cfg, self.cfg.trainer, self.reporter

        # Set-up: threads, seeds, device; data and the checked model; optimizer and schedule.
        torch.set_num_threads(t.num_threads or os.cpu_count() or 1)
        generator = seed_everything(cfg.seed)
        device = select_device(t.device)
        if t.precision == "16-mixed" and device.type != "cuda":
            raise ConfigError("trainer.precision: 16-mixed needs a CUDA GPU; use bf16-mixed or 32-true on the CPU")
        registry = get_host().registry
        data = build_data(cfg, registry)
        model = build_model(cfg, data, registry).to(device)
        optimizer = build_optimizer(model, t.optimizer)
        steps_per_epoch = math.ceil(len(data.train) / t.batch_size)
        total_steps = t.epochs * steps_per_epoch if not t.max_steps else min(t.max_steps, t.epochs * steps_per_epoch)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, total_steps, steps_per_epoch, t.scheduler)
        )
        scaler = torch.amp.GradScaler(device.type, enabled=t.precision == "16-mixed")
        components = component_versions(cfg)
        monitor = model.head.metrics()

        # The run directory: resolved config, log, metrics, checkpoints, summary.
        run_dir = create_run_dir(cfg.output_dir, cfg.name)
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
        out.open_log(run_dir / "train.log")
        metrics_file = open(run_dir / "metrics.jsonl", "a", encoding="utf-8", buffering=1)
        out.info(
            f"crnnfw {__version__} | run {run_dir} | {device.type} {t.precision} | "
            f"{count_parameters(model):,} parameters | train {len(data.train):,} test {len(data.test):,} | "
            f"{t.epochs} epochs x {steps_per_epoch} steps"
        )

        best = {"metric": monitor.main, "value": None, "epoch": None}
        step = 0
        started = time.perf_counter()
        train_seconds = 0.0
        history: list[dict[str, Any]] = []
        try:
            for epoch in range(1, t.epochs + 1):
                # Train one epoch.
                model.train()
                epoch_steps = min(steps_per_epoch, total_steps - step)
                out.start_epoch(epoch, t.epochs, epoch_steps)
                epoch_start = time.perf_counter()
                loss_sum = torch.zeros((), device=device)
                seen = 0
                shown_loss = None
                batches = data.train.batches(t.batch_size, shuffle=True, generator=generator)
                for i, batch in enumerate(itertools.islice(batches, epoch_steps), start=1):
                    batch = batch.to(device, non_blocking=True)
                    with autocast(device, t.precision):
                        logits, lengths = model(batch.images, batch.widths)
                    loss = model.head.loss(logits.float(), lengths, batch)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    if t.grad_clip:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()
                    step += 1
                    loss_sum += loss.detach() * len(batch)
                    seen += len(batch)
                    if i % min(10, t.log_every) == 0 or i % t.log_every == 0 or i == epoch_steps:
                        shown_loss = float(loss_sum) / seen
                        if not math.isfinite(shown_loss):
                            kept = f"the last good checkpoint is {run_dir / 'checkpoints' / 'last.ckpt'}" if epoch > 1 else "no checkpoint was written"
                            raise TrainingError(
                                f"loss became {shown_loss} by step {step} (epoch {epoch}, batch {i}); {kept}. Lower "
                                "trainer.optimizer.lr, set trainer.grad_clip (e.g. 1.0) or use trainer.precision=32-true"
                            )
                    out.step(i, len(batch), shown_loss, scheduler.get_last_lr()[0])
                out.end_epoch()
                epoch_seconds = time.perf_counter() - epoch_start
                train_seconds += epoch_seconds

                # Evaluate on the test split, record, keep the best.
                scores = evaluate(model, data.test, t.eval_batch_size, device, t.precision)
                value = scores[monitor.main]
                improved = best["value"] is None or (value > best["value"] if monitor.higher_is_better else value < best["value"])
                if improved:
                    best.update(value=value, epoch=epoch)
                row = {
                    "epoch": epoch,
                    "step": step,
                    "train_loss": float(loss_sum) / max(seen, 1),
                    **{f"test_{k}": v for k, v in scores.items()},
                    "lr": scheduler.get_last_lr()[0],
                    "images_per_s": seen / epoch_seconds,
                    "epoch_s": epoch_seconds,
                    "elapsed_s": time.perf_counter() - started,
                }
                history.append(row)
                metrics_file.write(json.dumps(row) + "\n")
                shown = monitor.table or tuple(scores)
                out.epoch_row({
                    "epoch": epoch,
                    "train_loss": row["train_loss"],
                    "test_loss": scores["loss"],
                    **{f"test_{k}": scores[k] for k in shown if k != "loss"},
                    f"best_{monitor.main}": best["value"],
                    "img/s": round(row["images_per_s"]),
                    "time_s": f"{epoch_seconds:.1f}",
                })
                breakdown = monitor.breakdown(scores)
                if breakdown:
                    out.info(breakdown)

                # Checkpoints: last every epoch, best when the monitored metric improved.
                state = {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "epoch": epoch,
                    "step": step,
                    "best": dict(best),
                    "metrics": scores,
                    "config": as_container(cfg),
                    "classes": list(data.classes),
                    "components": components,
                    "crnnfw_version": __version__,
                    "rng": {"python": random.getstate(), "torch": torch.get_rng_state(), "data": generator.get_state()},
                }
                checkpoint.save(state, run_dir / "checkpoints" / "last.ckpt")
                if improved:
                    checkpoint.save(state, run_dir / "checkpoints" / "best.ckpt")
                if step >= total_steps:
                    break
        finally:
            metrics_file.close()

        # Summary for people and scripts.
        summary = {
            "name": cfg.name,
            "run_dir": str(run_dir),
            "best": best,
            "final": history[-1] if history else None,
            "epochs": len(history),
            "steps": step,
            "train_seconds": train_seconds,
            "total_seconds": time.perf_counter() - started,
            "train_images_per_s": sum(r["images_per_s"] * r["epoch_s"] for r in history) / max(train_seconds, 1e-9),
            "parameters": count_parameters(model),
            "device": str(device),
            "precision": t.precision,
            "components": components,
            "crnnfw_version": __version__,
        }
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        final_value = history[-1][f"test_{monitor.main}"]
        out.info(
            f"best test {monitor.main} {best['value']:.4f} (epoch {best['epoch']}), final {final_value:.4f}; "
            f"run directory: {run_dir}"
        )
        out.close()
        return FitResult(run_dir, summary)
