"""The retrieval cost model: what ranking Q queries against a gallery of N items costs, and where
two models' costs cross.

    cost(Q, N) = encode(N) + Q * query(N)                      (cached, joint)
    cost(Q, N, k) = encode(N) + Q * (rank(N) + fuse(min(k, N)))  (rerank)

A dual encoder's encode(N) is N tower forwards and its query(N) one tower forward plus an
(N x E) product and a sort: nearly flat in N. A fusion model caches only the embedder's output,
so its encode(N) is cheap (patches) or dear (a region detector), and its query(N) is N joint
forwards. A re-ranking model (ALBEF, BLIP) encodes like a dual encoder, ranks the N by ITC and
fuses only the top k: its query grows with N until N = k, then only by the ranking. The terms
are fitted in ``vlbench.retrieval_fit`` (re-exported here); the crossovers follow from them in
closed form, segment by segment where a query changes slope at N = k: for Q queries the N where
two models cost the same, for N items the Q, and for a re-ranking at N the k below which it is
the cheaper. With the gallery encoding counted as free (query(N) alone, the many-queries limit)
a dual encoder is cheaper at every N, so that comparison is computed too and shows no crossover
where there is none. ``retrieval_summary`` is what ``vlbench run`` prints after the table of a
run with retrieval cases; the report's section draws the same curves
(``vlbench.report.retrieval``).

Pure (numpy and scipy only): the report imports it without torch or the model packages.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .results import CaseResult
from .retrieval_fit import (
    STRATEGY_ORDER,
    TASK_TEXT,
    TASKS,
    CostCurve,
    CostPoint,
    LinearCost,
    RerankTerms,
    cost_curves,
    fit_linear_cost,
)

#: query counts and gallery sizes the summaries state crossovers at
QUERY_COUNTS = (1, 10, 100, 1000)
GALLERY_SIZES = (1, 10, 100, 1000, 10_000)


def _roots(diff: Callable[[float], float], breaks: Sequence[float]) -> list[float]:
    """Every x >= 1 where ``diff`` crosses zero, for a ``diff`` linear between ``breaks``."""
    edges = sorted({1.0, *(b for b in breaks if b > 1)})
    roots: list[float] = []
    for lo, hi in zip(edges, [*edges[1:], None], strict=True):
        top = hi if hi is not None else lo + 1.0
        f_lo, f_hi = diff(lo), diff(top)
        slope = (f_hi - f_lo) / (top - lo)
        if slope == 0:
            continue
        root = lo - f_lo / slope
        inside = root >= lo - 1e-9 and (hi is None or root <= hi + 1e-9)
        new = not roots or abs(root - roots[-1]) > 1e-6 * max(1.0, root)  # a break is shared
        if inside and new:
            roots.append(max(root, 1.0))
    return roots


def crossovers_n(first: CostCurve, second: CostCurve, queries: float, *,
                 gallery_free: bool = False) -> list[float]:
    """Every gallery size N >= 1 where Q queries cost the same on both models (usually one;
    none where one is cheaper, or they are equal, at every N >= 1). ``gallery_free``: compare
    the query steps alone, as if the gallery's encoding cost nothing."""
    _check(first, second)
    weight = 0.0 if gallery_free else 1.0

    def diff(n: float) -> float:
        return (weight * (first.encode_at(n) - second.encode_at(n))
                + queries * (first.query_at(n) - second.query_at(n)))

    return _roots(diff, (*first.breaks, *second.breaks))


def crossover_n(first: CostCurve, second: CostCurve, queries: float, *,
                gallery_free: bool = False) -> float | None:
    """The smallest of ``crossovers_n``, or None."""
    found = crossovers_n(first, second, queries, gallery_free=gallery_free)
    return found[0] if found else None


def crossover_q(first: CostCurve, second: CostCurve, n: float) -> float | None:
    """The query count Q >= 1 where both models cost the same on N items, or None where one
    is cheaper (or they are equal) for every Q >= 1."""
    _check(first, second)
    d_encode = first.encode_at(n) - second.encode_at(n)
    d_query = first.query_at(n) - second.query_at(n)
    if d_query == 0:
        return None
    root = -d_encode / d_query
    return float(root) if root >= 1 else None


def crossover_k(rerank: CostCurve, other: CostCurve, queries: float, n: float, *,
                gallery_free: bool = False) -> float | None:
    """The k in [1, N] where a re-ranking of N items costs as much as ``other`` (it is the
    cheaper below), or None where one is cheaper at every k."""
    _check(rerank, other)
    assert rerank.rerank is not None
    weight = 0.0 if gallery_free else 1.0
    budget = (weight * (other.encode_at(n) - rerank.encode_at(n))
              + queries * (other.query_at(n) - rerank.rerank.rank(n)))
    fuse = rerank.rerank.fuse
    if fuse.b == 0:
        return None
    root = (budget / queries - fuse.a) / fuse.b
    return float(root) if 1 <= root <= n else None


def cheaper(first: CostCurve, second: CostCurve, queries: float, n: float, *,
            gallery_free: bool = False) -> CostCurve:
    """The model with the lower fitted cost at (Q, N)."""
    def cost(c: CostCurve) -> float:
        return queries * c.query_at(n) if gallery_free else c.total(queries, n)

    return first if cost(first) <= cost(second) else second


def _check(first: CostCurve, second: CostCurve) -> None:
    if not (first.fitted and second.fitted):
        raise ValueError("crossovers need fitted curves (two gallery sizes or more)")


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
        (a_lo, a_hi), (b_lo, b_hi) = self.first.measured_n, self.second.measured_n
        return max(a_lo, b_lo), min(a_hi, b_hi)


def _comparable(curves: Sequence[CostCurve]) -> list[tuple[CostCurve, CostCurve]]:
    """Fitted pairs of one direction, device and precision whose strategies differ (every pair
    of different models when none differ), the dual encoder first, then the re-ranking, then
    the fusion model."""
    fitted = [c for c in curves if c.fitted]
    pairs = [(a, b) for a, b in itertools.combinations(fitted, 2)
             if (a.task, a.device, a.precision) == (b.task, b.device, b.precision)
             and a.family != b.family]  # one re-ranking model's k curves are not compared
    mixed = [(a, b) for a, b in pairs if a.strategy != b.strategy]

    def rank(c: CostCurve) -> int:
        return STRATEGY_ORDER.index(c.strategy) if c.strategy in STRATEGY_ORDER else 3

    return [(a, b) if rank(a) <= rank(b) else (b, a) for a, b in mixed or pairs]


def crossovers(curves: Sequence[CostCurve], queries: Sequence[int] = QUERY_COUNTS,
               sizes: Sequence[int] = GALLERY_SIZES) -> list[Crossover]:
    """Every comparable pair of fitted curves (``_comparable``) and where it crosses."""
    return [Crossover(first=a, second=b,
                      n_for_q=tuple((q, crossover_n(a, b, q)) for q in queries),
                      n_gallery_free=crossover_n(a, b, 1, gallery_free=True),
                      q_for_n=tuple((n, crossover_q(a, b, n)) for n in sizes))
            for a, b in _comparable(curves)]


@dataclass(frozen=True)
class KCrossover:
    """Where a re-ranking model (any of its k curves: the terms are the model's) meets another
    model as k grows, at each N: for one query with the gallery encoded for it (``k_one``), and
    per query with the gallery free (``k_free``, the many-queries limit)."""

    rerank: CostCurve
    other: CostCurve
    k_one: tuple[tuple[int, float | None], ...]
    k_free: tuple[tuple[int, float | None], ...]


def k_crossovers(curves: Sequence[CostCurve], sizes: Sequence[int] = GALLERY_SIZES
                 ) -> list[KCrossover]:
    """Each fitted re-ranking model against each fitted model of another strategy."""
    out, seen = [], set()
    for a, b in _comparable(curves):
        rerank, other = (a, b) if a.rerank is not None else (b, a)
        key = (rerank.family, other.label)
        if rerank.rerank is None or other.rerank is not None or key in seen:
            continue
        seen.add(key)
        out.append(KCrossover(
            rerank, other,
            tuple((n, crossover_k(rerank, other, 1, n)) for n in sizes),
            tuple((n, crossover_k(rerank, other, 1, n, gallery_free=True)) for n in sizes)))
    return out


def describe_n(c: Crossover, queries: float, root: float | None, *,
               gallery_free: bool = False) -> str:
    """'N* = 37: vilt-b32 cheaper below, clip-vit-b32 above' or 'none: clip-vit-b32 cheaper
    at every N' (with '(extrapolated)' outside the measured sizes)."""
    if root is None:
        best = cheaper(c.first, c.second, queries, 1, gallery_free=gallery_free)
        return f"none: {best.label} cheaper at every N"
    roots = crossovers_n(c.first, c.second, queries, gallery_free=gallery_free)
    below = cheaper(c.first, c.second, queries, max(1.0, root / 2), gallery_free=gallery_free)
    above = c.second if below is c.first else c.first
    lo, hi = c.measured_n
    note = "" if lo <= root <= hi else " (extrapolated)"
    again = f" (again at N = {', '.join(_num(r) for r in roots[1:])})" if len(roots) > 1 else ""
    return f"N* = {_num(root)}{note}: {below.label} cheaper below, {above.label} above{again}"


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


def describe_k(c: KCrossover, n: int, root: float | None, *, gallery_free: bool = False) -> str:
    """'k* = 40: re-ranking cheaper for smaller k' or 'none: clip-vit-b32 cheaper at every k'
    (every k from 1 to N; '(extrapolated)' outside the measured sizes)."""
    lo, hi = c.rerank.measured_n
    note = "" if lo <= n <= hi else " (extrapolated)"
    if root is None:
        rr, other = c.rerank.rerank, c.other
        assert rr is not None
        weight = 0.0 if gallery_free else 1.0
        mine = weight * c.rerank.encode_at(n) + rr.rank(n) + rr.fuse(1)
        theirs = weight * other.encode_at(n) + other.query_at(n)
        best = c.rerank.family if mine <= theirs else other.label
        return f"none{note}: {best} cheaper at every k"
    return f"k* = {_num(root)}{note}: {c.rerank.family} cheaper for smaller k"


def _num(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


# -- the run's printed summary ---------------------------------------------------------------


def curve_rows(curves: Sequence[CostCurve]) -> list[str]:
    """One line per model and direction: the fitted terms and the per-query cost once cached.
    A re-ranking's query terms are rank(N) (a, b per item) and fuse(k) (a, b per candidate)."""
    header = (f"{'model':<30} {'dir':<4} {'strategy':<8} {'N measured':<14} "
              f"{'encode a ms':>11} {'b ms/item':>10} {'query a ms':>11} {'b ms/item':>10} "
              f"{'fuse a ms':>10} {'b ms/pair':>10} {'fit err':>7}")
    lines = [header, "-" * len(header)]
    for c in curves:
        ns = ",".join(str(p.n) for p in c.points)
        q = c.rerank.rank if c.rerank is not None else c.query
        if c.encode is not None and q is not None:
            fits = [c.encode, q, *([c.rerank.fuse] if c.rerank is not None else [])]
            fuse = (f"{_num(c.rerank.fuse.a):>10} {c.rerank.fuse.b:>10.4g}" if c.rerank
                    else f"{'-':>10} {'-':>10}")
            terms = (f"{_num(c.encode.a):>11} {c.encode.b:>10.4g} {_num(q.a):>11} "
                     f"{q.b:>10.4g} {fuse} {max(f.max_rel_error for f in fits):>7.0%}")
        else:
            terms = f"{'one N (or one k) measured: no fit':>76}"
        lines.append(f"{c.label:<30} {c.task.removeprefix('retrieval-'):<4} {c.strategy:<8} "
                     f"{ns:<14} {terms}")
    return lines


def cost_table(curves: Sequence[CostCurve], sizes: Sequence[int] = GALLERY_SIZES
               ) -> list[str]:
    """Per-query cost once cached and the gallery's encoding at each N: measured where the
    model measured that N (its k as fused, for a re-ranking), else from the fits (``~``)."""
    lines = [f"{'model':<30} {'dir':<4} " + " ".join(f"{'N=' + f'{n:,}':>17}" for n in sizes),
             f"{'':<30} {'':<4} " + " ".join(f"{'query / gallery':>17}" for _ in sizes)]
    for c in curves:
        cells = []
        for n in sizes:
            p = c.measured(n)
            if p is not None:
                cells.append(f"{_num(p.query_ms) + ' / ' + _num(p.encode_ms):>17}")
            elif c.fitted:
                cells.append(f"{'~' + _num(c.query_at(n)) + ' / ~' + _num(c.encode_at(n)):>17}")
            else:
                cells.append(f"{'-':>17}")
        lines.append(f"{c.label:<30} {c.task.removeprefix('retrieval-'):<4} " + " ".join(cells))
    return lines


def _crossover_lines(found: list[Crossover], ks: list[KCrossover]) -> list[str]:
    lines = []
    for c in found:
        lines.append(f"  {c.first.label} against {c.second.label}")
        lines.append("    gallery encoding counted free (per-query cost only): "
                     + describe_n(c, 1, c.n_gallery_free, gallery_free=True))
        lines += [f"    Q = {q:<6} " + describe_n(c, q, root) for q, root in c.n_for_q]
        lines += [f"    N = {n:<6} " + describe_q(c, n, root) for n, root in c.q_for_n]
    for k in ks:
        lines.append(f"  k*, {k.rerank.family} re-ranking against {k.other.label}")
        for (n, one), (_, free) in zip(k.k_one, k.k_free, strict=True):
            lines.append(f"    N = {n:<6} one query: {describe_k(k, n, one)}; gallery free: "
                         + describe_k(k, n, free, gallery_free=True))
    return lines


def retrieval_summary(results: list[CaseResult]) -> str:
    """The cost model and the crossovers, as text."""
    curves = cost_curves(results)
    if not curves:
        return "retrieval: no successful retrieval case, no cost model"
    lines = ["retrieval cost: cost(Q queries, N items) = encode(N) + Q * query(N); a re-ranking's "
             "query = rank(N) + fuse(min(k, N)); each fitted as a + b*x (ms, non-negative, on "
             "relative error); encode = the offline `gallery` step, query = one query once the "
             "gallery is cached (end to end)"]
    lines += curve_rows(curves)
    lines += ["", "cost per N (ms; ~ fitted, not measured):", *cost_table(curves)]
    lines += [f"what-if: {c.label}: {c.what_if}" for c in curves if c.what_if]
    for task in TASKS:
        mine = [c for c in curves if c.task == task]
        found, ks = crossovers(mine), k_crossovers(mine)
        if found:
            lines.append(f"\ncrossovers, {TASK_TEXT[task]}:")
            lines += _crossover_lines(found, ks)
    if not any(c.fitted for c in curves):
        lines.append("\ncrossovers need two gallery sizes or more per model (--batch-sizes)")
    return "\n".join(lines)


__all__ = ["GALLERY_SIZES", "QUERY_COUNTS", "TASKS", "TASK_TEXT", "CostCurve", "CostPoint",
           "Crossover", "KCrossover", "LinearCost", "RerankTerms", "cheaper", "cost_curves",
           "cost_table", "crossover_k", "crossover_n", "crossover_q", "crossovers",
           "crossovers_n", "describe_k", "describe_n", "describe_q", "fit_linear_cost",
           "k_crossovers", "retrieval_summary"]
