"""Trainer callbacks through the crnnfw_register_callbacks hook: the built-in early stopping and
a callback registered like a third party's, on real short runs."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

import crnnfw

from .conftest import FP32, MNIST_CONFIG, read_jsonl

TINY = [FP32, "data.train_limit=256", "data.val_size=128", "data.test_limit=128", "trainer.batch_size=64", "trainer.log_every=2"]


def test_early_stopping_ends_the_run_and_says_why(tmp_path, cli):
    # An improvement of more than 1.0 in accuracy is impossible: the run stops after patience epochs.
    stopping = "trainer.callbacks=[{name: early_stopping, patience: 2, min_delta: 1.0}]"
    result = cli("run", MNIST_CONFIG, *TINY, "trainer.epochs=6", stopping, f"output_dir={tmp_path}", "name=es")
    assert result.code == 0, result.err
    (run_dir,) = (tmp_path / "es").iterdir()
    assert [row["epoch"] for row in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2, 3]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stopped"].startswith("early stopping: val_accuracy has not improved by more than 1 for 2 epochs")
    assert summary["callbacks"]["early_stopping"] == {"stopped_after_epoch": 3, "best_epoch": 1, "monitor": "val_accuracy", "patience": 2, "min_delta": 1.0}
    assert "early stopping" in result.out
    again = cli("run", "--resume", run_dir)
    assert again.code == 1 and "already stopped (early stopping" in again.err


@dataclass
class RecorderConfig:
    every: int = 1  # keep every N-th step event


class Recorder(crnnfw.Callback):
    events: list[tuple] = []

    def __init__(self, config: RecorderConfig) -> None:
        self.config = config

    def on_fit_start(self, state):
        self.events.append(("fit_start", state.epoch))

    def on_epoch_start(self, state):
        self.events.append(("epoch_start", state.epoch))

    def on_step(self, state, loss, lr):
        assert loss > 0 and lr > 0
        if state.step % self.config.every == 0:
            self.events.append(("step", state.step))

    def on_epoch_end(self, state, row):
        self.events.append(("epoch_end", state.epoch, row["epoch"], len(state.history)))

    def on_checkpoint(self, state, path):
        self.events.append(("checkpoint", state.epoch, path.name))

    def on_fit_end(self, state, summary):
        self.events.append(("fit_end", summary["epochs"]))


def test_a_plugin_callback_sees_every_event_in_order(tmp_path, cli, extra_plugin):
    def crnnfw_register_callbacks(register):
        register("recorder", Recorder, config=RecorderConfig, description="records the loop's events")

    extra_plugin("recorder_plugin", crnnfw_register_callbacks=crnnfw_register_callbacks)
    Recorder.events = []
    result = cli("run", MNIST_CONFIG, *TINY, "trainer.epochs=2", "trainer.callbacks=[{name: recorder, every: 2}]", f"output_dir={tmp_path}", "name=rec")
    assert result.code == 0, result.err
    events = Recorder.events
    assert events[0] == ("fit_start", 0) and events[1] == ("epoch_start", 1) and events[-1] == ("fit_end", 2)
    assert ("step", 2) in events and ("step", 4) in events and all(e[1] % 2 == 0 for e in events if e[0] == "step")
    end_of_1 = events.index(("epoch_end", 1, 1, 1))
    assert events[end_of_1 + 1] == ("checkpoint", 1, "last.ckpt") and events[end_of_1 + 2] == ("checkpoint", 1, "best.ckpt")
    assert events.index(("epoch_start", 2)) > end_of_1 and ("epoch_end", 2, 2, 2) in events
    listed = cli("plugins", "--json")
    assert any(c["kind"] == "callback" and c["name"] == "recorder" for p in json.loads(listed.out) for c in p["components"])


def test_the_documented_csv_logger_works(tmp_path, cli, monkeypatch):
    """The callback package of docs/plugins.md, as written there, registered and run."""
    import re
    import sys
    import types

    from .conftest import ROOT

    text = (ROOT / "docs" / "plugins.md").read_text()
    (code,) = [block for block in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "crnnfw_csv_logger.py" in block]
    module = types.ModuleType("crnnfw_csv_logger")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # as importing the package would
    exec(compile(code, "docs/plugins.md", "exec"), module.__dict__)
    crnnfw.plugins.register_plugin(module, name="csv_logger_doc")
    try:
        result = cli("run", MNIST_CONFIG, *TINY, "trainer.epochs=1", "trainer.callbacks=[{name: csv_logger}]", f"output_dir={tmp_path}", "name=csv")
    finally:
        crnnfw.plugins.unregister_plugin("csv_logger_doc")
    assert result.code == 0, result.err
    (run_dir,) = (tmp_path / "csv").iterdir()
    rows = (run_dir / "steps.csv").read_text().splitlines()
    assert rows[0] == "epoch,step,loss,lr" and len(rows) >= 3 and rows[1].split(",")[:2] == ["1", "2"]


def test_the_tensorboard_logger_writes_what_tensorboard_reads(tmp_path, cli):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    result = cli("run", MNIST_CONFIG, *TINY, "trainer.epochs=2", "trainer.callbacks=[{name: tensorboard}]", f"output_dir={tmp_path}", "name=tb")
    assert result.code == 0, result.err
    (run_dir,) = (tmp_path / "tb").iterdir()
    events = accumulator.EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"train/loss", "train/lr", "val/accuracy", "test/accuracy", "val/loss"} <= set(scalars)
    assert [e.step for e in events.Scalars("val/accuracy")] == [1, 2]
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [e.value for e in events.Scalars("val/accuracy")] == pytest.approx([r["val_accuracy"] for r in rows])
    assert [e.step for e in events.Scalars("train/loss")][:2] == [2, 4]
    assert {"pictures/predictions", "pictures/curves"} <= set(events.Tags()["images"])


@dataclass
class InterruptConfig:
    epoch: int = 0  # raise KeyboardInterrupt as this epoch's evaluation ends (after its commit); 0: never
    step: int = 0  # ... or after this optimizer step; 0: never


class Interrupt(crnnfw.Callback):
    """A Ctrl-C at a chosen point of the loop, once per run (a resumed run passes it)."""

    def __init__(self, config: InterruptConfig) -> None:
        self.config = config

    def _once(self, state):
        marker = state.run_dir / "interrupted"
        if not marker.exists():
            marker.touch()
            raise KeyboardInterrupt

    def on_train_batch_end(self, state):
        if state.step == self.config.step:
            self._once(state)

    def on_evaluate_end(self, state):
        if state.epoch == self.config.epoch:
            self._once(state)


def _weights(run_dir):
    from crnnfw import checkpoint

    return checkpoint.load(run_dir / "checkpoints" / "last.ckpt")


def test_the_weight_average_is_scored_saved_and_resumed_bit_exactly(tmp_path, cli, extra_plugin):
    extra_plugin("interrupt_plugin", crnnfw_register_callbacks=lambda register: register("interrupt", Interrupt, config=InterruptConfig))
    ema = "{name: ema, decay: 0.9}"
    args = [*TINY, "trainer.epochs=2", "trainer.checkpoint_every=2", f"output_dir={tmp_path}"]  # 4 steps an epoch
    runs = {}
    for name, stop in (("straight", "epoch: 0"), ("after_epoch", "epoch: 1"), ("mid_epoch", "step: 7")):
        result = cli("run", MNIST_CONFIG, *args, f"name={name}", f"trainer.callbacks=[{{name: interrupt, {stop}}}, {ema}]")
        (runs[name],) = (tmp_path / name).iterdir()
        if name != "straight":
            assert result.code != 0 and "resume with crnnfw run --resume" in result.out
            assert _weights(runs[name])["callback_states"][1]["swapped"] is (name == "after_epoch")  # killed inside or outside the window
            assert cli("run", "--resume", runs[name]).code == 0
        else:
            assert result.code == 0, result.err
    straight = _weights(runs["straight"])
    summary = json.loads((runs["straight"] / "summary.json").read_text())
    assert summary["callbacks"]["ema"] == {"decay": 0.9, "warmup": True, "updates": 8}
    # The checkpoint holds the average, the callback's state the trained weights, and they differ.
    state = straight["callback_states"][1]
    assert state["swapped"] and state["updates"] == 8
    trained = dict(zip([k for k, v in straight["model"].items() if v.is_floating_point()], state["shadow"]))
    assert any(not torch.equal(trained[k], straight["model"][k]) for k in trained)
    # What was scored is what was saved: evaluating best.ckpt gives the epoch's val figures.
    best_epoch = summary["best"]["epoch"]
    row = next(r for r in read_jsonl(runs["straight"] / "metrics.jsonl") if r["epoch"] == best_epoch)
    scored = crnnfw.load(runs["straight"]).evaluate("val")["scores"]
    assert scored["accuracy"] == pytest.approx(row["val_accuracy"])
    for name in ("after_epoch", "mid_epoch"):
        resumed = _weights(runs[name])
        assert all(torch.equal(straight["model"][k], resumed["model"][k]) for k in straight["model"]), name
        assert all(torch.equal(a, b) for a, b in zip(state["shadow"], resumed["callback_states"][1]["shadow"])), name
