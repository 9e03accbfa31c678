"""The worker-process launcher: cases in worker processes, so that a crash or an exhausted
memory budget costs one case, not the run.

``ProcessLauncher`` starts one worker (``multiprocessing``'s *spawn* context: forking a process
whose torch thread pools already run is unsafe) and hands it the run's cases one at a time over a
pipe. A worker imports torch once (seconds) and is reused while its cases succeed; after a failed
case (``oom``, ``error``, or the process dying) it is killed and the next case gets a fresh one,
so a fragmented heap or a leaked CUDA context never reaches the next measurement. Each round of
``--rounds`` and each side of an interleaved A/B run starts a fresh worker (with that side's
plugins and interpreter), so run-to-run variance is measured, not hidden by one warm process.

The parent alone writes the store, as each case finishes. A worker that dies (segfault,
``os._exit``, SIGKILL, the kernel's OOM killer) shows up as the pipe closing; its case is recorded
as ``error`` with "worker died (signal 9)" or "worker died (exit code N)" and the run goes on.
The worker's side is ``vlbench.worker``. (PR_SET_PDEATHSIG follows the *thread* that started the
worker: start workers from a thread that lives as long as the run, as the CLI does.)
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from multiprocessing.connection import Connection, wait
from typing import Any

from ..interrupts import unheard_by_children
from ..options import RunOptions
from ..results import CaseResult, CaseSpec
from ..worker import serve
from .base import BeforeCase, OnResult

_SPAWN = multiprocessing.get_context("spawn")


class _ForeignProcess:
    """A worker started with another Python interpreter (``--baseline-python``), behind the few
    methods ``Worker`` uses of ``multiprocessing.Process``. Not spawned through multiprocessing:
    spawn hands the child this interpreter's ``sys.path``, which would import this environment's
    packages into the other one."""

    def __init__(self, python: str, options: RunOptions) -> None:
        parent_sock, child_sock = socket.socketpair()
        command = [python, "-m", "vlbench.worker", "--fd", str(child_sock.fileno()),
                   "--parent", str(os.getpid()), "--options",
                   json.dumps(options.settings(), allow_nan=False)]
        try:
            with unheard_by_children():
                self._popen = subprocess.Popen(command, pass_fds=[child_sock.fileno()],
                                               stdin=subprocess.DEVNULL,
                                               stdout=sys.stderr.fileno())
        except OSError as exc:
            parent_sock.close()
            raise ValueError(f"cannot start worker with {python}: {exc.strerror or exc}") from None
        finally:
            child_sock.close()
        self.connection = Connection(parent_sock.detach())
        self.sentinel = os.pidfd_open(self._popen.pid)
        self.pid = self._popen.pid

    @property
    def exitcode(self) -> int | None:
        return self._popen.poll()  # negative: killed by that signal, as multiprocessing says

    def is_alive(self) -> bool:
        return self._popen.poll() is None

    def join(self, timeout: float | None = None) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(timeout)
        if self._popen.poll() is not None and self.sentinel >= 0:
            os.close(self.sentinel)
            self.sentinel = -1

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._popen.kill()


class Worker:
    """One worker process that measures cases until one fails: spawned from this interpreter,
    or started with ``options.launch.python`` (another environment with vlbench installed)."""

    def __init__(self, options: RunOptions) -> None:
        python = options.launch.python
        if python is not None:
            self.process: Any = _ForeignProcess(python, options)
            self._conn = self.process.connection
        else:
            self._conn, child = _SPAWN.Pipe()
            self.process = _SPAWN.Process(target=serve, args=(child, options, os.getpid()),
                                          name="vlbench-worker", daemon=True)
            with unheard_by_children():
                self.process.start()
            child.close()  # only the worker holds its end: its death reads as end-of-file here
        self.ready = False

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def run(self, spec: CaseSpec) -> CaseResult:
        """Measure one case; a dead worker becomes that case's ``error`` record."""
        began = time.perf_counter()
        with contextlib.suppress(EOFError, OSError):  # OSError: BrokenPipeError, a dead worker
            self._conn.send(dict(spec.__dict__))
            while True:
                wait([self._conn, *([self.process.sentinel]
                                    if self.process.sentinel >= 0 else [])])
                if not self._conn.poll():
                    break  # exited with nothing left to read
                kind, payload = self._conn.recv()
                if kind == "ready":
                    self.ready = True
                    continue
                return CaseResult.from_dict(payload)
        return CaseResult(spec=spec, status="error", message=self._death(),
                          wall_s=round(time.perf_counter() - began, 3))

    def _death(self) -> str:
        self.process.join(timeout=5)
        code = self.process.exitcode
        during = "" if self.ready else " while starting"
        if code is None:
            return f"worker stopped answering{during}"
        if code < 0:
            return f"worker died{during} (signal {-code})"
        return f"worker died{during} (exit code {code})"

    def close(self, kill: bool = False) -> None:
        """Stop the worker: politely when it is healthy, with SIGKILL after a failure."""
        if not kill and self.process.is_alive():
            with contextlib.suppress(OSError):
                self._conn.send(None)
            self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=10)
        self._conn.close()


class ProcessLauncher:
    def __init__(self, options: RunOptions) -> None:
        self.options = options

    def run(self, cases: Iterable[CaseSpec], on_result: OnResult,
            before: BeforeCase | None = None) -> list[CaseResult]:
        """One worker reused while healthy, replaced after a failure; a fresh one per round and
        per side of an interleaved A/B run."""
        results: list[CaseResult] = []
        worker: Worker | None = None
        group: tuple[int, str | None] | None = None
        try:
            for spec in cases:
                if before is not None:
                    before(spec)
                if worker is not None and (spec.round, spec.side) != group:
                    worker.close()
                    worker = None
                if worker is None:
                    side = self.options.launch.for_side(spec.side)
                    worker = Worker(RunOptions(self.options.measure, side))
                    group = (spec.round, spec.side)
                result = worker.run(spec)
                on_result(result)  # committed before anything else can go wrong
                results.append(result)
                if result.status != "ok":
                    worker.close(kill=True)
                    worker = None
        except BaseException:  # Ctrl-C, SIGTERM, a store error: stop measuring at once
            if worker is not None:
                worker.close(kill=True)
            raise
        if worker is not None:
            worker.close()
        return results
