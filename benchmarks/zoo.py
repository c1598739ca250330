"""The MNIST model zoo: trains every config in configs/zoo with its tutorial's recipe.

Each config runs through the CLI in its own process, one after another, and its figures come
from the run's summary.json: final test accuracy on the 10,000 MNIST test images, parameters,
training time and training images/s. Prints a table and one JSON line, keeps the figures in
runs/zoo/results.json and writes docs/zoo.md with the table next to each tutorial's reported
accuracy and every model's notes (the comment at the top of its config). Exits 1 if a model
misses its accuracy bar.

    python benchmarks/zoo.py                       # all of them (about 40 minutes on 2 cores)
    python benchmarks/zoo.py --only mlp,row_lstm   # rerun some; the others keep their figures
    python benchmarks/zoo.py --no-docs data.train_limit=5000 trainer.epochs=1   # a quick try
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import crnnfw

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs" / "zoo"


@dataclass(frozen=True)
class Entry:
    """One zoo model: its config (a file in configs/zoo), the bar it must beat, the tutorial's figure."""

    config: str
    model: str
    bar: float
    reported: float | None = None  # the tutorial's test accuracy, where it reports one


ZOO = (
    Entry("crnn", "CRNN: conv 32-64-128-256, LSTM 128 x 2", 0.98, 0.988),
    Entry("cnn_bn_lstm", "CNN + BatchNorm + LSTM 128", 0.98),
    Entry("row_lstm", "Row LSTM 50 (28 rows as steps)", 0.97),
    Entry("cnn_lstm", "CNN, dense 128, LSTM 128 x 2", 0.98),
    Entry("cnn_simple", "Simple CNN: conv 32 5x5, dense 128", 0.98, 0.9897),
    Entry("cnn_improved", "Improved CNN: conv 30 5x5, conv 15 3x3, dense 128-50", 0.98, 0.9918),
    Entry("mlp", "MLP 784-784-10", 0.975, 0.9809),
)

SOURCES = """\
Reported figures: the CRNN's 98.8% is the one the classic Keras CNN + LSTM tutorials give
(see the README). The simple CNN (1.03% error), the improved CNN (0.82%) and the MLP (1.91%)
are from Jason Brownlee's "Handwritten Digit Recognition using Convolutional Neural Networks
in Python with Keras", the source of the Chinese translations. The CNN + BatchNorm + LSTM, row
LSTM and CNN + two-LSTM tutorials report no test figure this zoo could cite."""

ONE_THREAD = """\
Why `trainer.num_threads=1`: this 2-core machine was shared with other work. Two torch threads
that wait for each other at every operation lose far more to a busy CPU than one thread does:
a CRNN probe trained at 146 images/s with two threads and at 519 with one, at a load average
of 7. On an idle machine both cores help, so these times are longer than the
machine's best (configs/mnist_crnn.yaml's CRNN trains 10 epochs in 6.6 minutes on both
cores, see the README)."""

COMPONENTS = """\
The zoo uses only built-in components. Besides `mnist`, `cnn`, `lstm` and `softmax`, it needs
four small ones (`crnnfw plugins show NAME` lists their options):

- `pixels` (backbone): the raw pixels as the sequence, one step per image row (`read: rows`,
  the row LSTM and the MLP) or per column; no convolution, no parameters.
- `cnn_chain` (backbone): several `cnn` backbones in a row, each with its own kernel size and
  padding (the improved CNN's 5x5 then 3x3 convs).
- `dense` (encoder): dense layers applied to each step on its own, with batch norm over valid
  steps only, then optionally an `lstm` (the tutorials' "dense layer feeding an LSTM").
- `flatten` (encoder): all valid steps flattened into one vector, then dense layers, instead
  of any recurrence (Keras' `Flatten` + `Dense`)."""


def header_comment(path: Path) -> str:
    """The comment block at the top of a config, without the '#' marks."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].removeprefix(" "))
    return "\n".join(lines).strip()


def train(entry: Entry, runs_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """Run one config through the CLI; its summary and resolved config, or the error it ended with."""
    config = CONFIGS / f"{entry.config}.yaml"
    name = yaml.safe_load(config.read_text())["name"]
    command = [sys.executable, "-m", "crnnfw", "run", str(config.relative_to(ROOT)), f"output_dir={runs_dir}", *overrides]
    before = set((runs_dir / name).glob("*/summary.json"))
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = set((runs_dir / name).glob("*/summary.json")) - before
    if done.returncode != 0 or len(after) != 1:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-5:])
        return {"config": entry.config, "error": f"exit code {done.returncode}: {tail}", "wall_seconds": wall}
    summary_path = after.pop()
    summary = json.loads(summary_path.read_text())
    resolved = yaml.safe_load((summary_path.parent / "config.yaml").read_text())
    return {
        "config": entry.config,
        "model": entry.model,
        "run_dir": str(summary_path.parent.relative_to(ROOT) if summary_path.is_relative_to(ROOT) else summary_path.parent),
        "epochs": summary["epochs"],
        "batch_size": resolved["trainer"]["batch_size"],
        "threads": resolved["trainer"]["num_threads"],
        "parameters": summary["parameters"],
        "accuracy": summary["final"]["test_accuracy"],
        "best_accuracy": summary["best"]["test"]["accuracy"],
        "best_epoch": summary["best"]["epoch"],
        "bar": entry.bar,
        "passed": summary["final"]["test_accuracy"] > entry.bar,
        "reported": entry.reported,
        "train_seconds": summary["train_seconds"],
        "images_per_s": summary["train_images_per_s"],
        "wall_seconds": wall,
    }


def percent(value: float | None) -> str:
    """An accuracy as a percentage, '-' where there is none."""
    return "-" if value is None else f"{100 * value:.2f}%"


def minutes(seconds: float) -> str:
    """m:ss, the way training times are read."""
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def table(results: list[dict[str, Any]]) -> list[str]:
    """The results as Markdown table lines (also readable as plain text)."""
    lines = [
        "| model | config | epochs | batch | parameters | test accuracy | must beat | tutorial | best (epoch) | train time | images/s |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['config']} | `configs/zoo/{r['config']}.yaml` | failed: {r['error'].splitlines()[0]} |")
            continue
        accuracy = f"**{percent(r['accuracy'])}**" if r["passed"] else f"{percent(r['accuracy'])} (missed)"
        lines.append(
            f"| {r['model']} | `configs/zoo/{r['config']}.yaml` | {r['epochs']} | {r['batch_size']} | {r['parameters']:,} "
            f"| {accuracy} | {percent(r['bar'])} | {percent(r['reported'])} | {percent(r['best_accuracy'])} ({r['best_epoch']}) "
            f"| {minutes(r['train_seconds'])} | {r['images_per_s']:,.0f} |"
        )
    return lines


def verdict(results: list[dict[str, Any]]) -> str:
    """One sentence: did every model beat its bar?"""
    missed = [r["config"] for r in results if not r.get("passed")]
    if not missed:
        return f"All {len(results)} models beat their bars with the plain tutorial recipe."
    return f"Missed their bars: {', '.join(missed)}."


def threads(results: list[dict[str, Any]]) -> str:
    """How many torch threads the runs used, in words."""
    counts = {r["threads"] for r in results if "threads" in r}
    if counts <= {0}:
        return "all used by torch"
    return "torch threads: " + ", ".join("all" if n == 0 else str(n) for n in sorted(counts))


def measured(session: dict[str, Any], results: list[dict[str, Any]]) -> str:
    """Where, when and how one invocation of this script measured its models."""
    m = session["machine"]
    names = ", ".join(r["config"] for r in results)
    return (
        f"Measured with `{session['command']}` ({names}), one model after another, on {m['cpu']} "
        f"({m.get('cpu_capability', 'capability not recorded')}, {m['cores']} cores, {threads(results)}), torch {m['torch']}, {m['date']}; the run took "
        f"{minutes(m['wall_seconds'])}. Load average {m['load_before']:.1f} before and {m['load_after']:.1f} "
        f"after: above {m['cores']}, other work shared the CPU and the times are upper bounds."
    )


def write_docs(path: Path, state: dict[str, Any]) -> None:
    """docs/zoo.md, wholly generated, so the page always matches the figures and the configs."""
    results = ordered(state)
    sessions = [(session, [r for r in results if r.get("session") == stamp]) for stamp, session in sorted(state["sessions"].items())]
    notes = []
    for entry in ZOO:
        if entry.config in state["results"]:
            notes += [f"### {entry.model}", "", f"`configs/zoo/{entry.config}.yaml`:", "", "```text", header_comment(CONFIGS / f"{entry.config}.yaml"), "```", ""]
    text = "\n".join(
        [
            "# The MNIST model zoo",
            "",
            "The classic Keras tutorials on MNIST build a family of models: a CRNN, CNNs feeding LSTMs, an",
            "LSTM over the image rows, two plain CNNs and an MLP. Each is a config in `configs/zoo/` over",
            "crnnfw's built-in components, trained by the same trainer with its tutorial's recipe: Adam",
            "at a constant learning rate of 1e-3, the tutorial's epochs and batch size, no augmentation,",
            "no label smoothing, seed 0. Weights start from PyTorch's default initialisation, not Keras'.",
            "",
            "Test accuracy is the final epoch's, on the 10,000 MNIST test images (what the tutorials",
            'print at the end); "best (epoch)" is the best epoch\'s, which `best.ckpt` keeps. Every',
            "model must beat 98.0%, except the row LSTM (97.0%) and the MLP (97.5%). Training time and",
            "images/s count training only, not evaluation.",
            "",
            *table(results),
            "",
            verdict(results),
            "",
            *(line for session, measured_here in sessions for line in (measured(session, measured_here), "")),
            *([ONE_THREAD, ""] if any(r.get("threads", 0) for r in results) else []),
            SOURCES,
            "",
            "Rerun one model with `crnnfw run configs/zoo/<config>.yaml`, all of them (and rewrite this",
            "page) with `python benchmarks/zoo.py`, or some of them, keeping the others' figures, with",
            "`python benchmarks/zoo.py --only <config>,...`.",
            "",
            "## Components",
            "",
            COMPONENTS,
            "",
            "## The models, and what changed from the tutorials",
            "",
            *notes,
        ]
    )
    path.write_text(text.rstrip() + "\n")


def ordered(state: dict[str, Any]) -> list[dict[str, Any]]:
    """The results in the zoo's order."""
    return [state["results"][e.config] for e in ZOO if e.config in state["results"]]


def save(state: dict[str, Any], path: Path) -> None:
    """Keep only the invocations some result still comes from, and write the file."""
    used = {r.get("session") for r in state["results"].values()}
    state["sessions"] = {stamp: s for stamp, s in state["sessions"].items() if stamp in used}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state, indent=2) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="passed to every run, e.g. trainer.epochs=1")
    parser.add_argument("--only", help="comma-separated config names; the others keep their figures from the last run")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "zoo", help="where the runs and results.json go")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "zoo.md", help="the page to write")
    parser.add_argument("--no-docs", action="store_true", help="print only; leave the page alone")
    args = parser.parse_args()
    entries = ZOO
    if args.only:
        wanted = args.only.split(",")
        unknown = sorted(set(wanted) - {e.config for e in ZOO})
        if unknown:
            parser.error(f"--only: unknown {', '.join(unknown)} (known: {', '.join(e.config for e in ZOO)})")
        entries = tuple(e for e in ZOO if e.config in wanted)
    runs_dir = args.runs_dir.resolve()
    results_file = runs_dir / "results.json"
    # A full run starts afresh; --only replaces its models' figures and keeps the rest.
    state = json.loads(results_file.read_text()) if args.only and results_file.is_file() else {"sessions": {}, "results": {}}

    stamp = time.strftime("%Y%m%d-%H%M%S")
    command = " ".join(["python benchmarks/zoo.py", *(shlex.quote(a) for a in sys.argv[1:])])
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    session: dict[str, Any] = {"command": command}
    state["sessions"][stamp] = session
    for entry in entries:
        print(f"training {entry.config} ...", flush=True)
        result = {**train(entry, runs_dir, args.overrides), "session": stamp}
        state["results"][entry.config] = result
        if "error" in result:
            print(f"  {entry.config} failed after {result['wall_seconds']:.0f} s: {result['error']}", flush=True)
        else:
            outcome = "beats" if result["passed"] else "MISSES"
            print(
                f"  {percent(result['accuracy'])} ({outcome} {percent(entry.bar)}), {result['parameters']:,} parameters, "
                f"{minutes(result['train_seconds'])} training, {result['images_per_s']:,.0f} images/s",
                flush=True,
            )
        session["machine"] = {
            **crnnfw.machine(),
            "cores": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d"),
            "load_before": load_before,
            "load_after": os.getloadavg()[0],
            "wall_seconds": time.perf_counter() - started,
        }
        save(state, results_file)  # after every model, so an interrupted run keeps what it measured

    print("\n".join(table(ordered(state))))
    print(json.dumps(state))
    if not args.no_docs:
        write_docs(args.docs, state)
        print(f"wrote {args.docs}")
    return 0 if all(state["results"][e.config].get("passed") for e in entries) else 1


if __name__ == "__main__":
    sys.exit(main())
