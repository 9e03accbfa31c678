"""One row per case for tables and reports of runs measured in rounds (``--rounds``).

The store keeps every round as its own case record (the gate's unit, ``vlbench.compare``); a
table shows one row per case and side, whose statistics pool the samples of its ``ok`` rounds and
whose settings list the round medians, so run-to-run spread stays visible beside the pooled
median.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

from .case_keys import identity_key
from .contention import merge_rounds
from .devices import device_name
from .results import CaseResult
from .stats import summarize


def pool_rounds(results: list[CaseResult]) -> list[CaseResult]:
    """Results with the rounds of each (case, side) merged, in first-seen order; a single-round
    case is returned as it is. A case whose rounds all failed keeps its last failure."""
    groups: dict[tuple[str, str | None, str], list[CaseResult]] = defaultdict(list)
    for r in results:  # never across devices (a Ray run over mixed GPUs)
        groups[(identity_key(r.spec), r.spec.side, device_name(r))].append(r)
    return [_merge(group) if len(group) > 1 else group[0] for group in groups.values()]


def _merge(rounds: list[CaseResult]) -> CaseResult:
    ok = [r for r in rounds if r.status == "ok" and r.end_to_end is not None]
    if not ok:
        return rounds[-1]
    last = ok[-1]
    e2e = tuple(v for r in ok for v in r.end_to_end_samples_ms)
    stages = []
    for i, stage in enumerate(last.stages):
        samples = tuple(v for r in ok if i < len(r.stages) for v in r.stages[i].samples_ms)
        timing = summarize(samples) if samples else stage.timing
        achieved = (stage.flops / (timing.median_ms / 1e3)
                    if timing is not None and timing.median_ms > 0 and stage.flops else None)
        peak = last.settings.get("peak_flops")
        stages.append(dataclasses.replace(
            stage, timing=timing, samples_ms=samples, achieved_flops_per_s=achieved,
            peak_share=achieved / peak if achieved is not None and peak else None))
    top = [s for s in stages if s.parent is None and s.timing is not None]
    settings = {**last.settings, "rounds": len(rounds), "rounds_ok": len(ok),
                "round_medians_ms": [round(r.end_to_end.median_ms, 4) for r in ok]}
    return dataclasses.replace(
        last, spec=dataclasses.replace(last.spec, round=0), end_to_end=summarize(e2e),
        end_to_end_samples_ms=e2e, stages=tuple(stages), settings=settings,
        stage_sum_ms=sum(s.timing.median_ms for s in top) if top else last.stage_sum_ms,
        wall_s=round(sum(r.wall_s for r in rounds), 3),
        contention=merge_rounds([(r.spec.round, r.contention) for r in ok]),
        peak_mem_bytes=max((r.peak_mem_bytes or 0 for r in ok), default=None) or None)
