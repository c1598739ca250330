"""The trainer: one loop for every task, talking to the model's head only through
``loss``, ``decode`` and ``metrics``. ``Trainer._fit`` reads top to bottom: set up, open the
run, then for each epoch train, evaluate and commit it; summarise. Each step is a method below
it, in that order, sharing one ``_Loop``."""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from . import atomic, checkpoint, distributed, interrupts, pictures, resolvers, rundir
from .callbacks import Callback, FitState
from .config import COMPONENT_SECTIONS, as_container, callback_configs, checkpoint_interval, to_yaml
from .batch import Batch
from .data import SPLITS, DataModule, InputSpec, on_device
from .datasets import build_data
from .errors import CheckpointError, ConfigError, TrainingError
from .evaluation import evaluate
from .finetune import init_from
from .model import build_model
from .plugins import get_host
from .hardware import cpu_capability, hardware
from .precision import Choice, autocast, choose
from .progress import Reporter
from .stages import Metrics
from .version import __version__


#: trainer.max_minutes: a fresh run's pace is measured over this many steps (or a tenth of an
#: epoch, if more), after as many more at its start.
PROBE_STEPS = 20


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


@dataclass
class _Loop:
    """What one fit works with: built by ``Trainer._set_up``, placed by ``_open_run`` (run
    directory, restored state, callbacks), advanced by each epoch."""

    cfg: DictConfig
    group: distributed.Group
    device: torch.device
    choice: Choice
    generator: torch.Generator  # orders and augments the data
    registry: Any
    data: DataModule
    model: torch.nn.Module
    net: torch.nn.Module  # the model as trained: under DDP and torch.compile where asked
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    steps_per_epoch: int
    max_total: int  # the step count trainer.epochs and max_steps allow
    total_steps: int  # the steps this run will take: max_total, or fewer when planned to trainer.max_minutes
    monitor: Metrics
    components: dict[str, dict[str, str]]
    spec: dict[str, Any]
    notes: list[str]  # fine-tuning's report, printed once the log is open
    best: dict[str, Any]
    run_dir: Path | None = None
    first_epoch: int = 1
    step: int = 0
    train_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    partial: dict[str, Any] | None = None  # a mid-epoch checkpoint's progress in the first epoch
    resumed_rng: dict[str, Any] | None = None
    state: FitState | None = None
    callbacks: list[Callback] = field(default_factory=list)
    started: float = 0.0
    planned: bool = False  # whether total_steps has been fitted to trainer.max_minutes yet
    scheduler: torch.optim.lr_scheduler.LambdaLR = field(init=False)  # over total_steps, which a time plan may change


@dataclass(frozen=True)
class _EpochTrained:
    """An epoch's training figures: mean loss, the head's main metric on sampled steps, images, seconds."""

    loss: float
    metric: float
    seen: int
    seconds: float


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
        loop = self._set_up(cfg, group, device_name, resumed)
        self._open_run(loop, resumed, out)
        evaluation = None
        for epoch in range(loop.first_epoch, t.epochs + 1):
            if loop.step >= loop.total_steps or loop.state.stop:
                break
            loop.state.epoch = epoch
            self._emit(loop, "on_epoch_start")
            trained = self._train_epoch(loop, epoch, out)
            self._emit(loop, "on_evaluate_start")
            scores, evaluation, improved = self._evaluate_epoch(loop, epoch, trained, out)
            self._commit_epoch(loop, epoch, scores, evaluation, improved, out)
            self._emit(loop, "on_evaluate_end")
        if evaluation is None:  # resumed after its last epoch, to write what a kill kept it from writing
            out.info("the run had finished its epochs but not its summary; writing it now")
            self._emit(loop, "on_evaluate_start")
            evaluation = evaluate(loop.model, loop.data.test, t.eval_batch_size, loop.device, loop.choice.precision, keep=48, group=group)
            self._emit(loop, "on_evaluate_end")
        return self._summarise(loop, evaluation, out)

    @staticmethod
    def _emit(loop: _Loop, event: str, *args: Any) -> None:
        """Run ``event`` (a :class:`Callback` method) of every callback, in config order."""
        for callback in loop.callbacks:
            getattr(callback, event)(loop.state, *args)

    def _set_up(self, cfg: DictConfig, group: distributed.Group, device_name: str, resumed: dict[str, Any] | None) -> _Loop:
        """Threads, seeds and device; the data and the checked model; optimizer and schedule."""
        t = cfg.trainer
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
        monitor = model.head.metrics()
        loop = _Loop(
            cfg=cfg,
            group=group,
            device=device,
            choice=choice,
            generator=generator,
            registry=registry,
            data=data,
            model=model,
            net=net,
            optimizer=optimizer,
            scaler=torch.amp.GradScaler(device.type, enabled=choice.precision == "16-mixed"),
            steps_per_epoch=steps_per_epoch,
            max_total=total_steps,
            total_steps=total_steps,
            monitor=monitor,
            components=component_versions(cfg),
            spec=asdict(InputSpec.of(data)),
            notes=notes,
            best={"metric": monitor.main, "split": "val", "value": None, "epoch": None, "test": None},
        )
        loop.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, loop.total_steps, steps_per_epoch, t.scheduler))
        return loop

    def _open_run(self, loop: _Loop, resumed: dict[str, Any] | None, out: Reporter) -> None:
        """The run directory (a new one, or the resumed run's, its training state restored):
        resolved config, metrics and log (rank 0 writes); then the callbacks start."""
        cfg, t, group = loop.cfg, loop.cfg.trainer, loop.group
        repairs: list[str] = []
        if resumed:
            loop.run_dir = run_dir = self.resume
            restore_training(resumed, run_dir, loop.model, loop.optimizer, loop.scheduler, loop.scaler)
            restore_rng(resumed["rng"], loop.generator, group.rank, loop.device)
            loop.best, loop.step, loop.train_seconds = dict(resumed["best"]), resumed["step"], resumed["train_seconds"]
            loop.first_epoch = resumed["epoch"] + 1
            loop.partial = resumed.get("partial")  # a checkpoint from within epoch first_epoch
            loop.resumed_rng = resumed["rng"]
            # The checkpoint is the run's record: its history wins over a metrics.jsonl a kill cut short.
            loop.history = list(resumed.get("history") or [row for row in read_history(run_dir) if row["epoch"] < loop.first_epoch])
            if group.main:
                repairs = rundir.repair(run_dir, resumed, loop.history)
            if t.max_minutes:  # the plan it made, unless the budget changed: then one from its pace so far
                saved = resumed.get("planned_steps")
                if isinstance(saved, int) and resumed["config"]["trainer"].get("max_minutes") == t.max_minutes:
                    loop.total_steps, loop.planned = min(loop.max_total, saved), True
                elif loop.train_seconds > 0:  # else (killed within its first epoch, before planning) it times its steps again
                    self._plan(loop, loop.train_seconds, into_epoch=loop.partial["batches"] if loop.partial else 0)
            stopped = resumed.get("stopped")
            if (loop.first_epoch > t.epochs or loop.step >= loop.total_steps or stopped) and _summarised(run_dir, loop.step):
                budget = t.max_minutes and loop.total_steps < loop.max_total
                why = (
                    f"stopped ({stopped})"
                    if stopped
                    else f"used its trainer.max_minutes={t.max_minutes:g}; pass a larger one to train on"
                    if budget
                    else f"finished its {t.epochs} epochs; pass trainer.epochs=N (more) to train on"
                )
                raise TrainingError(f"{run_dir}: the run already {why}")
        else:
            loop.run_dir = run_dir = rundir.create_run_dir(cfg.output_dir, cfg.name) if group.main else Path(cfg.output_dir)
            if group.main:
                self._hold(run_dir)
        if group.main:
            atomic.write_text(run_dir / "config.yaml", to_yaml(cfg))
            atomic.write_text(run_dir / "metrics.jsonl", _jsonl(loop.history))
            out.open_log(run_dir / "train.log")
        workers = f" | {group.world} processes" if group.enabled else ""
        partial, data = loop.partial, loop.data
        out.info(
            f"crnnfw {__version__} | run {run_dir} | {loop.device.type} {loop.choice}{workers} | "
            f"{count_parameters(loop.model):,} parameters | train {len(data.train):,} val {len(data.val):,} test {len(data.test):,} | "
            f"{t.epochs} epochs x {loop.steps_per_epoch} steps"
            + (f" | about {t.max_minutes:g} min of training, planned from the pace of the first steps" if t.max_minutes else "")
            + (f" | resumed after epoch {loop.first_epoch - 1} (step {loop.step})" if resumed and not partial else "")
            + (f" | resumed in epoch {loop.first_epoch} after its batch {partial['batches']} (step {loop.step})" if partial else "")
        )
        for line in ([loop.choice.warning] if loop.choice.warning else []) + [f"data: {note}" for note in data.notes] + loop.notes + repairs:
            out.info(line)
        loop.state = self._state = FitState(
            cfg,
            run_dir,
            loop.model,
            loop.monitor.main,
            loop.monitor.higher_is_better,
            t.epochs,
            epoch=loop.first_epoch - 1,
            step=loop.step,
            history=loop.history,
            best=loop.best,
            stop=resumed.get("stopped") if resumed else None,
            records=dict(resumed.get("callback_records") or {}) if resumed else {},
        )
        loop.callbacks = self._callbacks = build_callbacks(cfg, loop.registry)
        for callback, saved in zip(loop.callbacks, (resumed or {}).get("callback_states") or []):
            callback.load_state_dict(saved)
        self._emit(loop, "on_fit_start")
        loop.started = time.perf_counter()

    def _train_epoch(self, loop: _Loop, epoch: int, out: Reporter) -> _EpochTrained:
        """One epoch of optimizer steps (after a mid-epoch checkpoint: the rest of it, its data
        order replayed), with a mid-epoch checkpoint whenever ``trainer.checkpoint_every`` is due."""
        t, model, device, generator, partial = loop.cfg.trainer, loop.model, loop.device, loop.generator, loop.partial
        model.train()
        done = partial["batches"] if partial else 0  # batches of this epoch trained before a mid-epoch checkpoint
        began = loop.step - done  # the run's step count when this epoch began
        epoch_steps = min(loop.steps_per_epoch, loop.total_steps - began)
        out.start_epoch(epoch, min(t.epochs, math.ceil(loop.total_steps / loop.steps_per_epoch)), epoch_steps)
        epoch_start = time.perf_counter() - (partial["seconds"] if partial else 0.0)
        loss_sum = torch.tensor(partial["loss_sum"] if partial else 0.0, device=device)
        seen = partial["seen"] if partial else 0
        shown_loss = None
        train_metrics = model.head.metrics()  # sampled at the steps that sync anyway (after a resume: from there)
        if partial:
            generator.set_state(partial["data_rng"])
        epoch_rng = generator.get_state()
        batches = itertools.islice(loop.data.train.batches(t.batch_size, shuffle=True, generator=generator), epoch_steps)
        for _ in range(done):
            next(batches)
        if partial:
            restore_rng(loop.resumed_rng, generator, loop.group.rank, device)
            loop.partial = None
        every_steps, every_seconds = checkpoint_interval(t.checkpoint_every, loop.group.enabled)
        last_saved, saved_at = loop.step, time.perf_counter()
        probe_steps = max(PROBE_STEPS, loop.steps_per_epoch // 10)  # past the start-up of loaders and workers
        probe_at = done + 2 * probe_steps if t.max_minutes and not loop.planned else 0
        probe_start = 0.0
        # A split that decodes only this rank's share of each batch (``shards_by_rank``) is not cut again.
        sharded = batches if getattr(loop.data.train, "shards_by_rank", False) else loop.group.shard(batches)
        for i, batch in enumerate(sharded, start=done + 1):
            batch = batch.to(device, non_blocking=True)
            logits, lengths, loss = self._step(loop, batch)
            loop.state.step = loop.step
            if i == probe_at - probe_steps:
                probe_start = time.perf_counter()
            elif i == probe_at:  # the pace after the first steps' start-up costs: fit the steps to the budget
                pace = max(loop.group.gather((time.perf_counter() - probe_start) / probe_steps))
                self._plan(loop, loop.train_seconds + time.perf_counter() - epoch_start, pace, into_epoch=i)
                epoch_steps = min(loop.steps_per_epoch, loop.total_steps - began)
                out.info(
                    f"trainer.max_minutes={t.max_minutes:g}: {pace * 1000:.0f} ms a step, so {loop.total_steps:,} steps "
                    f"({loop.total_steps / loop.steps_per_epoch:.1f} epochs; {loop.max_total:,} allowed)"
                )
            self._emit(loop, "on_train_batch_end")
            loss_sum += loss.detach() * len(batch)
            seen += len(batch)
            if i % min(10, t.log_every) == 0 or i % t.log_every == 0 or i == epoch_steps:
                train_metrics.update(model.head.decode(logits.detach().float(), lengths), batch)
                shown_loss = float(loss_sum) / seen
                self._emit(loop, "on_step", shown_loss, loop.scheduler.get_last_lr()[0])
                if not math.isfinite(shown_loss):
                    kept = f"the last good checkpoint is {rundir.checkpoint_file(loop.run_dir)}" if epoch > 1 else "no checkpoint was written"
                    raise TrainingError(
                        f"loss became {shown_loss} by step {loop.step} (epoch {epoch}, batch {i}); {kept}. Lower "
                        "trainer.optimizer.lr, set trainer.grad_clip (e.g. 1.0) or use trainer.precision=32-true"
                    )
            out.step(i, len(batch) * loop.group.world, shown_loss, loop.scheduler.get_last_lr()[0])
            due = (every_steps and loop.step - last_saved >= every_steps) or (every_seconds and time.perf_counter() - saved_at >= every_seconds)
            if due and i < epoch_steps:  # the epoch's last step gets the full commit
                progress = {"epoch": epoch, "batches": i, "data_rng": epoch_rng, "loss_sum": float(loss_sum), "seen": seen, "seconds": time.perf_counter() - epoch_start}
                self._save(loop, self._snapshot(loop, epoch - 1, partial=progress), improved=False)
                last_saved, saved_at = loop.step, time.perf_counter()
            if i >= epoch_steps:  # the plan left fewer steps than the epoch has
                break
        out.end_epoch()
        report = getattr(loop.data.train, "epoch_report", None)
        trouble = report() if callable(report) else None
        if trouble:
            out.info(f"data: epoch {epoch}: {trouble}")
            loop.data.notes.append(f"epoch {epoch}: {trouble}")
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the epoch's time includes the work still queued on the GPU
        seconds = time.perf_counter() - epoch_start
        loop.train_seconds += seconds
        if t.max_minutes:  # re-fit to the pace so far, which includes what each epoch costs besides its steps
            self._plan(loop, max(loop.group.gather(loop.train_seconds)))  # every rank has taken the same steps
        loss, seen = loop.group.mean(loss_sum, seen)
        return _EpochTrained(loss, train_metrics.compute()[loop.monitor.main], seen, seconds)

    def _step(self, loop: _Loop, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One optimizer step on ``batch``: its logits, their lengths and the loss."""
        t = loop.cfg.trainer
        with autocast(loop.device, loop.choice.precision):
            logits, lengths = loop.net(batch.images, batch.widths)
        loss = loop.model.head.loss(logits.float(), lengths, batch)
        loop.optimizer.zero_grad(set_to_none=True)
        loop.scaler.scale(loss).backward()
        if t.grad_clip:
            loop.scaler.unscale_(loop.optimizer)
            torch.nn.utils.clip_grad_norm_(loop.model.parameters(), t.grad_clip)
        loop.scaler.step(loop.optimizer)
        loop.scaler.update()
        loop.scheduler.step()
        loop.step += 1
        return logits, lengths, loss

    @staticmethod
    def _plan(loop: _Loop, seconds: float, pace: float | None = None, into_epoch: int = 0) -> None:
        """Fit the run's steps to ``trainer.max_minutes``: as many as ``pace`` (seconds a step;
        by default the run's pace so far, ``seconds`` over its steps) allows in what is left
        after ``seconds`` of training, ``into_epoch`` steps into an epoch, never more than
        ``epochs`` and ``max_steps`` allow. The budget is a maximum: the last epoch may be cut
        short, and one that would be under half an epoch is left out (a sliver buys little, and
        its evaluation costs as much as a full one's) unless the whole run is no more than that.
        The schedule follows, so it anneals on time."""
        pace = pace if pace is not None else seconds / max(loop.step, 1)
        left = loop.cfg.trainer.max_minutes * 60 - seconds
        total = loop.step + int(left / max(pace, 1e-9))
        sliver = (total - (loop.step - into_epoch)) % loop.steps_per_epoch  # the last epoch's steps
        if sliver < loop.steps_per_epoch / 2 and total > sliver:
            total -= sliver
        loop.total_steps = max(loop.step, min(loop.max_total, total))
        loop.planned = True

    def _evaluate_epoch(self, loop: _Loop, epoch: int, trained: _EpochTrained, out: Reporter) -> tuple[dict[str, float], Any, bool]:
        """Score val and test (each split shared out across ranks): val decides what is best,
        test is only reported, so no choice is ever made on it. Records and shows the epoch's row."""
        t, monitor, best = loop.cfg.trainer, loop.monitor, loop.best
        scores = evaluate(loop.model, loop.data.val, t.eval_batch_size, loop.device, loop.choice.precision, group=loop.group).scores
        evaluation = evaluate(loop.model, loop.data.test, t.eval_batch_size, loop.device, loop.choice.precision, keep=48, group=loop.group)
        value = scores[monitor.main]
        improved = best["value"] is None or (value > best["value"] if monitor.higher_is_better else value < best["value"])
        if improved:
            best.update(value=value, epoch=epoch, test=evaluation.scores)
        row = {
            "epoch": epoch,
            "step": loop.step,
            "train_loss": trained.loss,
            f"train_{monitor.main}": trained.metric,
            **{f"val_{k}": v for k, v in scores.items()},
            **{f"test_{k}": v for k, v in evaluation.scores.items()},
            "lr": loop.scheduler.get_last_lr()[0],
            "images_per_s": trained.seen / trained.seconds,
            "epoch_s": trained.seconds,
            "elapsed_s": time.perf_counter() - loop.started,
        }
        loop.history.append(row)
        shown = monitor.table or tuple(scores)
        out.epoch_row(
            {
                "epoch": epoch,
                "train_loss": row["train_loss"],
                "val_loss": scores["loss"],
                **{f"val_{k}": scores[k] for k in shown if k != "loss"},
                f"test_{monitor.main}": evaluation.scores[monitor.main],
                f"best_val_{monitor.main}": best["value"],
                "img/s": round(row["images_per_s"]),
                "time_s": f"{trained.seconds:.1f}",
            }
        )
        breakdown = monitor.breakdown(scores)
        if breakdown:
            out.info(breakdown)
        loop.state.step = loop.step
        self._emit(loop, "on_epoch_end", row)
        return scores, evaluation, improved

    def _commit_epoch(self, loop: _Loop, epoch: int, scores: dict[str, float], evaluation: Any, improved: bool, out: Reporter) -> None:
        """last.ckpt (the run's record, holding the history), then best.ckpt when the monitored
        metric improved, then metrics.jsonl; signals wait until all three are written, and a kill
        between them is repaired on resume (rundir.repair)."""
        self._save(loop, self._snapshot(loop, epoch, metrics={"val": scores, "test": evaluation.scores}), improved, history=True)
        if loop.state.stop:
            out.info(loop.state.stop)

    def _save(self, loop: _Loop, record: checkpoint.Record | None, improved: bool, history: bool = False) -> None:
        """Write ``record`` (rank 0's; None elsewhere) as last.ckpt, and best.ckpt and metrics.jsonl
        where asked, as one step no signal cuts; then tell the callbacks."""
        if record is None:
            return
        paths = [rundir.checkpoint_file(loop.run_dir)] + ([rundir.checkpoint_file(loop.run_dir, "best")] if improved else [])
        with interrupts.deferred():
            for path in paths:
                checkpoint.save(record, path)
            if history:
                atomic.write_text(loop.run_dir / "metrics.jsonl", _jsonl(loop.history))
        for path in paths:
            self._emit(loop, "on_checkpoint", path)

    def _snapshot(self, loop: _Loop, epoch_done: int, **extra: Any) -> checkpoint.Record | None:
        """The checkpoint's contents after ``epoch_done`` finished epochs (every rank takes part
        in gathering the random states; rank 0 gets the record)."""
        group = loop.group
        rng = {"python": random.getstate(), "torch": group.gather(torch.get_rng_state()), "data": loop.generator.get_state()}
        if loop.device.type == "cuda":
            rng["cuda"] = group.gather(torch.cuda.get_rng_state(loop.device))
        if not group.main:
            return None
        return checkpoint.Record(
            model=loop.model.state_dict(),
            config=as_container(loop.cfg),
            classes=list(loop.data.classes),
            input=loop.spec,
            decoding=loop.model.head.export_metadata(),
            optimizer=loop.optimizer.state_dict(),
            scheduler=loop.scheduler.state_dict(),
            scaler=loop.scaler.state_dict(),
            epoch=epoch_done,
            step=loop.step,
            best=dict(loop.best),
            train_seconds=loop.train_seconds,
            planned_steps=loop.total_steps if loop.planned else None,
            history=loop.history,
            components=loop.components,
            crnnfw_version=__version__,
            rng=rng,
            stopped=loop.state.stop,
            callback_records=loop.state.records,
            callback_states=[callback.state_dict() for callback in loop.callbacks],
            **extra,
        )

    def _summarise(self, loop: _Loop, evaluation: Any, out: Reporter) -> FitResult:
        """summary.json (for people and scripts; written last, so its presence says the run is
        complete), the pictures, the callbacks' end, and the closing line."""
        history, best, main = loop.history, loop.best, loop.monitor.main
        summary = {
            "name": loop.cfg.name,
            "run_dir": str(loop.run_dir),
            "best": best,
            "final": history[-1],
            "epochs": len(history),
            "steps": loop.step,
            "train_seconds": loop.train_seconds,
            "total_seconds": time.perf_counter() - loop.started,
            "train_images_per_s": sum(r["images_per_s"] * r["epoch_s"] for r in history) / max(loop.train_seconds, 1e-9),
            "parameters": count_parameters(loop.model),
            "device": str(loop.device),
            "precision": loop.choice.precision,
            "precision_requested": loop.cfg.trainer.precision,
            "cpu_capability": cpu_capability(),
            "processes": loop.group.world,
            "data_notes": loop.data.notes,
            "stopped": loop.state.stop,
            "callbacks": loop.state.records,
            "components": loop.components,
            "crnnfw_version": __version__,
        }
        if loop.group.main:
            pictures.draw_run(loop.run_dir, history, evaluation, main, loop.data.classes)
            pictures.samples_png(loop.data, loop.run_dir / "samples.png")  # training images as augmented, as the model saw them
            atomic.write_text(loop.run_dir / "summary.json", json.dumps(resolvers.redact(summary), indent=2) + "\n")
        self._emit(loop, "on_fit_end", summary)
        final = history[-1]
        best_test = (best.get("test") or {}).get(main)  # absent in runs begun before val splits existed
        out.info(
            f"best val {main} {best['value']:.4f} (epoch {best['epoch']}"
            + (f", test {best_test:.4f}" if best_test is not None else "")
            + f"), final val {final.get(f'val_{main}', math.nan):.4f}, test {final[f'test_{main}']:.4f}; run directory: {loop.run_dir}"
        )
        return FitResult(loop.run_dir, summary)


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


def restore_training(
    state: dict[str, Any], run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler
) -> None:
    """Load the weights and the optimizer's, schedule's and scaler's states of a checkpoint."""
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
    except (RuntimeError, ValueError, KeyError) as exc:
        detail = " ".join(str(exc).split())[:200]
        raise CheckpointError(
            f"{rundir.checkpoint_file(run_dir)}: does not fit the model {run_dir / 'config.yaml'} builds ({detail}); was either file replaced? Resume only the run that wrote them"
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
