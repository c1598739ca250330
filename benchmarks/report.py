"""What every benchmark prints and saves beside its figures: the machine they came from.

A figure means little without the CPU it ran on: fp32 on an AVX2-only EPYC is 7-9x slower than
on an AMX Xeon, and bf16 is native on one and emulated on the other. Each script prints
:func:`header` above its table and ends with :func:`save`, which prints its JSON line and
writes it to ``runs/benchmarks/<name>-<timestamp>.json``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import crnnfw

RESULTS = Path(__file__).resolve().parent.parent / "runs" / "benchmarks"


def header() -> str:
    """One line naming the CPU, its capability, native bf16 and the thread count."""
    facts = crnnfw.machine()
    bf16 = "native bf16" if facts["native_bf16"] else "no native bf16"
    gpu = f", GPU {facts['gpu']}" if facts.get("gpu") else ""
    return f"machine: {facts['cpu']} ({facts['cpu_capability']}, {bf16}), {facts['threads']} threads{gpu}, torch {facts['torch']}"


def save(name: str, payload: dict[str, Any]) -> Path:
    """Print the results as one JSON line, with the machine, and keep them in a file."""
    record = {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": crnnfw.machine(), **payload}
    print(json.dumps(record))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"saved {path}")
    return path


def run(main: Callable[[], int | None]) -> None:
    """Run a benchmark's ``main`` as the CLI runs a command: a mistake the user can make (a
    config key, a run directory) ends in one ``error:`` line and exit code 2, not a traceback."""
    try:
        code = main()
    except crnnfw.CrnnfwError as exc:
        print(exc.report(Path(sys.argv[0]).name), file=sys.stderr)
        code = exc.exit_code
    sys.exit(code or 0)
