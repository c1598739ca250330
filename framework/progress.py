"""What a person sees during training, and the run's log file.

On a terminal: a rich progress bar per epoch (loss, images/s, ETA). Elsewhere (CI, nohup, a
pipe): a plain line every ``log_every`` steps. Both: a metrics table row after each epoch, and
every line also goes to the run's log file.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from .resolvers import redact


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.2e}"
        return f"{value:.4f}"
    return str(value)


class Reporter:
    """Progress bar or plain lines, the per-epoch table, and the log file."""

    def __init__(self, log_every: int = 100, console: Console | None = None, enabled: bool = True) -> None:
        # Off a terminal rich assumes 80 columns; logs read better unwrapped.
        self.console = console or Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
        self.log_every = log_every
        self.enabled = enabled  # False on the ranks of a distributed job other than 0
        self.interactive = enabled and self.console.is_terminal
        self._log: IO[str] | None = None
        self._progress: Progress | None = None
        self._task: Any = None
        self._columns: list[str] | None = None
        self._epoch_label = ""
        self._steps = 0
        self._images = 0
        self._start = 0.0

    def open_log(self, path: Path) -> None:
        """Start copying every line into ``path``."""
        self._log = open(path, "a", encoding="utf-8", buffering=1)

    def _write_log(self, line: str) -> None:
        """Append ``line`` (secrets redacted); a log that can no longer be written (a full disk)
        is closed with one notice rather than failing the training it describes."""
        if self._log is None:
            return
        try:
            self._log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {redact(line)}\n")
        except OSError as exc:
            self._log = None
            self.console.print(f"train.log: no longer written ({exc.strerror or exc})", highlight=False, markup=False)

    def info(self, message: str) -> None:
        """A line for the person and the log."""
        if not self.enabled:
            return
        self.console.print(redact(message), highlight=False, markup=False)
        self._write_log(message)

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        self._epoch_label = f"epoch {epoch}/{epochs}"
        self._steps = steps
        self._images = 0
        self._start = time.perf_counter()
        if self.interactive:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[ips]} img/s"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(self._epoch_label, total=steps, loss="-", ips="-")

    def images_per_second(self) -> float:
        elapsed = time.perf_counter() - self._start
        return self._images / elapsed if elapsed > 0 else 0.0

    def step(self, step: int, images: int, loss: float | None, lr: float) -> None:
        """Advance by one optimizer step; ``loss`` is the running loss when it was fetched."""
        self._images += images
        if self._progress is not None:
            fields = {"ips": f"{self.images_per_second():.0f}"}
            if loss is not None:
                fields["loss"] = f"{loss:.4f}"
            self._progress.update(self._task, completed=step, **fields)
        if step % self.log_every == 0 or step == self._steps:
            elapsed = time.perf_counter() - self._start
            eta = elapsed / step * (self._steps - step)
            line = f"{self._epoch_label} step {step}/{self._steps} loss {_fmt(loss) if loss is not None else '-'} lr {lr:.2e} {self.images_per_second():.0f} img/s eta {eta:.0f}s"
            self._write_log(line)
            if self.enabled and not self.interactive:
                self.console.print(line, highlight=False, markup=False)

    def end_epoch(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def epoch_row(self, row: dict[str, Any]) -> None:
        """One row of the metrics table; the header is printed with the first row."""
        if not self.enabled:
            return
        first = self._columns is None
        if first:
            self._columns = list(row)
        table = Table(show_header=first, box=None, pad_edge=False, padding=(0, 1))
        for name in self._columns:
            table.add_column(name, justify="right", min_width=max(len(name), 9))
        table.add_row(*[_fmt(row.get(name, "")) for name in self._columns])
        self.console.print(table)
        self._write_log(" ".join(f"{k}={_fmt(v)}" for k, v in row.items()))

    def close(self) -> None:
        self.end_epoch()
        if self._log is not None:
            log, self._log = self._log, None
            try:
                log.close()
            except OSError:  # its last lines could not be flushed (a full disk): already said
                pass
