"""Training throughput: crnnfw's trainer against a plain PyTorch loop of the same model.

Both train the MNIST CRNN of configs/mnist_crnn.yaml (no augmentation, so both do the same
work) for the same number of steps on in-memory tensors, alternating, and the medians are
compared as a ratio measured in one run (this machine is shared and noisy).

    python benchmarks/train_throughput.py [--steps 60] [--repeats 3] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from crnnfw import config
from crnnfw.plugins import get_registry
from crnnfw.progress import Reporter
from crnnfw.trainer import Trainer
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


def plain_loop(images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    """Images/s of a minimal training loop over in-memory uint8 tensors."""
    torch.manual_seed(0)
    model = PlainCRNN()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    order = torch.randperm(len(images))
    start = time.perf_counter()
    for i in range(0, len(images), batch_size):
        idx = order[i : i + batch_size]
        x = images[idx].unsqueeze(1).float().div_(255)
        loss = nn.functional.cross_entropy(model(x), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return len(images) / (time.perf_counter() - start)


def crnnfw_loop(count: int, batch_size: int, extra: list[str]) -> float:
    """Images/s of crnnfw's trainer (training time only, as its summary reports it)."""
    with tempfile.TemporaryDirectory() as out:
        overrides = [f"data.train_limit={count}", "data.test_limit=1000", "trainer.epochs=1",
                     f"trainer.batch_size={batch_size}", f"output_dir={out}", *extra]
        cfg = config.resolve(config.load(CONFIG, overrides), get_registry())
        quiet = Reporter(console=Console(file=io.StringIO()))
        return Trainer(cfg, reporter=quiet).fit().summary["train_images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    count = args.steps * args.batch_size
    arrays = load_mnist()
    images, labels = arrays["train_images"][:count], arrays["train_labels"][:count]

    results: dict[str, list[float]] = {"plain": [], "crnnfw": [], "crnnfw_augmented": [], "crnnfw_bf16": []}
    for _ in range(args.repeats):
        results["plain"].append(plain_loop(images, labels, args.batch_size))
        results["crnnfw"].append(crnnfw_loop(count, args.batch_size, ["data.augment.enabled=false"]))
        results["crnnfw_augmented"].append(crnnfw_loop(count, args.batch_size, []))
        results["crnnfw_bf16"].append(crnnfw_loop(count, args.batch_size, ["data.augment.enabled=false", "trainer.precision=bf16-mixed"]))
    medians = {k: statistics.median(v) for k, v in results.items()}
    ratio = medians["crnnfw"] / medians["plain"]
    bf16_speedup = medians["crnnfw_bf16"] / medians["crnnfw"]

    print(f"MNIST CRNN training, batch {args.batch_size}, {args.steps} steps x {args.repeats} repeats, "
          f"{torch.get_num_threads()} threads")
    print(f"{'loop':<18}{'median img/s':>14}   runs")
    for name, values in results.items():
        print(f"{name:<18}{medians[name]:>14.0f}   {' '.join(f'{v:.0f}' for v in values)}")
    print(f"ratio crnnfw / plain: {ratio:.3f}   bf16-mixed / fp32 (crnnfw): {bf16_speedup:.2f}x")
    print(json.dumps({"batch_size": args.batch_size, "steps": args.steps, "medians": medians, "runs": results,
                      "ratio": ratio, "bf16_speedup": bf16_speedup}))


if __name__ == "__main__":
    main()
