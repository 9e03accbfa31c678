"""A worker process: measures the cases its parent sends until told to stop or the parent dies.

Started by the worker-process launcher (``vlbench.launchers.processes``): spawned from this
interpreter (``serve``), or, for the baseline side of an interleaved A/B run in another
environment, as ``python -m vlbench.worker`` over an inherited socket (``main``), so that
environment's own vlbench measures with its own packages.

A case comes as ``CaseSpec`` fields and goes back as ``CaseResult.to_dict()``: plain data. The
worker ignores SIGINT (Ctrl-C reaches the whole process group; the parent decides what it
means) and asks the kernel to kill it when the parent dies (PR_SET_PDEATHSIG), so a ``kill -9``
of the run leaves no orphan measuring on. Messages: ``("ready", pid)`` once, then
``("result", dict)`` per case; ``None`` from the parent ends it.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import json
import os
import signal
from multiprocessing.connection import Connection
from typing import Any

from .budget import limit_data, oom_message
from .context import apply_threads
from .measure import run_case
from .options import RunOptions
from .plugins import load_plugins
from .results import CaseResult, CaseSpec

_PR_SET_PDEATHSIG = 1


def serve(conn: Connection, options: RunOptions, parent_pid: int) -> None:
    """The worker's main loop: one case per message until ``None`` or the parent goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent to handle
    _die_with_parent(parent_pid)
    launch = options.launch
    apply_threads(launch.threads)
    try:  # a plugin that fails to load fails every case of this worker, with its message
        load_plugins(launch.plugins)
        plugin_error = None
    except Exception as exc:  # noqa: BLE001
        plugin_error = str(exc)
    if launch.memory_budget_bytes is not None:
        limit_data(launch.memory_budget_bytes)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message: dict[str, Any] | None = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        spec = CaseSpec(**{**message, "image_size": tuple(message["image_size"])})
        result = (run_case(spec, options.measure) if plugin_error is None
                  else CaseResult(spec=spec, status="error", message=plugin_error))
        changes: dict[str, Any] = {"settings": {**result.settings, "worker_pid": os.getpid()}}
        if result.status == "oom":
            changes["message"] = oom_message(result.message, launch.memory_budget_bytes)
        conn.send(("result", dataclasses.replace(result, **changes).to_dict()))


def _die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this worker when the run process dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)


def main(argv: list[str] | None = None) -> None:
    """``python -m vlbench.worker``: a worker started by another environment's vlbench
    (``--baseline-python``), talking over the socket it inherited."""
    parser = argparse.ArgumentParser(prog="python -m vlbench.worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--options", required=True, help="RunOptions.settings() as JSON")
    args = parser.parse_args(argv)
    options = RunOptions.from_settings(json.loads(args.options))
    serve(Connection(args.fd), options, args.parent)


if __name__ == "__main__":
    main()
