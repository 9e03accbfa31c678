"""The machine a case runs on, as far as a run's flags are bounded by it: the cores this process
may use and the memory it may have. A flag with a machine bound is checked against the machine
that runs the case: by ``vlbench run`` before it loads torch when cases run here, inside the Ray
task on a cluster's node (the driver's cores say nothing of a remote node's). Batch and image
sizes stay unbounded: running out of memory is recorded as a case's ``oom``, by design. Pure:
no torch.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterable
from pathlib import Path

_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def usable_cores() -> int:
    """The cores this process may run on (its affinity), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def usable_memory() -> int:
    """Physical memory in bytes, or the cgroup's limit where that is smaller (inside a container
    the cgroup's OOM killer fires long before physical memory runs out)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in _CGROUP_LIMITS:
        with contextlib.suppress(OSError, ValueError):  # absent, or "max"
            total = min(total, int(Path(path).read_text().strip()))
    return total


def _here(where: str | None) -> str:
    return where or f"host {socket.gethostname()}"


def threads_problem(threads: int | None, where: str | None = None) -> str | None:
    """Why ``threads`` torch threads do not fit this machine's usable cores; None when they
    do. ``where`` names the machine (default: this host)."""
    cores = usable_cores()
    if threads is None or threads <= cores:
        return None
    return f"{threads} threads exceed the {cores} usable core(s) of {_here(where)}"


def budget_problem(nbytes: int | None, where: str | None = None) -> str | None:
    """Why a memory budget of ``nbytes`` does not fit this machine's memory; None when it
    does."""
    memory = usable_memory()
    if nbytes is None or nbytes <= memory:
        return None
    return (f"a memory budget of {nbytes / 2**30:.2f} GiB exceeds the {memory / 2**30:.2f} GiB "
            f"of memory of {_here(where)}")


def machine_problems(threads: Iterable[int | None], budget_bytes: int | None,
                     where: str | None = None) -> list[str]:
    """Every thread count and the budget that do not fit this machine, one phrase each."""
    found = [threads_problem(n, where) for n in sorted({t for t in threads if t is not None})]
    return [p for p in (*found, budget_problem(budget_bytes, where)) if p is not None]
