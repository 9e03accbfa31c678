"""The summary statistics must agree with numpy and the median CI must cover what it claims."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom

from vlbench.stats import UNSTABLE_CV, ci_median_indices, summarize

SIZES = (5, 6, 10, 20, 50, 101)


def brute_force_ci(n: int, confidence: float) -> tuple[int, int, float]:
    """Independent reference: try every symmetric pair, keep the tightest that reaches the level."""
    pairs = []
    for j in range(1, n + 1):
        k = n + 1 - j
        if j > k:
            continue
        coverage = sum(binom.pmf(i, n, 0.5) for i in range(j, k))  # P(j <= B < k)
        pairs.append((j, k, coverage))
    ok = [p for p in pairs if p[2] >= confidence]
    if not ok:
        return 0, n - 1, 1.0 - 2.0 * 0.5**n
    j, k, coverage = max(ok, key=lambda p: p[0])
    return j - 1, k - 1, coverage


@pytest.mark.parametrize("n", [1, 2, 7, 33, 64, 200])
def test_location_and_spread_match_numpy(n: int) -> None:
    x = np.random.default_rng(n).lognormal(mean=2.0, sigma=0.3, size=n)
    s = summarize(list(x))
    assert s.n == n
    assert s.median_ms == pytest.approx(np.median(x))
    assert s.iqr_ms == pytest.approx(np.percentile(x, 75) - np.percentile(x, 25))
    assert s.p90_ms == pytest.approx(np.percentile(x, 90))
    assert s.mean_ms == pytest.approx(x.mean())
    expected_cv = x.std(ddof=1) / x.mean() if n > 1 else 0.0
    assert s.cv == pytest.approx(expected_cv)


def test_summary_is_plain_python_floats() -> None:
    """Numpy scalars would leak into the JSON records."""
    s = summarize([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    for value in (s.median_ms, s.iqr_ms, s.p90_ms, s.mean_ms, s.cv, s.ci_low_ms, s.ci_high_ms):
        assert type(value) is float
    assert type(s.n) is int and type(s.unstable) is bool


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("confidence", [0.90, 0.95, 0.99])
def test_ci_indices_match_brute_force(n: int, confidence: float) -> None:
    lo, hi, coverage = ci_median_indices(n, confidence)
    ref_lo, ref_hi, ref_coverage = brute_force_ci(n, confidence)
    assert (lo, hi) == (ref_lo, ref_hi)
    assert coverage == pytest.approx(ref_coverage, abs=1e-12)


def test_ci_indices_known_table_values() -> None:
    """Textbook values: n=20 gives x(6)..x(15) at 95.9 %, n=10 gives x(2)..x(9) at 97.9 %."""
    assert ci_median_indices(20, 0.95)[:2] == (5, 14)
    assert ci_median_indices(20, 0.95)[2] == pytest.approx(0.9586, abs=1e-4)
    assert ci_median_indices(10, 0.95)[:2] == (1, 8)


@pytest.mark.parametrize("n", [1, 2, 5])
def test_small_n_reports_min_max_with_honest_coverage(n: int) -> None:
    x = [float(v) for v in np.random.default_rng(0).normal(10, 1, n)]
    s = summarize(x)
    assert (s.ci_low_ms, s.ci_high_ms) == (min(x), max(x))
    assert s.ci_coverage == pytest.approx(1 - 2 * 0.5**n)
    assert s.ci_coverage < 0.95


@pytest.mark.parametrize("n", [6, 10, 20, 50, 101])
def test_ci_reaches_confidence_and_contains_median(n: int) -> None:
    x = np.random.default_rng(n).exponential(5.0, n)
    s = summarize(list(x))
    assert s.ci_coverage >= 0.95
    assert s.ci_low_ms <= s.median_ms <= s.ci_high_ms
    lo, hi, _ = ci_median_indices(n, 0.95)
    assert (s.ci_low_ms, s.ci_high_ms) == (np.sort(x)[lo], np.sort(x)[hi])


def test_ci_is_tightest_pair_reaching_confidence() -> None:
    """Moving one step inward must fall below the level, or the interval is wider than needed."""
    for n in range(6, 120):
        lo, hi, coverage = ci_median_indices(n, 0.95)
        assert coverage >= 0.95
        if lo + 1 <= hi - 1:
            j, k = lo + 2, hi  # 1-based ranks of the next pair inward
            inner = binom.cdf(k - 1, n, 0.5) - binom.cdf(j - 1, n, 0.5)
            assert inner < 0.95


def test_monte_carlo_coverage_matches_reported() -> None:
    rng = np.random.default_rng(12345)
    true_median = math.log(2.0)  # exponential(scale=1)
    draws, n = 2000, 20
    hits = 0
    coverage = None
    for _ in range(draws):
        s = summarize(list(rng.exponential(1.0, n)))
        hits += s.ci_low_ms <= true_median <= s.ci_high_ms
        coverage = s.ci_coverage
    assert coverage is not None
    assert abs(hits / draws - coverage) < 0.03


def test_unstable_flag() -> None:
    steady = [10.0, 10.1, 9.9, 10.05, 9.95, 10.0]
    noisy = [10.0, 14.0, 7.0, 12.0, 8.0, 11.0]
    assert summarize(steady).cv < UNSTABLE_CV and not summarize(steady).unstable
    assert summarize(noisy).cv > UNSTABLE_CV and summarize(noisy).unstable


def test_single_sample_is_stable_with_zero_cv() -> None:
    s = summarize([3.5])
    assert (s.median_ms, s.cv, s.unstable, s.n) == (3.5, 0.0, False, 1)


def test_empty_raises() -> None:
    with pytest.raises(ValueError, match="empty"):
        summarize([])


@pytest.mark.parametrize("confidence", [0.0, 1.0, 1.5])
def test_bad_confidence_raises(confidence: float) -> None:
    with pytest.raises(ValueError, match="confidence"):
        ci_median_indices(10, confidence)
