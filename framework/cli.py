"""The ``crnnfw`` command line: run, config, plugins."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from rich.console import Console
from rich.table import Table

from . import config as config_mod
from .errors import CrnnfwError
from .plugins import get_host
from .version import __version__


def _resolved(path: str, overrides: Sequence[str]):
    cfg = config_mod.load(path, overrides)
    return config_mod.resolve(cfg, get_host().registry, source=path)


def cmd_run(args: argparse.Namespace) -> int:
    from .trainer import Trainer

    cfg = _resolved(args.config, args.overrides)
    Trainer(cfg).fit()
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    cfg = _resolved(args.config, args.overrides)
    sys.stdout.write(config_mod.to_yaml(cfg))
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    host = get_host()
    components = {(c.kind, c.name): c for c in host.registry.all()}
    if args.json:
        payload = [
            {
                "name": p.name,
                "distribution": p.distribution,
                "version": p.version,
                "error": p.error,
                "components": [
                    {"kind": kind, "name": name, "description": components[kind, name].description}
                    for kind, name in p.components
                ],
            }
            for p in host.plugins
        ]
        print(json.dumps(payload, indent=2))
        return 0
    console = Console()
    table = Table(title="crnnfw plugins")
    for column in ("plugin", "distribution", "version", "kind", "component", "description"):
        table.add_column(column)
    for p in host.plugins:
        if p.error:
            table.add_row(p.name, p.distribution, p.version, "[red]failed[/red]", "", p.error)
        for i, (kind, name) in enumerate(p.components):
            first = i == 0
            table.add_row(p.name if first else "", p.distribution if first else "", p.version if first else "",
                          kind, name, components[kind, name].description)
    console.print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crnnfw", description="Train and use sequence-recognition models.")
    parser.add_argument("--version", action="version", version=f"crnnfw {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="train the model a config describes")
    run.add_argument("config", help="YAML config file, e.g. configs/mnist_crnn.yaml")
    run.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides, e.g. trainer.epochs=3")
    run.set_defaults(func=cmd_run)

    show = sub.add_parser("config", help="print the resolved config (defaults filled in, overrides applied)")
    show.add_argument("config")
    show.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    show.set_defaults(func=cmd_config)

    plugins = sub.add_parser("plugins", help="list plugins and the components they provide")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    plugins.set_defaults(func=cmd_plugins)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``crnnfw`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CrnnfwError as exc:
        print(f"crnnfw: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("crnnfw: interrupted", file=sys.stderr)
        return 130
