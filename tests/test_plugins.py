"""The plugin host: discovery through entry points, listings, name clashes, broken plugins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest

import crnnfw
from crnnfw import ConfigError, PluginError
from crnnfw.plugins import get_host, get_registry

from .conftest import MNIST_CONFIG


@dataclass
class NoOptions:
    pass


def test_builtins_come_through_the_entry_point_group(cli):
    host = get_host()
    builtins = next(p for p in host.plugins if p.name == "builtins")
    assert builtins.distribution == "crnnfw"
    assert builtins.version == crnnfw.__version__
    assert set(builtins.components) >= {("backbone", "cnn"), ("encoder", "lstm"), ("head", "softmax"), ("dataset", "mnist")}

    listing = cli("plugins", "--json")
    assert listing.code == 0
    entries = {p["name"]: p for p in json.loads(listing.out)}
    kinds = {(c["kind"], c["name"]) for c in entries["builtins"]["components"]}
    assert ("backbone", "cnn") in kinds and ("dataset", "mnist") in kinds
    assert entries["builtins"]["error"] is None

    table = cli("plugins")
    assert table.code == 0 and "softmax" in table.out and "lstm" in table.out


def test_unknown_component_suggests_and_lists():
    with pytest.raises(ConfigError, match=r"unknown encoder 'lstn'; did you mean 'lstm'\? \(available: .*lstm"):
        get_registry().get("encoder", "lstn")


def test_duplicate_name_is_an_error_naming_both_providers(extra_plugin):
    def register_clash(register):
        register("cnn", lambda cfg, **kw: None, config=NoOptions)

    extra_plugin("clashing", crnnfw_register_backbones=register_clash)
    with pytest.raises(PluginError, match=r"backbone 'cnn' is registered twice: by plugin 'builtins' \(crnnfw .*\) and by plugin 'clashing' \(registered in code\)"):
        get_host()


def test_plugin_failing_to_register_is_reported_not_fatal(extra_plugin, cli, monkeypatch):
    def register_broken(register):
        raise RuntimeError("boom")

    extra_plugin("broken", crnnfw_register_heads=register_broken)
    listing = cli("plugins", "--json")
    assert listing.code == 0
    assert "plugin 'broken'" in listing.err and "RuntimeError: boom" in listing.err
    broken = next(p for p in json.loads(listing.out) if p["name"] == "broken")
    assert "failed to register: RuntimeError: boom" in broken["error"]
    assert cli("config", MNIST_CONFIG).code == 0  # the rest still works

    monkeypatch.setenv("CRNNFW_STRICT_PLUGINS", "1")
    crnnfw.plugins.reset()
    strict = cli("plugins")
    assert strict.code == 2 and "plugin 'broken'" in strict.err and "boom" in strict.err


def test_registering_an_invalid_component_is_that_plugins_failure(extra_plugin, capsys):
    def register_bad(register):
        register("not a name", lambda cfg, **kw: None, config=NoOptions)

    extra_plugin("badname", crnnfw_register_encoders=register_bad)
    host = get_host()
    (failure,) = host.failures
    assert failure.name == "badname" and "registered encoder 'not a name': a name must be an identifier" in failure.error
    assert "crnnfw: warning: plugin 'badname' (registered in code) failed to register: ValueError" in capsys.readouterr().err
    assert "lstm" in host.registry.names("encoder")


@pytest.fixture
def installed_broken_plugin(tmp_path):
    """A distribution on the path whose crnnfw entry point fails to import."""
    dist = tmp_path / "broken_crnnfw_plugin-1.2.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-crnnfw-plugin\nVersion: 1.2.3\n")
    (dist / "entry_points.txt").write_text("[crnnfw]\nbrokenbb = broken_crnnfw_plugin\n")
    (tmp_path / "broken_crnnfw_plugin.py").write_text("import a_module_that_does_not_exist\n")
    return tmp_path


def run_cli(args, path, **env):
    environ = {**os.environ, "PYTHONPATH": str(path), **env}
    return subprocess.run([sys.executable, "-m", "crnnfw", *args], capture_output=True, text=True, env=environ, timeout=120)


def test_installed_plugin_that_fails_to_import(installed_broken_plugin):
    proc = run_cli(["plugins", "--json"], installed_broken_plugin)
    assert proc.returncode == 0
    warning = [line for line in proc.stderr.splitlines() if "brokenbb" in line]
    assert len(warning) == 1
    assert "(broken-crnnfw-plugin) failed to load: ModuleNotFoundError" in warning[0]
    entries = {p["name"]: p for p in json.loads(proc.stdout)}
    assert entries["brokenbb"]["version"] == "1.2.3"
    assert "a_module_that_does_not_exist" in entries["brokenbb"]["error"]
    assert entries["builtins"]["error"] is None

    strict = run_cli(["plugins"], installed_broken_plugin, CRNNFW_STRICT_PLUGINS="1")
    assert strict.returncode == 2
    assert strict.stderr.startswith("crnnfw: error: plugin 'brokenbb' (broken-crnnfw-plugin) failed to load")
    assert "Traceback" not in strict.stderr

    for env in ({"CRNNFW_BLOCK_PLUGINS": "brokenbb"}, {"CRNNFW_DISABLE_PLUGIN_AUTOLOAD": "1"}):
        quiet = run_cli(["plugins", "--json"], installed_broken_plugin, **env)
        assert quiet.returncode == 0 and quiet.stderr == ""
        assert [p["name"] for p in json.loads(quiet.stdout)] == ["builtins"]


def test_hookspecs_document_every_hook():
    from crnnfw import hookspecs

    hooks = [name for name in dir(hookspecs) if name.startswith("crnnfw_register_")]
    assert sorted(hooks) == ["crnnfw_register_backbones", "crnnfw_register_callbacks", "crnnfw_register_datasets", "crnnfw_register_encoders", "crnnfw_register_heads"]
    for name in hooks:
        doc = getattr(hookspecs, name).__doc__
        assert "Factory signature" in doc, name


def test_plugin_guide_documents_every_hook_as_specified():
    from crnnfw import hookspecs

    from .conftest import ROOT

    guide = (ROOT / "docs" / "plugins.md").read_text()
    for name in dir(hookspecs):
        if name.startswith("crnnfw_register_"):
            assert f"### `{name}`" in guide, name
            signature = next(line.strip() for line in getattr(hookspecs, name).__doc__.splitlines() if "Factory signature" in line)
            assert " ".join(signature.split()) in " ".join(guide.split()), name


def test_hook_mistakes_say_why_and_suggest_the_hook(extra_plugin, cli):
    def crnnfw_register_backbones(reg):  # the argument must be named `register`
        pass

    def crnnfw_register_backbone(register):  # one letter short of the hook
        pass

    extra_plugin("wrong_argument", crnnfw_register_backbones=crnnfw_register_backbones)
    extra_plugin("wrong_hook", crnnfw_register_backbone=crnnfw_register_backbone)
    listed = {p["name"]: p for p in json.loads(cli("plugins", "--json").out)}
    assert "Argument(s) {'reg'} are declared in the hookimpl but can not be found in the hookspec" in listed["wrong_argument"]["error"]
    assert "did you mean 'crnnfw_register_backbones'?" in listed["wrong_hook"]["error"]


def _python_blocks(path, containing: str) -> str:
    import re

    (block,) = [b for b in re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S) if containing in b]
    return block


def test_the_readme_and_notebook_plugins_train_as_written(tmp_path, monkeypatch):
    import types

    import crnnfw
    from crnnfw import plugins

    from .conftest import FP32, ROOT

    module = types.ModuleType("my_package_plugin")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(_python_blocks(ROOT / "README.md", "my_package/plugin.py"), "README.md", "exec"), module.__dict__)
    plugins.register_plugin(module, name="readme_tiny")
    try:
        run = crnnfw.train(
            "mnist_crnn", [FP32, "model.backbone.name=tiny", "trainer.epochs=1", "data.train_limit=500", "data.val_size=200", "data.test_limit=200"], output_dir=str(tmp_path / "readme")
        )
    finally:
        plugins.unregister_plugin("readme_tiny")
    assert run.summary["components"]["backbone"]["name"] == "tiny"

    notebook = _python_blocks(ROOT / "docs" / "plugins.md", "class NotebookPlugin")
    notebook = notebook.replace('"data.train_limit=2000"', f'"data.train_limit=500", "data.val_size=200", "data.test_limit=200", "{FP32}"')
    namespace = {"__name__": "notebook"}
    monkeypatch.setitem(sys.modules, "notebook", types.ModuleType("notebook"))
    exec(compile(notebook.replace("/tmp/crnnfw-notebook", str(tmp_path / "notebook")), "docs/plugins.md", "exec"), namespace)
    plugins.unregister_plugin("notebook")
    assert namespace["run"].summary["components"]["backbone"]["plugin"] == "notebook"
