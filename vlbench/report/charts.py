"""Charts for reports: matplotlib figures rendered to inline SVG strings.

Why these settings: reports must be self-contained and safe. Text is drawn as paths
(``svg.fonttype = "path"``) so no font is fetched and every viewer renders the same glyphs; a fixed
``svg.hashsalt`` and no date metadata make the output deterministic; ``text.parse_math = False``
keeps a ``$`` in a model name from being parsed as mathtext (or raising). The SVG comments that
repeat each label are dropped and element ids get a per-chart prefix, so several charts can share
one HTML page without id clashes. matplotlib is imported lazily: the markdown report never needs it.
"""

from __future__ import annotations

import io
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vlbench import paper
from vlbench.results import CaseResult
from vlbench.upgrade import OTHER, stage_category

if TYPE_CHECKING:
    from matplotlib.axis import Axis
    from matplotlib.figure import Figure

CATEGORIES = (*paper.CATEGORIES, OTHER)
# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
COLOURS = {
    paper.BACKBONE: "#0072B2",
    paper.REGION_OPS: "#D55E00",
    paper.VISUAL_EMBEDDING: "#E69F00",
    paper.TEXT_EMBEDDING: "#F0E442",
    paper.SINGLE_MODALITY: "#56B4E9",
    paper.INTERACTION: "#009E73",
    paper.HEAD: "#CC79A7",
    OTHER: "#999999",
}
RC = {
    "text.parse_math": False,
    "svg.fonttype": "path",
    "svg.hashsalt": "vlbench-report",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
_MAX_LABEL = 48


def breakdown(result: CaseResult) -> dict[str, float]:
    """Milliseconds per category, from the stage tree, in the manner of the ViLT Figure 1.

    Each top-level stage is split into its direct children's medians by the child's category;
    the remainder (parent minus children, floored at 0: hooks add noise) goes to the parent's.
    """
    parts: dict[str, float] = defaultdict(float)
    for top in result.stages:
        if top.parent is not None or top.timing is None:
            continue
        children = [s for s in result.stages if s.parent == top.name and s.timing is not None]
        inside = 0.0
        for child in children:
            assert child.timing is not None
            parts[stage_category(child)] += child.timing.median_ms
            inside += child.timing.median_ms
        parts[stage_category(top)] += max(0.0, top.timing.median_ms - inside)
    return {c: parts[c] for c in CATEGORIES if parts.get(c, 0.0) > 0.0}


@dataclass(frozen=True)
class Bar:
    """One headline bar: ours (a measured case) or the paper's (hatched)."""

    label: str
    parts_ms: dict[str, float]
    total_ms: float  # end-to-end median (ours) or the paper's total
    from_paper: bool = False


@dataclass(frozen=True)
class Series:
    """One line of a scaling chart."""

    label: str
    points: list[tuple[float, float]] = field(default_factory=list)


@dataclass(frozen=True)
class Chart:
    """A rendered chart: where it sits in the page, its title and caption, the inline SVG."""

    anchor: str
    title: str
    caption: str
    svg: str


def format_ms(ms: float) -> str:
    """Milliseconds with a unit a reader takes in at a glance (0.40 ms, 15 ms, 12.0 s)."""
    if ms >= 1000.0:
        return f"{ms / 1000.0:.1f} s"
    if ms >= 10.0:
        return f"{ms:.0f} ms"
    if ms >= 1.0:
        return f"{ms:.1f} ms"
    return f"{ms:.2f} ms"


def tick_ms(ms: float) -> str:
    return f"{ms / 1000.0:g} s" if ms >= 1000.0 else f"{ms:g} ms"


def short_label(label: str) -> str:
    return label if len(label) <= _MAX_LABEL else label[: _MAX_LABEL - 1] + "\u2026"


def _text_colour(hex_colour: str) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "white"


def to_svg(fig: Figure, prefix: str) -> str:
    """The figure as an inline ``<svg>`` element: no XML prolog, no comments, prefixed ids."""
    buffer = io.StringIO()
    metadata = {"Date": None, "Creator": None, "Format": None, "Type": None}
    fig.savefig(buffer, format="svg", metadata=metadata, bbox_inches="tight")
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r"<!--.*?-->\s*", "", svg, flags=re.DOTALL)
    svg = re.sub(r'\bid="', f'id="{prefix}-', svg)
    svg = re.sub(r'href="#', f'href="#{prefix}-', svg)
    svg = re.sub(r"url\(#", f"url(#{prefix}-", svg)
    return svg.replace("<svg ", '<svg role="img" ', 1)


def log_axis(axis: Axis, fmt: Callable[[float], str]) -> None:
    """Plain tick labels on a log axis: the default ones are mathtext, which parse_math=False
    would print raw."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=axis.get_transform().base, numticks=5))
    axis.set_major_formatter(FuncFormatter(lambda value, _pos: fmt(value)))
    axis.set_minor_formatter(NullFormatter())


def headline_chart(bars: Sequence[Bar], prefix: str = "headline") -> str:
    """Two panels: left, each model's time split by category (share of the bar, ms written in the
    segment); right, the end-to-end median on a log scale, so 15 ms and 12 s both read."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    with rc_context(RC):
        height = 1.3 + 0.42 * len(bars)
        fig = Figure(figsize=(10.5, height))
        left, right = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [3, 1.4]})
        rows = list(range(len(bars)))
        present: list[str] = []
        for row, bar in zip(rows, bars, strict=True):
            total = sum(bar.parts_ms.values()) or 1.0
            start = 0.0
            for category in CATEGORIES:
                ms = bar.parts_ms.get(category, 0.0)
                if ms <= 0.0:
                    continue
                if category not in present:
                    present.append(category)
                share = 100.0 * ms / total
                colour = COLOURS[category]
                left.barh(row, share, left=start, color=colour, height=0.72,
                          hatch="///" if bar.from_paper else None, edgecolor="white",
                          linewidth=0.6, alpha=0.75 if bar.from_paper else 1.0)
                text = format_ms(ms)
                if share >= 1.3 * len(text) + 2.0:  # about the label's width in % of the axis
                    # On a hatched (paper) bar the label sits on a plain patch to stay legible.
                    box = ({"boxstyle": "round,pad=0.15", "facecolor": colour, "linewidth": 0}
                           if bar.from_paper else None)
                    left.text(start + share / 2, row, text, ha="center", va="center",
                              fontsize=7.5, color=_text_colour(colour), bbox=box)
                start += share
            right.barh(row, bar.total_ms, height=0.72,
                       color="#bbbbbb" if bar.from_paper else "#555555",
                       hatch="///" if bar.from_paper else None, edgecolor="white")
            right.text(bar.total_ms * 1.15, row, format_ms(bar.total_ms), va="center", fontsize=8)
        left.set_yticks(rows, [short_label(b.label) for b in bars])
        left.invert_yaxis()
        left.set_xlim(0, 100)
        left.set_xlabel("share of the stage time, % (segments labelled in ms)")
        totals = [b.total_ms for b in bars if b.total_ms > 0] or [1.0]
        right.set_xscale("log")
        right.set_xlim(min(totals) / 2.0, max(totals) * 12.0)
        right.set_xlabel("end-to-end median, ms (log scale)")
        log_axis(right.xaxis, tick_ms)
        handles = [Patch(color=COLOURS[c], label=c) for c in CATEGORIES if c in present]
        if any(bar.from_paper for bar in bars):
            handles.append(Patch(facecolor="#dddddd", hatch="///", edgecolor="white",
                                 label=f"paper ({paper.PAPER_DEVICE})"))
        fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)),
                   frameon=False, bbox_to_anchor=(0.5, 0.0), fontsize=8)
        fig.tight_layout(rect=(0, 0.5 / height, 1, 1))  # room for two legend rows, in inches
        return to_svg(fig, prefix)


def line_chart(series: Sequence[Series], *, xlabel: str, ylabel: str, prefix: str,
               log_x: bool = False) -> str:
    """One line per series (throughput against batch size, cost against input size); the y axis
    turns logarithmic when the values span more than 20x, so small models stay visible."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    with rc_context(RC):
        fig = Figure(figsize=(7.5, 3.6))
        ax = fig.subplots()
        for line in series:
            xs, ys = zip(*sorted(line.points), strict=True)
            ax.plot(xs, ys, marker="o", markersize=4, linewidth=1.4, label=short_label(line.label))
        if log_x:
            ax.set_xscale("log", base=2)
            log_axis(ax.xaxis, lambda v: f"{v:g}")
        ys = [y for line in series for _, y in line.points if y > 0]
        if ys and max(ys) > 20 * min(ys):
            ax.set_yscale("log")
            log_axis(ax.yaxis, lambda v: f"{v:g}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, linewidth=0.4, alpha=0.5)
        ax.legend(fontsize=7.5, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.tight_layout()
        return to_svg(fig, prefix)


def report_charts(bars: Sequence[Bar], throughput: Sequence[Series],
                  input_cost: Sequence[Series]) -> list[Chart]:
    """The report's charts, headline first; a scaling chart only when the run varied that axis."""
    charts = []
    if bars:
        charts.append(Chart(
            "chart-headline", "Where the time goes",
            "Each bar splits a model's time at its smallest batch (normally 1) into categories "
            "from the stage tree, as the ViLT paper's Figure 1 does; the right panel gives the "
            "end-to-end median on a log scale."
            + (f" Hatched bars are the paper's figures on an {paper.PAPER_DEVICE}, which leave "
               "out the text embedder; ours include it." if any(b.from_paper for b in bars)
               else ""),
            headline_chart(bars)))
    if throughput:
        charts.append(Chart(
            "chart-throughput", "Throughput against batch size",
            "samples per second = batch size / end-to-end median",
            line_chart(throughput, xlabel="batch size", ylabel="samples / s",
                       prefix="throughput", log_x=True)))
    if input_cost:
        charts.append(Chart(
            "chart-input", "Cost against input size", "end-to-end median against the image area",
            line_chart(input_cost, xlabel="input size, megapixels (height x width)",
                       ylabel="end-to-end median, ms", prefix="input")))
    return charts
