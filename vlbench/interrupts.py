"""Ctrl-C, told apart from code that raises ``KeyboardInterrupt`` itself.

A plugin is arbitrary code run at import: it may raise ``KeyboardInterrupt`` (or call
``sys.exit``), which is the plugin's error (one line naming the file, exit 2), while the user's
Ctrl-C in the same seconds ends the command (exit 130). ``watch`` installs a SIGINT handler that
notes the signal and then raises as Python's own handler does (a run's SIGTERM handler notes its
signal too, ``vlbench.session``); ``received`` says whether one came. Pure: no torch.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

#: exit status of a command ended by Ctrl-C (128 + SIGINT), as shells report it
EXIT_INTERRUPTED = 128 + signal.SIGINT

_received = False


def note() -> None:
    """Record that a real signal (not code) is about to raise ``KeyboardInterrupt``."""
    global _received
    _received = True


def _note(signum: int, frame: object) -> None:
    note()
    raise KeyboardInterrupt


@contextlib.contextmanager
def watch() -> Iterator[None]:
    """Note SIGINT while active (main thread only; an ignored SIGINT stays ignored)."""
    global _received
    _received = False
    try:
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            yield
            return
        previous = signal.signal(signal.SIGINT, _note)
    except ValueError:  # not the main thread: signals stay as they are
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def unheard_by_children() -> Iterator[None]:
    """Processes started inside ignore SIGINT from their first instruction: an ignored signal
    stays ignored across exec, and Python then installs no KeyboardInterrupt handler, so a
    Ctrl-C while a worker still imports torch prints no traceback (the parent decides what an
    interrupt means). Only for the instant of a start: a Ctrl-C then is not heard here either."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: signals stay as they are
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def received() -> bool:
    """Whether a real SIGINT arrived while ``watch`` was active."""
    return _received
