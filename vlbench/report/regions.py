"""The report's regions section: the waterfall from the ViLT paper's region/patch gap to what
remains once a region pipeline drops 2019 practice one change at a time (``vlbench.waterfall``).

Why two panels: the savings depend on the order (class-agnostic NMS saves little once the
box head's proposals are cut, and nothing once the detector is precomputed), so the cumulative
waterfall, in the issue's order, stands beside each change alone from the faithful baseline.
Bars are end to end over the same run's patch model (ViLT-B/32) at fp32 eager, on a log scale:
the gap spans two orders of magnitude. Each bar is the step's level; its coloured part is what
the step changed (green: saved, red: added). A step not measured (skipped on a CPU, failed) has
no bar and says why. Registered as ``SECTION``; its page part is ``templates/_regions.html.j2``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vlbench import paper
from vlbench.report.charts import RC, Chart, format_ms, log_axis, to_svg
from vlbench.report.section import ReportCase, Section
from vlbench.report.text import escape
from vlbench.waterfall import (
    Row,
    Step,
    Waterfall,
    find_waterfalls,
    headline,
    ratio_text,
    table_rows,
)

SAVED, ADDED, LEVEL, PAPER = "#009E73", "#D55E00", "#c9d3dd", "#bbbbbb"


@dataclass(frozen=True)
class WaterfallView:
    """One waterfall as the page shows it: its sentence, chart and two tables."""

    title: str
    headline: str
    chart: Chart
    cumulative: list[Row]
    alone: list[Row]


@dataclass(frozen=True)
class RegionsSection:
    waterfalls: list[WaterfallView]


def regions_section(cases: Sequence[ReportCase]) -> RegionsSection | None:
    """The section from the report's cases, or None when no run has a waterfall."""
    by_run: dict[int, list[Any]] = defaultdict(list)
    for case in cases:
        by_run[case.run_id].append(case.result)
    views = []
    for run_id, results in by_run.items():
        for wf in find_waterfalls(results, run_id=run_id):
            b = wf.faithful.result.spec.batch_size if wf.faithful.result else 1
            run = f", run {run_id}" if len(by_run) > 1 else ""
            title = f"{wf.base}, batch {b}{run}"
            prefix = f"regions-{len(views)}"
            chart = Chart(prefix, f"From the paper's gap to what remains: {title}",
                          _caption(wf), waterfall_chart(wf, prefix))
            views.append(WaterfallView(title, headline(wf), chart,
                                       table_rows(wf, wf.cumulative, cumulative=True),
                                       table_rows(wf, wf.alone, cumulative=False)))
    return RegionsSection(views) if views else None


def _caption(wf: Waterfall) -> str:
    ref = wf.reference.spec.model if wf.reference else "the patch model"
    return (f"End to end over {ref} at fp32 eager in the same run (log scale). Left: the "
            f"paper's ~{wf.paper_ratio:.0f}x ({paper.PAPER_DEVICE}, hatched), our faithful "
            "pipeline, then each change on top of the previous ones; right: each change alone "
            "from the faithful pipeline (dashed line). Light: the step's level; green: what it "
            "saved; red: what it added; the solid line at 1x: the patch model. Steps without a "
            "bar were not measured (see the tables).")


def _value(wf: Waterfall, step: Step) -> float | None:
    """What a bar's height is: the ratio, or milliseconds when the run has no patch model."""
    return wf.ratio(step) if wf.reference_ms else step.ms


def _bar(ax: Any, x: int, level: float, before: float | None, bottom: float) -> None:
    """The step's level from the axis bottom, and its change from ``before`` coloured."""
    ax.bar(x, level - bottom, bottom=bottom, color=LEVEL, width=0.7, linewidth=0)
    if before is not None and before != level:
        low, high = sorted((before, level))
        ax.bar(x, high - low, bottom=low, width=0.7, linewidth=0,
               color=SAVED if level < before else ADDED)


def _label(ax: Any, x: int, wf: Waterfall, step: Step, top: float) -> None:
    """The step's ratio and time, above its bar (the level, or the change when higher)."""
    ratio = wf.ratio(step)
    text = (f"{ratio_text(ratio)}\n" if ratio is not None else "") + format_ms(step.ms or 0.0)
    ax.text(x, top * 1.12, text, ha="center", va="bottom", fontsize=7.5)


def _missing(ax: Any, x: int, step: Step, at: float) -> None:
    ax.text(x, at, step.status, ha="center", va="bottom", fontsize=7.5, color="#777777",
            rotation=90)


def _panel(ax: Any, wf: Waterfall, steps: Sequence[Step], *, cumulative: bool,
           bottom: float) -> None:
    faithful = _value(wf, wf.faithful)
    before = None if cumulative else faithful
    for x, step in enumerate(steps):
        level = _value(wf, step)
        if level is None:
            _missing(ax, x, step, bottom * 1.3)
            continue
        previous = before if step is not wf.faithful else None
        _bar(ax, x, level, previous, bottom)
        _label(ax, x, wf, step, max(level, previous or level))
        if cumulative:
            before = level
    if not cumulative and faithful is not None:
        ax.axhline(faithful, color="#555555", linewidth=0.8, linestyle="--")
    if wf.reference_ms:
        ax.axhline(1.0, color="#333333", linewidth=0.6)


def _bottom(wf: Waterfall) -> tuple[float, float]:
    """The log axis's limits: below the lowest level, above the paper's gap."""
    values = [v for s in (*wf.cumulative, *wf.alone) if (v := _value(wf, s)) is not None]
    values += [wf.paper_ratio, 1.0] if wf.reference_ms else []
    values = values or [1.0]
    return min(values) / 3.0, max(values) * 3.0


def waterfall_chart(wf: Waterfall, prefix: str) -> str:
    """Two panels sharing a log y axis: cumulative (with the paper's gap first), and alone."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    low, high = _bottom(wf)
    cumulative = list(wf.cumulative)
    with rc_context(RC):
        fig = Figure(figsize=(10.5, 4.4))
        left, right = fig.subplots(1, 2, sharey=True, gridspec_kw={
            "width_ratios": [len(cumulative) + 1, len(wf.alone)]})
        for ax in (left, right):
            ax.set_yscale("log")
            ax.set_ylim(low, high)
            ax.grid(True, axis="y", linewidth=0.4, alpha=0.5)
        if wf.reference_ms:  # the paper's gap as the first bar, hatched
            left.bar(-1, wf.paper_ratio - low, bottom=low, color=PAPER, hatch="///",
                     edgecolor="white", width=0.7)
            left.text(-1, wf.paper_ratio * 1.12, f"~{wf.paper_ratio:.0f}x", ha="center",
                      va="bottom", fontsize=7.5)
        _panel(left, wf, cumulative, cumulative=True, bottom=low)
        _panel(right, wf, wf.alone, cumulative=False, bottom=low)
        ticks = [f"paper\n({paper.PAPER_DEVICE})"] if wf.reference_ms else []
        ticks += [s.label for s in cumulative]
        left.set_xticks(range(-1 if wf.reference_ms else 0, len(cumulative)), ticks,
                        rotation=35, ha="right")
        right.set_xticks(range(len(wf.alone)), [s.label for s in wf.alone], rotation=35,
                         ha="right")
        left.set_title("cumulative, in order", fontsize=9)
        right.set_title("each change alone, from faithful", fontsize=9)
        ref = wf.reference.spec.model if wf.reference else ""
        left.set_ylabel(f"end to end / {ref} (x)" if wf.reference_ms else "end to end, ms")
        log_axis(left.yaxis, lambda v: f"{v:g}x" if wf.reference_ms else format_ms(v))
        fig.tight_layout()
        return to_svg(fig, prefix)


def regions_markdown(section: RegionsSection) -> list[str]:
    """The section as markdown: a sentence and two tables per waterfall (no chart)."""
    lines = ["### Region pipeline: design or practice?", ""]
    for view in section.waterfalls:
        lines += [f"**{escape(view.title)}**: {escape(view.headline)}.", ""]
        for title, rows in (("Cumulative", view.cumulative),
                            ("Each change alone, from faithful", view.alone)):
            lines += [f"{title}:", "", "| step | what changes | model | how | end-to-end ms | "
                      "ratio | change | note |", "|---|---|---|---|---|---|---|---|"]
            lines += [f"| {escape(r.label)} | {escape(r.what)} | {escape(r.model)} | {r.how} | "
                      f"{r.ms} | {r.ratio} | {r.change} | {escape(r.note)} |" for r in rows]
            lines.append("")
    return lines


SECTION = Section(name="regions", title="Region pipeline waterfall", build=regions_section,
                  template="_regions.html.j2", markdown=regions_markdown)
