"""A worker's memory budget on CPU runs: how big it is, and how it is enforced.

``RLIMIT_AS`` counts address space, which PyTorch reserves far beyond what it uses, so it fires
early. A worker instead sets ``RLIMIT_DATA``, which on Linux 4.7+ counts private writable
mappings: glibc's large ``mmap`` allocations included. Measured on this kernel (6.18): with the
limit set, a torch allocation beyond it raises ``DefaultCPUAllocator: can't allocate memory`` and a
Python one ``MemoryError`` -- an ``oom`` record, not the OOM killer taking the run. The budget
covers the whole worker, libraries included (importing torch and the model packages takes about
1 GB of it). It is not applied on GPU runs, where device memory errors are already ``oom``
records and the CUDA driver's host mappings make a data limit a risk of its own. Worker
processes (``vlbench.worker``) keep the limit for their life; Ray reuses its processes, so a Ray
task lifts it again when its case ends (``data_limit``).
"""

from __future__ import annotations

import contextlib
import resource
from collections.abc import Iterator

from .machine import usable_memory

#: share of the usable memory a worker may hold when no --memory-budget is given
DEFAULT_BUDGET_SHARE = 0.8


def default_memory_budget(share: float = DEFAULT_BUDGET_SHARE) -> int:
    """``share`` of the usable memory (``vlbench.machine.usable_memory``: physical, or the
    cgroup's limit where that is smaller)."""
    return int(usable_memory() * share)


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


def oom_message(message: str, nbytes: int | None) -> str:
    """An ``oom`` record's message, naming the budget it ran out of."""
    return message if nbytes is None else f"{message} (worker memory budget " \
                                          f"{format_budget(nbytes)})"


def limit_data(nbytes: int) -> tuple[int, int]:
    """Cap private writable memory at ``nbytes`` (see the module docstring for why not
    RLIMIT_AS); returns the limits in force before, for ``data_limit`` to restore."""
    previous = resource.getrlimit(resource.RLIMIT_DATA)
    soft, hard = previous
    limit = nbytes if hard == resource.RLIM_INFINITY else min(nbytes, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    return previous


@contextlib.contextmanager
def data_limit(nbytes: int | None) -> Iterator[None]:
    """The budget for the duration of one case, lifted afterwards (a reused process)."""
    if nbytes is None:
        yield
        return
    previous = limit_data(nbytes)
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, previous)
