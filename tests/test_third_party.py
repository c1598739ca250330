"""Third-party plugins as real installed packages: the example, a scaffolded one, clashes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import FP32, MNIST_CONFIG, ROOT

EXAMPLE = ROOT / "examples" / "crnnfw-resnet"


def pip_install(source: Path, target: Path) -> None:
    """Install a package into ``target`` offline (its dependencies are already here)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", "--target", str(target), str(source)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )


def crnnfw(site: Path | str, *args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": str(site), **env}
    return subprocess.run([sys.executable, "-m", "crnnfw", *map(str, args)], capture_output=True, text=True, env=environ, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A site folder holding the example plugin and a freshly scaffolded one, both installed."""
    work = tmp_path_factory.mktemp("third_party")
    site = work / "site"
    pip_install(shutil.copytree(EXAMPLE, work / "crnnfw-resnet", ignore=shutil.ignore_patterns("build", "*.egg-info")), site)
    made = crnnfw(site, "new-plugin", "acme-backbone", "--dir", work)
    assert made.returncode == 0, made.stderr
    pip_install(work / "acme-backbone", site)
    return site


def test_installed_plugins_are_discovered_and_listed(site):
    listing = crnnfw(site, "plugins", "--json")
    assert listing.returncode == 0 and listing.stderr == ""
    plugins = {p["name"]: p for p in json.loads(listing.stdout)}
    assert plugins["resnet"]["distribution"] == "crnnfw-resnet" and plugins["resnet"]["version"] == "0.1.0"
    assert [c["name"] for c in plugins["resnet"]["components"]] == ["resnet"]
    assert plugins["acme_backbone"]["distribution"] == "acme-backbone"
    shown = crnnfw(site, "plugins", "show", "resnet", "--json")
    options = {o["key"]: o for o in json.loads(shown.stdout)["options"]}
    assert options["strides"]["default"] == [[2, 2], [2, 2], [2, 1]]
    assert "stride of each stage" in options["strides"]["help"]


@pytest.mark.parametrize("backbone", ["resnet", "acme_backbone"])
def test_third_party_backbones_train(site, tmp_path, backbone):
    result = crnnfw(
        site,
        "run",
        MNIST_CONFIG,
        FP32,
        f"model.backbone.name={backbone}",
        "data.train_limit=2048",
        "data.val_size=512",
        "data.test_limit=512",
        "trainer.epochs=2",
        "trainer.batch_size=64",
        f"output_dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "mnist_crnn").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["components"]["backbone"]["name"] == backbone
    assert summary["components"]["backbone"]["version"] == "0.1.0"
    assert summary["final"]["test_accuracy"] > 0.5  # ten classes: far above chance after 64 steps


@pytest.mark.parametrize("tests", [EXAMPLE / "tests", "scaffolded"])
def test_plugin_packages_own_tests_pass(site, tests):
    folder = site.parent / "acme-backbone" / "tests" if tests == "scaffolded" else tests
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder)], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(site)}, timeout=600, cwd=site.parent
    )
    assert result.returncode == 0, result.stdout[-2000:]
    assert " passed" in result.stdout


def test_same_name_from_two_distributions_is_an_error_naming_both(site, tmp_path):
    clash = tmp_path / "clash"
    (clash / "clash_plugin").mkdir(parents=True)
    (clash / "clash_plugin" / "__init__.py").write_text(
        "import crnnfw\nfrom crnnfw_resnet import ResNetBackbone, ResNetConfig\n\n"
        "@crnnfw.hookimpl\ndef crnnfw_register_backbones(register):\n"
        "    register('resnet', ResNetBackbone.from_config, config=ResNetConfig)\n"
    )
    (clash / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "clash-plugin"\nversion = "2.0"\n'
        '[project.entry-points.crnnfw]\nclash = "clash_plugin"\n[tool.setuptools]\npackages = ["clash_plugin"]\n'
    )
    both = tmp_path / "site"
    pip_install(clash, both)
    path = f"{site}{os.pathsep}{both}"
    result = crnnfw(path, "plugins")
    assert result.returncode == 2
    assert "backbone 'resnet' is registered twice: by plugin 'clash' (clash-plugin 2.0) and by plugin 'resnet' (crnnfw-resnet 0.1.0)" in result.stderr
    blocked = crnnfw(path, "plugins", "--json", CRNNFW_BLOCK_PLUGINS="clash")
    assert blocked.returncode == 0 and "clash" not in {p["name"] for p in json.loads(blocked.stdout)}
