"""The trainer: one loop for every task, talking to the model's head only through
``loss``, ``decode`` and ``metrics``. Read ``Trainer.fit`` top to bottom."""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from . import atomic, checkpoint, distributed, interrupts, pictures, resolvers, rundir
from .callbacks import Callback, FitState
from .config import COMPONENT_SECTIONS, as_container, callback_configs, checkpoint_interval, to_yaml
from .data import SPLITS, InputSpec, on_device
from .datasets import build_data
from .errors import CheckpointError, ConfigError, TrainingError
from .evaluation import evaluate
from .finetune import init_from
from .model import build_model
from .plugins import get_host
from .hardware import cpu_capability, hardware
from .precision import autocast, choose
from .progress import Reporter
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


def build_optimizer(model: torch.nn.Module, cfg: DictConfig) -> torch.optim.Optimizer:
    """Optimizer from ``trainer.optimizer``; no weight decay on biases and norm weights."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    optimizer = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    # On a GPU the fused kernel updates every tensor in one launch, where small models are launch-bound.
    fused = all(p.is_cuda for p in model.parameters()) or None
    return optimizer(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=fused)


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
    for section, kind in COMPONENT_SECTIONS.items():
        name = OmegaConf.select(cfg, f"{section}.name")
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
    """Trains the model a resolved config describes and writes a run directory.

    With ``resume`` (a run directory), training continues that run from its last checkpoint:
    weights, optimizer, schedule, grad scaler, every random generator, epoch, step and best
    metric, so the result is the one the uninterrupted run would have reached.
    """

    def __init__(self, cfg: DictConfig, reporter: Reporter | None = None, resume: Path | None = None) -> None:
        self.cfg = cfg
        self.reporter = reporter
        self.resume = resume
        self.run_dir: Path | None = resume
        self._lock: rundir.RunLock | None = None
        self._callbacks: list[Callback] = []
        self._state: FitState | None = None

    def fit(self) -> FitResult:
        """Train; one process at a time per run directory. An interrupt (SIGINT, SIGTERM) or a
        failed write is logged with how to resume, and re-raised for the command to report."""
        cfg, t = self.cfg, self.cfg.trainer
        group, device_name = distributed.join(t.device)
        out = self.reporter or Reporter(log_every=t.log_every, enabled=group.main)
        try:
            if self.resume and group.main:
                self._hold(self.resume)
            return self._fit(cfg, t, group, device_name, out)
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, atomic.WriteError)) and self.run_dir is not None and rundir.checkpoint_file(self.run_dir).is_file():
                why = f"interrupted ({exc or 'SIGINT'})" if isinstance(exc, KeyboardInterrupt) else str(exc)
                out.info(f"{why}; every finished epoch is kept: resume with crnnfw run --resume {self.run_dir}")
            for callback in self._callbacks:
                callback.on_exception(self._state, exc)
            raise
        finally:
            out.close()
            if self._lock is not None:
                self._lock.release()
            group.close()

    def _hold(self, run_dir: Path) -> None:
        """Lock ``run_dir`` for this process (see ``rundir.RunLock``)."""
        self._lock = rundir.RunLock(run_dir)
        self._lock.acquire()
        self.run_dir = run_dir

    def _fit(self, cfg: DictConfig, t: DictConfig, group: distributed.Group, device_name: str, out: Reporter) -> FitResult:
        # A resumed run starts by reading its checkpoint, so a bad one fails before any work.
        resumed = checkpoint.load(rundir.checkpoint_file(self.resume)) if self.resume else None

        # Set-up: threads, seeds, device; data and the checked model; optimizer and schedule.
        torch.set_num_threads(t.num_threads or os.cpu_count() or 1)
        torch.set_flush_denormal(True)  # tiny activations late in training otherwise take the CPU's slow path
        generator = seed_everything(cfg.seed)
        device = select_device(device_name)
        if t.precision == "16-mixed" and device.type != "cuda":
            raise ConfigError("trainer.precision: 16-mixed needs a CUDA GPU; use auto or 32-true on the CPU")
        choice = choose(t.precision, hardware(device))
        registry = get_host().registry
        data = build_data(cfg, registry)
        model = build_model(cfg, data, registry)
        notes: list[str] = []  # fine-tuning's report, printed once the log is open
        if t.init_from and not resumed:
            source, _ = init_from(model, t.init_from, data.classes, notes.append)
            cfg.trainer.init_from = str(source)  # the checkpoint file itself, when a run directory was given
        model.to(device)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = t.cudnn_benchmark
            if t.data_on_device:  # cut and augment batches where the model runs: no copy per batch
                data = replace(data, **{split: on_device(getattr(data, split), device) for split in SPLITS})
        net = torch.nn.parallel.DistributedDataParallel(model) if group.enabled else model
        if t.compile != "off":  # the checkpoint keeps saving ``model``: its names stay those of the plain modules
            net = torch.compile(net, mode=t.compile)
        optimizer = build_optimizer(model, t.optimizer)
        steps_per_epoch = math.ceil(len(data.train) / t.batch_size)
        total_steps = t.epochs * steps_per_epoch if not t.max_steps else min(t.max_steps, t.epochs * steps_per_epoch)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, total_steps, steps_per_epoch, t.scheduler)
        )
        scaler = torch.amp.GradScaler(device.type, enabled=choice.precision == "16-mixed")
        components = component_versions(cfg)
        monitor = model.head.metrics()
        spec = asdict(InputSpec.of(data))
        best = {"metric": monitor.main, "split": "val", "value": None, "epoch": None, "test": None}
        first_epoch, step, train_seconds = 1, 0, 0.0

        # The run directory: resolved config, log, metrics, checkpoints, summary (rank 0 writes).
        repairs: list[str] = []
        if resumed:
            run_dir = self.resume
            restore_training(resumed, run_dir, model, optimizer, scheduler, scaler)
            restore_rng(resumed["rng"], generator, group.rank, device)
            best, step, train_seconds = dict(resumed["best"]), resumed["step"], resumed["train_seconds"]
            first_epoch = resumed["epoch"] + 1
            partial = resumed.get("partial")  # a checkpoint from within epoch first_epoch
            # The checkpoint is the run's record: its history wins over a metrics.jsonl a kill cut short.
            history = list(resumed.get("history") or [row for row in read_history(run_dir) if row["epoch"] < first_epoch])
            if group.main:
                repairs = rundir.repair(run_dir, resumed, history)
            stopped = resumed.get("stopped")
            if (first_epoch > t.epochs or step >= total_steps or stopped) and _summarised(run_dir, step):
                why = f"stopped ({stopped})" if stopped else f"finished its {t.epochs} epochs; pass trainer.epochs=N (more) to train on"
                raise TrainingError(f"{run_dir}: the run already {why}")
        else:
            run_dir = rundir.create_run_dir(cfg.output_dir, cfg.name) if group.main else Path(cfg.output_dir)
            if group.main:
                self._hold(run_dir)
            history = []
            partial = None
        if group.main:
            atomic.write_text(run_dir / "config.yaml", to_yaml(cfg))
            atomic.write_text(run_dir / "metrics.jsonl", _jsonl(history))
            out.open_log(run_dir / "train.log")
        workers = f" | {group.world} processes" if group.enabled else ""
        out.info(
            f"crnnfw {__version__} | run {run_dir} | {device.type} {choice}{workers} | "
            f"{count_parameters(model):,} parameters | train {len(data.train):,} val {len(data.val):,} test {len(data.test):,} | "
            f"{t.epochs} epochs x {steps_per_epoch} steps"
            + (f" | resumed after epoch {first_epoch - 1} (step {step})" if resumed and not partial else "")
            + (f" | resumed in epoch {first_epoch} after its batch {partial['batches']} (step {step})" if partial else "")
        )
        for line in ([choice.warning] if choice.warning else []) + [f"data: {note}" for note in data.notes] + notes + repairs:
            out.info(line)

        state = self._state = FitState(cfg, run_dir, model, monitor.main, monitor.higher_is_better, t.epochs, epoch=first_epoch - 1,
                                       step=step, history=history, best=best, stop=resumed.get("stopped") if resumed else None,
                                       records=dict(resumed.get("callback_records") or {}) if resumed else {})
        callbacks = self._callbacks = build_callbacks(cfg, registry)
        for callback in callbacks:
            callback.on_fit_start(state)

        def snapshot(epoch_done: int, **extra: Any) -> dict[str, Any] | None:
            """The checkpoint's contents after ``epoch_done`` finished epochs (every rank takes
            part in gathering the random states; rank 0 gets the record)."""
            rng = {"python": random.getstate(), "torch": group.gather(torch.get_rng_state()), "data": generator.get_state()}
            if device.type == "cuda":
                rng["cuda"] = group.gather(torch.cuda.get_rng_state(device))
            if not group.main:
                return None
            return {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch_done,
                "step": step,
                "best": dict(best),
                "train_seconds": train_seconds,
                "history": history,
                "config": as_container(cfg),
                "classes": list(data.classes),
                "input": spec,
                "decoding": model.head.export_metadata(),
                "components": components,
                "crnnfw_version": __version__,
                "rng": rng,
                "stopped": state.stop,
                "callback_records": state.records,
                **extra,
            }

        every_steps, every_seconds = checkpoint_interval(t.checkpoint_every, group.enabled)
        started = time.perf_counter()
        evaluation = None
        for epoch in range(first_epoch, t.epochs + 1):
            if step >= total_steps or state.stop:
                break
            state.epoch = epoch
            for callback in callbacks:
                callback.on_epoch_start(state)
            # Train one epoch.
            model.train()
            done = partial["batches"] if partial else 0  # batches of this epoch trained before a mid-epoch checkpoint
            epoch_steps = min(steps_per_epoch, total_steps - (step - done))
            out.start_epoch(epoch, t.epochs, epoch_steps)
            epoch_start = time.perf_counter() - (partial["seconds"] if partial else 0.0)
            loss_sum = torch.tensor(partial["loss_sum"] if partial else 0.0, device=device)
            seen = partial["seen"] if partial else 0
            shown_loss = None
            train_metrics = model.head.metrics()  # sampled at the steps that sync anyway (after a resume: from there)
            if partial:  # the epoch's data order, replayed up to where the checkpoint was taken
                generator.set_state(partial["data_rng"])
            epoch_rng = generator.get_state()
            batches = itertools.islice(data.train.batches(t.batch_size, shuffle=True, generator=generator), epoch_steps)
            for _ in range(done):
                next(batches)
            if partial:
                restore_rng(resumed["rng"], generator, group.rank, device)
                partial = None
            last_saved, saved_at = step, time.perf_counter()
            # A split that decodes only this rank's share of each batch (``shards_by_rank``) is not cut again.
            for i, batch in enumerate(batches if getattr(data.train, "shards_by_rank", False) else group.shard(batches), start=done + 1):
                batch = batch.to(device, non_blocking=True)
                with autocast(device, choice.precision):
                    logits, lengths = net(batch.images, batch.widths)
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
                    train_metrics.update(model.head.decode(logits.detach().float(), lengths), batch)
                    shown_loss = float(loss_sum) / seen
                    state.step = step
                    for callback in callbacks:
                        callback.on_step(state, shown_loss, scheduler.get_last_lr()[0])
                    if not math.isfinite(shown_loss):
                        kept = f"the last good checkpoint is {rundir.checkpoint_file(run_dir)}" if epoch > 1 else "no checkpoint was written"
                        raise TrainingError(
                            f"loss became {shown_loss} by step {step} (epoch {epoch}, batch {i}); {kept}. Lower "
                            "trainer.optimizer.lr, set trainer.grad_clip (e.g. 1.0) or use trainer.precision=32-true"
                        )
                out.step(i, len(batch) * group.world, shown_loss, scheduler.get_last_lr()[0])
                due = (every_steps and step - last_saved >= every_steps) or (every_seconds and time.perf_counter() - saved_at >= every_seconds)
                if due and i < epoch_steps:  # the epoch's last step gets the full commit below
                    progress = {"epoch": epoch, "batches": i, "data_rng": epoch_rng, "loss_sum": float(loss_sum), "seen": seen,
                                "seconds": time.perf_counter() - epoch_start}
                    record = snapshot(epoch - 1, partial=progress)
                    if record is not None:
                        checkpoint.save(record, rundir.checkpoint_file(run_dir))
                        for callback in callbacks:
                            callback.on_checkpoint(state, rundir.checkpoint_file(run_dir))
                    last_saved, saved_at = step, time.perf_counter()
            out.end_epoch()
            report = getattr(data.train, "epoch_report", None)
            trouble = report() if callable(report) else None
            if trouble:
                out.info(f"data: epoch {epoch}: {trouble}")
                data.notes.append(f"epoch {epoch}: {trouble}")
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # the epoch's time includes the work still queued on the GPU
            epoch_seconds = time.perf_counter() - epoch_start
            train_seconds += epoch_seconds
            train_loss, seen = group.mean(loss_sum, seen)

            # Evaluate (each split shared out across ranks): val decides what is best, test is
            # only reported, so no choice is ever made on it.
            scores = evaluate(model, data.val, t.eval_batch_size, device, choice.precision, group=group).scores
            evaluation = evaluate(model, data.test, t.eval_batch_size, device, choice.precision, keep=48, group=group)
            value = scores[monitor.main]
            improved = best["value"] is None or (value > best["value"] if monitor.higher_is_better else value < best["value"])
            if improved:
                best.update(value=value, epoch=epoch, test=evaluation.scores)
            row = {
                "epoch": epoch,
                "step": step,
                "train_loss": train_loss,
                f"train_{monitor.main}": train_metrics.compute()[monitor.main],
                **{f"val_{k}": v for k, v in scores.items()},
                **{f"test_{k}": v for k, v in evaluation.scores.items()},
                "lr": scheduler.get_last_lr()[0],
                "images_per_s": seen / epoch_seconds,
                "epoch_s": epoch_seconds,
                "elapsed_s": time.perf_counter() - started,
            }
            history.append(row)
            shown = monitor.table or tuple(scores)
            out.epoch_row({
                "epoch": epoch,
                "train_loss": row["train_loss"],
                "val_loss": scores["loss"],
                **{f"val_{k}": scores[k] for k in shown if k != "loss"},
                f"test_{monitor.main}": evaluation.scores[monitor.main],
                f"best_val_{monitor.main}": best["value"],
                "img/s": round(row["images_per_s"]),
                "time_s": f"{epoch_seconds:.1f}",
            })
            breakdown = monitor.breakdown(scores)
            if breakdown:
                out.info(breakdown)
            state.step = step
            for callback in callbacks:
                callback.on_epoch_end(state, row)

            # Commit the epoch: last.ckpt (the run's record, holding the history), then best.ckpt
            # when the monitored metric improved, then metrics.jsonl; signals wait until all three
            # are written, and a kill between them is repaired on resume (rundir.repair).
            record = snapshot(epoch, metrics={"val": scores, "test": evaluation.scores})
            if record is not None:
                with interrupts.deferred():
                    checkpoint.save(record, rundir.checkpoint_file(run_dir))
                    if improved:
                        checkpoint.save(record, rundir.checkpoint_file(run_dir, "best"))
                    atomic.write_text(run_dir / "metrics.jsonl", _jsonl(history))
                for callback in callbacks:
                    for path in [rundir.checkpoint_file(run_dir)] + ([rundir.checkpoint_file(run_dir, "best")] if improved else []):
                        callback.on_checkpoint(state, path)
            if state.stop:
                out.info(state.stop)

        if evaluation is None:  # resumed after its last epoch, to write what a kill kept it from writing
            out.info("the run had finished its epochs but not its summary; writing it now")
            evaluation = evaluate(model, data.test, t.eval_batch_size, device, choice.precision, keep=48, group=group)

        # Summary for people and scripts.
        summary = {
            "name": cfg.name,
            "run_dir": str(run_dir),
            "best": best,
            "final": history[-1],
            "epochs": len(history),
            "steps": step,
            "train_seconds": train_seconds,
            "total_seconds": time.perf_counter() - started,
            "train_images_per_s": sum(r["images_per_s"] * r["epoch_s"] for r in history) / max(train_seconds, 1e-9),
            "parameters": count_parameters(model),
            "device": str(device),
            "precision": choice.precision,
            "precision_requested": t.precision,
            "cpu_capability": cpu_capability(),
            "processes": group.world,
            "data_notes": data.notes,
            "stopped": state.stop,
            "callbacks": state.records,
            "components": components,
            "crnnfw_version": __version__,
        }
        if group.main:  # the summary comes last: its presence says the run is complete
            pictures.draw_run(run_dir, history, evaluation, monitor.main, data.classes)
            pictures.samples_png(data, run_dir / "samples.png")  # training images as augmented, as the model saw them
            atomic.write_text(run_dir / "summary.json", json.dumps(resolvers.redact(summary), indent=2) + "\n")
        for callback in callbacks:
            callback.on_fit_end(state, summary)
        final, main = history[-1], monitor.main
        best_test = (best.get("test") or {}).get(main)  # absent in runs begun before val splits existed
        out.info(
            f"best val {main} {best['value']:.4f} (epoch {best['epoch']}" + (f", test {best_test:.4f}" if best_test is not None else "")
            + f"), final val {final.get(f'val_{main}', math.nan):.4f}, test {final[f'test_{main}']:.4f}; run directory: {run_dir}"
        )
        return FitResult(run_dir, summary)


def build_callbacks(cfg: DictConfig, registry: Any) -> list[Callback]:
    """The callbacks ``trainer.callbacks`` names, built from their validated configs."""
    built = []
    for index, (name, typed) in enumerate(callback_configs(cfg, registry)):
        callback = registry.get("callback", name).factory(typed)
        if not isinstance(callback, Callback):
            raise TypeError(f"trainer.callbacks[{index}]: callback '{name}' built a {type(callback).__name__}, not a crnnfw.Callback")
        built.append(callback)
    return built


def restore_rng(saved: dict[str, Any], generator: torch.Generator, rank: int, device: torch.device) -> None:
    """Put every random generator back where the checkpoint left it (this rank's own where saved)."""
    random.setstate(saved["python"])
    torch.set_rng_state(saved["torch"][min(rank, len(saved["torch"]) - 1)])
    generator.set_state(saved["data"])
    if device.type == "cuda" and "cuda" in saved:
        torch.cuda.set_rng_state(saved["cuda"][min(rank, len(saved["cuda"]) - 1)], device)


def restore_training(state: dict[str, Any], run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler) -> None:
    """Load the weights and the optimizer's, schedule's and scaler's states of a checkpoint."""
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
    except (RuntimeError, ValueError, KeyError) as exc:
        detail = " ".join(str(exc).split())[:200]
        raise CheckpointError(
            f"{rundir.checkpoint_file(run_dir)}: does not fit the model {run_dir / 'config.yaml'} builds ({detail}); "
            "was either file replaced? Resume only the run that wrote them"
        ) from None


def _summarised(run_dir: Path, step: int) -> bool:
    """Whether the run's summary.json is there and records its last step."""
    try:
        return json.loads((run_dir / "summary.json").read_text(encoding="utf-8")).get("steps") == step
    except (OSError, ValueError):
        return False


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    """The per-epoch rows a run has recorded so far."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
