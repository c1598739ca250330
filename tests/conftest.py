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
