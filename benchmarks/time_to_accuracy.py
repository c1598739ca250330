"""Time to 99.0% and 99.5% MNIST test accuracy: seconds of training until the first epoch
whose evaluation on the 10,000 test images reaches each target.

Each recipe runs through the real CLI in a fresh process; training seconds come from the
run's metrics.jsonl (evaluation time excluded, as in the run's own summary).

    python benchmarks/time_to_accuracy.py [CONFIG ...] [--set KEY=VALUE ...]
    python benchmarks/time_to_accuracy.py configs/mnist_fast.yaml configs/mnist_crnn.yaml
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

import crnnfw

import report  # benchmarks/report.py: the machine beside every figure

ROOT = Path(__file__).resolve().parent.parent
TARGETS = (0.990, 0.995)


def measure(config: Path, overrides: list[str]) -> dict:
    """Run one recipe; return its per-target training seconds (None: never reached) and final figures."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "crnnfw", "run", str(config), f"output_dir={out}", "name=bench", *overrides]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        (run_dir,) = (Path(out) / "bench").iterdir()
        summary = json.loads((run_dir / "summary.json").read_text())
        rows = crnnfw.Run(run_dir, summary).history
    reached: dict[str, float | None] = {}
    for target in TARGETS:
        seconds = 0.0
        reached[f"{target:.1%}"] = None
        for row in rows:
            seconds += row["epoch_s"]
            if row["test_accuracy"] >= target:
                reached[f"{target:.1%}"] = seconds
                break
    return {
        "config": str(config.relative_to(ROOT) if config.is_relative_to(ROOT) else config),
        "overrides": overrides,
        "seconds_to": reached,
        "epochs": len(rows),
        "final_accuracy": rows[-1]["test_accuracy"],
        "train_seconds": summary["train_seconds"],
        "epoch_seconds": [row["epoch_s"] for row in rows],
        "device": summary["device"],
        "images_per_s": summary["train_images_per_s"],
        "precision": summary["precision"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", type=Path, default=[ROOT / "configs" / "mnist_fast.yaml"])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every recipe")
    args = parser.parse_args()
    results = [measure(config.resolve(), args.set) for config in args.configs]
    table = Table(title="training seconds to MNIST test accuracy (this machine)")
    for column in ("recipe", "precision", "to 99.0%", "to 99.5%", "final", "epochs", "img/s"):
        table.add_column(column, justify="right")
    for r in results:
        shown = [f"{s:.1f} s" if s is not None else "not reached" for s in r["seconds_to"].values()]
        table.add_row(r["config"], r["precision"], *shown, f"{r['final_accuracy']:.2%}", str(r["epochs"]), f"{r['images_per_s']:,.0f}")
    print(report.header())
    Console().print(table)
    report.save("time_to_accuracy", {"results": results})


if __name__ == "__main__":
    report.run(main)
