"""Reading labelled image files (the ``lines`` dataset): decode throughput, first and second
start-up and peak memory, held in memory (``data.cache=memory``) and streamed (``stream``).

Generates ``--count`` text-line images (default 100,000; dark ink on light paper, 32 px high,
4-24 characters) and a ``path<TAB>text`` label file once into ``--dir``, then measures each
mode in a fresh process, so peak memory is that process's own:

- memory, first start: every image decoded in worker processes, packed, cached on disk (a
  1,000-image test split comes from the same files);
- memory, second start: the same data read back from the decode cache;
- stream: start-up (labels only), then one pass over the training batches, decoding as it goes.

    python benchmarks/lines_data.py [--count 100000] [--dir runs/benchmarks/lines-data]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import report  # benchmarks/report.py: the machine beside every figure

ROOT = Path(__file__).resolve().parent.parent
CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,-'"

#: Run in a fresh interpreter: build the dataset, optionally pass over its batches, report.
CHILD = """
import json, resource, sys, time
import crnnfw
start = time.perf_counter()  # after the imports: what the data costs, not Python's start-up
data = crnnfw.build(sys.argv[2], json.loads(sys.argv[1])).data  # with the model's check, a fraction of a second
ready = time.perf_counter() - start
seen, started = 0, time.perf_counter()
if sys.argv[3] == "pass":
    for batch in data.train.batches(64, shuffle=True):
        seen += len(batch)
passed = time.perf_counter() - started
print(json.dumps({"startup_s": ready, "pass_s": passed, "passed": seen, "train": len(data.train),
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "peak_worker_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def generate(folder: Path, count: int) -> Path:
    """``count`` line images and their label file (kept: generating takes a minute or two)."""
    from PIL import Image, ImageDraw, ImageFont

    labels = folder / "labels.txt"
    if labels.is_file() and sum(1 for _ in labels.open()) == count:
        return labels
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    font = ImageFont.load_default(size=22)
    lines = []
    for i in range(count):
        text = "".join(rng.choice(CHARS) for _ in range(rng.randint(4, 24))).strip() or "x"
        image = Image.new("L", (int(font.getlength(text)) + 12, 32), rng.randint(190, 255))
        ImageDraw.Draw(image).text((6, 3), text, fill=rng.randint(0, 70), font=font)
        name = f"{i // 1000:03d}/{i:06d}.png"
        (folder / name).parent.mkdir(exist_ok=True)
        image.save(folder / name)
        lines.append(f"{name}\t{text}")
    (folder / "test.txt").write_text("\n".join(lines[:1000]) + "\n", encoding="utf-8")  # a small test split
    labels.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return labels


def measure(labels: Path, cache: Path, mode: str, walk: bool) -> dict:
    overrides = [f"data.train={labels}", f"data.test={labels.with_name('test.txt')}", f"data.cache={mode}", f"data.cache_dir={cache}", "data.max_width=800"]
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(overrides), str(ROOT / "configs" / "lines_ctc.yaml"), "pass" if walk else "no"], capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"lines_data: the {mode} measurement failed: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--dir", type=Path, default=ROOT / "runs" / "benchmarks" / "lines-data")
    args = parser.parse_args()
    print(report.header())
    started = time.perf_counter()
    labels = generate(args.dir / str(args.count), args.count)
    print(f"{args.count:,} images in {args.dir / str(args.count)} ({time.perf_counter() - started:.0f} s to make or find)")
    with tempfile.TemporaryDirectory() as cache:
        rows = {
            "memory, first start": measure(labels, Path(cache), "memory", walk=False),
            "memory, second start (decode cache)": measure(labels, Path(cache), "memory", walk=True),
            "stream (start-up, then one pass)": measure(labels, Path(cache), "stream", walk=True),
        }
    first = rows["memory, first start"]
    print(f"{'mode':<40}{'start-up s':>12}{'pass s':>10}{'peak MiB':>10}{'worker MiB':>12}")
    for name, row in rows.items():
        print(f"{name:<40}{row['startup_s']:>12.1f}{row['pass_s']:>10.1f}{row['peak_rss_mib']:>10,.0f}{row['peak_worker_rss_mib']:>12,.0f}")
    decode_rate = args.count / first["startup_s"]
    stream_rate = rows["stream (start-up, then one pass)"]["passed"] / max(rows["stream (start-up, then one pass)"]["pass_s"], 1e-9)
    print(f"decode throughput (first start): {decode_rate:,.0f} images/s; streamed training pass: {stream_rate:,.0f} images/s")
    report.save(
        "lines_data",
        {"count": args.count, "rows": rows, "decode_images_per_s": decode_rate, "stream_images_per_s": stream_rate, "peak_rss_self_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024},
    )


if __name__ == "__main__":
    report.run(main)
