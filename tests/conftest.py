"""Shared fixtures: real MNIST subsets, in-process CLI calls, plugins registered in code."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

import crnnfw
from crnnfw import plugins
from crnnfw.cli import main

ROOT = Path(__file__).resolve().parent.parent
MNIST_CONFIG = ROOT / "configs" / "mnist_crnn.yaml"


#: Tests train in fp32 unless they test another precision on purpose: ``auto`` would pick bf16
#: on CPUs with bf16 units, and the accuracy bars below were set in fp32.
FP32 = "trainer.precision=32-true"
SUBSET = [FP32, "data.train_limit=8000", "data.val_size=1000", "data.test_limit=2000", "trainer.epochs=3", "trainer.batch_size=64", "trainer.log_every=20"]


@pytest.fixture(scope="session")
def short_run(tmp_path_factory) -> Path:
    """One short real run on an MNIST subset (about 96.5% test accuracy), shared by the test files."""
    out = tmp_path_factory.mktemp("runs")
    assert main(["run", str(MNIST_CONFIG), *SUBSET, f"output_dir={out}", "name=short"]) == 0
    (run_dir,) = (out / "short").iterdir()
    return run_dir


@pytest.fixture
def cli(capsys):
    """Run the crnnfw CLI in-process; return (exit code, stdout, stderr)."""

    def run(*args: str) -> SimpleNamespace:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return SimpleNamespace(code=code, out=out, err=err)

    return run


@pytest.fixture
def extra_plugin():
    """Register a plugin module, made of the given hook functions, for one test."""
    added: list[str] = []

    def add(name: str, **hooks) -> None:
        module = ModuleType(name)
        for hook, function in hooks.items():
            setattr(module, hook, crnnfw.hookimpl(function))
        plugins.register_plugin(module, name=name)
        added.append(name)

    yield add
    for name in added:
        plugins.unregister_plugin(name)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
