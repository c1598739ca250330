"""Training throughput: crnnfw's trainer against a plain PyTorch loop of the same model.

Both train the MNIST CRNN of configs/mnist_crnn.yaml (no augmentation, so both do the same
work) for the same number of steps on in-memory tensors, alternating, and the medians are
compared as a ratio measured in one run (this machine is shared and noisy). Each contender
is timed on its second pass over the images; the first warms up. On a GPU the variants
add bf16 for the plain loop, NCHW instead of channels-last, and cuDNN's autotuner.

    python benchmarks/train_throughput.py [--steps 60] [--repeats 3] [--batch-size 128] [--device auto] [--compile]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from rich.console import Console
from torch import nn

from crnnfw import config
from crnnfw.plugins import get_registry
from crnnfw.progress import Reporter
from crnnfw.precision import autocast
from crnnfw.trainer import Trainer, select_device
from crnnfw_plugins.mnist import load_mnist

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "mnist_crnn.yaml"


class PlainCRNN(nn.Module):
    """The same network written directly: conv 32-64-128-256, pools (2,2) (2,2) (2,1), LSTM 128 x 2."""

    def __init__(self) -> None:
        super().__init__()
        layers, previous = [], 1
        for channels, pool in zip((32, 64, 128, 256), ((2, 2), (2, 2), (2, 1), None)):
            layers += [nn.Conv2d(previous, channels, 3, padding=1), nn.ReLU()]
            if pool:
                layers.append(nn.MaxPool2d(pool))
            previous = channels
        self.cnn = nn.Sequential(*layers)
        self.lstm = nn.LSTM(256 * 3, 128, num_layers=2, batch_first=True)
        self.fc = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.cnn(x)
        n, c, h, w = f.shape
        seq = f.permute(0, 3, 1, 2).reshape(n, w, c * h)
        return self.fc(self.lstm(seq)[0][:, -1])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_loop(images: torch.Tensor, labels: torch.Tensor, batch_size: int, device: torch.device, precision: str) -> float:
    """Images/s of a minimal training loop over in-memory uint8 tensors (its second pass: the
    first one warms up, as in crnnfw's measurement)."""
    torch.manual_seed(0)
    model = PlainCRNN().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    images, labels = images.to(device), labels.to(device)
    for _ in range(2):
        order = torch.randperm(len(images), device=device)
        sync(device)
        start = time.perf_counter()
        for i in range(0, len(images), batch_size):
            idx = order[i : i + batch_size]
            x = images[idx].unsqueeze(1).float().div_(255)
            with autocast(device, precision):
                logits = model(x)
            loss = nn.functional.cross_entropy(logits.float(), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        sync(device)
    return len(images) / (time.perf_counter() - start)


def crnnfw_loop(count: int, batch_size: int, device: torch.device, extra: list[str]) -> float:
    """Images/s of crnnfw's trainer in its second epoch (the first warms up; training time only,
    as the run's metrics.jsonl reports it)."""
    with tempfile.TemporaryDirectory() as out:
        overrides = [f"data.train_limit={count}", "data.test_limit=1000", "trainer.epochs=2",
                     f"trainer.batch_size={batch_size}", f"trainer.device={device}", f"output_dir={out}", *extra]
        cfg = config.resolve(config.load(CONFIG, overrides), get_registry())
        quiet = Reporter(console=Console(file=io.StringIO()))
        run_dir = Trainer(cfg, reporter=quiet).fit().run_dir
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return rows[-1]["images_per_s"]


def contenders(device: torch.device, compile_too: bool) -> dict[str, Callable[[torch.Tensor, torch.Tensor, int, int], float]]:
    """The loops compared on this device: name -> function of (images, labels, count, batch size)."""
    fp32, bf16 = ["data.augment.enabled=false"], ["data.augment.enabled=false", "trainer.precision=bf16-mixed"]
    loops = {
        "plain": lambda x, y, n, b: plain_loop(x, y, b, device, "32-true"),
        "crnnfw": lambda x, y, n, b: crnnfw_loop(n, b, device, fp32),
        "crnnfw_augmented": lambda x, y, n, b: crnnfw_loop(n, b, device, []),
        "crnnfw_bf16": lambda x, y, n, b: crnnfw_loop(n, b, device, bf16),
    }
    if device.type == "cuda":
        loops["plain_bf16"] = lambda x, y, n, b: plain_loop(x, y, b, device, "bf16-mixed")
        loops["crnnfw_bf16_nchw"] = lambda x, y, n, b: crnnfw_loop(n, b, device, [*bf16, "model.backbone.channels_last=false"])
        loops["crnnfw_bf16_cudnn_benchmark"] = lambda x, y, n, b: crnnfw_loop(n, b, device, [*bf16, "trainer.cudnn_benchmark=true"])
    if compile_too:
        loops["crnnfw_compile"] = lambda x, y, n, b: crnnfw_loop(n, b, device, [*fp32, "trainer.compile=default"])
        loops["crnnfw_bf16_compile"] = lambda x, y, n, b: crnnfw_loop(n, b, device, [*bf16, "trainer.compile=default"])
    return loops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu or cuda")
    parser.add_argument("--compile", action="store_true", help="also time trainer.compile=default (fp32 and bf16; compiled in the warm-up pass)")
    args = parser.parse_args()
    device = select_device(args.device)
    count = args.steps * args.batch_size
    arrays = load_mnist()
    images, labels = arrays["train_images"][:count], arrays["train_labels"][:count]

    loops = contenders(device, args.compile)
    results: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(args.repeats):
        for name, loop in loops.items():
            results[name].append(loop(images, labels, count, args.batch_size))
    medians = {k: statistics.median(v) for k, v in results.items()}
    ratio = medians["crnnfw"] / medians["plain"]
    bf16_speedup = medians["crnnfw_bf16"] / medians["crnnfw"]

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"MNIST CRNN training, batch {args.batch_size}, {args.steps} steps x {args.repeats} repeats, {where}")
    print(f"{'loop':<30}{'median img/s':>14}   runs")
    for name, values in results.items():
        print(f"{name:<30}{medians[name]:>14.0f}   {' '.join(f'{v:.0f}' for v in values)}")
    print(f"ratio crnnfw / plain: {ratio:.3f}   bf16-mixed / fp32 (crnnfw): {bf16_speedup:.2f}x")
    if "crnnfw_compile" in medians:
        print(f"ratio crnnfw compiled / plain: {medians['crnnfw_compile'] / medians['plain']:.3f}")
    print(json.dumps({"device": where, "batch_size": args.batch_size, "steps": args.steps, "medians": medians,
                      "runs": results, "ratio": ratio, "bf16_speedup": bf16_speedup}))


if __name__ == "__main__":
    main()
