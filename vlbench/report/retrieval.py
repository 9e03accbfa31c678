"""The report's retrieval section: cost against gallery size N and against query count Q per
model (log-log), a re-ranking's cost against its k, the per-query cost once the gallery is
cached, the fitted cost model and where the models' curves cross in N, Q and k
(``vlbench.retrieval_cost``).

Why both axes: with the gallery's encoding counted as free a dual encoder is cheaper at every
N, so a chart of per-query cost alone shows no crossover; the question a user has -- how many
queries, over how large a gallery, before caching pays -- needs the offline cost beside it.
Charts (``retrieval_charts``) draw the measured points as markers and the fits as lines; the
table gives each model's medians at the N it measured and the fits' values, marked as such, at
the summary's other sizes (1,000 and 10,000 on a CPU). A re-ranking (ALBEF, BLIP) is one curve
per k; VLMo's re-ranking is labelled a what-if (its published retrieval is dual only).
Registered as ``SECTION`` (``vlbench.report.registry``); its page part is
``templates/_retrieval.html.j2``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vlbench.report.charts import Chart
from vlbench.report.retrieval_charts import K_CHART_N, against_k, against_n, against_q
from vlbench.report.section import ReportCase, Section
from vlbench.report.text import escape
from vlbench.retrieval_cost import (
    GALLERY_SIZES,
    TASK_TEXT,
    TASKS,
    CostCurve,
    Crossover,
    KCrossover,
    cost_curves,
    crossovers,
    describe_k,
    describe_n,
    describe_q,
    k_crossovers,
)


@dataclass(frozen=True)
class CurveLine:
    """One model and direction in the section's table: its curve, what each step did, and its
    cost at each of the direction's sizes: (query ms, gallery ms, measured?) or None."""

    curve: CostCurve
    offline: str
    per_query: str
    batches: str
    at: dict[int, tuple[float, float, bool] | None] = field(default_factory=dict)


@dataclass
class Direction:
    """Everything the section shows for one direction (text to image, image to text)."""

    task: str
    title: str
    sizes: list[int]  # every N measured in this direction, then the summary's fitted sizes
    lines: list[CurveLine]
    crossovers: list[Crossover]
    k_crossovers: list[KCrossover] = field(default_factory=list)
    charts: list[Chart] = field(default_factory=list)
    n_ref: int | None = None
    n_ref_measured: bool = True
    measured_sizes: list[int] = field(default_factory=list)


@dataclass
class RetrievalSection:
    directions: list[Direction]

    def describe_n(self, c: Crossover, q: float, root: float | None,
                   gallery_free: bool = False) -> str:
        return describe_n(c, q, root, gallery_free=gallery_free)

    def describe_q(self, c: Crossover, n: float, root: float | None) -> str:
        return describe_q(c, n, root)

    def k_cells(self, c: KCrossover) -> list[tuple[str, str]]:
        """(one query, gallery free) k* in words, per N."""
        return [(describe_k(c, n, one), describe_k(c, n, free, gallery_free=True))
                for (n, one), (_, free) in zip(c.k_one, c.k_free, strict=True)]


def retrieval_section(cases: Sequence[ReportCase]) -> RetrievalSection | None:
    """The section from the report's cases, or None when no case is a retrieval case."""
    retrieval = [c for c in cases if c.result.spec.task in TASKS]
    if not retrieval:
        return None
    labels = {id(c.result): c.label for c in retrieval}
    curves = cost_curves([c.result for c in retrieval], label=lambda r: labels[id(r)])
    settings = {_key(labels[id(c.result)], c.result.spec.task, c.result.spec.rerank_k):
                c.result.settings for c in retrieval if c.result.status == "ok"}
    directions = []
    for task in TASKS:
        mine = [c for c in curves if c.task == task]
        if not mine:
            continue
        measured = sorted({p.n for c in mine for p in c.points})
        fitted = [n for n in GALLERY_SIZES if n > measured[-1]] if any(
            c.fitted for c in mine) else []
        sizes = measured + fitted
        lines = [_line(c, settings.get(_key(c.family, task, c.k), {}), sizes) for c in mine]
        d = Direction(task, TASK_TEXT[task], sizes, lines, crossovers(mine), k_crossovers(mine),
                      measured_sizes=measured)
        d.charts = _charts(d, mine)
        directions.append(d)
    return RetrievalSection(directions)


def _key(label: str, task: str | None, k: int | None) -> str:
    return f"{label}|{task}|{k}"


def _line(curve: CostCurve, settings: dict[str, Any], sizes: list[int]) -> CurveLine:
    """The steps in words, with the cache's shape and the batches found at the largest N, and
    the cost at each size (measured, else fitted)."""
    info = settings.get("retrieval", {})
    shape = info.get("cached_shape")
    cached = f" {tuple(shape)}" if shape else ""
    if info.get("cached_bytes"):
        cached += f", {info['cached_bytes'] / 2**20:,.1f} MB at N = {curve.points[-1].n:,}"
    pair = info.get("pair_batch")
    k = info.get("k")
    batches = (f"at N = {curve.points[-1].n:,}: gallery batch {info.get('gallery_batch', '-')}"
               + (f", k = {k} fused" if k is not None else "")
               + (f", pair batch {pair}" if pair is not None else ""))
    at: dict[int, tuple[float, float, bool] | None] = {}
    for n in sizes:
        p = curve.measured(n)
        at[n] = ((p.query_ms, p.encode_ms, True) if p is not None else
                 (curve.query_at(n), curve.encode_at(n), False) if curve.fitted else None)
    return CurveLine(curve, f"{info.get('offline', '-')}{cached}",
                     str(info.get("per_query", "-")), batches, at)


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
        "query once the gallery is cached, query(N). Markers: medians as measured (circles: "
        "gallery + query, triangles: query); lines: the fitted cost model, extrapolated over "
        "the shaded sizes no model measured. A re-ranking's query grows with N up to N = k, "
        "then only by its ITC ranking. Log-log.",
        against_n(curves, f"retrieval-{short}-n"))]
    d.n_ref, d.n_ref_measured = _reference_n(curves)
    usable = [c for c in curves if d.n_ref in {p.n for p in c.points} or c.fitted]
    if d.n_ref is not None and len(usable) == len(curves):
        how = ("measured at this N by every model" if d.n_ref_measured else
               "from the fitted terms: no N was measured by every model")
        charts.append(Chart(
            f"retrieval-{short}-q", f"Cost against query count Q at N = {d.n_ref:,}, {d.title}",
            f"encode(N) + Q * query(N) with N = {d.n_ref:,} ({how}); where two lines cross, "
            "caching the gallery starts to pay. Log-log.",
            against_q(curves, d.n_ref, f"retrieval-{short}-q")))
    fitted = [c for c in curves if c.fitted]
    if any(c.rerank is not None for c in fitted):
        charts.append(Chart(
            f"retrieval-{short}-k", f"Cost per query against k at N = {K_CHART_N:,}, {d.title}",
            f"One query once the gallery is cached, at N = {K_CHART_N:,}, from the fitted "
            "terms: a re-ranking's rank(N) + fuse(k) (squares: the k of its curves) against "
            "each other model's query(N) (dotted). Where they cross is k*: the re-ranking is "
            "the cheaper below it. Log-log.",
            against_k(fitted, K_CHART_N, f"retrieval-{short}-k")))
    return charts


def _num(ms: float) -> str:
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.3g}"


def _terms_md(c: CostCurve) -> str:
    """encode a | b | query (a re-ranking's rank) a | b | fuse a | b, as markdown cells."""
    q = c.rerank.rank if c.rerank is not None else c.query
    if c.encode is None or q is None:
        return "- | - | - | - | - | -"
    fuse = f"{c.rerank.fuse.a:.3g} | {c.rerank.fuse.b:.3g}" if c.rerank is not None else "- | -"
    return f"{c.encode.a:.3g} | {c.encode.b:.3g} | {q.a:.3g} | {q.b:.3g} | {fuse}"


def _direction_md(d: Direction) -> list[str]:
    lines = [f"**{escape(d.title)}**", "",
             "| model | strategy | N measured | encode a ms | encode b ms/item | query a ms | "
             "query b ms/item | fuse a ms | fuse b ms/pair |", "|---" * 9 + "|"]
    for line in d.lines:
        c = line.curve
        ns = ", ".join(str(p.n) for p in c.points)
        lines.append(f"| {escape(c.label)} | {c.strategy}{' (what-if)' if c.what_if else ''} | "
                     f"{ns} | {_terms_md(c)} |")
    lines += ["", "Per query once cached / gallery encoding, ms (~: fitted, not measured):", "",
              "| model | " + " | ".join(f"N = {n:,}" for n in d.sizes) + " |",
              "|---" * (len(d.sizes) + 1) + "|"]
    for line in d.lines:
        cells = [("-" if v is None else
                  f"{'' if v[2] else '~'}{_num(v[0])} / {'' if v[2] else '~'}{_num(v[1])}")
                 for v in (line.at[n] for n in d.sizes)]
        lines.append(f"| {escape(line.curve.label)} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- what-if: {escape(c.label)}: {escape(c.what_if)}"
              for c in (x.curve for x in d.lines) if c.what_if]
    for c in d.crossovers:
        q1 = dict(c.n_for_q).get(1)
        lines.append(f"- {escape(c.first.label)} / {escape(c.second.label)}: gallery free: "
                     f"{escape(describe_n(c, 1, c.n_gallery_free, gallery_free=True))}; "
                     f"Q = 1: {escape(describe_n(c, 1, q1))}")
    if d.k_crossovers:
        sizes = [n for n, _ in d.k_crossovers[0].k_one]
        lines += ["", "k* (a re-ranking is the cheaper for smaller k), one query / gallery free:",
                  "", "| re-ranking / other | " + " | ".join(f"N = {n:,}" for n in sizes) + " |",
                  "|---" * (len(sizes) + 1) + "|"]
        for k in d.k_crossovers:
            cells = [f"{escape(one)} / {escape(free)}"
                     for one, free in RetrievalSection([]).k_cells(k)]
            lines.append(f"| {escape(k.rerank.family)} / {escape(k.other.label)} | "
                         + " | ".join(cells) + " |")
    return [*lines, ""]


def retrieval_markdown(section: RetrievalSection) -> list[str]:
    """The section's numbers as markdown lines (no charts): fits, costs and crossovers."""
    lines = ["### Retrieval cost", "",
             "cost(Q, N) = encode(N) + Q * query(N); a re-ranking's query = rank(N) + "
             "fuse(min(k, N)); each fitted as a + b*x (ms; x = N, or k for fuse).", ""]
    for d in section.directions:
        lines += _direction_md(d)
    return lines


SECTION = Section(name="retrieval", title="Retrieval cost", build=retrieval_section,
                  template="_retrieval.html.j2", markdown=retrieval_markdown)
