"""The retrieval section's charts (``vlbench.report.retrieval``): cost against gallery size N,
against query count Q, and a re-ranking's per-query cost against its k. Measured medians are
markers; the fitted cost model is drawn as lines, over a shaded band where no model measured
(the fit extrapolates there). matplotlib is imported lazily, as in ``charts``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vlbench.report.charts import RC, log_axis, short_label, tick_ms, to_svg
from vlbench.retrieval_cost import GALLERY_SIZES, CostCurve

#: query counts the cost-against-Q chart spans
Q_RANGE = (1.0, 1e4)
#: the gallery size the cost-against-k chart is drawn at (fitted unless measured)
K_CHART_N = 1000


def cost_at(curve: CostCurve, n: int) -> tuple[float, float]:
    """(encode, query) at N: measured where the curve has that N, else from its fits."""
    p = curve.measured(n)
    if p is not None:
        return p.encode_ms, p.query_ms
    return curve.encode_at(n), curve.query_at(n)


def _axes(fig: Any) -> Any:
    ax = fig.subplots()
    ax.set_xscale("log")
    ax.set_yscale("log")
    log_axis(ax.xaxis, lambda v: f"{v:,.0f}" if v >= 1 else f"{v:g}")
    log_axis(ax.yaxis, tick_ms)
    ax.grid(True, linewidth=0.4, alpha=0.5)
    return ax


def _finish(fig: Any, ax: Any, xlabel: str, ylabel: str, prefix: str) -> str:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7.5, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return to_svg(fig, prefix)


def _name(c: CostCurve) -> str:
    what_if = ", what-if" if c.what_if else ""
    return short_label(f"{c.label} ({c.strategy}{what_if})")


def against_n(curves: Sequence[CostCurve], prefix: str) -> str:
    """Solid: one query with the gallery encoded for it; dashed: one query once cached. Lines:
    the fits from N = 1 to the largest summary size; markers: the measured medians."""
    import numpy as np
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    top = max(max(GALLERY_SIZES), *(c.measured_n[1] for c in curves))
    measured_top = max(c.measured_n[1] for c in curves)
    ns = np.logspace(0, np.log10(top), 80)
    with rc_context(RC):
        fig = Figure(figsize=(7.5, 4.0))
        ax = _axes(fig)
        if measured_top < top:
            ax.axvspan(measured_top, top, color="0.94", zorder=0, label="fitted only (no N "
                       "measured)")
        for i, c in enumerate(curves):
            colour = f"C{i % 10}"
            px = [p.n for p in c.points]
            if c.fitted:
                ax.plot(ns, [c.total(1, n) for n in ns], color=colour, linewidth=1.3,
                        label=_name(c))
                ax.plot(ns, [c.query_at(n) for n in ns], color=colour, linewidth=1.0,
                        linestyle="--")
            ax.plot(px, [p.encode_ms + p.query_ms for p in c.points], color=colour, marker="o",
                    markersize=4, linestyle="none" if c.fitted else "-",
                    label=None if c.fitted else _name(c))
            ax.plot(px, [p.query_ms for p in c.points], color=colour, marker="^", markersize=4,
                    linestyle="none" if c.fitted else "--", markerfacecolor="white")
        return _finish(fig, ax, "gallery size N (items ranked per query)", "time, ms", prefix)


def against_q(curves: Sequence[CostCurve], n: int, prefix: str) -> str:
    """encode(N) + Q * query(N) at one N, per model."""
    import numpy as np
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    qs = np.logspace(np.log10(Q_RANGE[0]), np.log10(Q_RANGE[1]), 60)
    with rc_context(RC):
        fig = Figure(figsize=(7.5, 3.8))
        ax = _axes(fig)
        for i, c in enumerate(curves):
            encode, query = cost_at(c, n)
            ax.plot(qs, encode + qs * query, color=f"C{i % 10}", linewidth=1.4, label=_name(c))
        return _finish(fig, ax, f"queries Q against one gallery of N = {n:,}", "total time, ms",
                       prefix)


def against_k(curves: Sequence[CostCurve], n: int, prefix: str) -> str:
    """Per query once cached, at N: each re-ranking model's rank(N) + fuse(k) for k from 1 to
    N (markers at the k its curves use), every other model flat."""
    import numpy as np
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    ks = np.logspace(0, np.log10(n), 60)
    with rc_context(RC):
        fig = Figure(figsize=(7.5, 3.8))
        ax = _axes(fig)
        models = {c.family: c for c in curves if c.rerank is not None}
        for i, c in enumerate(curves):
            if c.rerank is None:
                ax.plot([1, n], [c.query_at(n)] * 2, color=f"C{i % 10}", linewidth=1.2,
                        linestyle=":", label=_name(c))
        for j, (base, c) in enumerate(models.items()):
            rr = c.rerank
            assert rr is not None
            colour = f"C{(len(curves) + j) % 10}"
            what_if = " (what-if)" if c.what_if else ""
            ax.plot(ks, [rr.rank(n) + rr.fuse(k) for k in ks], color=colour, linewidth=1.5,
                    label=short_label(f"{base} rerank{what_if}"))
            marks = sorted({min(x.k, n) for x in curves if x.family == base and x.k})
            ax.plot(marks, [rr.rank(n) + rr.fuse(k) for k in marks], color=colour, marker="s",
                    markersize=4, linestyle="none")
        return _finish(fig, ax, f"k, candidates fused per query (N = {n:,})",
                       "time per query, ms", prefix)
