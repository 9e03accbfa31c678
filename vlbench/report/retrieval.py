"""The report's retrieval section: cost against gallery size N and against query count Q per
model (log-log), the per-query cost once the gallery is cached, the fitted cost model and where
the models' curves cross (``vlbench.retrieval_cost``).

Why both axes: with the gallery's encoding counted as free a dual encoder is cheaper at every
N, so a chart of per-query cost alone shows no crossover; the question a user has -- how many
queries, over how large a gallery, before caching pays -- needs the offline cost beside it.
Charts draw the measured points; the cost-against-Q chart evaluates encode(N) + Q * query(N) at
one gallery size every model measured (from the fits, and said so, where there is none).
Registered as ``SECTION`` (``vlbench.report.registry``); its page part is
``templates/_retrieval.html.j2``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vlbench.report.charts import RC, Chart, log_axis, short_label, tick_ms, to_svg
from vlbench.report.section import ReportCase, Section
from vlbench.report.text import escape
from vlbench.retrieval_cost import (
    TASK_TEXT,
    TASKS,
    CostCurve,
    Crossover,
    cost_curves,
    crossovers,
    describe_n,
    describe_q,
)

#: query counts the cost-against-Q chart spans
Q_RANGE = (1.0, 1e4)


@dataclass(frozen=True)
class CurveLine:
    """One model and direction in the section's table: its curve and what each step did."""

    curve: CostCurve
    offline: str
    per_query: str
    batches: str


@dataclass
class Direction:
    """Everything the section shows for one direction (text to image, image to text)."""

    task: str
    title: str
    sizes: list[int]  # every N measured in this direction
    lines: list[CurveLine]
    crossovers: list[Crossover]
    charts: list[Chart] = field(default_factory=list)
    n_ref: int | None = None
    n_ref_measured: bool = True


@dataclass
class RetrievalSection:
    directions: list[Direction]

    def describe_n(self, c: Crossover, q: float, root: float | None,
                   gallery_free: bool = False) -> str:
        return describe_n(c, q, root, gallery_free=gallery_free)

    def describe_q(self, c: Crossover, n: float, root: float | None) -> str:
        return describe_q(c, n, root)


def retrieval_section(cases: Sequence[ReportCase]) -> RetrievalSection | None:
    """The section from the report's cases, or None when no case is a retrieval case."""
    retrieval = [c for c in cases if c.result.spec.task in TASKS]
    if not retrieval:
        return None
    labels = {id(c.result): c.label for c in retrieval}
    curves = cost_curves([c.result for c in retrieval], label=lambda r: labels[id(r)])
    settings = {labels[id(c.result)] + "|" + str(c.result.spec.task): c.result.settings
                for c in retrieval if c.result.status == "ok"}
    directions = []
    for task in TASKS:
        mine = [c for c in curves if c.task == task]
        if not mine:
            continue
        lines = [_line(c, settings.get(f"{c.label}|{task}", {})) for c in mine]
        sizes = sorted({p.n for c in mine for p in c.points})
        d = Direction(task, TASK_TEXT[task], sizes, lines, crossovers(mine))
        d.charts = _charts(d, mine)
        directions.append(d)
    return RetrievalSection(directions)


def _line(curve: CostCurve, settings: dict[str, Any]) -> CurveLine:
    """The steps in words, with the cache's shape and the batches found at the largest N."""
    info = settings.get("retrieval", {})
    shape = info.get("cached_shape")
    cached = f" {tuple(shape)}" if shape else ""
    pair = info.get("pair_batch")
    batches = (f"at N = {curve.points[-1].n:,}: gallery batch {info.get('gallery_batch', '-')}"
               + (f", pair batch {pair}" if pair is not None else ""))
    return CurveLine(curve, f"{info.get('offline', '-')}{cached}",
                     str(info.get("per_query", "-")), batches)


def _reference_n(curves: Sequence[CostCurve]) -> tuple[int | None, bool]:
    """The largest N every model measured; else the largest N any fit covers (extrapolated)."""
    common = set.intersection(*({p.n for p in c.points} for c in curves))
    if common:
        return max(common), True
    fitted = [c for c in curves if c.fitted]
    if not fitted:
        return None, False
    return max(p.n for c in fitted for p in c.points), False


def _charts(d: Direction, curves: Sequence[CostCurve]) -> list[Chart]:
    short = d.task.removeprefix("retrieval-")
    charts = [Chart(
        f"retrieval-{short}-n", f"Cost against gallery size N, {d.title}",
        "Solid: one query with the gallery encoded for it, encode(N) + query(N); dashed: one "
        "query once the gallery is cached, query(N). Medians as measured, log-log.",
        _against_n(curves, f"retrieval-{short}-n"))]
    d.n_ref, d.n_ref_measured = _reference_n(curves)
    usable = [c for c in curves if d.n_ref in {p.n for p in c.points} or c.fitted]
    if d.n_ref is not None and len(usable) == len(curves):
        how = ("measured at this N by every model" if d.n_ref_measured else
               "from the fitted terms: no N was measured by every model")
        charts.append(Chart(
            f"retrieval-{short}-q", f"Cost against query count Q at N = {d.n_ref:,}, {d.title}",
            f"encode(N) + Q * query(N) with N = {d.n_ref:,} ({how}); where two lines cross, "
            "caching the gallery starts to pay. Log-log.",
            _against_q(curves, d.n_ref, f"retrieval-{short}-q")))
    return charts


def _cost_at(curve: CostCurve, n: int) -> tuple[float, float]:
    """(encode, query) at N: measured where the curve has that N, else from its fits."""
    for p in curve.points:
        if p.n == n:
            return p.encode_ms, p.query_ms
    assert curve.encode is not None and curve.query is not None
    return curve.encode(n), curve.query(n)


def _axes(fig: Any) -> Any:
    ax = fig.subplots()
    ax.set_xscale("log")
    ax.set_yscale("log")
    log_axis(ax.xaxis, lambda v: f"{v:,.0f}" if v >= 1 else f"{v:g}")
    log_axis(ax.yaxis, tick_ms)
    ax.grid(True, linewidth=0.4, alpha=0.5)
    return ax


def _against_n(curves: Sequence[CostCurve], prefix: str) -> str:
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    with rc_context(RC):
        fig = Figure(figsize=(7.5, 3.8))
        ax = _axes(fig)
        for i, c in enumerate(curves):
            colour = f"C{i % 10}"
            ns = [p.n for p in c.points]
            ax.plot(ns, [p.encode_ms + p.query_ms for p in c.points], color=colour, marker="o",
                    markersize=4, linewidth=1.4, label=short_label(f"{c.label} ({c.strategy})"))
            ax.plot(ns, [p.query_ms for p in c.points], color=colour, marker="^", markersize=4,
                    linewidth=1.2, linestyle="--")
        ax.set_xlabel("gallery size N (items ranked per query)")
        ax.set_ylabel("time, ms")
        ax.legend(fontsize=7.5, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.tight_layout()
        return to_svg(fig, prefix)


def _against_q(curves: Sequence[CostCurve], n: int, prefix: str) -> str:
    import numpy as np
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    qs = np.logspace(np.log10(Q_RANGE[0]), np.log10(Q_RANGE[1]), 60)
    with rc_context(RC):
        fig = Figure(figsize=(7.5, 3.8))
        ax = _axes(fig)
        for i, c in enumerate(curves):
            encode, query = _cost_at(c, n)
            ax.plot(qs, encode + qs * query, color=f"C{i % 10}", linewidth=1.4,
                    label=short_label(f"{c.label} ({c.strategy})"))
        ax.set_xlabel(f"queries Q against one gallery of N = {n:,}")
        ax.set_ylabel("total time, ms")
        ax.legend(fontsize=7.5, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.tight_layout()
        return to_svg(fig, prefix)


def retrieval_markdown(section: RetrievalSection) -> list[str]:
    """The section's numbers as markdown lines (no charts): fits and crossovers."""
    lines = ["### Retrieval cost", "",
             "cost(Q, N) = encode(N) + Q * query(N), each fitted as a + b*N (ms).", ""]
    for d in section.directions:
        lines += [f"**{escape(d.title)}**", "",
                  "| model | strategy | N | encode a ms | encode b ms/item | query a ms | "
                  "query b ms/item |", "|---|---|---|---|---|---|---|"]
        for line in d.lines:
            c = line.curve
            ns = ", ".join(str(p.n) for p in c.points)
            if c.encode is not None and c.query is not None:
                terms = (f"{c.encode.a:.3g} | {c.encode.b:.3g} | {c.query.a:.3g} | "
                         f"{c.query.b:.3g}")
            else:
                terms = "- | - | - | -"
            lines.append(f"| {escape(c.label)} | {c.strategy} | {ns} | {terms} |")
        lines.append("")
        for c in d.crossovers:
            q1 = dict(c.n_for_q).get(1)
            lines.append(f"- {escape(c.first.label)} / {escape(c.second.label)}: gallery free: "
                         f"{escape(describe_n(c, 1, c.n_gallery_free, gallery_free=True))}; "
                         f"Q = 1: {escape(describe_n(c, 1, q1))}")
        lines.append("")
    return lines


SECTION = Section(name="retrieval", title="Retrieval cost", build=retrieval_section,
                  template="_retrieval.html.j2", markdown=retrieval_markdown)
