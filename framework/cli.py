"""The ``crnnfw`` command line: run, eval, predict, export, config, data, plugins, new-plugin."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from omegaconf import OmegaConf
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import config as config_mod
from . import interrupts
from .errors import CrnnfwError
from .export import FORMATS
from .plugins import get_host
from .registry import KINDS, suggest
from .scaffold import new_plugin
from .resume import find_run, resumed_config
from .trained import checkpoint_path, load_trained
from .version import __version__


def _console() -> Console:
    """Rich output; off a terminal rich assumes 80 columns, too narrow for tables of paths."""
    return Console(width=None if sys.stdout.isatty() else 200)


def _positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got '{text}'")
    return value


def _resolved(path: str, overrides: Sequence[str], allow_env: bool = False):
    cfg = config_mod.load(path, overrides)
    return config_mod.resolve(cfg, get_host().registry, source=path, allow_env=allow_env)


def cmd_run(args: argparse.Namespace) -> int:
    from .trainer import Trainer

    overrides = list(args.overrides)
    config = args.config
    if config is not None and "=" in config and not Path(config).exists():  # `run --resume DIR key=value`
        config, overrides = None, [config, *overrides]
    if args.resume:
        if args.init_from:
            raise CrnnfwError("run: --resume continues a run and --init-from starts a new one; use one of them")
        run_dir = find_run(args.resume, config, overrides)
        Trainer(resumed_config(run_dir, overrides, allow_env=args.allow_env), resume=run_dir).fit()
        return 0
    if config is None:
        raise CrnnfwError("run: give a config file (crnnfw run configs/mnist_crnn.yaml) or --resume RUN_DIR")
    if args.init_from:
        checkpoint_path(args.init_from)  # a wrong path fails before any data is read
        overrides.append(f"trainer.init_from={args.init_from}")
    Trainer(_resolved(config, overrides, args.allow_env)).fit()
    return 0


def _rows_table(title: str, rows: list[dict]) -> Table:
    table = Table(title=title, show_edge=False)
    for key in rows[0]:
        table.add_column(key, justify="left" if isinstance(rows[0][key], str) else "right")
    for row in rows:
        table.add_row(*(_cell(v) for v in row.values()))
    return table


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, str) and (value == "" or value.strip() != value):
        return escape(repr(value))  # a space, or nothing, would be an invisible cell
    return escape(str(value))


def cmd_eval(args: argparse.Namespace) -> int:
    from .api import load
    from .trainer import select_device

    recognizer = load(args.checkpoint, overrides=args.overrides)
    recognizer.to(select_device(recognizer.config.trainer.device))
    folder = Path(args.out) if args.out else (recognizer.run_dir or recognizer.checkpoint.parent) / f"eval-{args.split}"
    payload = recognizer.evaluate(args.split, out=folder)
    if args.json:
        print(json.dumps(payload, indent=2))
        return 0
    console = _console()
    console.print(f"[bold]{recognizer.checkpoint}[/bold] on the {args.split} split ({payload['samples']:,} samples)", highlight=False)
    console.print(_rows_table("scores", [{"metric": k, "value": v} for k, v in payload["scores"].items()]))
    for name, rows in payload["report"].items():
        if rows:
            console.print(_rows_table(name.replace("_", " "), rows))
    if payload["confusion"] is not None:
        classes = recognizer.classes
        matrix = [{"truth": name, **{c: count for c, count in zip(classes, row)}} for name, row in zip(classes, payload["confusion"])]
        console.print(_rows_table("confusion (rows: truth, columns: prediction)", matrix))
    console.print(f"wrote {', '.join([*payload['pictures'], str(folder / 'eval.json')])}", highlight=False)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .api import load

    results = load(args.checkpoint).predict([Path(p) for p in args.paths], polarity=args.polarity, beam=args.beam, batch_size=args.batch_size, max_pixels=args.max_pixels, max_width=args.max_width)
    failed = [r for r in results if r.error]
    for r in failed:
        print(f"crnnfw: error: {r.error}", file=sys.stderr)
    if args.json:
        for r in results:
            print(json.dumps(r.as_dict()))
    else:
        table = Table(show_edge=False)
        for column, justify in (("file", "left"), ("text", "left"), ("confidence", "right")):
            table.add_column(column, justify=justify)
        for r in results:
            if not r.error:
                table.add_row(escape(str(r.path)), escape(r.text or ""), f"{r.confidence:.4f}")
        _console().print(table)
    return 1 if failed else 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import check_verified, default_output, export_model, verify_export

    trained = load_trained(args.checkpoint)
    output = export_model(trained, args.format, args.output or default_output(trained, args.format), unpadded=args.unpadded, force=args.force)
    print(f"wrote {output} ({args.format}, dynamic batch and width{', unpadded' if args.unpadded else ''})")
    if args.verify:
        rows = verify_export(trained, output, args.format, unpadded=args.unpadded)
        for row in rows:
            status = "ok" if row["ok"] else "MISMATCH"
            print(
                f"  widths {row['widths']}: max |logit diff| {row['max_abs_diff']:.2e}, lengths "
                f"{'equal' if row['lengths_equal'] else 'differ'}, texts {'equal' if row['texts_equal'] else 'differ'}: {status}"
            )
        check_verified(rows, output)
        print(f"verified against PyTorch at {len(rows)} width combinations (logits within 1e-4, same decoded texts)")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    if args.example:  # the recipe as written, comments and all, to start a config from
        if args.overrides:
            raise CrnnfwError("config --example: takes a config name only; edit the file it prints instead of overriding")
        sys.stdout.write(config_mod.read_config_text(config_mod.find_config(args.config)))
        return 0
    cfg = _resolved(args.config, args.overrides, args.allow_env)
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
                "components": [{"kind": kind, "name": name, "description": components[kind, name].description} for kind, name in p.components],
            }
            for p in host.plugins
        ]
        print(json.dumps(payload, indent=2))
        return 0
    console = _console()
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
            table.add_row(p.name if first else "", p.distribution if first else "", p.version if first else "", kind, name, components[kind, name].description)
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
        payload = {
            "kind": component.kind,
            "name": component.name,
            "plugin": component.provider,
            "distribution": plugin.distribution,
            "version": plugin.version,
            "description": component.description,
            "options": options,
        }
        print(json.dumps(payload, indent=2, default=repr))
        return 0
    console = _console()
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


def cmd_data(args: argparse.Namespace) -> int:
    if args.config == "convert":
        return _convert(args)
    if args.config == "render":
        return _render(args)
    from .datacheck import check_data

    cfg = _resolved(args.config, args.overrides, args.allow_env)
    out = Path(args.out) if args.out else Path(cfg.output_dir) / cfg.name / "data-check"
    result = check_data(cfg, get_host().registry, out, source=args.config)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2, ensure_ascii=False))
        return 0 if result.ok else 1
    console = _console()
    if result.splits:
        console.print(
            _rows_table(
                "samples",
                [
                    {"split": name, "samples": info["samples"], **({"summarised from": info["summarised_from"]} if info["summarised_from"] != info["samples"] else {})}
                    for name, info in result.splits.items()
                ],
            )
        )
        ranked = sorted(result.charset.items(), key=lambda item: -item[1])
        console.print(f"charset: {len(result.charset)} characters: " + escape("".join(result.charset)), highlight=False)
        shown = ranked if len(ranked) <= 60 else ranked[:50]  # a CJK charset has thousands: the commonest, then the count
        console.print(_rows_table("train frequencies" + (f" (the 50 commonest of {len(ranked)}; --json has all)" if shown is not ranked else ""), [{"char": repr(c), "count": n} for c, n in shown]))
        unused = [c for c, n in ranked if n == 0]
        if unused:
            console.print(f"never in the training labels: {escape(''.join(unused))!r}", highlight=False)
        for key, title in (("label_lengths", "label length"), ("widths", "image width (px)"), ("steps_per_character", "steps per character")):
            rows = [{"split": name, title: span, "samples": count} for name, info in result.splits.items() for span, count in info.get(key, [])]
            if rows:
                console.print(_rows_table(title, rows))
    for note in result.notes:
        console.print(f"note: {escape(note)}", highlight=False)
    for problem in result.problems:
        console.print(f"[red]{problem.split}: {escape(problem.kind)}[/red] {escape(problem.where)}: {escape(problem.detail)}", highlight=False)
    for picture in result.pictures:
        console.print(f"wrote {picture}", highlight=False)
    count = len(result.problems)
    console.print(f"{count} problem{'s' if count != 1 else ''}" if count else "no problems", highlight=False)
    return 0 if result.ok else 1


def _convert(args: argparse.Namespace) -> int:
    """``crnnfw data convert SOURCE OUT_DIR``: any supported labelled source to a clovaai LMDB."""
    from crnnfw_plugins import labels  # the built-in readers ship in this distribution

    if len(args.overrides) != 2:
        raise CrnnfwError("data convert: give SOURCE (label file, image folder or LMDB) and OUT_DIR, e.g. crnnfw data convert train.txt train.lmdb")
    source, out = args.overrides
    entries, problems = labels.read_source(labels.Source(source, format=args.format, root=args.root, delimiter=args.delimiter))
    if problems:
        raise CrnnfwError("\n".join(f"data convert: {p.where}: {p.kind}: {p.detail}" for p in problems))
    count = labels.write_lmdb(((labels.read_image_bytes(e), e.text) for e in entries), Path(out))
    print(f"wrote {out}: {count:,} samples (clovaai LMDB: num-samples, image-%09d, label-%09d)")
    return 0


def _render(args: argparse.Namespace) -> int:
    """``crnnfw data render CONFIG OUT_DIR N [KEY=VALUE ...]``: samples as image files plus labels."""
    from .datasets import build_data
    from .render import render_split

    positional = [a for a in args.overrides if "=" not in a]
    if len(positional) != 3 or not positional[2].isdigit() or int(positional[2]) < 1:
        raise CrnnfwError("data render: give CONFIG OUT_DIR N (a count >= 1), e.g. crnnfw data render configs/multidigit_ctc.yaml digits/ 1000")
    config, out, count = positional
    cfg = _resolved(config, [a for a in args.overrides if "=" in a])
    if OmegaConf.select(cfg, "data.augment.enabled"):  # the files hold samples as made; training augments them again
        cfg.data.augment.enabled = False
    data = build_data(cfg, get_host().registry)
    written = render_split(data, Path(out), int(count), args.split)
    print(f"wrote {written:,} {args.split} samples to {out}: images/*.png and labels.txt (path<TAB>text; train on them with data.name=lines)")
    return 0


def cmd_new_plugin(args: argparse.Namespace) -> int:
    target = new_plugin(args.name, Path(args.dir))
    print(f"wrote {target}: pip install -e '{target}[test]' && pytest {target / 'tests'}")
    return 0


ALLOW_ENV_HELP = "let the config read ${oc.env:NAME} and ${oc.decode:...}; such values are written nowhere (<env:NAME> instead)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crnnfw", description="Train and use sequence-recognition models.")
    parser.add_argument("--version", action="version", version=f"crnnfw {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="train the model a config describes")
    run.add_argument("config", nargs="?", help="YAML config file, e.g. configs/mnist_crnn.yaml, or a built-in config's name (mnist_crnn)")
    run.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides, e.g. trainer.epochs=3")
    run.add_argument("--resume", metavar="RUN_DIR|last", help="continue a run from its last checkpoint (last: the newest run of CONFIG)")
    run.add_argument("--init-from", metavar="CKPT", help="fine-tune: start from the matching weights of a checkpoint or run directory")
    run.add_argument("--allow-env", action="store_true", help=ALLOW_ENV_HELP)
    run.set_defaults(func=cmd_run)

    evaluate = sub.add_parser("eval", help="metrics of a trained model on the test split (--split val|train, or another dataset by override)")
    evaluate.add_argument("checkpoint", metavar="CKPT|RUN_DIR")
    evaluate.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. data.test_limit=1000")
    evaluate.add_argument("--split", choices=("test", "val", "train"), default="test")
    evaluate.add_argument("--out", metavar="DIR", help="where pictures and eval.json go (default: RUN_DIR/eval-SPLIT)")
    evaluate.add_argument("--json", action="store_true", help="machine-readable output")
    evaluate.set_defaults(func=cmd_eval)

    predict = sub.add_parser("predict", help="read the text in image files (any format Pillow reads; in folders: PNG, JPEG, BMP, TIFF, WebP)")
    predict.add_argument("checkpoint", metavar="CKPT|RUN_DIR")
    predict.add_argument("paths", nargs="+", metavar="PATH")
    predict.add_argument("--json", action="store_true", help="one JSON object per file")
    predict.add_argument("--beam", type=_positive_int, default=1, metavar="N", help="beam-search width for sequence models (default 1: greedy)")
    predict.add_argument("--polarity", choices=("auto", "light-on-dark", "dark-on-light"), default="auto", help="how the images are drawn (auto: from their borders)")
    predict.add_argument("--batch-size", type=_positive_int, default=64)
    from .images import MAX_PIXELS, MAX_WIDTH

    predict.add_argument("--max-pixels", type=_positive_int, default=MAX_PIXELS, metavar="N", help=f"refuse a file of more pixels, read from its header before decoding (default {MAX_PIXELS:,})")
    predict.add_argument(
        "--max-width", type=_positive_int, metavar="N", help=f"refuse a file wider than N px once scaled to the model's height (default {MAX_WIDTH}, or the model's max_width when wider)"
    )
    predict.set_defaults(func=cmd_predict)

    export = sub.add_parser("export", help="export a trained model to ONNX or TorchScript")
    export.add_argument("checkpoint", metavar="CKPT|RUN_DIR")
    export.add_argument("--format", choices=FORMATS, default="onnx")
    export.add_argument("--output", "-o", metavar="PATH", help="the file to write (default: the checkpoint's name with .onnx or .pt, in its run directory or beside it)")
    export.add_argument("--force", action="store_true", help="replace an existing file at the output path (never a checkpoint)")
    export.add_argument("--verify", action="store_true", help="check the export against PyTorch at several widths")
    export.add_argument("--unpadded", action="store_true", help="leave out the padding masks: faster, for batches whose images all have the batch's width (batch 1, one width)")
    export.set_defaults(func=cmd_export)

    show = sub.add_parser("config", help="print the resolved config (defaults filled in, overrides applied)")
    show.add_argument("config", help="a YAML file, or a built-in config's name (mnist_crnn, multidigit_ctc, zoo/cnn_lstm, ...)")
    show.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    show.add_argument("--allow-env", action="store_true", help=ALLOW_ENV_HELP)
    show.add_argument("--example", action="store_true", help="print the config file as written (a built-in one by name: crnnfw config --example mnist_crnn > my.yaml)")
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

    data = sub.add_parser(
        "data",
        help="check a dataset before training: counts, charset, histograms, every problem and samples.png "
        "(exit 1 on errors); `data convert SOURCE OUT_DIR` writes an LMDB; "
        "`data render CONFIG OUT_DIR N` writes samples as image files",
    )
    data.add_argument("config", metavar="CONFIG|convert|render", help="YAML config; or `convert` SOURCE OUT_DIR; or `render` CONFIG OUT_DIR N")
    data.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides (for convert: SOURCE OUT_DIR)")
    data.add_argument("--out", metavar="DIR", help="where samples.png goes (default: OUTPUT_DIR/NAME/data-check)")
    data.add_argument("--json", action="store_true", help="machine-readable output")
    data.add_argument("--format", choices=("auto", "tsv", "folder", "csv", "json", "jsonl", "lmdb"), default="auto", help="convert: the source's format")
    data.add_argument("--root", help="convert: the folder image paths are relative to (default: the label file's)")
    data.add_argument("--delimiter", default="\t", help="convert: between path and label in a tsv file (default: a tab)")
    data.add_argument("--split", choices=("train", "val", "test"), default="train", help="render: the split to write")
    data.add_argument("--allow-env", action="store_true", help=ALLOW_ENV_HELP)
    data.set_defaults(func=cmd_data)

    scaffold = sub.add_parser("new-plugin", help="write a ready backbone plugin package")
    scaffold.add_argument("name", help="distribution name, e.g. my-backbone")
    scaffold.add_argument("--dir", default=".", help="parent folder (default: the current one)")
    scaffold.set_defaults(func=cmd_new_plugin)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``crnnfw`` console script; returns the exit code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # KEY=VALUE overrides may also follow options (`run CONFIG --init-from X a=1`), where
    # argparse has already closed the positional list.
    unknown = [item for item in extra if item.startswith("-") or "=" not in item or not hasattr(args, "overrides")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        with interrupts.as_interrupt():
            return args.func(args)
    except CrnnfwError as exc:
        print(exc.report("crnnfw"), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("crnnfw: interrupted", file=sys.stderr)
        return interrupts.EXIT_CODE
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
