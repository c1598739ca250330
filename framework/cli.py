"""The ``crnnfw`` command line: run, config, plugins."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import config as config_mod
from .errors import CrnnfwError
from .plugins import get_host
from .registry import KINDS, suggest
from .scaffold import new_plugin
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
            table.add_row(p.name, p.distribution, p.version, "[red]failed[/red]", "", escape(p.error))
        elif not p.components:
            table.add_row(p.name, p.distribution, p.version, "-", "", "registers no components")
        for i, (kind, name) in enumerate(p.components):
            first = i == 0
            table.add_row(p.name if first else "", p.distribution if first else "", p.version if first else "",
                          kind, name, components[kind, name].description)
    console.print(table)
    return 0


def cmd_plugins_show(args: argparse.Namespace) -> int:
    registry = get_host().registry
    matches = [c for c in registry.all() if c.name == args.name and (args.kind is None or c.kind == args.kind)]
    if not matches:
        names = sorted({c.name for c in registry.all() if args.kind is None or c.kind == args.kind})
        what = args.kind or "component"
        raise CrnnfwError(f"plugins show: no {what} named '{args.name}'{suggest(args.name, names)} (available: {', '.join(names)})")
    if len(matches) > 1:
        kinds = ", ".join(c.kind for c in matches)
        raise CrnnfwError(f"plugins show: '{args.name}' names a {kinds}; add --kind to choose")
    (component,) = matches
    options = component.options()
    if args.json:
        plugin = next(p for p in get_host().plugins if p.name == component.provider)
        payload = {"kind": component.kind, "name": component.name, "plugin": component.provider,
                   "distribution": plugin.distribution, "version": plugin.version,
                   "description": component.description, "options": options}
        print(json.dumps(payload, indent=2, default=repr))
        return 0
    console = Console()
    console.print(f"[bold]{component.kind} '{component.name}'[/bold] from plugin '{component.provider}' ({component.distribution})")
    if component.description:
        console.print(component.description, highlight=False)
    table = Table(show_edge=False)
    for column in ("option", "type", "default", "help"):
        table.add_column(column)
    for option in options:
        table.add_row(*(escape(str(v)) for v in (option["key"], option["type"], repr(option["default"]), option["help"])))
    console.print(table)
    return 0


def cmd_new_plugin(args: argparse.Namespace) -> int:
    target = new_plugin(args.name, Path(args.dir))
    print(f"wrote {target}: pip install -e {target} && pytest {target / 'tests'}")
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

    plugins = sub.add_parser("plugins", help="list plugins and the components they provide; 'plugins show NAME' for options")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    plugins.set_defaults(func=cmd_plugins)
    plugins_sub = plugins.add_subparsers(dest="plugins_command", metavar="show")
    show_component = plugins_sub.add_parser("show", help="a component's options with types, defaults and help")
    show_component.add_argument("name", help="component name, e.g. cnn")
    show_component.add_argument("--kind", choices=KINDS, help="when several kinds share the name")
    show_component.add_argument("--json", action="store_true", help="machine-readable output")
    show_component.set_defaults(func=cmd_plugins_show)

    scaffold = sub.add_parser("new-plugin", help="write a ready backbone plugin package")
    scaffold.add_argument("name", help="distribution name, e.g. my-backbone")
    scaffold.add_argument("--dir", default=".", help="parent folder (default: the current one)")
    scaffold.set_defaults(func=cmd_new_plugin)
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
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
