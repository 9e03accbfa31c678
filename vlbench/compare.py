"""Run-to-run comparison per case and stage: one module for the report's ``--baseline`` section and
a future ``vlbench compare`` gate.

A change counts only when it is both large (``|ratio - 1| > threshold``) and significant (two-sided
Mann-Whitney U on the two runs' raw samples, ``p < alpha``): latency samples are skewed and carry
outliers, so a rank test fits better than a t-test, and a threshold stops tiny but significant
drifts from crying wolf. When the sample counts cannot reach ``alpha`` whatever the data (3 against
3 samples: the smallest two-sided p is 2 / C(6, 3) = 0.1), or a large change is not significant,
the verdict is ``inconclusive`` rather than ``same``: the data cannot tell, so we do not claim
they agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from vlbench.results import CaseResult
from vlbench.store import Store, case_key

END_TO_END = "end_to_end"
VERDICTS = ("slower", "faster", "same", "inconclusive")
_RANK = {"slower": 0, "inconclusive": 1, "faster": 2, "same": 3}


@dataclass(frozen=True)
class StageComparison:
    """One stage (or ``end_to_end``) of one case, baseline against current."""

    model: str
    case_key: str
    stage: str
    baseline_ms: float
    current_ms: float
    ratio: float  # current / baseline median; > 1 is slower
    p_value: float | None  # None when a side has no samples
    verdict: str  # slower, faster, same or inconclusive
    n_baseline: int = 0
    n_current: int = 0


def min_p_value(n1: int, n2: int) -> float:
    """The smallest two-sided Mann-Whitney p any data can give for these sample sizes.

    Complete separation (U = 0) has probability 1 / C(n1 + n2, n1) under the null, twice that
    two-sided; below this the test cannot go, so ``alpha`` under it is out of reach.
    """
    if n1 < 1 or n2 < 1:
        return 1.0
    return min(1.0, 2.0 / math.comb(n1 + n2, n1))


def compare_samples(
    baseline: Sequence[float],
    current: Sequence[float],
    *,
    threshold: float = 0.10,
    alpha: float = 0.01,
) -> tuple[float, float | None, str]:
    """(ratio of medians, p-value, verdict) for two series of timings in milliseconds."""
    from scipy.stats import mannwhitneyu

    if len(baseline) == 0 or len(current) == 0:
        return math.nan, None, "inconclusive"
    base_median = float(np.median(baseline))
    cur_median = float(np.median(current))
    ratio = cur_median / base_median if base_median > 0 else math.inf
    if np.array_equal(np.sort(baseline), np.sort(current)):
        p_value = 1.0  # mannwhitneyu warns on all-tied input; identical series are not a change
    else:
        p_value = float(mannwhitneyu(current, baseline, alternative="two-sided").pvalue)
    large = abs(ratio - 1.0) > threshold
    if min_p_value(len(baseline), len(current)) >= alpha:
        verdict = "inconclusive"
    elif large and p_value < alpha:
        verdict = "slower" if ratio > 1.0 else "faster"
    elif large:
        verdict = "inconclusive"
    else:
        verdict = "same"
    return ratio, p_value, verdict


def _series(result: CaseResult) -> list[tuple[str, tuple[float, ...]]]:
    """(stage, samples) for end-to-end then every timed stage, in execution order."""
    out = [(END_TO_END, result.end_to_end_samples_ms)]
    out += [(s.name, s.samples_ms) for s in result.stages if s.samples_ms]
    return out


def compare_cases(
    baseline: Iterable[CaseResult],
    current: Iterable[CaseResult],
    *,
    threshold: float = 0.10,
    alpha: float = 0.01,
    what: str = "the two result sets",
) -> list[StageComparison]:
    """Compare cases matched by case key (model, batch, input, precision, device).

    Only cases that are ``ok`` on both sides are compared. Raises ValueError when none match.
    """
    base = {case_key(r.spec): r for r in baseline if r.status == "ok"}
    out: list[StageComparison] = []
    matched = 0
    for result in current:
        key = case_key(result.spec)
        old = base.get(key)
        if old is None or result.status != "ok":
            continue
        matched += 1
        old_series = dict(_series(old))
        for stage, samples in _series(result):
            before = old_series.get(stage, ())
            if not before or not samples:
                continue
            ratio, p_value, verdict = compare_samples(
                before, samples, threshold=threshold, alpha=alpha
            )
            out.append(
                StageComparison(
                    model=result.spec.model,
                    case_key=key,
                    stage=stage,
                    baseline_ms=float(np.median(before)),
                    current_ms=float(np.median(samples)),
                    ratio=ratio,
                    p_value=p_value,
                    verdict=verdict,
                    n_baseline=len(before),
                    n_current=len(samples),
                )
            )
    if matched == 0:
        raise ValueError(f"{what} have no successful cases in common (same model, batch size, "
                         "input size, precision and device)")
    return out


def compare_runs(
    store: Store,
    baseline_id: int,
    current_id: int,
    threshold: float = 0.10,
    alpha: float = 0.01,
) -> list[StageComparison]:
    """Compare two stored runs per case and stage; unknown ids raise the store's KeyError."""
    return compare_cases(
        store.cases(baseline_id),
        store.cases(current_id),
        threshold=threshold,
        alpha=alpha,
        what=f"baseline run {baseline_id} and run {current_id}",
    )


def ranked(comparisons: Iterable[StageComparison]) -> list[StageComparison]:
    """Regressions first (largest first), then inconclusive, faster (largest first), same."""
    def key(c: StageComparison) -> tuple[int, float]:
        ratio = _finite(c.ratio)
        return _RANK[c.verdict], ratio if c.verdict == "faster" else -ratio

    return sorted(comparisons, key=key)


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0
