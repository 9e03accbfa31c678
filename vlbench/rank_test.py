"""The exact pieces of the two-sided Mann-Whitney test the gate runs on round medians
(``vlbench.compare``): the smallest p-value a sample size allows, the exact null distribution of
U, and the Hodges-Lehmann interval of a ratio that inverts the test.

Why exact: a gate compares 5 to 10 rounds per side, where the normal approximation is poor and
the smallest attainable p decides whether ``alpha`` can be reached at all.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np


def min_p_value(n1: int, n2: int) -> float:
    """The smallest two-sided Mann-Whitney p any data can give for these sample sizes.

    Complete separation (U = 0) has probability 1 / C(n1 + n2, n1) under the null, twice that
    two-sided; below this the test cannot go, so ``alpha`` under it is out of reach.
    """
    if n1 < 1 or n2 < 1:
        return 1.0
    return min(1.0, 2.0 / math.comb(n1 + n2, n1))


@lru_cache(maxsize=256)
def _u_counts(n1: int, n2: int) -> tuple[int, ...]:
    """Number of arrangements giving each U = 0 .. n1 n2 under the null (no ties)."""
    # f(m, n) over u, by the recursion f(m, n, u) = f(m - 1, n, u - n) + f(m, n - 1, u)
    table = {(0, n): (1,) for n in range(n2 + 1)}
    for m in range(1, n1 + 1):
        table[(m, 0)] = (1,)
        for n in range(1, n2 + 1):
            size = m * n + 1
            counts = [0] * size
            for u, c in enumerate(table[(m - 1, n)]):
                counts[u + n] += c
            for u, c in enumerate(table[(m, n - 1)]):
                counts[u] += c
            table[(m, n)] = tuple(counts)
    return table[(n1, n2)]


def _ci_rank(n1: int, n2: int, alpha: float) -> int | None:
    """The k of the Hodges-Lehmann interval [d(k+1), d(n1 n2 - k)] at confidence >= 1 - alpha:
    the largest k with P(U <= k) <= alpha / 2; None when even k = 0 is too likely."""
    counts = _u_counts(n1, n2)
    total = math.comb(n1 + n2, n1)
    cumulative, k = 0, None
    for u, c in enumerate(counts):
        cumulative += c
        if cumulative / total > alpha / 2:
            break
        k = u
    return k


def ratio_interval(base_log: np.ndarray, cur_log: np.ndarray, alpha: float) -> tuple[float, float]:
    """Distribution-free confidence interval of current / baseline from log round values."""
    k = _ci_rank(len(base_log), len(cur_log), alpha)
    if k is None:
        return 0.0, math.inf  # the rounds cannot bound the ratio at this confidence
    diffs = np.sort((cur_log[None, :] - base_log[:, None]).ravel())
    return float(np.exp(diffs[k])), float(np.exp(diffs[len(diffs) - 1 - k]))


def rank_p_value(base: np.ndarray, cur: np.ndarray) -> float:
    from scipy.stats import mannwhitneyu

    if np.array_equal(np.sort(base), np.sort(cur)):
        return 1.0  # identical rounds are no change (and all-tied input makes scipy warn)
    method = "exact" if len(np.unique(np.concatenate([base, cur]))) == len(base) + len(cur) \
        else "asymptotic"
    return float(mannwhitneyu(cur, base, alternative="two-sided", method=method).pvalue)
