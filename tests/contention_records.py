"""Contention records for tests (vlbench.contention): results built by hand carry ``QUIET`` (a
record absent reads "not measured", which the gate treats as inconclusive), and ``BUSY`` stands
for a case measured beside other work."""

from __future__ import annotations

import dataclasses

from vlbench.results import CaseResult, Contention

QUIET = Contention(
    cores=2, threads=1, samples=20, runnable_others=0.1, runnable_others_max=1, excess=0.0,
    cpu_util=0.97, involuntary_switches=3, run_delay=0.004, steal=0.0, peak_before=1.0e11,
    peak_after=1.02e11, wall_s=1.0, contended=False)
BUSY = dataclasses.replace(
    QUIET, runnable_others=4.2, runnable_others_max=6, excess=3.2, run_delay=0.61,
    cpu_util=0.4, involuntary_switches=480, peak_after=0.6e11, contended=True,
    reasons=("run queue: 4.2 other runnable tasks on average against 1 free of 2 cores "
             "(1 thread)", "run delay: threads waited for a CPU 61% of their runnable time"))


def quiet(result: CaseResult) -> CaseResult:
    """``result`` as measured on a quiet machine."""
    return dataclasses.replace(result, contention=QUIET)
