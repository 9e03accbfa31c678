"""Robust statistics of a timing series.

Latency distributions are skewed and carry outliers (preemption, frequency changes, allocator
growth), so the headline number is the median and its confidence interval is built from order
statistics, which holds for any continuous distribution without assuming normality.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import binom

from vlbench.results import Summary

#: Coefficient of variation above which a series is flagged as unstable: past 10 % the median
#: is still usable but the machine was evidently not quiet, and comparisons deserve suspicion.
UNSTABLE_CV = 0.10


def ci_median_indices(n: int, confidence: float) -> tuple[int, int, float]:
    """0-based indices (lo, hi) of the sorted sample bounding the median, and their exact coverage.

    Picks the narrowest symmetric pair x_(j) .. x_(n+1-j) whose binomial coverage still reaches
    ``confidence``. When even (min, max) falls short (small n), returns (0, n-1) with the coverage
    it really has, so the record states honestly what the sample count gives.
    """
    if n < 1:
        raise ValueError(f"need at least one sample, got n={n}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    best: tuple[int, int, float] | None = None
    for j in range(1, (n + 1) // 2 + 1):  # 1-based; coverage shrinks as j grows
        k = n + 1 - j
        coverage = float(binom.cdf(k - 1, n, 0.5) - binom.cdf(j - 1, n, 0.5))
        if coverage < confidence:
            break
        best = (j - 1, k - 1, coverage)
    if best is None:
        return 0, n - 1, 1.0 - 2.0 * 0.5**n
    return best


def summarize(samples_ms: Sequence[float], confidence: float = 0.95) -> Summary:
    """Median-centred summary of one timing series (milliseconds)."""
    x = np.sort(np.asarray(samples_ms, dtype=float))
    n = int(x.size)
    if n == 0:
        raise ValueError("cannot summarize an empty series of timings")
    if not np.all(np.isfinite(x)):
        raise ValueError("timings must be finite (got NaN or inf)")
    q25, median, q75, p90 = np.percentile(x, [25, 50, 75, 90])
    mean = float(x.mean())
    cv = _cv(x, mean)
    lo, hi, coverage = ci_median_indices(n, confidence)
    return Summary(
        median_ms=float(median),
        iqr_ms=float(q75 - q25),
        p90_ms=float(p90),
        mean_ms=mean,
        cv=cv,
        n=n,
        ci_low_ms=float(x[lo]),
        ci_high_ms=float(x[hi]),
        ci_coverage=coverage,
        unstable=cv > UNSTABLE_CV,
    )


def _cv(x: np.ndarray, mean: float) -> float:
    """Sample std over mean; 0.0 when undefined (one sample, or a zero mean)."""
    if x.size < 2 or mean == 0.0:
        return 0.0
    return float(np.std(x, ddof=1) / mean)
