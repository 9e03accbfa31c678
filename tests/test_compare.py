"""The gate's statistics (vlbench.compare): rounds as the unit, exact rank-test pieces, verdicts,
the smallest detectable slowdown, run-level noise and deterministic changes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from contention_records import QUIET
from scipy.stats import mannwhitneyu

from vlbench.compare import (
    compare_cases,
    compare_rounds,
    detectable_slowdown,
    estimate_run_noise,
    ranked,
    round_values,
)
from vlbench.rank_test import _ci_rank, _u_counts, min_p_value
from vlbench.results import CaseResult, CaseSpec, StageResult
from vlbench.stats import summarize


def _round(median: float, round_: int = 0, model: str = "m", side: str | None = None,
           flops: int = 10, visual_ms: float | None = None) -> CaseResult:
    """One round's result whose stage and end-to-end medians are ``median`` (few samples)."""
    samples = (median * 0.99, median, median * 1.01)
    vis = tuple(v * (visual_ms or median) / median for v in samples)
    stage = StageResult(name="visual", kind="patch", parent=None, timing=summarize(vis), calls=1,
                        flops=flops, params=5, samples_ms=vis, workload={"tokens": 7})
    return CaseResult(spec=CaseSpec(model, 1, (32, 32), 4, "fp32", "cpu", round=round_,
                                    side=side),
                      status="ok", end_to_end=summarize(samples), end_to_end_samples_ms=samples,
                      stages=(stage,), flops_total=flops, params_total=5, contention=QUIET)


def _side(medians: np.ndarray, **kw) -> list[CaseResult]:  # noqa: ANN003
    return [_round(float(m), i, **kw) for i, m in enumerate(medians)]


def test_u_distribution_is_exact() -> None:
    """The DP counts match the null distribution: they sum to C(n1+n2, n1), and the CDF at small
    U equals scipy's exact Mann-Whitney p (one-sided, no ties)."""
    for n1, n2 in ((3, 4), (5, 5), (6, 7)):
        counts = _u_counts(n1, n2)
        total = math.comb(n1 + n2, n1)
        assert sum(counts) == total and len(counts) == n1 * n2 + 1
        base = np.arange(n1, dtype=float)
        cur = np.arange(n2, dtype=float) + n1 - 1.5  # overlap of one value: U = 1
        u = sum(int(c < b) for b in base for c in cur)
        p = mannwhitneyu(cur, base, alternative="greater", method="exact").pvalue
        assert sum(counts[: u + 1]) / total == pytest.approx(p)


def test_minimum_rounds() -> None:
    assert min_p_value(4, 4) == pytest.approx(2 / 70)  # > 0.01: 4 against 4 can never pass
    assert min_p_value(5, 5) < 0.01
    assert _ci_rank(4, 4, 0.01) is None and _ci_rank(5, 5, 0.01) == 0
    assert _ci_rank(10, 10, 0.05) > 10


def test_clear_slowdown_is_slower_with_interval() -> None:
    rng = np.random.default_rng(0)
    base = 100 * np.exp(rng.normal(0, 0.01, 6))
    stats = compare_rounds(base, 1.2 * 100 * np.exp(rng.normal(0, 0.01, 6)))
    assert stats["verdict"] == "slower" and stats["p_value"] < 0.01
    assert stats["ci_low"] < 1.2 < stats["ci_high"] and 1.15 < stats["ratio"] < 1.25
    assert stats["detectable"] < 0.1  # 1% noise over 6 rounds: a small slowdown is visible
    faster = compare_rounds(base, 0.7 * base)
    assert faster["verdict"] == "faster"


def test_same_needs_enough_rounds_and_quiet_data() -> None:
    rng = np.random.default_rng(1)
    quiet = 100 * np.exp(rng.normal(0, 0.01, 8))
    assert compare_rounds(quiet, quiet[::-1])["verdict"] == "same"
    four = compare_rounds(quiet[:4], 2 * quiet[:4])  # doubled, yet 4 rounds cannot say so
    assert four["verdict"] == "inconclusive" and "cannot reach" in four["reason"]
    assert math.isinf(four["detectable"])
    noisy = 100 * np.exp(rng.normal(0, 0.15, 12))
    loud = compare_rounds(noisy[:6], noisy[6:])
    assert loud["verdict"] == "inconclusive" and loud["detectable"] > 0.15


def test_detectable_shrinks_with_rounds_and_grows_with_drift() -> None:
    few = detectable_slowdown(5, 5, 0.03, 0.0, 0.01)
    many = detectable_slowdown(20, 20, 0.03, 0.0, 0.01)
    drift = detectable_slowdown(20, 20, 0.03, 0.05, 0.01)
    assert many < few and drift > many and math.isinf(detectable_slowdown(4, 4, 0.03, 0, 0.01))


def test_separate_runs_need_the_run_level_noise() -> None:
    """A 20% step between two separate runs is not called slower while the run-to-run drift is
    unknown; with a small measured drift it is, with a drift as large as the step it is not."""
    rng = np.random.default_rng(2)
    base = 100 * np.exp(rng.normal(0, 0.01, 6))
    cur = 120 * np.exp(rng.normal(0, 0.01, 6))
    unknown = compare_rounds(base, cur, interleaved=False)
    assert unknown["verdict"] == "inconclusive" and "drift unknown" in unknown["reason"]
    assert compare_rounds(base, cur, interleaved=False, run_noise=0.02)["verdict"] == "slower"
    drifty = compare_rounds(base, cur, interleaved=False, run_noise=0.10)
    assert drifty["verdict"] == "inconclusive" and drifty["p_value"] > 0.01


def test_estimate_run_noise_recovers_offsets() -> None:
    rng = np.random.default_rng(3)
    runs = []
    for _ in range(40):
        offset = rng.normal(0, 0.05)
        runs.append(_side(100 * np.exp(offset + rng.normal(0, 0.01, 6))))
    noise = estimate_run_noise(runs)
    assert set(noise) == {("m|1|32x32|4|fp32|cpu", "end_to_end"),
                          ("m|1|32x32|4|fp32|cpu", "visual")}
    assert all(0.035 < v < 0.065 for v in noise.values())
    assert estimate_run_noise(runs[:2]) == {}  # two runs cannot tell drift from change


def test_compare_cases_matches_rounds_and_reports_work_changes() -> None:
    base = _side(np.full(5, 100.0) * np.linspace(1, 1.02, 5), side="A")
    cur = _side(np.full(5, 130.0) * np.linspace(1, 1.02, 5), side="B", flops=12)
    cmp = compare_cases(base, cur, interleaved=True)
    assert {c.stage for c in cmp.stages} == {"end_to_end", "visual"}
    assert all(c.verdict == "slower" and c.n_baseline == 5 for c in cmp.stages)
    assert {(ch.stage, ch.what) for ch in cmp.changes} == {("end_to_end", "flops"),
                                                             ("visual", "flops")}
    assert cmp.exit_status() == 1
    same = compare_cases(base, base, interleaved=True)
    assert not same.changes and same.exit_status(fail_on_flops_change=True) == 0
    assert compare_cases(base, cur, interleaved=True).exit_status() == 1
    with pytest.raises(ValueError, match="no successful cases in common"):
        compare_cases(base, _side(np.full(5, 1.0), model="other"))


def test_exit_status_rules() -> None:
    one = compare_cases(_side(np.array([100.0])), _side(np.array([100.0])))
    assert one.count("inconclusive") == len(one.stages)
    assert one.exit_status() == 0 and one.exit_status(strict=True) == 1
    changed = compare_cases(_side(np.array([100.0])), _side(np.array([100.0]), flops=11))
    assert changed.exit_status() == 0 and changed.exit_status(fail_on_flops_change=True) == 1


def test_round_values_orders_by_round_and_skips_failures() -> None:
    results = [_round(3.0, 2), _round(1.0, 0), _round(2.0, 1),
               CaseResult(spec=CaseSpec("m", 1, (32, 32), 4, "fp32", "cpu", round=3),
                          status="oom", message="x")]
    values = round_values(results)["m|1|32x32|4|fp32|cpu"]
    assert values["end_to_end"] == [1.0, 2.0, 3.0]


def test_ranked_puts_regressions_first() -> None:
    cmp = compare_cases(_side(np.linspace(100, 101, 6)),
                        _side(np.linspace(100, 101, 6), visual_ms=150.0), interleaved=True)
    assert ranked(cmp.stages)[0].stage == "visual" and ranked(cmp.stages)[0].verdict == "slower"
