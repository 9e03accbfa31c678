"""The report as GitHub-flavoured markdown, for a pull-request comment.

Why separate from the HTML: a PR comment cannot hold inline SVG, so it carries the headline table
(time per category, the paper's figures beside) and the regressions; the full HTML report is the
attachment. Built from the same ``collect`` data, so both always agree; every string from a user
or a run goes through ``vlbench.report.text.escape``. Registered sections add their own lines
(``vlbench.report.registry``).
"""

from __future__ import annotations

from vlbench import paper
from vlbench.contention import BUSY, state
from vlbench.report.charts import CATEGORIES, breakdown
from vlbench.report.contention import machine_markdown
from vlbench.report.data import ReportData, collect
from vlbench.report.text import FLOP_NOTE, escape, fence
from vlbench.report.text import markdown_ms as _ms
from vlbench.store import Store

_SHORT = {
    paper.BACKBONE: "backbone",
    paper.REGION_OPS: "region ops",
    paper.VISUAL_EMBEDDING: "patch/grid emb.",
    paper.TEXT_EMBEDDING: "text emb.",
    paper.SINGLE_MODALITY: "single-modality",
    paper.INTERACTION: "interaction",
    paper.HEAD: "head",
}
_MAX_ROWS = 30  # regressions listed in a comment; the HTML report has them all


def _run_lines(data: ReportData) -> list[str]:
    runs = ", ".join(
        f"run {r.id}" + (f" ({escape(r.label)})" if r.label else "") for r in data.runs
    )
    lines = [f"## vlbench report: {runs}", ""]
    for r in data.runs:
        count = sum(1 for c in data.cases if c.run_id == r.id)
        failed = sum(1 for c in data.failures if c.run_id == r.id)
        lines.append(
            f"Run {r.id}: suite {escape(r.suite or '-')}, {escape(r.status)}, host "
            f"{escape(r.host)}, device {escape(r.env.get('device', '-'))}; {count} case(s)"
            + (f", **{failed} failed**" if failed else "") + "."
        )
    return [*lines, ""]


def _headline_table(data: ReportData) -> list[str]:
    """Per model: input, tokens, size, time per category, and the paper's time beside."""
    categories = [c for c in CATEGORIES
                  if any(breakdown(case.result).get(c) for case in data.headline)]
    header = ["model", "input", "tokens", "params M", "GFLOPs", "end-to-end ms",
              *(_SHORT.get(c, c) + " ms" for c in categories), f"paper ms ({paper.PAPER_DEVICE})"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for line in data.table6:  # one per headline case, in its order
        r = line.case.result
        parts, s = breakdown(r), r.spec
        theirs = line.paper.time_ms if line.paper else None
        cells = [
            escape(line.case.label), f"b{s.batch_size} {s.image_size[0]}x{s.image_size[1]}"
            + (f" ({line.canonical})" if line.canonical else ""),
            escape(line.tokens) + (f" (paper {escape(line.paper_tokens)})"
                                   if line.paper_tokens else ""),
            f"{line.params_m:.1f}", f"{line.gflops:.1f}", f"**{_ms(line.time.median_ms)}**"
            + (" (busy machine)" if state(r.contention) == BUSY else ""),
            *(_ms(parts.get(c)) if parts.get(c) else "-" for c in categories),
            f"~{theirs:.0f}" if theirs is not None else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if not data.headline:
        sections_only = data.sections and all(c.result.spec.task for c in data.cases)
        names = " and ".join(shown.section.name for shown in data.sections)
        what = (f"no single-pair case ({names} cases: below)" if sections_only
                else "no successful case")
        lines.append(f"| {what} |" + " |" * (len(header) - 1))
    return [*lines, "", f"FLOPs: {FLOP_NOTE}. Paper figures: {paper.CITATION}; they leave out "
            "the text embedder.", ""]


def _ratio_lines(data: ReportData) -> list[str]:
    lines = []
    for ratio in data.ratios:
        visual = f"{ratio.visual:.0f}x" if ratio.visual is not None else "-"
        lines.append(
            f"- {ratio.kind} / patch ({escape(ratio.numerator)} / {escape(ratio.denominator)}): "
            f"{ratio.end_to_end:.1f}x end to end (paper ~{ratio.paper_end_to_end:.0f}x), "
            f"{visual} for the visual embedder alone (paper ~{ratio.paper_visual:.0f}x)"
        )
    return [*lines, ""] if lines else []


def _comparison_lines(data: ReportData) -> list[str]:
    """Per compared run: the verdict counts and the stages that got slower."""
    lines: list[str] = []
    for run_id, rows in data.comparisons.items():
        slower = [c for c in rows if c.verdict == "slower"]
        counts = {v: sum(1 for c in rows if c.verdict == v)
                  for v in ("slower", "faster", "inconclusive", "same")}
        summary = ", ".join(f"{n} {v}" for v, n in counts.items())
        machine = sum(1 for c in rows if c.contention)
        if machine:
            summary += f" ({machine} inconclusive because of the machine: see Machine)"
        title = (f"Run {run_id}: side B against side A (interleaved rounds)"
                 if run_id in data.interleaved else
                 f"Run {run_id} against baseline run {data.baseline}")
        lines += [f"### {title}", "", summary + ".", ""]
        if slower:
            lines += ["| model | case | stage | baseline ms | current ms | ratio | p |",
                      "|---|---|---|---|---|---|---|"]
            for c in slower[:_MAX_ROWS]:
                p_value = f"{c.p_value:.2g}" if c.p_value is not None else "-"
                lines.append(f"| {escape(c.model)} | {escape(c.case_key)} | {escape(c.stage)} | "
                             f"{_ms(c.baseline_ms)} | {_ms(c.current_ms)} | "
                             f"**{c.ratio:.2f}x** | {p_value} |")
            if len(slower) > _MAX_ROWS:
                lines.append(f"\n... and {len(slower) - _MAX_ROWS} more in the HTML report.")
        else:
            lines.append("No stage is significantly slower (beyond 10%, p < 0.01).")
        lines.append("")
    return lines


def _closing_lines(data: ReportData, command: str) -> list[str]:
    """Failed cases, and the commands that reproduce the runs and the report."""
    lines: list[str] = []
    if data.failures:
        lines.append("### Failed cases")
        lines += [f"- {escape(c.label)} b{c.result.spec.batch_size}: "
                  f"{escape(c.result.status)}: {escape(c.result.message)}" for c in data.failures]
        lines.append("")
    for r in data.runs:
        lines += [f"Reproduce run {r.id}:", "", fence(r.command), ""]
    if command:
        lines += ["Report generated by:", "", fence(command), ""]
    return lines


def markdown_from_data(data: ReportData, command: str = "") -> str:
    lines = [*_run_lines(data), *_headline_table(data), *_ratio_lines(data)]
    for shown in data.sections:
        lines += shown.section.markdown(shown.data)
    if data.machine is not None:
        lines += machine_markdown(data.machine)
    lines += [*_comparison_lines(data), *_closing_lines(data, command)]
    return "\n".join(lines)


def render_markdown(
    store: Store, run_ids: list[int], *, baseline: int | None = None, command: str = ""
) -> str:
    """The markdown report of ``run_ids`` (with regressions against ``baseline``)."""
    return markdown_from_data(collect(store, run_ids, baseline), command)
