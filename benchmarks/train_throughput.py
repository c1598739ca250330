"""Training throughput: crnnfw's trainer against a plain PyTorch loop of the same model.

For each model the plain loop and crnnfw's trainer train the same network on the same data
for the same number of steps, alternating, and the medians are compared as a ratio measured
in one run (this machine is shared and noisy). Each contender is timed on its second pass
over the data; the first warms up.

- ``mnist_crnn`` (configs/mnist_crnn.yaml): in-memory MNIST tensors without augmentation, so
  both loops do the same work; crnnfw is also timed with the recipe's augmentation (whose
  share of a step is printed) and in bf16 (only where the device runs bf16 natively, unless
  ``--bf16 yes``). On a GPU the variants add bf16 for the plain loop, NCHW instead of
  channels-last and cuDNN's autotuner.
- ``multidigit_ctc`` (configs/multidigit_ctc.yaml): both loops read the batches of the
  ``multidigit`` dataset (strings composed and warped afresh each epoch) and train with the
  CTC loss; crnnfw's model is padding-aware, the plain one reads padded batches as they are.

    python benchmarks/train_throughput.py [--model mnist_crnn|multidigit_ctc|all] [--steps 60] [--repeats 3]
                                          [--batch-size N] [--device auto] [--compile] [--bf16 auto|yes|no]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

import crnnfw
from crnnfw import Batch
from crnnfw_plugins.mnist import load_mnist

import report  # benchmarks/report.py: the machine beside every figure

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
#: model -> (config, batch size, overrides that size the data to ``count`` training samples)
MODELS = {
    "mnist_crnn": (CONFIGS / "mnist_crnn.yaml", 128, lambda count: [f"data.train_limit={count}", "data.test_limit=1000"]),
    "multidigit_ctc": (CONFIGS / "multidigit_ctc.yaml", 64, lambda count: [f"data.train_size={count}", "data.test_size=500"]),
}


def conv_stack(channels: Iterable[int], pools: Iterable[tuple[int, int]], batch_norm: bool) -> nn.Sequential:
    """3x3 'same' convolutions, each followed by (batch norm,) ReLU and a max-pool, written plainly."""
    layers: list[nn.Module] = []
    previous = 1
    for width, pool in zip(channels, pools):
        layers.append(nn.Conv2d(previous, width, 3, padding=1, bias=not batch_norm))
        layers += [nn.BatchNorm2d(width)] if batch_norm else []
        layers += [nn.ReLU()] + ([nn.MaxPool2d(pool)] if pool != (1, 1) else [])
        previous = width
    return nn.Sequential(*layers)


class PlainCRNN(nn.Module):
    """mnist_crnn written directly: conv 32-64-128-256, pools (2,2) (2,2) (2,1), LSTM 128 x 2, last step."""

    def __init__(self) -> None:
        super().__init__()
        self.cnn = conv_stack((32, 64, 128, 256), ((2, 2), (2, 2), (2, 1), (1, 1)), batch_norm=False)
        self.lstm = nn.LSTM(256 * 3, 128, num_layers=2, batch_first=True)
        self.fc = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.cnn(x)
        n, c, h, w = f.shape
        seq = f.permute(0, 3, 1, 2).reshape(n, w, c * h)
        return self.fc(self.lstm(seq)[0][:, -1])


class PlainCTC(nn.Module):
    """multidigit_ctc written directly: conv-BN 32-64-128-128, pools (2,2) (2,2) (2,1) (2,1), BiLSTM 128, 11 classes per step."""

    def __init__(self) -> None:
        super().__init__()
        self.cnn = conv_stack((32, 64, 128, 128), ((2, 2), (2, 2), (2, 1), (2, 1)), batch_norm=True)
        self.lstm = nn.LSTM(128 * 2, 128, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(0.1)
        self.fc = nn.Linear(256, 11)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.cnn(x)
        n, c, h, w = f.shape
        seq = f.permute(0, 3, 1, 2).reshape(n, w, c * h)
        return self.fc(self.dropout(self.lstm(seq)[0]))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_loop(make: Callable[[], nn.Module], batches: Callable[[], Iterable[Batch]], loss_of: Callable, device: torch.device, precision: str) -> float:
    """Samples/s of a minimal training loop, on its second pass (the first warms up)."""
    torch.manual_seed(0)
    model = make().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(2):
        sync(device)
        start, count = time.perf_counter(), 0
        for batch in batches():
            batch = batch.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
                logits = model(batch.images)
            loss = loss_of(logits.float(), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            count += len(batch)
        sync(device)
    return count / (time.perf_counter() - start)


def mnist_batches(count: int, batch_size: int, device: torch.device) -> Callable[[], Iterable[Batch]]:
    """Random batches of the first ``count`` MNIST images, held on ``device``, as a plain loop cuts them."""
    arrays = load_mnist()
    images, labels = arrays["train_images"][:count].to(device), arrays["train_labels"][:count].to(device)
    widths = torch.full((batch_size,), 28, device=device)

    def batches() -> Iterable[Batch]:
        order = torch.randperm(count, device=device)
        for i in range(0, count, batch_size):
            idx = order[i : i + batch_size]
            yield Batch(images[idx].unsqueeze(1).float().div_(255), widths[: len(idx)], labels[idx])

    return batches


def ctc_loss(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """CTC with the blank at 0 and digit d at d + 1; every sample's steps are its width // 4."""
    log_probs = logits.log_softmax(-1).transpose(0, 1)
    return F.ctc_loss(log_probs, batch.targets + 1, batch.widths // 4, batch.target_lengths)


def crnnfw_loop(model: str, count: int, batch_size: int, device: torch.device, extra: list[str]) -> float:
    """Samples/s of crnnfw's trainer in its second epoch (the first warms up; training time only,
    as the run's metrics.jsonl reports it)."""
    path, _, sized = MODELS[model]
    with tempfile.TemporaryDirectory() as out:
        overrides = [*sized(count), "trainer.epochs=2", f"trainer.batch_size={batch_size}", f"trainer.device={device}", f"output_dir={out}", *extra]
        with contextlib.redirect_stdout(io.StringIO()):  # the run's log goes to its train.log only
            rows = crnnfw.train(path, overrides).history
    return rows[-1]["images_per_s"]


def contenders(model: str, count: int, batch_size: int, device: torch.device, compile_too: bool, bf16: bool) -> dict[str, Callable[[], float]]:
    """The loops compared for one model on this device: name -> function returning samples/s
    (the bf16 ones only with ``bf16``)."""

    def crnnfw(*extra: str) -> Callable[[], float]:
        return lambda: crnnfw_loop(model, count, batch_size, device, list(extra))

    fp32, bf16_overrides = ["trainer.precision=32-true"], ["trainer.precision=bf16-mixed"]
    if model == "multidigit_ctc":
        path, _, sized = MODELS[model]
        data = crnnfw.build(path, sized(count)).data

        def plain(precision: str) -> Callable[[], float]:
            generator = torch.Generator().manual_seed(0)
            return lambda: plain_loop(PlainCTC, lambda: data.train.batches(batch_size, shuffle=True, generator=generator), ctc_loss, device, precision)

        loops = {"plain": plain("32-true"), "crnnfw": crnnfw(*fp32)}
        return {**loops, "plain_bf16": plain("bf16-mixed"), "crnnfw_bf16": crnnfw(*bf16_overrides)} if bf16 else loops

    def plain_mnist(precision: str) -> Callable[[], float]:
        return lambda: plain_loop(PlainCRNN, mnist_batches(count, batch_size, device), lambda logits, batch: F.cross_entropy(logits, batch.targets), device, precision)

    bf16_overrides.append("data.augment.enabled=false")
    loops = {"plain": plain_mnist("32-true"), "crnnfw": crnnfw(*fp32, "data.augment.enabled=false"), "crnnfw_augmented": crnnfw(*fp32)}
    if bf16:
        loops["crnnfw_bf16"] = crnnfw(*bf16_overrides)
    if device.type == "cuda":
        loops["plain_bf16"] = plain_mnist("bf16-mixed")
        loops["crnnfw_bf16_nchw"] = crnnfw(*bf16_overrides, "model.backbone.channels_last=false")
        loops["crnnfw_bf16_cudnn_benchmark"] = crnnfw(*bf16_overrides, "trainer.cudnn_benchmark=true")
    if compile_too:
        loops["crnnfw_compile"] = crnnfw(*fp32, "data.augment.enabled=false", "trainer.compile=default")
        if bf16:
            loops["crnnfw_bf16_compile"] = crnnfw(*bf16_overrides, "trainer.compile=default")
    return loops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=[*MODELS, "all"], default="all")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=0, help="0: the recipe's own (128 for mnist_crnn, 64 for multidigit_ctc)")
    parser.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu or cuda")
    parser.add_argument("--compile", action="store_true", help="also time trainer.compile=default (mnist_crnn, fp32 and bf16; compiled in the warm-up pass)")
    parser.add_argument("--bf16", choices=["auto", "yes", "no"], default="auto", help="time bf16-mixed too (auto: where the device has native bf16; emulated bf16 is ~7x slower than fp32)")
    args = parser.parse_args()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    native = torch.cuda.is_bf16_supported() if device.type == "cuda" else crnnfw.machine()["native_bf16"]
    bf16 = args.bf16 == "yes" or (args.bf16 == "auto" and native)
    print(report.header())
    if not bf16:
        print("bf16-mixed not timed: this device has no native bf16 (--bf16 yes times it anyway)")
    results_out = {"device": where, "steps": args.steps, "models": {}}
    for model in MODELS if args.model == "all" else [args.model]:
        batch_size = args.batch_size or MODELS[model][1]
        count = args.steps * batch_size
        loops = contenders(model, count, batch_size, device, args.compile, bf16)
        results: dict[str, list[float]] = {name: [] for name in loops}
        for _ in range(args.repeats):
            for name, loop in loops.items():
                results[name].append(loop())
        medians = {k: statistics.median(v) for k, v in results.items()}
        ratio = medians["crnnfw"] / medians["plain"]
        bf16_speedup = medians["crnnfw_bf16"] / medians["crnnfw"] if bf16 else None
        # A step's time is 1 / rate: the augmentation's share of an augmented step.
        augment_share = 1 - medians["crnnfw_augmented"] / medians["crnnfw"] if "crnnfw_augmented" in medians else None
        unit = "strings/s" if model == "multidigit_ctc" else "img/s"
        print(f"{model} training, batch {batch_size}, {args.steps} steps x {args.repeats} repeats, {where}")
        print(f"{'loop':<30}{'median ' + unit:>18}   runs")
        for name, values in results.items():
            print(f"{name:<30}{medians[name]:>18.0f}   {' '.join(f'{v:.0f}' for v in values)}")
        print(f"ratio crnnfw / plain: {ratio:.3f}" + (f"   bf16-mixed / fp32 (crnnfw): {bf16_speedup:.2f}x" if bf16 else ""))
        if augment_share is not None:
            print(f"ratio crnnfw augmented / plain: {medians['crnnfw_augmented'] / medians['plain']:.3f}   augmentation's share of a step: {augment_share:.1%}")
        if "crnnfw_compile" in medians:
            print(f"ratio crnnfw compiled / plain: {medians['crnnfw_compile'] / medians['plain']:.3f}")
        print()
        results_out["models"][model] = {"batch_size": batch_size, "medians": medians, "runs": results, "ratio": ratio, "bf16_speedup": bf16_speedup, "augment_share": augment_share}
    report.save("train_throughput", results_out)


if __name__ == "__main__":
    report.run(main)
