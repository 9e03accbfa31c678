"""Cases in worker processes, so that a crash or an exhausted memory budget costs one case.

Process model
-------------
``run_isolated`` starts one worker (``multiprocessing``'s *spawn* context: forking a process
whose torch thread pools already run is unsafe) and hands it the run's cases one at a time over a
pipe. A worker imports torch once (seconds) and is reused while its cases succeed; after a failed
case (``oom``, ``error``, or the process dying) it is killed and the next case gets a fresh one,
so a fragmented heap or a leaked CUDA context never reaches the next measurement.

A case goes out as ``CaseSpec`` fields and comes back as ``CaseResult.to_dict()``: plain data.
The parent alone writes the store, as each case finishes. A worker that dies (segfault,
``os._exit``, SIGKILL, the kernel's OOM killer) shows up as the pipe closing; its case is recorded
as ``error`` with "worker died (signal 9)" or "worker died (exit code N)" and the run goes on.

Memory budget (CPU runs)
------------------------
``RLIMIT_AS`` counts address space, which PyTorch reserves far beyond what it uses, so it fires
early. A worker instead sets ``RLIMIT_DATA``, which on Linux 4.7+ counts private writable
mappings: glibc's large ``mmap`` allocations included. Measured on this kernel (6.18): with the
limit set, a torch allocation beyond it raises ``DefaultCPUAllocator: can't allocate memory`` and a
Python one ``MemoryError`` -- an ``oom`` record, not the OOM killer taking the run. The budget
covers the whole worker, libraries included (importing torch and the model packages takes about
1 GB of it). It is not applied on GPU runs, where device memory errors are already ``oom``
records and the CUDA driver's host mappings make a data limit a risk of its own.

Ctrl-C reaches the whole process group; workers ignore SIGINT so that the parent decides what
an interrupt means. A worker asks the kernel to kill it when the parent dies (PR_SET_PDEATHSIG),
so a ``kill -9`` of the run leaves no orphan measuring on. (The signal follows the *thread* that
started the worker: start workers from a thread that lives as long as the run, as the CLI does.)
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import json
import multiprocessing
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from .plugins import load_plugins
from .results import CaseResult, CaseSpec
from .runner import CaseOptions, apply_threads, run_case

_SPAWN = multiprocessing.get_context("spawn")
_PR_SET_PDEATHSIG = 1
#: share of the usable memory a worker may hold when no --memory-budget is given
DEFAULT_BUDGET_SHARE = 0.8
_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def default_memory_budget(share: float = DEFAULT_BUDGET_SHARE) -> int:
    """``share`` of physical memory, or of the cgroup's limit where that is smaller (inside a
    container the cgroup's OOM killer fires long before physical memory runs out)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in _CGROUP_LIMITS:
        with contextlib.suppress(OSError, ValueError):  # absent, or "max"
            total = min(total, int(Path(path).read_text().strip()))
    return int(total * share)


def choose_memory_budget(isolated: bool, device: str, gib: float | None) -> int | None:
    """The budget in bytes a run's workers get: ``gib`` GiB, else the default for CPU workers.
    Raises ValueError where a budget cannot apply (in-process runs, GPU runs)."""
    if gib is None:
        return default_memory_budget() if isolated and device == "cpu" else None
    if gib <= 0:
        raise ValueError(f"--memory-budget must be positive, got {gib}")
    if not isolated:
        raise ValueError("--memory-budget limits worker processes; it does not combine with "
                         "in-process measurement (--no-isolation, VLBENCH_NO_ISOLATION)")
    if device != "cpu":
        raise ValueError(f"--memory-budget limits the memory of CPU runs, not {device} runs")
    return int(gib * 2**30)


def format_budget(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f} GiB"


class _ForeignProcess:
    """A worker started with another Python interpreter (``--baseline-python``), behind the few
    methods ``Worker`` uses of ``multiprocessing.Process``. Not spawned through multiprocessing:
    spawn hands the child this interpreter's ``sys.path``, which would import this environment's
    packages into the other one."""

    def __init__(self, python: str, options: CaseOptions) -> None:
        parent_sock, child_sock = socket.socketpair()
        command = [python, "-m", "vlbench.worker", "--fd", str(child_sock.fileno()),
                   "--parent", str(os.getpid()), "--options", json.dumps(options.settings())]
        try:
            self._popen = subprocess.Popen(command, pass_fds=[child_sock.fileno()],
                                           stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno())
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
    or started with ``python`` (another environment with vlbench installed)."""

    def __init__(self, options: CaseOptions, python: str | None = None) -> None:
        if python is not None:
            self.process: Any = _ForeignProcess(python, options)
            self._conn = self.process.connection
        else:
            self._conn, child = _SPAWN.Pipe()
            self.process = _SPAWN.Process(target=_serve, args=(child, options, os.getpid()),
                                          name="vlbench-worker", daemon=True)
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


def run_isolated(
    cases: Iterable[CaseSpec],
    options: CaseOptions,
    on_result: Callable[[CaseResult], None],
    before: Callable[[CaseSpec], None] | None = None,
) -> list[CaseResult]:
    """``run_cases`` in worker processes: one reused while healthy, replaced after a failure.
    Each round of ``--rounds`` and each side of an interleaved A/B run starts a fresh worker
    (with that side's plugins and interpreter), so run-to-run variance is measured, not hidden
    by one warm process."""
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
                side_options = options.for_side(spec.side)
                worker = Worker(side_options, python=side_options.python)
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


# -- inside the worker process ----------------------------------------------------------------


def _serve(conn: Connection, options: CaseOptions, parent_pid: int) -> None:
    """The worker's main loop: one case per message until ``None`` or the parent goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent to handle
    _die_with_parent(parent_pid)
    apply_threads(options.threads)
    try:  # a plugin that fails to load fails every case of this worker, with its message
        load_plugins(options.plugins)
        plugin_error = None
    except Exception as exc:  # noqa: BLE001
        plugin_error = str(exc)
    if options.memory_budget is not None:
        _limit_data(options.memory_budget)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message: dict[str, Any] | None = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        spec = CaseSpec(**{**message, "image_size": tuple(message["image_size"])})
        result = (run_case(spec, options) if plugin_error is None
                  else CaseResult(spec=spec, status="error", message=plugin_error))
        changes: dict[str, Any] = {"settings": {**result.settings, "worker_pid": os.getpid()}}
        if result.status == "oom" and options.memory_budget is not None:
            changes["message"] = (f"{result.message} (worker memory budget "
                                  f"{format_budget(options.memory_budget)})")
        conn.send(("result", dataclasses.replace(result, **changes).to_dict()))


def _die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this worker when the run process dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)


def _limit_data(nbytes: int) -> None:
    """Cap private writable memory (see the module docstring for why not RLIMIT_AS)."""
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    soft = nbytes if hard == resource.RLIM_INFINITY else min(nbytes, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def main(argv: list[str] | None = None) -> None:
    """``python -m vlbench.worker``: a worker started by another environment's vlbench
    (``--baseline-python``), talking over the socket it inherited."""
    parser = argparse.ArgumentParser(prog="python -m vlbench.worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--options", required=True, help="CaseOptions.settings() as JSON")
    args = parser.parse_args(argv)
    options = CaseOptions.from_settings(json.loads(args.options))
    _serve(Connection(args.fd), options, args.parent)


if __name__ == "__main__":
    main()
