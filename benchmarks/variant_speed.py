"""Training speed of a recipe against variants of it, in one run, alternating.

A change that makes a step cheaper is worth its minutes only when measured on the recipe's own
shapes and precision: each variant is the recipe with a few overrides, trained for the same
precomposed batches (data preparation is left out, so only the model's step is timed), in the
precision ``trainer.precision`` resolves to on this machine. Rounds alternate the variants, so
a shared machine's drift falls on all of them alike; medians and ratios to the first are printed.

    python benchmarks/variant_speed.py CONFIG [--batches 16] [--rounds 3]
        --variant NAME [KEY=VALUE ...] [--variant NAME KEY=VALUE ...]

For example the `cnn` backbone's ``pool_first`` on the multi-digit recipe:

    python benchmarks/variant_speed.py configs/multidigit_ctc.yaml --variant recipe \\
        --variant pool_first model.backbone.pool_first=true
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import crnnfw
from crnnfw import config as config_files
from crnnfw.hardware import hardware
from crnnfw.plugins import get_registry
from crnnfw.precision import autocast, choose
from crnnfw.trainer import build_optimizer

import report  # benchmarks/report.py: the machine beside every figure


def sized(config: Path, batches: int) -> list[str]:
    """Overrides that make the dataset hold ``batches`` training batches and few other samples,
    read from the resolved config alone (building the recipe's data would compose its full
    val and test splits only to learn their keys)."""
    cfg = config_files.resolve(config_files.load(config), get_registry(), source=str(config))
    count = cfg.trainer.batch_size * batches
    data = cfg.data
    if "train_limit" in data:
        return [f"data.train_limit={count}", "data.test_limit=64"]
    keys = [f"data.train_size={count}", "data.test_size=64"]
    return keys + (["data.val_size=64"] if "val_size" in data else [])


class Variant:
    """One variant's model, optimiser and precomposed batches."""

    def __init__(self, config: Path, overrides: list[str], batches: int) -> None:
        built = crnnfw.build(config, overrides)
        cfg = built.config
        self.precision = choose(cfg.trainer.precision, hardware(torch.device("cpu"))).precision
        self.model = built.model.train()
        self.optimizer = build_optimizer(self.model, cfg.trainer.optimizer)  # the recipe's, as the trainer builds it
        generator = torch.Generator().manual_seed(0)
        self.batches = list(built.data.train.batches(cfg.trainer.batch_size, shuffle=True, generator=generator))[:batches]
        self.samples = sum(len(batch.widths) for batch in self.batches)

    def train_pass(self) -> float:
        """Samples a second over one pass of the batches."""
        start = time.perf_counter()
        for batch in self.batches:
            with autocast(torch.device("cpu"), self.precision):
                logits, lengths = self.model(batch.images, batch.widths)
            loss = self.model.head.loss(logits.float(), lengths, batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return self.samples / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--variant", nargs="+", action="append", required=True, metavar="NAME [KEY=VALUE ...]")
    parser.add_argument("--batches", type=int, default=16, help="batches a pass")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    sizing = sized(args.config, args.batches)
    variants = {name: Variant(args.config, sizing + overrides, args.batches) for name, *overrides in args.variant}
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for variant in variants.values():
        variant.train_pass()  # warm-up: allocator, oneDNN kernels
    for _ in range(args.rounds):
        for name, variant in variants.items():
            rates[name].append(variant.train_pass())

    print(report.header())
    first = next(iter(variants))
    print(f"{args.config.name}: {args.batches} batches a pass, {args.rounds} rounds, precision {variants[first].precision}, data preparation not timed")
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name, values in rates.items():
        spread = ", ".join(f"{v:.0f}" for v in values)
        print(f"{name:<24}{medians[name]:>10,.0f} samples/s  x{medians[name] / medians[first]:.2f}   ({spread})")
    report.save("variant_speed", {"config": str(args.config), "variants": {name: overrides for name, *overrides in args.variant}, "samples_per_s": rates, "medians": medians})


if __name__ == "__main__":
    report.run(main)
