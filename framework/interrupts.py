"""SIGINT and SIGTERM: either ends a command as ``crnnfw: interrupted`` (exit 130), logged, and
never in the middle of a save: the files an epoch commits are written whole first."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from types import FrameType
from typing import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_CODE = 130
_holding = False


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread when SIGINT or SIGTERM arrives; ``str()`` is the signal's name."""


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def as_interrupt() -> Iterator[None]:
    """Inside the block SIGINT and SIGTERM raise ``Interrupted`` (a command's ``main`` reports
    it); the handlers before it come back after."""
    if not _main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _raise) for signum in SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def exit_during_startup() -> None:
    """While the command's modules (torch) load there is nothing to save: a signal ends it at
    once, as one line, instead of a traceback from inside an import."""

    def leave(signum: int, frame: FrameType | None) -> None:
        os.write(sys.stderr.fileno(), b"crnnfw: interrupted\n")
        os._exit(EXIT_CODE)

    if _main_thread():
        for signum in SIGNALS:
            signal.signal(signum, leave)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while the block runs (a checkpoint being written, the files of
    an epoch being committed), then raise ``Interrupted`` if one came. Nested blocks hold them
    until the outermost one ends."""
    global _holding
    if not _main_thread() or _holding:
        yield
        return
    received: list[int] = []
    previous = {signum: signal.signal(signum, lambda s, f: received.append(s)) for signum in SIGNALS}
    _holding = True
    try:
        yield
    finally:
        _holding = False
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:
        raise Interrupted(signal.Signals(received[0]).name)
