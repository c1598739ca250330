"""The multidigit recogniser on strings it was not generated from: its own test split and an
out-of-distribution set of files (``ood_digits.py``), read through ``crnnfw predict`` and
scored through ``crnnfw eval`` on the files (the ``lines`` dataset).

    python benchmarks/multidigit_ood.py [--run RUN_DIR] [--count 4000] [--variations all|NAME,...] [overrides ...]

Without ``--run`` it first trains ``configs/multidigit_ctc.yaml`` (with the overrides) and
reports the training time. With ``--variations`` it also reads ``--variation-count`` files of
each of the composer's variations (``ood_digits.VARIATIONS``) through ``Recognizer.predict``.
Prints a table per string length and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import crnnfw

import ood_digits  # benchmarks/ood_digits.py: the independent composer
import report  # benchmarks/report.py: the machine beside every figure

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "multidigit_ctc.yaml"


def scores(pairs: list[tuple[str, str]]) -> dict[str, float]:
    """Sequence accuracy, CER and accuracy per length of (truth, prediction) pairs."""
    out = {"accuracy": sum(t == p for t, p in pairs) / len(pairs), "cer": sum(crnnfw.edit_distance(t, p) for t, p in pairs) / sum(len(t) for t, _ in pairs)}
    for n in sorted({len(t) for t, _ in pairs}):
        some = [(t, p) for t, p in pairs if len(t) == n]
        out[f"accuracy_len{n}"] = sum(t == p for t, p in some) / len(some)
    return out


def labelled(labels: Path) -> list[tuple[str, str]]:
    """The (path, digits) lines of a label file ``ood_digits.write_set`` wrote."""
    return [tuple(line.split("\t")) for line in labels.read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a trained multidigit run directory (default: train one)")
    parser.add_argument("--count", type=int, default=4000, help="files (4,000: about 500 a length, so a length's figure moves by 0.2 point a file)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--variations", default="", help="'all' or a comma-separated list of ood_digits.VARIATIONS")
    parser.add_argument("--variation-count", type=int, default=400)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    variations = sorted(ood_digits.VARIATIONS) if args.variations == "all" else [v for v in args.variations.split(",") if v]
    unknown = [v for v in variations if v not in ood_digits.VARIATIONS]
    if unknown:
        parser.error(f"--variations: {', '.join(unknown)} not among {', '.join(sorted(ood_digits.VARIATIONS))}")
    results: dict[str, object] = {}
    if args.run:
        run_dir = Path(args.run)
    else:
        start = time.perf_counter()
        run = crnnfw.train(CONFIG, overrides=args.overrides)
        run_dir = run.run_dir
        results["run minutes"] = round((time.perf_counter() - start) / 60, 1)  # with each epoch's evaluation
        results["training minutes"] = round(run.summary["train_seconds"] / 60, 1)
    recognizer = crnnfw.load(run_dir)
    results["own test"] = recognizer.evaluate("test")["scores"]
    with tempfile.TemporaryDirectory() as folder:
        labels = ood_digits.write_set(folder, args.count, args.seed)
        truth = dict(labelled(labels))
        cli = [sys.executable, "-m", "crnnfw"]
        predicted = subprocess.run([*cli, "predict", str(run_dir), str(Path(folder) / "images"), "--json"], check=True, capture_output=True, text=True).stdout
        rows = [json.loads(line) for line in predicted.splitlines() if line.strip()]
        pairs = [(truth[str(Path(row["file"]).relative_to(folder))], row["text"]) for row in rows]
        results["ood predict"] = scores(pairs)
        evaluated = subprocess.run(
            [
                *cli,
                "eval",
                str(run_dir),
                "data.name=lines",
                f"data.train={labels}",
                f"data.test={labels}",
                "data.val=" + str(labels),
                "data.charset=0123456789",
                "data.cache=off",
                "--json",
                "--out",
                str(Path(folder) / "eval"),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        results["ood eval"] = json.loads(evaluated)["scores"]
        for name in variations:
            labels = ood_digits.write_set(Path(folder) / name, args.variation_count, args.seed, style=ood_digits.VARIATIONS[name])
            files = labelled(labels)
            read = recognizer.predict([labels.parent / path for path, _ in files])
            results[f"variation {name}"] = scores([(text, p.text) for (_, text), p in zip(files, read)])
    print(report.header())
    print(f"run: {run_dir}" + (f" ({results['training minutes']} minutes of training)" if "training minutes" in results else ""))
    for name in ("own test", "ood predict", "ood eval", *(f"variation {v}" for v in variations)):
        figures = results[name]
        lengths = "  ".join(f"{n}: {100 * figures[f'accuracy_len{n}']:.1f}%" for n in range(1, 9) if f"accuracy_len{n}" in figures)
        print(f"{name:20s} accuracy {100 * figures['accuracy']:.2f}%  CER {100 * figures['cer']:.2f}%  | {lengths}")
    report.save("multidigit_ood", results)


if __name__ == "__main__":
    report.run(main)
