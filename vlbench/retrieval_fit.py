"""The retrieval cost model's terms, fitted from stored retrieval cases (``vlbench.retrieval_cost``
finds where the curves cross and prints them).

Every architecture pays an offline step once per gallery of N items and a query step per query:

    cost(Q, N) = encode(N) + Q * query(N)                      (cached, joint)
    cost(Q, N, k) = encode(N) + Q * (rank(N) + fuse(min(k, N)))  (rerank)

encode(N) is the ``gallery`` stage's median, query(N) the query step's end-to-end median. A
re-ranking's query splits into rank(N), the ITC ranking of the gallery (the query's embedder and
ITC path, the product, the top-k), and fuse(k), the fusion of the k candidates and their sort:
the stages each term covers are recorded with the case (``settings.retrieval.cost_terms``), and
the query's end-to-end median is shared between them in the ratio of their stage medians. Each
term is fitted as ``a + b*x`` (x = N, or k for fuse; non-negative, on relative error so that
N = 1 and N = 1000 weigh alike on the log-log charts). A re-ranking model's terms are fitted once
from all its cases, whatever their k, and each k it was measured with is one curve.

Pure (numpy and scipy only): the report imports it without torch or the model packages.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

from .fit import checked_series
from .results import CaseResult

TASKS = ("retrieval-t2i", "retrieval-i2t")
TASK_TEXT = {"retrieval-t2i": "text to image (a text query, a gallery of N images)",
             "retrieval-i2t": "image to text (an image query, a gallery of N texts)"}
#: the order models are named in a comparison: a dual encoder, a re-ranking, a fusion model
STRATEGY_ORDER = ("cached", "rerank", "joint")


@dataclass(frozen=True)
class LinearCost:
    """time_ms ~ a + b*x: ``a`` ms fixed, ``b`` ms per gallery item (or per fused candidate);
    fitted on x in [n_min, n_max], where ``max_rel_error`` is the worst relative residual."""

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
    """One measured gallery size: the offline step's and one query's medians; for a
    re-ranking also the k it fused (clamped to N) and the query's rank and fuse shares."""

    n: int
    encode_ms: float
    query_ms: float
    k: int | None = None
    rank_ms: float | None = None
    fuse_ms: float | None = None


@dataclass(frozen=True)
class RerankTerms:
    """A re-ranking model's per-query terms: ``rank`` (ms against N) and ``fuse`` (ms against
    the k candidates fused)."""

    rank: LinearCost
    fuse: LinearCost


@dataclass(frozen=True)
class CostCurve:
    """One model in one direction (a re-ranking: with one k): measured points and, from two
    sizes on, the fitted terms. ``strategy``: "cached" (dual encoder: gallery embeddings
    cached, a query is a product), "joint" (fusion: a joint forward per pair) or "rerank"
    (ITC ranking, the fusion over the top ``k``: ``query`` is None, ``rerank`` holds the
    terms). ``base``: the label without the k; ``what_if``: why the strategy is not the
    model's published retrieval, if it is not."""

    label: str
    model: str
    task: str
    device: str
    precision: str
    strategy: str
    points: tuple[CostPoint, ...]
    encode: LinearCost | None
    query: LinearCost | None
    k: int | None = None
    rerank: RerankTerms | None = None
    base: str = ""
    what_if: str = ""

    @property
    def family(self) -> str:
        """The label without the k: one re-ranking model's curves share it."""
        return self.base or self.label

    @property
    def fitted(self) -> bool:
        return self.encode is not None and (self.query is not None or self.rerank is not None)

    @property
    def measured_n(self) -> tuple[int, int]:
        """The smallest and largest N measured: a figure outside them is extrapolated."""
        return min(p.n for p in self.points), max(p.n for p in self.points)

    @property
    def breaks(self) -> tuple[float, ...]:
        """Where query(N) changes slope: a re-ranking's k (above it, fuse stops growing)."""
        return (float(self.k),) if self.rerank is not None and self.k is not None else ()

    def query_at(self, n: float) -> float:
        """query(N) from the fits; a re-ranking's rank(N) + fuse(min(k, N))."""
        if self.rerank is not None and self.k is not None:
            return self.rerank.rank(n) + self.rerank.fuse(min(self.k, n))
        if self.query is None:
            raise ValueError(f"{self.label}: fewer than two gallery sizes, no fit")
        return self.query(n)

    def encode_at(self, n: float) -> float:
        if self.encode is None:
            raise ValueError(f"{self.label}: fewer than two gallery sizes, no fit")
        return self.encode(n)

    def total(self, queries: float, n: float) -> float:
        """encode(N) + Q * query(N) from the fits."""
        return self.encode_at(n) + queries * self.query_at(n)

    def measured(self, n: int) -> CostPoint | None:
        return next((p for p in self.points if p.n == n), None)


_Key = tuple[str, str, str, str, int | None]


def cost_curves(results: Iterable[CaseResult],
                label: Callable[[CaseResult], str] | None = None) -> list[CostCurve]:
    """A curve per (label, task, device, precision, k) from the ok retrieval cases: encode(N)
    is the ``gallery`` stage's median, query(N) the end-to-end median of the query step."""
    groups: dict[_Key, dict[int, CaseResult]] = {}
    for r in results:
        if r.spec.task not in TASKS or r.status != "ok" or r.end_to_end is None:
            continue
        if _stage_median(r, "gallery") is None:
            continue
        name = label(r) if label else r.spec.model
        key = (name, r.spec.task, r.spec.device, r.spec.precision, r.spec.rerank_k)
        groups.setdefault(key, {})[r.spec.batch_size] = r  # a later attempt replaces
    points = {key: tuple(_point(r) for _, r in sorted(by_n.items()))
              for key, by_n in groups.items()}
    terms = _rerank_terms(points)
    curves = [_curve(key, by_n, points[key], terms.get(key[:4])) for key, by_n in groups.items()]
    return sorted(curves, key=lambda c: (TASKS.index(c.task), c.base, c.k or 0))


def _curve(key: _Key, by_n: dict[int, CaseResult], points: tuple[CostPoint, ...],
           terms: tuple[LinearCost | None, RerankTerms | None] | None) -> CostCurve:
    name, task, device, precision, k = key
    info = next(iter(by_n.values())).settings.get("retrieval", {})
    strategy = str(info.get("strategy", "?"))
    encode = query = rerank = None
    if k is not None and terms is not None:
        encode, rerank = terms
    elif len(points) >= 2:
        ns = [p.n for p in points]
        encode = fit_linear_cost(ns, [p.encode_ms for p in points])
        query = fit_linear_cost(ns, [p.query_ms for p in points])
    first = next(iter(by_n.values()))
    return CostCurve(
        label=name if k is None else f"{name} k={k}", model=first.spec.model, task=task,
        device=device, precision=precision, strategy=strategy, points=points, encode=encode,
        query=query, k=k, rerank=rerank, base=name, what_if=str(info.get("what_if") or ""))


def _point(r: CaseResult) -> CostPoint:
    """A case's medians; a re-ranking's query split into its rank and fuse shares."""
    encode = _stage_median(r, "gallery") or 0.0
    assert r.end_to_end is not None
    query = r.end_to_end.median_ms
    info = r.settings.get("retrieval", {})
    if r.spec.rerank_k is None:
        return CostPoint(r.spec.batch_size, encode, query)
    k = int(info.get("k") or min(r.spec.rerank_k, r.spec.batch_size))
    terms = info.get("cost_terms") or {}
    rank = _stages_sum(r, terms.get("rank", ()))
    fuse = _stages_sum(r, terms.get("fuse", ()))
    if rank is None or fuse is None or rank + fuse <= 0:
        return CostPoint(r.spec.batch_size, encode, query, k)
    share = query / (rank + fuse)  # the end-to-end median, split as the stages split it
    return CostPoint(r.spec.batch_size, encode, query, k, rank * share, fuse * share)


def _rerank_terms(points: dict[_Key, tuple[CostPoint, ...]]
                  ) -> dict[tuple, tuple[LinearCost | None, RerankTerms | None]]:
    """encode(N), rank(N) and fuse(k) per re-ranking model, from all its cases (every k)."""
    pooled: dict[tuple, list[CostPoint]] = {}
    for key, pts in points.items():
        if key[4] is not None:
            pooled.setdefault(key[:4], []).extend(pts)
    out: dict[tuple, tuple[LinearCost | None, RerankTerms | None]] = {}
    for model, pts in pooled.items():
        split = [p for p in pts if p.rank_ms is not None and p.fuse_ms is not None]
        encode = (fit_linear_cost([p.n for p in pts], [p.encode_ms for p in pts])
                  if len({p.n for p in pts}) >= 2 else None)
        terms = None
        if len({p.n for p in split}) >= 2 and len({p.k for p in split}) >= 2:
            terms = RerankTerms(
                fit_linear_cost([p.n for p in split], [p.rank_ms for p in split]),  # type: ignore[misc]
                fit_linear_cost([p.k for p in split], [p.fuse_ms for p in split]))  # type: ignore[misc]
        out[model] = (encode, terms) if terms is not None else (None, None)
    return out


def _stage_median(result: CaseResult, name: str) -> float | None:
    for stage in result.stages:
        if stage.name == name and stage.timing is not None:
            return stage.timing.median_ms
    return None


def _stages_sum(result: CaseResult, children: Iterable[str]) -> float | None:
    """The summed medians of ``query.<child>`` stages; None if one is missing."""
    total = 0.0
    for child in children:
        median = _stage_median(result, f"query.{child}")
        if median is None:
            return None
        total += median
    return total
