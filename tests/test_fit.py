"""The scaling fit recovers known terms from synthetic timings."""

from __future__ import annotations

import numpy as np
import pytest

from vlbench.fit import fit_quadratic


def test_recovers_known_terms_from_noisy_timings():
    rng = np.random.default_rng(0)
    n = np.array([64, 128, 256, 512, 1024, 2048, 4096], dtype=float)
    a, b, c = 3.0, 0.05, 2e-5
    truth = a + b * n + c * n**2
    noisy = truth * (1 + rng.normal(0, 0.01, size=n.shape))
    fit = fit_quadratic(n, noisy)
    assert fit.c == pytest.approx(c, rel=0.1)
    assert fit.b == pytest.approx(b, rel=0.1)
    assert fit.a == pytest.approx(a, abs=2.0)
    assert fit.r2 > 0.999
    shares = fit.shares_at(4096)
    assert shares["quadratic"] > shares["linear"]  # at 4k tokens attention dominates here
    assert sum(shares.values()) == pytest.approx(1.0)


def test_terms_are_never_negative():
    n = [10, 20, 40, 80]
    fit = fit_quadratic(n, [5.0, 5.0, 5.0, 5.0])  # a constant cost
    assert fit.b == pytest.approx(0, abs=1e-9) and fit.c == pytest.approx(0, abs=1e-12)
    assert fit.a == pytest.approx(5.0)
    linear = fit_quadratic(n, [2 * x for x in n])  # lstsq alone could give a tiny negative term
    assert min(linear.a, linear.b, linear.c) >= 0 and linear.b == pytest.approx(2.0)


def test_needs_three_distinct_sizes():
    with pytest.raises(ValueError, match="three distinct sizes"):
        fit_quadratic([1, 1, 2], [1.0, 1.0, 2.0])
