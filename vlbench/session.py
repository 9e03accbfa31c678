"""One pass of a run over its cases, as the store sees it: a commit per finished case, a heartbeat
while a slow case runs, a progress bar, and an ending that says what happened.

The run ends ``finished``, or ``interrupted`` on Ctrl-C or SIGTERM (a scheduler's stop, ``kill``):
both are turned into ``KeyboardInterrupt`` in the main thread, the worker is killed on the way
out, and the exit status is 128 + the signal (130, 143). Every case that finished before is
already committed, so ``vlbench run --resume`` continues where it stopped. A ``kill -9`` leaves
the run 'running' with a dead pid, which readers take as ``interrupted``. A store that cannot be
written any more (a full disk: SQLite says "database or disk is full", or "disk I/O error" at a
file-size limit) stops the run the same way, as one ``StoreWriteError`` line that says how to
resume once there is room; nothing committed is lost.
"""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import sys
import threading
from collections.abc import Iterator, Sequence

from . import interrupts
from .launchers import run_cases
from .options import RunOptions
from .results import CaseResult, CaseSpec
from .store import Store

#: seconds between heartbeats while one case runs (the store calls a run dead after 600 s)
HEARTBEAT_S = 60.0


class StoreWriteError(ValueError):
    """The results database refused a write mid-run; the message says how to resume."""


def execute(store: Store, run_id: int, cases: Sequence[CaseSpec], options: RunOptions, *,
            show_progress: bool = True, resume_hint: str = "") -> int | None:
    """Measure ``cases`` into run ``run_id`` and end the run. Returns None when every case ran,
    or the exit status of an interrupted run (after saying how to resume it)."""
    stop = threading.Event()
    threading.Thread(target=_heartbeat, args=(store, run_id, stop), daemon=True).start()
    progress = _progress(len(cases), disable=not show_progress)
    status, code, error = "failed", None, None

    def record(result: CaseResult) -> None:
        store.add_case(run_id, result)
        progress.set_postfix_str(f"{result.spec.model} {result.status}")
        if progress.n < progress.total:  # a resubmitted case (Ray) reports twice
            progress.update(1)

    def announce(spec: CaseSpec) -> None:
        progress.set_description(f"{spec.model} b{spec.batch_size} {spec.precision}")

    try:
        with sigterm_as_interrupt():
            run_cases(cases, options, record, before=announce)
        status = "finished"
    except KeyboardInterrupt as exc:
        status = "interrupted"
        signum = exc.args[0] if exc.args and isinstance(exc.args[0], int) else signal.SIGINT
        print(f"\ninterrupted ({signal.Signals(signum).name}): finished cases are kept in run "
              f"{run_id}; continue with: vlbench run --resume {run_id}{resume_hint}",
              file=sys.stderr)
        code = 128 + signum
    except sqlite3.Error as exc:  # the store refused a case: stop, keep what is committed
        status, error = "interrupted", exc
    finally:
        progress.close()
        stop.set()
        try:
            store.finish_run(run_id, status)
        except sqlite3.Error as exc:  # left 'running' with this pid: read as interrupted
            error = error or exc
    if error is not None:
        raise StoreWriteError(
            f"cannot write to the results database {store.path} ({error}; a full disk reads "
            f"so); the cases finished before are kept in run {run_id}: make room, then "
            f"continue with: vlbench run --resume {run_id}{resume_hint}") from None
    return code


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While active, SIGTERM raises ``KeyboardInterrupt(SIGTERM)`` as Ctrl-C raises its own."""

    def interrupt(signum: int, frame: object) -> None:
        interrupts.note()  # a signal, not a plugin raising KeyboardInterrupt
        raise KeyboardInterrupt(signum)

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: signals stay as they are
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _heartbeat(store: Store, run_id: int, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        with contextlib.suppress(Exception):  # a missed heartbeat must not kill the run
            store.heartbeat(run_id)


def _progress(total: int, disable: bool):  # noqa: ANN202
    from tqdm import tqdm

    return tqdm(total=total, unit="case", file=sys.stderr, disable=disable, dynamic_ncols=True)
