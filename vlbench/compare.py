"""Run-to-run comparison per case and stage, with the *round* as the unit: the statistics behind
``vlbench compare`` (the CI gate) and the report's ``--baseline`` section (``vlbench.gate``
reads the sides from the store or exports and prints the verdicts).

Why rounds. Samples of one run are not independent draws: a process's placement, its heap and
the machine's state at the time shift every sample of a run together (two identical runs on the
2-core development machine differed by up to 25% in some medians). A test on the samples of one
run against those of another counts that shift as a change and cries wolf. ``vlbench run --rounds
R`` measures each case in R rounds, each in a fresh worker process; a round contributes one value,
its median, and the rank test runs on those.

The statistics, per model and stage (log scale throughout: a slowdown is a ratio):

* ratio = median of the current rounds / median of the baseline rounds, with a distribution-free
  confidence interval at ``1 - alpha`` (the Hodges-Lehmann interval that inverts the
  Mann-Whitney test: order statistics of the pairwise log differences);
* p = exact two-sided Mann-Whitney U on the round medians (``vlbench.rank_test``). With n1
  against n2 rounds no data can go below ``2 / C(n1 + n2, n1)`` (4 against 4: 0.029; 5 against
  5: 0.008): the defaults (``alpha`` 0.01) need at least 5 rounds per side;
* separate runs (not the two sides of one interleaved run) also differ by a run-level offset that
  their rounds cannot show. Its size, ``run_noise`` (standard deviation of the log offset), comes
  from ``--run-noise`` or from the store's other runs of the same cases (``estimate_run_noise``);
  the p-value is then the larger of the rank test's and a normal test's that adds twice that
  variance. Unknown, a large significant change between separate runs is *inconclusive*, never
  *slower*: interleaved A/B runs, where drift hits both sides alike, are the gate's intended use;
* the smallest detectable slowdown: the slowdown this comparison would flag with probability
  ``POWER`` given the spread of rounds it saw (and the run-level noise), by the normal
  approximation with t quantiles and the rank test's efficiency; infinite when the rounds cannot
  reach ``alpha`` at all.

Verdicts: *slower* / *faster* when the change is beyond ``threshold`` (10% by default) and
``p < alpha``; *inconclusive* when the rounds cannot reach ``alpha``, when a large change is not
significant, or when the comparison could have missed a slowdown of ``MISS_FACTOR x threshold``
(15% by default); *same* otherwise. Parameters, FLOPs and workload are deterministic and compared
exactly (``DeterministicChange``).

The machine: whatever the statistics say, a case with a round measured on a busy machine, or
with no contention record (stored before vlbench measured it), on either side is *inconclusive*
(``vlbench.contention.comparison_block``): never slower or faster, and never silently same, so
that an always-busy CI runner cannot switch the gate off unnoticed.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from vlbench.case_keys import identity_key
from vlbench.contention import comparison_block
from vlbench.rank_test import min_p_value, rank_p_value, ratio_interval
from vlbench.results import CaseResult

END_TO_END = "end_to_end"
VERDICTS = ("slower", "faster", "same", "inconclusive")
#: probability with which the smallest detectable slowdown would be flagged
POWER = 0.95
#: a comparison that could miss a slowdown of this many thresholds says inconclusive
MISS_FACTOR = 1.5
#: asymptotic efficiency of the rank test against the t-test under normal noise (3 / pi)
_RANK_EFFICIENCY = 3 / math.pi
_RANK = {"slower": 0, "inconclusive": 1, "faster": 2, "same": 3}


@dataclass(frozen=True)
class StageComparison:
    """One stage (or ``end_to_end``) of one case, baseline against current."""

    model: str
    case_key: str  # the case's identity (round and side left out)
    stage: str
    baseline_ms: float  # median of the baseline's round medians
    current_ms: float
    ratio: float  # current / baseline; > 1 is slower
    p_value: float | None  # None when a side has no rounds
    verdict: str  # slower, faster, same or inconclusive
    n_baseline: int = 0  # rounds
    n_current: int = 0
    ci_low: float = math.nan  # confidence interval of the ratio at 1 - alpha
    ci_high: float = math.nan
    #: smallest slowdown (0.12 = 12%) flagged with probability POWER; inf: none could be
    detectable: float = math.inf
    reason: str = ""  # why the verdict is inconclusive
    parent: str | None = None  # enclosing stage; None for top-level stages and end-to-end
    #: why the machine makes this comparison inconclusive (a side measured on a busy machine, or
    #: without a contention record); "" when both sides were measured quiet
    contention: str = ""


@dataclass(frozen=True)
class DeterministicChange:
    """Parameters, FLOPs or a workload figure that differ between the sides: not noise."""

    model: str
    case_key: str
    stage: str
    what: str  # params, flops, or workload:<name>
    baseline: float | int | None
    current: float | int | None


@dataclass
class Comparison:
    """Everything ``vlbench compare`` prints and gates on."""

    baseline_label: str
    current_label: str
    stages: list[StageComparison]
    changes: list[DeterministicChange]
    interleaved: bool
    threshold: float
    alpha: float
    #: run-level noise (sd of log offsets) used for separate runs; None: unknown or interleaved
    run_noise: float | None = None
    only_baseline: list[str] = field(default_factory=list)  # case identities on one side only
    only_current: list[str] = field(default_factory=list)
    #: where the run-to-run drift of separate runs came from, for the printed summary
    drift: str = ""
    #: per case made inconclusive by the machine: which side's rounds were busy and why
    machine: list[str] = field(default_factory=list)

    def count(self, verdict: str) -> int:
        return sum(1 for c in self.stages if c.verdict == verdict)

    def exit_status(self, *, strict: bool = False, fail_on_flops_change: bool = False) -> int:
        """1 when a stage is slower (or, as asked, inconclusive or deterministically changed)."""
        if self.count("slower"):
            return 1
        if strict and self.count("inconclusive"):
            return 1
        if fail_on_flops_change and self.changes:
            return 1
        return 0

    def detectable_summary(self) -> tuple[float, float]:
        """(median, worst) smallest detectable slowdown over the compared stages."""
        values = [c.detectable for c in self.stages]
        if not values:
            return math.inf, math.inf
        return float(np.median(values)), max(values)


# -- one stage ------------------------------------------------------------------------------------


def detectable_slowdown(n1: int, n2: int, within_sd: float | None, run_noise: float,
                        alpha: float, power: float = POWER) -> float:
    """Smallest slowdown flagged with probability ``power``: (q(1 - alpha/2) + q(power)) times
    the standard error of the log ratio, t quantiles on the rounds' degrees of freedom, the rank
    test's efficiency for the within-run part; inf when the rounds cannot reach ``alpha``."""
    from scipy.stats import t

    if min_p_value(n1, n2) >= alpha or within_sd is None:
        return math.inf
    df = max(n1 + n2 - 2, 1)
    within_var = within_sd**2 * (1 / n1 + 1 / n2) / _RANK_EFFICIENCY
    se = math.sqrt(within_var + 2 * run_noise**2)
    return math.expm1((t.ppf(1 - alpha / 2, df) + t.ppf(power, df)) * se)


def _pooled_sd(base_log: np.ndarray, cur_log: np.ndarray) -> float | None:
    df = len(base_log) + len(cur_log) - 2
    if len(base_log) < 2 or len(cur_log) < 2:
        return None
    ss = ((base_log - base_log.mean()) ** 2).sum() + ((cur_log - cur_log.mean()) ** 2).sum()
    return math.sqrt(ss / df)


def compare_rounds(
    baseline: Sequence[float],
    current: Sequence[float],
    *,
    threshold: float = 0.10,
    alpha: float = 0.01,
    interleaved: bool = True,
    run_noise: float | None = None,
) -> dict:
    """The statistics of one stage from its round medians (ms): ratio, ci_low/ci_high, p_value,
    detectable, verdict, reason. ``interleaved=False`` (separate runs) uses ``run_noise``."""
    base = np.asarray(baseline, dtype=float)
    cur = np.asarray(current, dtype=float)
    if len(base) == 0 or len(cur) == 0:
        return dict(ratio=math.nan, ci_low=math.nan, ci_high=math.nan, p_value=None,
                    detectable=math.inf, verdict="inconclusive", reason="no rounds on a side")
    base_log, cur_log = np.log(base), np.log(cur)
    ratio = float(np.median(cur) / np.median(base))
    ci_low, ci_high = ratio_interval(base_log, cur_log, alpha)
    p_value = rank_p_value(base, cur)
    offset = 0.0 if interleaved else (run_noise or 0.0)
    if not interleaved and run_noise:
        from scipy.stats import norm

        within = _pooled_sd(base_log, cur_log) or 0.0
        se = math.sqrt(within**2 * (1 / len(base) + 1 / len(cur)) + 2 * run_noise**2)
        p_value = max(p_value, float(2 * norm.sf(abs(math.log(ratio)) / se)))
    detectable = detectable_slowdown(len(base), len(cur), _pooled_sd(base_log, cur_log),
                                     offset, alpha)
    large = ratio > 1 + threshold or ratio < 1 / (1 + threshold)
    if min_p_value(len(base), len(cur)) >= alpha:
        verdict = "inconclusive"
        reason = (f"{len(base)} against {len(cur)} rounds cannot reach p < {alpha:g} "
                  "(5 or more per side can)")
    elif large and p_value < alpha and not interleaved and run_noise is None:
        verdict = "inconclusive"
        reason = ("separate runs: run-to-run drift unknown (compare interleaved sides, keep 3+ "
                  "runs of these cases in the store, or pass --run-noise)")
    elif large and p_value < alpha:
        verdict, reason = ("slower" if ratio > 1 else "faster"), ""
    elif large:
        verdict, reason = "inconclusive", f"a {ratio - 1:+.0%} change, not significant"
    elif detectable > MISS_FACTOR * threshold:
        verdict = "inconclusive"
        reason = f"too noisy: could miss a {detectable:.0%} slowdown"
    else:
        verdict, reason = "same", ""
    return dict(ratio=ratio, ci_low=ci_low, ci_high=ci_high, p_value=p_value,
                detectable=detectable, verdict=verdict, reason=reason)


# -- cases ----------------------------------------------------------------------------------------


def round_values(results: Iterable[CaseResult]) -> dict[str, dict[str, list[float]]]:
    """{identity key: {stage or end_to_end: [one median per round, in round order]}} of the
    ``ok`` results; a single-round run gives one value per stage."""
    out: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in sorted((r for r in results if r.status == "ok"), key=lambda r: r.spec.round):
        key = identity_key(r.spec)
        if r.end_to_end is not None:
            out[key][END_TO_END].append(r.end_to_end.median_ms)
        for s in r.stages:
            if s.timing is not None and s.timing.median_ms > 0:
                out[key][s.name].append(s.timing.median_ms)
    return out


def _deterministic(result: CaseResult) -> dict[tuple[str, str], float | int]:
    out: dict[tuple[str, str], float | int] = {(END_TO_END, "params"): result.params_total,
                                               (END_TO_END, "flops"): result.flops_total}
    for s in result.stages:
        out[(s.name, "params")] = s.params
        out[(s.name, "flops")] = s.flops
        for name, value in s.workload.items():
            out[(s.name, f"workload:{name}")] = value
    return out


def compare_cases(
    baseline: Iterable[CaseResult],
    current: Iterable[CaseResult],
    *,
    threshold: float = 0.10,
    alpha: float = 0.01,
    interleaved: bool = False,
    run_noise: float | dict[tuple[str, str], float] | None = None,
    what: str = "the two result sets",
    baseline_label: str = "baseline",
    current_label: str = "current",
) -> Comparison:
    """Compare cases matched by identity (model, batch, input, precision, device, mode...).

    ``run_noise`` is one value or one per (identity, stage). Raises ValueError when no case is
    ``ok`` on both sides.
    """
    baseline, current = list(baseline), list(current)
    base_rounds, cur_rounds = round_values(baseline), round_values(current)
    base_last = {identity_key(r.spec): r for r in baseline if r.status == "ok"}
    cur_last = {identity_key(r.spec): r for r in current if r.status == "ok"}
    common = [k for k in cur_rounds if k in base_rounds]
    if not common:
        raise ValueError(f"{what} have no successful cases in common (same model, batch size, "
                         "input size, precision, device and mode)")
    stages: list[StageComparison] = []
    changes: list[DeterministicChange] = []
    machine = []
    for key in common:
        result = cur_last[key]
        found = _stage_comparisons(key, result, base_rounds[key], cur_rounds[key],
                                   threshold=threshold, alpha=alpha, interleaved=interleaved,
                                   run_noise=run_noise)
        blocked, detail = comparison_block(
            {"baseline": [r for r in baseline if identity_key(r.spec) == key],
             "current": [r for r in current if identity_key(r.spec) == key]})
        if blocked:  # what the rounds alone say stays in the reason, never in the verdict
            found = [dataclasses.replace(
                c, verdict="inconclusive", contention=blocked,
                reason=f"{blocked}; the rounds alone: {c.verdict}"
                + (f" ({c.reason})" if c.reason else "")) for c in found]
            machine.append(f"{result.spec.model} {key.split('|', 1)[-1]}: {detail}")
        stages += found
        changes += _changes(key, base_last[key], result)
    drift = _drift_text(interleaved, run_noise)
    return Comparison(
        baseline_label=baseline_label, current_label=current_label, stages=stages, drift=drift,
        changes=changes, interleaved=interleaved, threshold=threshold, alpha=alpha,
        run_noise=run_noise if isinstance(run_noise, float) else None,
        only_baseline=sorted(set(base_rounds) - set(cur_rounds)),
        only_current=sorted(set(cur_rounds) - set(base_rounds)), machine=machine)


def _stage_comparisons(key: str, result: CaseResult, before: dict[str, list[float]],
                       after: dict[str, list[float]], *, threshold: float, alpha: float,
                       interleaved: bool,
                       run_noise: float | dict[tuple[str, str], float] | None,
                       ) -> list[StageComparison]:
    """One case's stages (and end to end) that both sides timed, from their round medians."""
    parents = {s.name: s.parent for s in result.stages}
    out = []
    for stage, values in after.items():
        earlier = before.get(stage)
        if not earlier:
            continue
        noise = run_noise.get((key, stage)) if isinstance(run_noise, dict) else run_noise
        stats = compare_rounds(earlier, values, threshold=threshold, alpha=alpha,
                               interleaved=interleaved, run_noise=noise)
        out.append(StageComparison(
            model=result.spec.model, case_key=key, stage=stage,
            baseline_ms=float(np.median(earlier)), current_ms=float(np.median(values)),
            n_baseline=len(earlier), n_current=len(values), parent=parents.get(stage), **stats))
    return out


def _changes(key: str, baseline: CaseResult, current: CaseResult) -> list[DeterministicChange]:
    """Parameters, FLOPs and workload figures that differ between the sides' last rounds."""
    old, new = _deterministic(baseline), _deterministic(current)
    return [DeterministicChange(current.spec.model, key, stage, what, old.get((stage, what)),
                                new.get((stage, what)))
            for stage, what in sorted(set(old) | set(new))
            if old.get((stage, what)) != new.get((stage, what))]


def _drift_text(interleaved: bool,
                run_noise: float | dict[tuple[str, str], float] | None) -> str:
    """Where the run-to-run drift of the comparison came from, for the printed summary."""
    if interleaved:
        return "interleaved rounds: drift cancels"
    if isinstance(run_noise, dict) and run_noise:
        return (f"run-to-run drift from the store's other runs: median sd "
                f"{math.expm1(float(np.median(list(run_noise.values())))):.1%} "
                f"over {len(run_noise)} stage(s)")
    if isinstance(run_noise, float):
        return f"run-to-run drift given: sd {math.expm1(run_noise):.1%}"
    return "run-to-run drift unknown (fewer than 3 other runs of these cases)"


def estimate_run_noise(runs: Sequence[Sequence[CaseResult]]) -> dict[tuple[str, str], float]:
    """Run-level noise per (identity, stage) from three or more separate runs of the same cases:
    the standard deviation of the runs' mean log round medians less what their within-run spread
    explains (a one-way random-effects estimate), floored at 0."""
    per: dict[tuple[str, str], list[tuple[float, float, int]]] = defaultdict(list)
    for results in runs:
        for key, stages in round_values(results).items():
            for stage, values in stages.items():
                logs = np.log(values)
                var = float(logs.var(ddof=1)) if len(logs) > 1 else 0.0
                per[(key, stage)].append((float(logs.mean()), var, len(logs)))
    out = {}
    for k, rows in per.items():
        if len(rows) < 3:
            continue
        means = np.array([m for m, _, _ in rows])
        within = float(np.mean([v / n for _, v, n in rows]))
        out[k] = math.sqrt(max(0.0, float(means.var(ddof=1)) - within))
    return out


def ranked(comparisons: Iterable[StageComparison]) -> list[StageComparison]:
    """Regressions first (largest first), then inconclusive, faster (largest first), same."""
    def key(c: StageComparison) -> tuple[int, float]:
        ratio = _finite(c.ratio)
        return _RANK[c.verdict], ratio if c.verdict == "faster" else -ratio

    return sorted(comparisons, key=key)


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0
