"""Cost models fitted to measured times.

Scaling: a stage's time against a token count n is fitted as ``a + b*n + c*n**2`` by least
squares, so a report can say how much is fixed cost, how much grows linearly (projections,
feed-forward) and how much quadratically (attention), rather than one exponent that blends them.
At 300 tokens attention is ~6% of a BERT-base layer's FLOPs, so a sweep must reach thousands of
tokens before ``c`` is visible above the noise; the fit reports each term's share at the largest
n so a reader sees whether it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .results import CaseResult


@dataclass(frozen=True)
class QuadraticFit:
    """time_ms ~ a + b*n + c*n**2 (least squares, non-negative terms)."""

    a: float
    b: float
    c: float
    r2: float
    n_max: int

    def predict(self, n: float | np.ndarray) -> float | np.ndarray:
        return self.a + self.b * n + self.c * n**2

    def shares_at(self, n: float) -> dict[str, float]:
        """How much of the predicted time at ``n`` each term contributes."""
        parts = {"constant": self.a, "linear": self.b * n, "quadratic": self.c * n**2}
        total = sum(parts.values()) or 1.0
        return {k: v / total for k, v in parts.items()}


def checked_series(n: Sequence[float], time_ms: Sequence[float], *, distinct: int,
                   what: str) -> tuple[np.ndarray, np.ndarray]:
    """(sizes, times) as float arrays, refusing what no fit of ``distinct`` terms can use."""
    x = np.asarray(n, dtype=float)
    y = np.asarray(time_ms, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError("n and time_ms must be equal-length 1-d sequences")
    if len(np.unique(x)) < distinct:
        count = {2: "two", 3: "three"}.get(distinct, str(distinct))
        raise ValueError(f"{what} needs at least {count} distinct sizes")
    return x, y


def fit_quadratic(n: Sequence[float], time_ms: Sequence[float]) -> QuadraticFit:
    """Least squares with each term constrained to be non-negative (a cost cannot shrink with
    size): the unconstrained solution, or the best fit on a subset of the terms when a term
    would come out negative. Needs at least three distinct sizes."""
    x, y = checked_series(n, time_ms, distinct=3, what="a quadratic fit")
    design = np.stack([np.ones_like(x), x, x**2], axis=1)
    best: tuple[float, np.ndarray] | None = None
    for mask in ((1, 1, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 0, 0), (0, 1, 0), (0, 0, 1)):
        cols = [i for i, keep in enumerate(mask) if keep]
        coef, *_ = np.linalg.lstsq(design[:, cols], y, rcond=None)
        if (coef < 0).any():
            continue
        full = np.zeros(3)
        full[cols] = coef
        residual = float(((design @ full - y) ** 2).sum())
        if best is None or residual < best[0] - 1e-12:
            best = (residual, full)
    assert best is not None  # a single non-negative column always fits when y >= 0
    residual, (a, b, c) = best
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - residual / total if total > 0 else 1.0
    return QuadraticFit(float(a), float(b), float(c), r2, int(x.max()))


@dataclass(frozen=True)
class ScalingFit:
    """Per-stage fits over the cases of one model (one batch size and precision) whose token
    count varies: n = image + text tokens, the sequence the fusion sees."""

    model: str
    batch_size: int
    precision: str
    n: tuple[int, ...]
    stages: dict[str, QuadraticFit]


def fit_token_scaling(results: Sequence[CaseResult]) -> list[ScalingFit]:
    """A ``ScalingFit`` for every model of a run measured at three or more token counts (a
    suite's ``sweep``); other cases are left out, a run without a sweep gives an empty list."""
    groups: dict[tuple[str, int, str], list[CaseResult]] = {}
    for r in results:
        if r.status == "ok" and r.tokens.get("image", -1) >= 0:
            key = (r.spec.model, r.spec.batch_size, r.spec.precision)
            groups.setdefault(key, []).append(r)
    fits = []
    for (model, batch, precision), cases in groups.items():
        n = [r.tokens["image"] + r.tokens["text"] for r in cases]
        if len(set(n)) < 3:
            continue
        stages = {}
        for name in [s.name for s in cases[0].stages if s.timing is not None]:
            times = [_stage_ms(r, name) for r in cases]
            if None not in times:
                stages[name] = fit_quadratic(n, times)
        fits.append(ScalingFit(model, batch, precision, tuple(sorted(set(n))), stages))
    return fits


def _stage_ms(result: CaseResult, name: str) -> float | None:
    for stage in result.stages:
        if stage.name == name and stage.timing is not None:
            return stage.timing.median_ms
    return None


def scaling_table(fits: Sequence[ScalingFit]) -> str:
    """The fitted terms per stage, with the quadratic term's share of the time at the largest n:
    whether attention's n^2 already shows at the sizes measured."""
    lines = []
    for fit in fits:
        lines.append(f"scaling fit: {fit.model} b{fit.batch_size} {fit.precision}, time ~ a + b*n "
                     f"+ c*n^2, n = image+text tokens {', '.join(map(str, fit.n))}")
        lines.append(f"{'stage':<24} {'a ms':>9} {'b ms/token':>11} {'c ms/token^2':>13} "
                     f"{'quad share':>10} {'r2':>6}")
        for name, q in fit.stages.items():
            share = q.shares_at(q.n_max)["quadratic"]
            lines.append(f"{name:<24} {q.a:>9.3f} {q.b:>11.3e} {q.c:>13.3e} {share:>10.1%} "
                         f"{q.r2:>6.3f}")
    return "\n".join(lines)
