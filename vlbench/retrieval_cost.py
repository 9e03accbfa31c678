"""The retrieval cost model: what ranking Q queries against a gallery of N items costs.

Every architecture pays an offline step once per gallery and a query step per query:

    cost(Q, N) = encode(N) + Q * query(N)

A dual encoder's encode(N) is N tower forwards and its query(N) one tower forward plus an
(N x E) product and a sort: nearly flat in N. A fusion model caches only the embedder's output,
so its encode(N) is cheap (patches) or dear (a region detector), and its query(N) is N joint
forwards. Each term is fitted as ``a + b*N`` (non-negative, on relative error so that N = 1 and
N = 1000 weigh alike on the log-log charts), and the crossovers follow in closed form: for Q
queries the N where two models cost the same, for N items the Q. With the gallery encoding
counted as free (query(N) alone) a dual encoder is cheaper at every N, so that comparison is
computed too and shows no crossover where there is none. ``retrieval_summary`` is what
``vlbench run`` prints after the table of a run with retrieval cases: the fitted terms per model
and direction, and where the curves cross in N (for given Q) and in Q (for given N); the report's
section draws the same curves (``vlbench.report.retrieval``).

Pure (numpy and scipy only): the report imports it without torch or the model packages.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

from .fit import checked_series
from .results import CaseResult

TASKS = ("retrieval-t2i", "retrieval-i2t")
TASK_TEXT = {"retrieval-t2i": "text to image (a text query, a gallery of N images)",
             "retrieval-i2t": "image to text (an image query, a gallery of N texts)"}
#: query counts and gallery sizes the summaries state crossovers at
QUERY_COUNTS = (1, 10, 100, 1000)
GALLERY_SIZES = (1, 10, 100, 1000, 10_000)


@dataclass(frozen=True)
class LinearCost:
    """time_ms ~ a + b*N: ``a`` ms fixed, ``b`` ms per gallery item; fitted on N in
    [n_min, n_max], where ``max_rel_error`` is the worst relative residual."""

    a: float
    b: float
    n_min: int
    n_max: int
    max_rel_error: float

    def __call__(self, n: float) -> float:
        return self.a + self.b * n


def fit_linear_cost(n: Sequence[float], time_ms: Sequence[float]) -> LinearCost:
    """Non-negative least squares on relative residuals ((a + b*n - t) / t): a cost cannot
    shrink with N, and a fit on absolute error would let N = 1000 decide the fixed term alone.
    Needs two distinct sizes and positive times."""
    x, y = checked_series(n, time_ms, distinct=2, what="a linear cost fit")
    if (y <= 0).any():
        raise ValueError("times must be positive")
    design = np.stack([np.ones_like(x), x], axis=1) / y[:, None]
    (a, b), _ = nnls(design, np.ones_like(y))
    rel = np.abs((a + b * x - y) / y)
    return LinearCost(float(a), float(b), int(x.min()), int(x.max()), float(rel.max()))


@dataclass(frozen=True)
class CostPoint:
    """One measured gallery size: the offline step's and one query's medians."""

    n: int
    encode_ms: float
    query_ms: float


@dataclass(frozen=True)
class CostCurve:
    """One model in one direction: measured points and, from two sizes on, the fitted terms.
    ``strategy``: "cached" (dual encoder: gallery embeddings cached, a query is a product) or
    "joint" (fusion: a joint forward per pair)."""

    label: str
    model: str
    task: str
    device: str
    precision: str
    strategy: str
    points: tuple[CostPoint, ...]
    encode: LinearCost | None
    query: LinearCost | None

    @property
    def fitted(self) -> bool:
        return self.encode is not None and self.query is not None

    def total(self, queries: float, n: float) -> float:
        """encode(N) + Q * query(N) from the fits."""
        if self.encode is None or self.query is None:
            raise ValueError(f"{self.label}: fewer than two gallery sizes, no fit")
        return self.encode(n) + queries * self.query(n)


def cost_curves(results: Iterable[CaseResult],
                label: Callable[[CaseResult], str] | None = None) -> list[CostCurve]:
    """A curve per (label, task, device, precision) from the ok retrieval cases: encode(N) is
    the ``gallery`` stage's median, query(N) the end-to-end median of the query step."""
    groups: dict[tuple[str, str, str, str], dict[int, CaseResult]] = {}
    for r in results:
        if r.spec.task not in TASKS or r.status != "ok" or r.end_to_end is None:
            continue
        if _stage_median(r, "gallery") is None:
            continue
        name = label(r) if label else r.spec.model
        key = (name, r.spec.task, r.spec.device, r.spec.precision)
        groups.setdefault(key, {})[r.spec.batch_size] = r  # a later attempt replaces
    curves = []
    for (name, task, device, precision), by_n in groups.items():
        points = tuple(
            CostPoint(n, _stage_median(r, "gallery") or 0.0, r.end_to_end.median_ms)  # type: ignore[union-attr]
            for n, r in sorted(by_n.items())
        )
        first = next(iter(by_n.values()))
        encode = query = None
        if len(points) >= 2:
            ns = [p.n for p in points]
            encode = fit_linear_cost(ns, [p.encode_ms for p in points])
            query = fit_linear_cost(ns, [p.query_ms for p in points])
        curves.append(CostCurve(
            label=name, model=first.spec.model, task=task, device=device, precision=precision,
            strategy=str(first.settings.get("retrieval", {}).get("strategy", "?")),
            points=points, encode=encode, query=query,
        ))
    return sorted(curves, key=lambda c: (TASKS.index(c.task), c.label))


def _stage_median(result: CaseResult, name: str) -> float | None:
    for stage in result.stages:
        if stage.name == name and stage.timing is not None:
            return stage.timing.median_ms
    return None


def crossover_n(first: CostCurve, second: CostCurve, queries: float, *,
                gallery_free: bool = False) -> float | None:
    """The gallery size N >= 1 where Q queries cost the same on both models, or None where one
    is cheaper (or they are equal) at every N >= 1. ``gallery_free``: compare the query steps
    alone, as if the gallery's encoding cost nothing."""
    e1, q1, e2, q2 = _fits(first, second)
    weight = 0.0 if gallery_free else 1.0
    alpha = weight * (e1.a - e2.a) + queries * (q1.a - q2.a)
    beta = weight * (e1.b - e2.b) + queries * (q1.b - q2.b)
    if beta == 0:
        return None
    root = -alpha / beta
    return float(root) if root >= 1 else None


def crossover_q(first: CostCurve, second: CostCurve, n: float) -> float | None:
    """The query count Q >= 1 where both models cost the same on N items, or None where one
    is cheaper (or they are equal) for every Q >= 1."""
    e1, q1, e2, q2 = _fits(first, second)
    d_encode = e1(n) - e2(n)
    d_query = q1(n) - q2(n)
    if d_query == 0:
        return None
    root = -d_encode / d_query
    return float(root) if root >= 1 else None


def cheaper(first: CostCurve, second: CostCurve, queries: float, n: float, *,
            gallery_free: bool = False) -> CostCurve:
    """The model with the lower fitted cost at (Q, N)."""
    def cost(c: CostCurve) -> float:
        assert c.query is not None
        return queries * c.query(n) if gallery_free else c.total(queries, n)

    return first if cost(first) <= cost(second) else second


def _fits(first: CostCurve, second: CostCurve) -> tuple[LinearCost, ...]:
    if not (first.fitted and second.fitted):
        raise ValueError("crossovers need fitted curves (two gallery sizes or more)")
    return first.encode, first.query, second.encode, second.query  # type: ignore[return-value]


@dataclass(frozen=True)
class Crossover:
    """Where two models of one direction trade places: N for each Q (and with the gallery
    free), Q for each N. None: no crossover, ``cheaper`` everywhere."""

    first: CostCurve
    second: CostCurve
    n_for_q: tuple[tuple[int, float | None], ...]
    n_gallery_free: float | None
    q_for_n: tuple[tuple[int, float | None], ...]

    @property
    def measured_n(self) -> tuple[int, int]:
        """The gallery sizes both fits rest on: a crossover outside them is extrapolated."""
        f, s = self.first.query, self.second.query
        assert f is not None and s is not None
        return max(f.n_min, s.n_min), min(f.n_max, s.n_max)


def crossovers(curves: Sequence[CostCurve], queries: Sequence[int] = QUERY_COUNTS,
               sizes: Sequence[int] = GALLERY_SIZES) -> list[Crossover]:
    """Every pair of fitted curves of one direction, device and precision whose strategies
    differ (a dual encoder against a fusion model); every pair when none differ."""
    fitted = [c for c in curves if c.fitted]
    pairs = [(a, b) for a, b in itertools.combinations(fitted, 2)
             if (a.task, a.device, a.precision) == (b.task, b.device, b.precision)]
    mixed = [(a, b) for a, b in pairs if a.strategy != b.strategy]
    out = []
    for a, b in mixed or pairs:
        if a.strategy == "joint" and b.strategy == "cached":
            a, b = b, a  # the dual encoder first
        out.append(Crossover(
            first=a, second=b,
            n_for_q=tuple((q, crossover_n(a, b, q)) for q in queries),
            n_gallery_free=crossover_n(a, b, 1, gallery_free=True),
            q_for_n=tuple((n, crossover_q(a, b, n)) for n in sizes),
        ))
    return out


def describe_n(c: Crossover, queries: float, root: float | None, *,
               gallery_free: bool = False) -> str:
    """'N* = 37: vilt-b32 cheaper below, clip-vit-b32 above' or 'none: clip-vit-b32 cheaper
    at every N' (with '(extrapolated)' outside the measured sizes)."""
    if root is None:
        best = cheaper(c.first, c.second, queries, 1, gallery_free=gallery_free)
        return f"none: {best.label} cheaper at every N"
    below = cheaper(c.first, c.second, queries, max(1.0, root / 2), gallery_free=gallery_free)
    above = c.second if below is c.first else c.first
    lo, hi = c.measured_n
    note = "" if lo <= root <= hi else " (extrapolated)"
    return f"N* = {_num(root)}{note}: {below.label} cheaper below, {above.label} above"


def describe_q(c: Crossover, n: float, root: float | None) -> str:
    """'Q* = 12: vilt-b32 cheaper for fewer queries, clip-vit-b32 for more' or 'none' (with
    '(extrapolated)' where N lies outside the measured sizes)."""
    lo, hi = c.measured_n
    note = "" if lo <= n <= hi else " (extrapolated)"
    if root is None:
        best = cheaper(c.first, c.second, 1, n)
        return f"none{note}: {best.label} cheaper for any Q"
    fewer = cheaper(c.first, c.second, max(1.0, root / 2), n)
    more = c.second if fewer is c.first else c.first
    return (f"Q* = {_num(root)}{note}: {fewer.label} cheaper for fewer queries, {more.label} "
            "for more")


def _num(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


# -- the run's printed summary ---------------------------------------------------------------


def curve_rows(curves: Sequence[CostCurve]) -> list[str]:
    """One line per model and direction: the fitted terms and the per-query cost once cached."""
    header = (f"{'model':<26} {'dir':<4} {'strategy':<8} {'N measured':<18} "
              f"{'encode a ms':>11} {'b ms/item':>10} {'query a ms':>11} {'b ms/item':>10} "
              f"{'query ms at N max':>17} {'fit err':>7}")
    lines = [header, "-" * len(header)]
    for c in curves:
        ns = ",".join(str(p.n) for p in c.points)
        last = c.points[-1]
        if c.encode is not None and c.query is not None:
            err = max(c.encode.max_rel_error, c.query.max_rel_error)
            terms = (f"{_num(c.encode.a):>11} {c.encode.b:>10.4g} {_num(c.query.a):>11} "
                     f"{c.query.b:>10.4g}")
            fit = f"{err:>7.0%}"
        else:
            terms = f"{'one N measured: no fit':>45}"
            fit = f"{'-':>7}"
        lines.append(f"{c.label:<26} {c.task.removeprefix('retrieval-'):<4} {c.strategy:<8} "
                     f"{ns:<18} {terms} {_num(last.query_ms):>17} {fit}")
    return lines


def retrieval_summary(results: list[CaseResult]) -> str:
    """The cost model and the crossovers, as text."""
    curves = cost_curves(results)
    if not curves:
        return "retrieval: no successful retrieval case, no cost model"
    lines = ["retrieval cost: cost(Q queries, N items) = encode(N) + Q * query(N); each fitted "
             "as a + b*N (ms, non-negative, on relative error); encode = the offline `gallery` "
             "step, query = one query once the gallery is cached (end to end)"]
    lines += curve_rows(curves)
    for task in TASKS:
        found = crossovers([c for c in curves if c.task == task])
        if not found:
            continue
        lines.append(f"\ncrossovers, {TASK_TEXT[task]}:")
        for c in found:
            lines.append(f"  {c.first.label} against {c.second.label}")
            lines.append("    gallery encoding counted free (per-query cost only): "
                         + describe_n(c, 1, c.n_gallery_free, gallery_free=True))
            for q, root in c.n_for_q:
                lines.append(f"    Q = {q:<6} " + describe_n(c, q, root))
            for n, root in c.q_for_n:
                lines.append(f"    N = {n:<6} " + describe_q(c, n, root))
    if not any(c.fitted for c in curves):
        lines.append("\ncrossovers need two gallery sizes or more per model (--batch-sizes)")
    return "\n".join(lines)
