"""Inference throughput: eager PyTorch against the exported ONNX model under ONNX Runtime.

Builds each recipe's model (random weights: speed does not depend on them), exports it the
way `crnnfw export` does, and times both engines at batch 1 and batch 256 on the CPU,
alternating, medians over repeats; the ratio is measured within one run.

    python benchmarks/inference.py [--repeats 5] [--seconds 1.0] [--threads 0]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
from rich.console import Console
from rich.table import Table

from crnnfw import config
from crnnfw.export import model_to_onnx, onnx_session, run_onnx
from crnnfw.model import assemble
from crnnfw.plugins import get_registry

ROOT = Path(__file__).resolve().parent.parent
RECIPES = {
    "mnist_crnn": (ROOT / "configs" / "mnist_crnn.yaml", 1, 28, [28]),
    "multidigit_ctc": (ROOT / "configs" / "multidigit_ctc.yaml", 1, 32, [100]),
}


def rate(call: Callable[[], object], images: int, seconds: float) -> float:
    """Images/s of ``call`` run repeatedly for about ``seconds`` (after one warm-up call)."""
    call()
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        call()
        count += 1
    return images * count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="timing window per measurement")
    parser.add_argument("--threads", type=int, default=0, help="torch and ONNX Runtime threads (0: all cores)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name, (path, channels, height, widths) in RECIPES.items():
        cfg = config.resolve(config.load(path), get_registry())
        model = assemble(cfg, get_registry(), channels=channels, height=height, classes=tuple("0123456789")).eval()
        width = widths[0]
        trace = (torch.rand(2, channels, height, width + 20), torch.tensor([width + 20, width]))
        session = onnx_session(model_to_onnx(model, trace), threads=torch.get_num_threads())
        for batch in (1, 256):
            images, lengths = torch.rand(batch, channels, height, width), torch.full((batch,), width)

            def eager() -> object:
                with torch.inference_mode():
                    return model(images, lengths)

            def onnx() -> object:
                return run_onnx(session, {"images": images, "widths": lengths})

            eager_rates, onnx_rates = [], []
            for _ in range(args.repeats):
                eager_rates.append(rate(eager, batch, args.seconds))
                onnx_rates.append(rate(onnx, batch, args.seconds))
            e, o = statistics.median(eager_rates), statistics.median(onnx_rates)
            rows.append({"model": name, "batch": batch, "width": width, "eager_images_per_s": e, "onnx_images_per_s": o, "ratio": o / e})
    table = Table(title="inference: eager PyTorch vs ONNX Runtime (CPU, medians)")
    for column in ("model", "batch", "width", "eager img/s", "onnx img/s", "onnx / eager"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(r["model"], str(r["batch"]), str(r["width"]), f"{r['eager_images_per_s']:,.0f}", f"{r['onnx_images_per_s']:,.0f}", f"{r['ratio']:.2f}x")
    Console().print(table)
    print(json.dumps({"benchmark": "inference", "threads": torch.get_num_threads(), "rows": rows}))


if __name__ == "__main__":
    main()
