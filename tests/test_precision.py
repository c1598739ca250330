"""``trainer.precision: auto``: what it resolves to on each kind of hardware, and what a run records."""

from __future__ import annotations

import json

import pytest
import torch

from crnnfw.hardware import Hardware, cpu_native_bf16, hardware
from crnnfw.precision import choose

from .conftest import MNIST_CONFIG, ROOT

AMX_CPU = Hardware("cpu", "this CPU (AVX512)", native_bf16=True)
AVX2_CPU = Hardware("cpu", "this CPU (AVX2)", native_bf16=False)
H100 = Hardware("cuda", "NVIDIA H100", native_bf16=True)
V100 = Hardware("cuda", "Tesla V100", native_bf16=False)


@pytest.mark.parametrize(
    "hw, expected",
    [(AMX_CPU, "bf16-mixed"), (AVX2_CPU, "32-true"), (H100, "bf16-mixed"), (V100, "16-mixed")],
    ids=["cpu-native-bf16", "cpu-avx2", "gpu-bf16", "gpu-no-bf16"],
)
def test_auto_follows_the_hardware(hw, expected):
    choice = choose("auto", hw)
    assert choice.precision == expected and choice.requested == "auto" and choice.warning is None
    assert str(choice).startswith(f"auto -> {expected}: {hw.name} has ")


def test_explicit_choices_are_kept_and_emulated_bf16_is_called_slow():
    assert choose("32-true", AMX_CPU).precision == "32-true"
    assert choose("bf16-mixed", AMX_CPU).warning is None
    emulated = choose("bf16-mixed", AVX2_CPU)
    assert emulated.precision == "bf16-mixed"
    assert "emulated" in emulated.warning and "many times slower" in emulated.warning
    assert choose("bf16-mixed", V100).warning is None  # a GPU's own rule: autocast decides there
    assert str(choose("32-true", AVX2_CPU)) == "32-true"


def test_a_capped_cpu_has_no_native_bf16(monkeypatch):
    # What the documented AVX2 emulation on a Xeon sets: oneDNN may not use AMX or AVX512-BF16.
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert cpu_native_bf16() is False
    cpu = hardware(torch.device("cpu"))
    assert cpu.device_type == "cpu" and cpu.name == f"this CPU ({torch.backends.cpu.get_cpu_capability()})"


def test_shipped_configs_default_to_auto():
    import yaml

    for path in [*ROOT.glob("configs/*.yaml"), *ROOT.glob("configs/zoo/*.yaml")]:
        precision = (yaml.safe_load(path.read_text()).get("trainer") or {}).get("precision", "auto")
        assert precision == "auto", path


def test_a_run_says_what_auto_chose_and_records_it(tmp_path, cli):
    result = cli("run", MNIST_CONFIG, "data.train_limit=128", "data.val_size=128", "data.test_limit=128", "trainer.epochs=1", "trainer.device=cpu", f"output_dir={tmp_path}", "name=auto")
    assert result.code == 0, result.err
    (run_dir,) = (tmp_path / "auto").iterdir()
    expected = choose("auto", hardware(torch.device("cpu")))
    first = (run_dir / "train.log").read_text().splitlines()[0]
    assert f"cpu {expected}" in first
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["precision"] == expected.precision and summary["precision_requested"] == "auto"
    assert summary["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert "precision: auto" in (run_dir / "config.yaml").read_text()


def test_emulated_bf16_still_runs_with_one_warning(tmp_path, cli, monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # this CPU counts as one without native bf16
    result = cli(
        "run",
        MNIST_CONFIG,
        "data.train_limit=64",
        "data.val_size=64",
        "data.test_limit=64",
        "trainer.epochs=1",
        "trainer.batch_size=32",
        "trainer.device=cpu",
        "trainer.precision=bf16-mixed",
        f"output_dir={tmp_path}",
        "name=emulated",
    )
    assert result.code == 0, result.err
    (run_dir,) = (tmp_path / "emulated").iterdir()
    log = (run_dir / "train.log").read_text()
    assert log.count("has no native bf16, so it is emulated") == 1
    assert json.loads((run_dir / "summary.json").read_text())["precision"] == "bf16-mixed"
