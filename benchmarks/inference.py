"""Inference throughput: eager PyTorch against the exported ONNX model under ONNX Runtime.

Builds each recipe's model with ``crnnfw.build`` (random weights: speed does not depend on
them) and exports the same architecture, trained for one step, through ``Recognizer.export``
as ``crnnfw export`` does, with padding masks and ``unpadded`` (the benchmark's batches are
unpadded: every image has the batch's width); times the engines at batch 1 and batch 256 on
the CPU, alternating, medians over repeats; ratios are measured within one run.

    python benchmarks/inference.py [--repeats 5] [--seconds 1.0] [--threads 0] [--device cpu|cuda]

On a GPU it compares eager fp32, eager bf16 and ``torch.compile`` (bf16) instead.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from rich.console import Console
from rich.table import Table

import crnnfw

import report  # benchmarks/report.py: the machine beside every figure

ROOT = Path(__file__).resolve().parent.parent
#: recipe -> (config, overrides for a small data set to build it with, the timed width)
RECIPES = {
    "mnist_crnn": (ROOT / "configs" / "mnist_crnn.yaml", ["data.train_limit=64", "data.val_size=64", "data.test_limit=64"], 28),
    "multidigit_ctc": (ROOT / "configs" / "multidigit_ctc.yaml", ["data.train_size=64", "data.val_size=64", "data.test_size=64"], 100),
}


def rate(call: Callable[[], object], images: int, seconds: float, device: torch.device) -> float:
    """Images/s of ``call`` run repeatedly for about ``seconds`` (after two warm-up calls)."""

    def timed() -> None:
        call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    timed(), timed()
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        timed()
        count += 1
    return images * count / elapsed


def onnx_files(path: Path, overrides: list[str], folder: Path) -> tuple[Path, Path]:
    """The recipe's architecture exported with padding masks and unpadded, after one training step."""
    with contextlib.redirect_stdout(io.StringIO()):
        run = crnnfw.train(path, [*overrides, "trainer.max_steps=1", "trainer.precision=32-true"], output_dir=str(folder))
    recognizer = run.load()
    return recognizer.export(folder / "masked.onnx"), recognizer.export(folder / "unpadded.onnx", unpadded=True)


def engines(model: torch.nn.Module, files: tuple[Path, Path], device: torch.device, threads: int) -> dict[str, Callable]:
    """name -> function of (images, widths) for each engine compared on this device; the first is the baseline."""

    def eager(precision: str, net: Callable) -> Callable:
        def call(images: torch.Tensor, widths: torch.Tensor) -> object:
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
                return net(images, widths)

        return call

    def onnx(file: Path) -> Callable:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
        return lambda images, widths: session.run(None, {"images": images.numpy(), "widths": widths.numpy()})

    if device.type == "cpu":
        return {"eager": eager("32-true", model), "onnx": onnx(files[0]), "onnx_unpadded": onnx(files[1])}
    model = model.to(device)
    compiled = torch.compile(model)
    return {"eager": eager("32-true", model), "eager_bf16": eager("bf16-mixed", model), "compiled_bf16": eager("bf16-mixed", compiled)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="timing window per measurement")
    parser.add_argument("--threads", type=int, default=0, help="torch and ONNX Runtime threads (0: all cores)")
    parser.add_argument("--device", default="cpu", help="cpu (eager against ONNX Runtime) or cuda (eager fp32, bf16 and compiled)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for name, (path, overrides, width) in RECIPES.items():
        built = crnnfw.build(path, overrides)
        model, channels, height = built.model.eval(), built.data.channels, built.data.height
        with tempfile.TemporaryDirectory() as folder:
            files = onnx_files(path, overrides, Path(folder)) if device.type == "cpu" else (Path(), Path())
            runs = engines(model, files, device, torch.get_num_threads())
        for batch in (1, 256):
            images = torch.rand(batch, channels, height, width, device=device if device.type == "cuda" else None)
            lengths = torch.full((batch,), width, device=images.device)
            rates: dict[str, list[float]] = {engine: [] for engine in runs}
            for _ in range(args.repeats):
                for engine, call in runs.items():
                    rates[engine].append(rate(functools.partial(call, images, lengths), batch, args.seconds, device))
            medians = {engine: statistics.median(values) for engine, values in rates.items()}
            rows.append({"model": name, "batch": batch, "width": width, "images_per_s": medians})
    baseline, others = next(iter(runs)), list(runs)[1:]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(report.header())
    table = Table(title=f"inference images/s, medians ({where})")
    for column in ("model", "batch", "width", *runs, *(f"{o} / {baseline}" for o in others)):
        table.add_column(column, justify="right")
    for r in rows:
        m = r["images_per_s"]
        table.add_row(r["model"], str(r["batch"]), str(r["width"]), *(f"{v:,.0f}" for v in m.values()), *(f"{m[o] / m[baseline]:.2f}x" for o in others))
    Console(width=max(120, Console().width)).print(table)
    report.save("inference", {"device": where, "rows": rows})


if __name__ == "__main__":
    report.run(main)
