"""Multi-digit throughput: data composition, greedy and beam decoding, training and inference.

Prints a table and one JSON line. Figures are medians over repeats, measured in one run.

    python benchmarks/multidigit.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import crnnfw
from crnnfw_plugins.ctc import beam_decode, greedy_decode
from crnnfw_plugins.mnist import load_mnist
from crnnfw_plugins.multidigit import DigitBank, MultiDigitConfig, compose

import report  # benchmarks/report.py: the machine beside every figure

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "multidigit_ctc.yaml"


def rate(work: int, fn, repeats: int) -> float:
    """Median items per second of ``fn`` (which processes ``work`` items), after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return work / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, float] = {}

    arrays = load_mnist()
    bank = DigitBank.from_arrays(arrays["train_images"], arrays["train_labels"])
    cfg = MultiDigitConfig()
    generator = torch.Generator().manual_seed(0)
    results["compose strings/s (batch 1024)"] = rate(1024, lambda: compose(bank, 1024, cfg, generator), args.repeats)

    # Decoding 8-digit strings: logits shaped like the model's (T steps, 11 classes).
    count, steps = 100_000, 40
    logits = torch.randn(count, steps, 11, generator=generator) * 3
    log_probs = logits.log_softmax(-1)
    lengths = torch.full((count,), steps)
    results["greedy decode sequences/s"] = rate(count, lambda: greedy_decode(log_probs, lengths, "0123456789"), args.repeats)
    few = 200
    results["beam decode (width 10) sequences/s"] = rate(few, lambda: beam_decode(log_probs[:few], lengths[:few], "0123456789", 10), args.repeats)

    built = crnnfw.build(CONFIG, ["data.train_size=1024", "data.test_size=512"])
    run_cfg, data, model = built.config, built.data, built.model
    optimizer = torch.optim.AdamW(model.parameters())
    batch_size = run_cfg.trainer.batch_size
    batches = list(data.train.batches(batch_size, shuffle=True, generator=generator))

    def train_pass() -> None:
        for batch in batches:
            logits, out_lengths = model(batch.images, batch.widths)
            loss = model.head.loss(logits, out_lengths, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    results[f"train strings/s (fp32, batch {batch_size})"] = rate(len(data.train), train_pass, args.repeats)
    test_batches = list(data.test.batches(256, shuffle=False))

    @torch.inference_mode()
    def infer_pass() -> None:
        model.eval()
        for batch in test_batches:
            logits, out_lengths = model(batch.images, batch.widths)
            model.head.decode(logits, out_lengths)
        model.train()

    results["inference + greedy strings/s (batch 256)"] = rate(len(data.test), infer_pass, args.repeats)

    print(report.header())
    print(f"multidigit benchmarks, {torch.get_num_threads()} threads, medians of {args.repeats}")
    for name, value in results.items():
        print(f"{name:<44}{value:>12,.0f}")
    report.save("multidigit", {"results": results})


if __name__ == "__main__":
    report.run(main)
