"""The sampler that runs beside every case, and the look at the machine before a run: what the
kernel says the machine was doing (the measure side of ``vlbench.contention``, which states the
rule and what each measure means).

Read from /proc, every read failing soft (a missing file costs a measure, never a case):

* /proc/stat: ``procs_running`` (the kernel's runnable tasks now), sampled in a daemon thread
  every ``SAMPLE_INTERVAL_S``; the online CPUs; steal ticks at the start and the end;
* /proc/self/task/*/stat: this process's own threads in state R at each sample (the sampler's
  included), taken off the kernel's count; */schedstat: each thread's time on a CPU and waiting
  for one, at the start and the end;
* ``getrusage``: the process's CPU time and involuntary context switches.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .contention import Observation, runqueue_excess

#: seconds between run-queue samples: 10 a second gives a 0.2 s case 3 samples (one at its
#: start), while a sample's reads (0.2-0.7 ms, more with more threads) stay under 1% of one core
SAMPLE_INTERVAL_S = 0.1
#: seconds the check before a run samples the machine (``machine_load``), every 50 ms: 5 samples,
#: a short wait against a run of minutes
BUSY_CHECK_S = 0.2

PROC = Path("/proc")


# -- reading /proc ---------------------------------------------------------------------------------


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def procs_running(stat: str) -> int | None:
    """The kernel's runnable tasks now, from /proc/stat's ``procs_running`` line."""
    for line in stat.splitlines():
        if line.startswith("procs_running"):
            return int(line.split()[1])
    return None


def online_cpus(stat: str) -> int | None:
    """The CPUs /proc/stat lists (``cpu0``, ``cpu1``, ...): the run queue's domain."""
    count = sum(1 for line in stat.splitlines() if line.startswith("cpu") and line[3:4].isdigit())
    return count or None


def steal_ticks(stat: str) -> tuple[int, int] | None:
    """(steal, total) clock ticks of all CPUs, from /proc/stat's first ``cpu`` line."""
    first = stat.splitlines()[0].split() if stat else []
    if len(first) < 9 or first[0] != "cpu":
        return None
    ticks = [int(v) for v in first[1:9]]  # user nice system idle iowait irq softirq steal
    return ticks[7], sum(ticks)


def task_running(stat: str) -> bool:
    """Whether a /proc/.../stat line says the task is runnable (state R); the name in
    parentheses may hold spaces and parentheses, so the state is read after the last one."""
    return stat.rpartition(")")[2].split()[:1] == ["R"]


def own_running(proc: Path = PROC) -> int | None:
    """This process's threads in state R now (the caller's own included)."""
    try:
        tasks = list((proc / "self" / "task").iterdir())
    except OSError:
        return None
    return sum(1 for task in tasks if task_running(_read(task / "stat") or ""))


def thread_schedstats(proc: Path = PROC, skip: int | None = None) -> dict[int, tuple[int, int]]:
    """{thread id: (ns on a CPU, ns waiting on a run queue)} of this process's threads."""
    out: dict[int, tuple[int, int]] = {}
    try:
        tasks = list((proc / "self" / "task").iterdir())
    except OSError:
        return out
    for task in tasks:
        fields = (_read(task / "schedstat") or "").split()
        if len(fields) >= 2 and task.name.isdigit() and int(task.name) != skip:
            out[int(task.name)] = (int(fields[0]), int(fields[1]))
    return out


# -- beside a case ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Point:
    """The counters read at the start and at the end of a case."""

    wall: float
    cpu_s: float
    involuntary: int
    ticks: tuple[int, int] | None
    sched: dict[int, tuple[int, int]]


def _point(proc: Path, skip: int | None) -> _Point:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    stat = _read(proc / "stat")
    return _Point(time.monotonic(), usage.ru_utime + usage.ru_stime, usage.ru_nivcsw,
                  steal_ticks(stat) if stat else None, thread_schedstats(proc, skip))


class Sampler:
    """A context manager: counters at entry and exit, and a daemon thread sampling the run queue
    in between; ``observation()`` once it has exited."""

    def __init__(self, proc: Path = PROC, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self._proc, self._interval = proc, interval_s
        self._others: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vlbench-contention",
                                        daemon=True)
        self._tid: int | None = None
        self._start: _Point | None = None
        self._end: _Point | None = None

    def __enter__(self) -> Sampler:
        self._start = _point(self._proc, None)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._end = _point(self._proc, self._tid)  # the sampler's own waits are not the case's

    def _loop(self) -> None:
        self._tid = threading.get_native_id()
        while True:
            self._sample()
            if self._stop.wait(self._interval):
                break

    def _sample(self) -> None:
        try:
            stat = _read(self._proc / "stat")
            running = procs_running(stat) if stat else None
            own = own_running(self._proc)
        except ValueError:  # a malformed line: this sample is lost, not the case
            return
        if running is not None and own is not None:
            self._others.append(max(0, running - own))

    def observation(self) -> Observation:
        """What the sampler saw (after it has exited)."""
        start, end = self._start, self._end
        if start is None or end is None:
            raise RuntimeError("the sampler has not run")
        stat = _read(self._proc / "stat")
        cores = (online_cpus(stat) if stat else None) or os.cpu_count() or 1
        return Observation(
            others=tuple(self._others), cores=cores, wall_s=end.wall - start.wall,
            cpu_s=end.cpu_s - start.cpu_s, involuntary=end.involuntary - start.involuntary,
            run_delay=_run_delay(start.sched, end.sched), steal=_steal(start.ticks, end.ticks))


def _run_delay(start: dict[int, tuple[int, int]],
               end: dict[int, tuple[int, int]]) -> float | None:
    """Waiting / (running + waiting) over the threads alive at the end (a thread born during the
    case counts whole); None without schedstat."""
    ran = waited = 0
    for tid, (run_ns, wait_ns) in end.items():
        run0, wait0 = start.get(tid, (0, 0))
        ran, waited = ran + run_ns - run0, waited + wait_ns - wait0
    return waited / (ran + waited) if ran + waited > 0 else None


def _steal(start: tuple[int, int] | None, end: tuple[int, int] | None) -> float | None:
    if start is None or end is None or end[1] <= start[1]:
        return None
    return (end[0] - start[0]) / (end[1] - start[1])


# -- before a run ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MachineLoad:
    """The machine just before a run: runnable tasks besides vlbench against the cores the run's
    threads leave free (the per-case rule's run queue), and the busiest other processes."""

    cores: int
    threads: int
    runnable_others: float
    excess: float
    busy: bool
    busiest: tuple[tuple[str, float], ...]  # (process name, CPU used, in cores)

    def line(self) -> str:
        names = ", ".join(f"{name} {cores:.0%}" for name, cores in self.busiest) or "none named"
        free = max(0, self.cores - self.threads)
        threads = f"{self.threads} thread{'s' if self.threads != 1 else ''}"
        return (f"machine busy: {self.runnable_others:.1f} runnable tasks besides vlbench on "
                f"average against {free} free of {self.cores} cores for {threads} (busiest, "
                f"share of a core: {names}); figures will be slower and noisier")


def machine_load(threads: int, window_s: float = BUSY_CHECK_S,
                 proc: Path = PROC) -> MachineLoad | None:
    """Sample the machine for ``window_s``; None where the run queue cannot be read."""
    before, began = _process_ticks(proc), time.monotonic()
    with Sampler(proc, interval_s=window_s / 4) as sampler:
        time.sleep(window_s)
    after, elapsed = _process_ticks(proc), time.monotonic() - began
    seen = sampler.observation()
    if not seen.others:
        return None
    hz = os.sysconf("SC_CLK_TCK")
    used = sorted(((name, (ticks - before.get(pid, (name, ticks))[1]) / hz / elapsed)
                   for pid, (name, ticks) in after.items()), key=lambda item: -item[1])
    excess = runqueue_excess(seen.others, seen.cores, threads)
    return MachineLoad(
        cores=seen.cores, threads=threads, excess=round(excess.value, 2), busy=excess.over,
        runnable_others=round(sum(seen.others) / len(seen.others), 2),
        busiest=tuple((name, round(cores, 2)) for name, cores in used[:3] if cores >= 0.1))


def _process_ticks(proc: Path) -> dict[int, tuple[str, int]]:
    """{pid: (name, user + system clock ticks)} of every other process."""
    out: dict[int, tuple[str, int]] = {}
    try:
        entries = [e for e in proc.iterdir() if e.name.isdigit() and int(e.name) != os.getpid()]
    except OSError:
        return out
    for entry in entries:
        text = _read(entry / "stat") or ""
        head, _, tail = text.rpartition(")")
        fields = tail.split()
        if len(fields) > 12:  # state ppid ... utime (12th) stime (13th) after the name
            out[int(entry.name)] = (head.partition("(")[2], int(fields[11]) + int(fields[12]))
    return out
