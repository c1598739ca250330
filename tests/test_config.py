"""Config loading, validation and overrides, through the CLI and the API."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from omegaconf import OmegaConf

from crnnfw import ConfigError, config
from crnnfw.plugins import get_registry

from .conftest import MNIST_CONFIG


def resolve(*overrides: str):
    return config.resolve(config.load(MNIST_CONFIG, overrides), get_registry(), source=str(MNIST_CONFIG))


def test_resolved_config_fills_component_defaults_and_applies_overrides(cli):
    result = cli("config", MNIST_CONFIG, "trainer.epochs=3", "model.encoder.hidden_size=64")
    assert result.code == 0
    cfg = OmegaConf.create(result.out)
    assert cfg.trainer.epochs == 3
    assert cfg.model.encoder.hidden_size == 64
    assert cfg.model.encoder.cell == "lstm"  # a default the YAML does not state
    assert cfg.model.backbone.pools == [[2, 2], [2, 2], [2, 1], [1, 1]]
    assert cfg.trainer.scheduler.name == "onecycle"


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model.backbone.chanels=[8]", "model.backbone.chanels: unknown key; did you mean 'channels'?"),
        ("trainer.epoch=3", "trainer.epoch: unknown key; did you mean 'epochs'?"),
        ("trainer.optimizer.lrr=0.1", "trainer.optimizer.lrr: unknown key; did you mean 'lr'?"),
        ("data.augment.degree=3", "data.augment.degree: unknown key; did you mean 'degrees'?"),
        ("trainer.batch_size=many", "trainer.batch_size: Value 'many' of type 'str' could not be converted to Integer"),
        ("model.backbone.pools=[[2,x]]", "model.backbone.pools[0][1]"),
        ("model.backbone.name=cnnn", "unknown backbone 'cnnn'; did you mean 'cnn'? (available: cnn"),
        ("model.head.name=nothing", "unknown head 'nothing' (available: ctc, softmax)"),
        ("trainer.precision=bf16", "trainer.precision: 'bf16' is not one of auto, 32-true, bf16-mixed, 16-mixed; did you mean 'bf16-mixed'?"),
        ("trainer.compile=reduce", "trainer.compile: 'reduce' is not one of off, default, reduce-overhead, max-autotune; did you mean 'reduce-overhead'?"),
        ("trainer.epochs=0", "trainer.epochs: must be > 0, got 0"),
        ("trainer.optimizer.name=adamm", "'adamm' is not one of adam, adamw, sgd; did you mean 'adam'?"),
    ],
)
def test_bad_values_name_the_full_key_and_suggest(override, expected):
    with pytest.raises(ConfigError) as info:
        resolve(override)
    message = str(info.value)
    assert expected in message
    assert str(MNIST_CONFIG) in message
    assert "\n" not in message


def test_cli_config_error_is_one_line_exit_2_without_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "crnnfw", "run", str(MNIST_CONFIG), "trainer.lr=0.1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"crnnfw: error: {MNIST_CONFIG}: trainer.lr: unknown key (valid keys: " + lines[0].split("(valid keys: ")[1]]
    assert "Traceback" not in proc.stderr
    assert "epochs" in lines[0]


def test_missing_file_bad_yaml_and_bad_override_syntax(cli, tmp_path):
    missing = cli("run", tmp_path / "nope.yaml")
    assert missing.code == 2 and "nope.yaml: no such config file" in missing.err

    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    result = cli("config", broken)
    assert result.code == 2 and "broken.yaml: not valid YAML" in result.err
    assert len(result.err.strip().splitlines()) == 1

    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    assert "top level must be a mapping" in cli("config", listing).err

    bad = cli("config", MNIST_CONFIG, "trainer.epochs")
    assert bad.code == 2 and "expected key=value" in bad.err


def test_component_section_needs_a_name(tmp_path, cli):
    path = tmp_path / "noname.yaml"
    path.write_text("model:\n  encoder: 3\n")
    result = cli("config", path)
    assert result.code == 2
    assert "model.encoder: expected a mapping with a 'name' key" in result.err


def test_swapping_a_component_by_override_drops_the_files_options_for_the_old_one(cli):
    swapped = cli("config", MNIST_CONFIG, "model.head.name=ctc", "model.head.decoder=beam")
    assert swapped.code == 0, swapped.err
    head = OmegaConf.create(swapped.out).model.head
    assert head.name == "ctc" and head.decoder == "beam" and "pool" not in head
    kept = OmegaConf.create(cli("config", MNIST_CONFIG, "model.head.name=softmax").out).model.head
    assert kept.label_smoothing == 0.1  # same component: the file's options stay


def test_a_long_list_loads_where_an_alias_bomb_does_not(tmp_path, cli):
    """The YAML node limit follows the file's size: 12,000 real entries pass."""
    sources = [f"part{i:05d}/labels.txt" for i in range(12_000)]
    path = tmp_path / "many.yaml"
    path.write_text(OmegaConf.to_yaml({"data": {"name": "lines", "train": sources, "test": "test/labels.txt"}}))
    shown = cli("config", path)
    assert shown.code == 0, shown.err
    assert yaml.safe_load(shown.out)["data"]["train"] == sources


def test_interpolations_are_resolved_once_and_stored_as_text(tmp_path, cli):
    path = tmp_path / "interp.yaml"
    path.write_text("name: interp\nseed: ${trainer.epochs}\ntrainer:\n  epochs: 3\ndata:\n  name: mnist\n  root: 'keep \\${this} as text'\n")
    shown = cli("config", path)
    assert shown.code == 0, shown.err
    again = tmp_path / "again.yaml"
    again.write_text(shown.out)  # what a run's config.yaml holds, read back
    reread = cli("config", again)
    assert reread.code == 0, reread.err
    cfg = OmegaConf.create(reread.out)
    assert cfg.seed == 3 and cfg.data.root == "keep ${this} as text"


def test_built_in_configs_by_name_from_any_folder(tmp_path, monkeypatch, cli):
    from .conftest import FP32, ROOT

    monkeypatch.chdir(tmp_path)  # no configs/ here: what a pip user has
    example = cli("config", "--example", "multidigit_ctc")
    assert example.code == 0 and example.out == (ROOT / "configs" / "multidigit_ctc.yaml").read_text()
    assert cli("config", "configs/zoo/cnn_lstm.yaml").code == 0  # the README's paths work too
    (tmp_path / "mnist_crnn.yaml").write_text("name: mine\ndata: {name: mnist}\n")
    assert "name: mine" in cli("config", "mnist_crnn.yaml").out  # a file path wins
    run = cli("run", "mnist_crnn", FP32, "data.train_limit=256", "data.val_size=128", "data.test_limit=128", "trainer.epochs=1")
    assert run.code == 0, run.err
    assert len(list((tmp_path / "runs" / "mnist_crnn").iterdir())) == 1
    unknown = cli("config", "mnist_crn")
    assert unknown.code == 2 and "built-in configs: " in unknown.err and "mnist_crnn, mnist_fast, multidigit_ctc" in unknown.err
