"""When the machine was too busy for a case's figures to be trusted: the rule, and what every
reader makes of it.

A benchmark on a shared machine is only as good as the machine's quiet while it ran. Every case
is measured with a sampler beside it (``vlbench.sampler``, started in ``vlbench.measure.run_case``,
the one place every scenario and launcher goes through), judged by ``assess`` and stored with the
case (``vlbench.results.Contention``). A case is **contended** when any of:

* **the run queue**: the kernel's runnable tasks (``procs_running``), less the process's own
  runnable threads, exceed the cores the case leaves free (online CPUs less its torch threads)
  by ``RUNQUEUE_EXCESS`` on average over the samples. Not the load average: a one-minute moving
  average lags a 20-second case;
* **the run delay**: the process's threads waited on a run queue for a CPU for at least
  ``RUN_DELAY_LIMIT`` of their runnable time: the most direct measure, and the one that also sees
  a case pinned to a few cores of a larger machine, which the system-wide count cannot place;
* **CPU steal**: a hypervisor gave at least ``STEAL_LIMIT`` of the machine's CPU time to other
  guests;
* **the matmul peak moved**: a short calibration right after the case (``vlbench.calibrate``, on
  the case's device) is off the one its shares of peak divide by by more than ``PEAK_DRIFT``.

Recorded but not judged: the process's CPU time against wall time x threads (a quiet machine also
leaves threads idle in a case's serial parts: tiny models, Python glue) and its involuntary
context switches (their rate follows the kernel's tick and the thread count; the run delay
measures the time they cost).

Not seen: other processes on a GPU (/proc does not show them; only the peak recalibration on the
GPU does); a cgroup's CPU quota throttling the process; systems without /proc (only the peak).

The gate (``comparison_block``): a comparison involving a contended case, or one with no record
(stored before vlbench measured it, which is "not measured", never "quiet"), is inconclusive.
Pure: no torch, no /proc; readers import the words and the rules from here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .results import CaseResult, Contention

#: contended when other runnable tasks exceed the case's free cores by this many on average:
#: half a core of competing work can take 0.5 / (T + 0.5) of a T-thread case's CPU (20% at two
#: threads, twice the gate's default threshold); below it the run queue's snapshots of kernel
#: workers and short-lived tools are noise
RUNQUEUE_EXCESS = 0.5
#: contended when the case's threads waited for a CPU this share of their runnable time: a wait
#: is time added to the case, and 5% is half the gate's default 10% threshold
RUN_DELAY_LIMIT = 0.05
#: contended when a hypervisor took this share of the machine's CPU time (as for the run delay)
STEAL_LIMIT = 0.05
#: contended when the matmul peak after the case is off the one before by more than this factor
#: either way: two calibrations of a quiet machine agree within about 10% (the short one after
#: the case has fewer tries at the best), so beyond 25% the machine's state moved, and shares of
#: peak divided by the one before are not to be trusted
PEAK_DRIFT = 1.25
#: what a share of the matmul peak above 100% reads as: contention while the peak was measured,
#: a calibration too small for the machine, or a FLOP over-count; never a figure
PEAK_INVALID = "peak invalid"
#: a case's state in tables and reports
BUSY, QUIET, NOT_MEASURED = "busy", "quiet", "not measured"


@dataclass(frozen=True)
class Observation:
    """What a sampler saw while a case ran (``vlbench.sampler``): ``assess``'s inputs."""

    others: tuple[int, ...]  # per sample: runnable tasks besides this process's own
    cores: int  # CPUs the run queue counts over
    wall_s: float
    cpu_s: float  # the process's CPU time (user + system) over the case
    involuntary: int | None  # involuntary context switches of the process
    run_delay: float | None  # share of its threads' runnable time spent waiting for a CPU
    steal: float | None  # share of the machine's CPU time stolen by a hypervisor


@dataclass(frozen=True)
class Excess:
    """The run queue against the free cores: the mean of the other runnable tasks beyond them."""

    value: float
    over: bool  # at or above ``RUNQUEUE_EXCESS``


def runqueue_excess(others: Sequence[int], cores: int, threads: int) -> Excess:
    """The run-queue rule on samples of the other runnable tasks (``others`` non-empty)."""
    free = max(0, cores - threads)
    value = sum(max(0, o - free) for o in others) / len(others)
    return Excess(value, value >= RUNQUEUE_EXCESS)


def assess(seen: Observation, *, threads: int, peak_before: float | None,
           peak_after: float | None) -> Contention:
    """The case's record: the measures and whether they make it contended, with the reasons."""
    others, reasons = seen.others, []
    mean = sum(others) / len(others) if others else None
    excess = runqueue_excess(others, seen.cores, threads) if others else None
    if excess is not None and excess.over:
        reasons.append(f"run queue: {mean:.1f} other runnable tasks on average against "
                       f"{max(0, seen.cores - threads)} free of {seen.cores} cores "
                       f"({threads} thread{'s' if threads != 1 else ''})")
    if seen.run_delay is not None and seen.run_delay >= RUN_DELAY_LIMIT:
        reasons.append(f"run delay: threads waited for a CPU {seen.run_delay:.0%} of their "
                       "runnable time")
    if seen.steal is not None and seen.steal >= STEAL_LIMIT:
        reasons.append(f"CPU steal {seen.steal:.0%}")
    if peak_before and peak_after and not 1 / PEAK_DRIFT <= peak_after / peak_before <= PEAK_DRIFT:
        reasons.append(f"matmul peak {peak_after / 1e9:.0f} GFLOP/s after the case against "
                       f"{peak_before / 1e9:.0f} before ({peak_after / peak_before - 1:+.0%})")
    util = seen.cpu_s / (seen.wall_s * threads) if seen.wall_s > 0 and threads > 0 else None
    return Contention(
        cores=seen.cores, threads=threads, samples=len(others),
        runnable_others=_round(mean), runnable_others_max=max(others) if others else None,
        excess=_round(excess.value if excess else None), cpu_util=_round(util),
        involuntary_switches=seen.involuntary, run_delay=_round(seen.run_delay),
        steal=_round(seen.steal), peak_before=peak_before, peak_after=peak_after,
        wall_s=round(seen.wall_s, 3), contended=bool(reasons), reasons=tuple(reasons))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


# -- reading it back -------------------------------------------------------------------------------


def state(record: Contention | None) -> str:
    """``busy``, ``quiet`` or ``not measured`` (a record absent: never quiet)."""
    if record is None:
        return NOT_MEASURED
    return BUSY if record.contended else QUIET


def valid_share(share: float | None) -> bool:
    """A share of the matmul peak that may be shown as a figure: none above 100%."""
    return share is not None and share <= 1.0


def merge_rounds(rounds: Sequence[tuple[int, Contention | None]]) -> Contention | None:
    """One record for a case's rounds pooled into one row (``vlbench.rounds``): contended when
    any round was (the first such round's measures, every busy round's reasons, each prefixed
    with its round), else not measured when any round was not, else the last round's."""
    busy = [(r, c) for r, c in rounds if c is not None and c.contended]
    if busy:
        reasons = tuple(f"round {r + 1}: {why}" for r, c in busy for why in c.reasons)
        return dataclasses.replace(busy[0][1], reasons=reasons)
    if not rounds or any(c is None for _, c in rounds):
        return None
    return rounds[-1][1]


def contended_cases(results: Sequence[CaseResult]) -> list[CaseResult]:
    """The ``ok`` cases measured on a busy machine."""
    return [r for r in results if r.status == "ok" and state(r.contention) == BUSY]


def case_label(result: CaseResult) -> str:
    """'vilt-b32 b1 384x640+40 fp32': how tables and messages name a case."""
    s = result.spec
    side = f" [{s.side}]" if s.side else ""
    task = f" {s.task}" if s.task else ""
    return (f"{s.model}{side} b{s.batch_size} {s.image_size[0]}x{s.image_size[1]}+{s.text_len} "
            f"{s.precision}{task}")


def advice(results: Sequence[CaseResult]) -> str | None:
    """The line after a run that saw contention: which cases, and how to avoid it."""
    busy = contended_cases(results)
    if not busy:
        return None
    names = ", ".join(case_label(r) for r in busy[:4])
    more = f" and {len(busy) - 4} more" if len(busy) > 4 else ""
    return (f"contention: {len(busy)} of {sum(r.status == 'ok' for r in results)} case(s) ran "
            f"on a busy machine ({names}{more}): their figures are suspect and 'vlbench compare' "
            "calls them inconclusive; rerun on a quieter machine ('--require-quiet' refuses to "
            "start on a busy one) or leave cores free with fewer '--threads'")


def comparison_block(sides: Mapping[str, Sequence[CaseResult]]) -> tuple[str, str]:
    """The gate's policy for one case, given each side's rounds of it: (the reason every stage
    comparison of the case is inconclusive, the case's detail for the summary) when a side has
    an ``ok`` round measured on a busy machine or without a record; ("", "") when all are quiet."""
    ok = {side: [r for r in rounds if r.status == "ok"] for side, rounds in sides.items()}
    busy = {side: [r for r in rounds if state(r.contention) == BUSY]
            for side, rounds in ok.items()}
    if any(busy.values()):
        names = " and ".join(side for side, rounds in busy.items() if rounds)
        detail = "; ".join(
            f"{side}: {len(rounds)} of {len(ok[side])} round(s) busy, "
            f"{rounds[0].contention.reasons[0]}" for side, rounds in busy.items() if rounds)
        return f"measured on a busy machine ({names})", detail
    unknown = " and ".join(side for side, rounds in ok.items()
                           if any(state(r.contention) == NOT_MEASURED for r in rounds))
    if unknown:
        return (f"contention not measured ({unknown}: stored before vlbench measured it)",
                f"{unknown}: no contention record")
    return "", ""
