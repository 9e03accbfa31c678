"""The report as GitHub-flavoured markdown, for a pull-request comment.

Why separate from the HTML: a PR comment cannot hold inline SVG, so it carries the headline table
(time per category, the paper's figures beside) and the regressions; the full HTML report is the
attachment. Built from the same ``collect`` data, so both always agree. Every string from a user
or a run is escaped: HTML specials become entities (GitHub would otherwise render tags) and
markdown specials, ``|`` and ``$`` (GitHub math) are backslash-escaped.
"""

from __future__ import annotations

import re

from vlbench import paper
from vlbench.report.charts import CATEGORIES, breakdown
from vlbench.report.html import ReportData, collect
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


def escape(text: object) -> str:
    """Plain text safe in a markdown table cell: no tags, no formatting, no math, no cell breaks."""
    value = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    value = re.sub(r"([\\`*_\[\]|$~])", r"\\\1", value)
    return " ".join(value.split())  # newlines would end the table row


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}" if value >= 1 else f"{value:.2f}"


def _fence(text: str) -> str:
    """A fenced code block that no backtick run inside ``text`` can close early."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text}\n{fence}"


def markdown_from_data(data: ReportData, command: str = "") -> str:
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
    lines.append("")
    categories = [c for c in CATEGORIES
                  if any(breakdown(case.result).get(c) for case in data.headline)]
    header = ["model", "input", "tokens", "params M", "GFLOPs", "end-to-end ms",
              *(_SHORT.get(c, c) + " ms" for c in categories), f"paper ms ({paper.PAPER_DEVICE})"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    by_case = {id(line.case): line for line in data.table6}
    for case in data.headline:
        r, line = case.result, by_case[id(case)]
        parts = breakdown(r)
        s = r.spec
        theirs = line.paper.time_ms if line.paper else None
        cells = [
            escape(case.label), f"b{s.batch_size} {s.image_size[0]}x{s.image_size[1]}",
            escape(line.tokens) + (f" (paper {escape(line.paper_tokens)})"
                                   if line.paper_tokens else ""),
            f"{line.params_m:.1f}", f"{line.gflops:.1f}", f"**{_ms(line.time.median_ms)}**",
            *(_ms(parts.get(c)) if parts.get(c) else "-" for c in categories),
            f"~{theirs:.0f}" if theirs is not None else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if not data.headline:
        retrieval_only = data.cases and all(c.result.spec.task for c in data.cases)
        what = ("no single-pair case (retrieval cases: below)" if retrieval_only
                else "no successful case")
        lines.append(f"| {what} |" + " |" * (len(header) - 1))
    lines += ["", f"FLOPs: {paper.FLOP_CONVENTION}. Paper figures: {paper.CITATION}; "
              "they leave out the text embedder.", ""]
    for ratio in data.ratios:
        visual = f"{ratio.visual:.0f}x" if ratio.visual is not None else "-"
        lines.append(
            f"- {ratio.kind} / patch ({escape(ratio.numerator)} / {escape(ratio.denominator)}): "
            f"{ratio.end_to_end:.1f}x end to end (paper ~{ratio.paper_end_to_end:.0f}x), "
            f"{visual} for the visual embedder alone (paper ~{ratio.paper_visual:.0f}x)"
        )
    if data.ratios:
        lines.append("")
    if data.retrieval is not None:
        from vlbench.report.retrieval import retrieval_markdown

        lines += retrieval_markdown(data.retrieval)
    for run_id, rows in data.comparisons.items():
        slower = [c for c in rows if c.verdict == "slower"]
        counts = {v: sum(1 for c in rows if c.verdict == v)
                  for v in ("slower", "faster", "inconclusive", "same")}
        summary = ", ".join(f"{n} {v}" for v, n in counts.items())
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
    if data.failures:
        lines.append("### Failed cases")
        lines += [f"- {escape(c.label)} b{c.result.spec.batch_size}: "
                  f"{escape(c.result.status)}: {escape(c.result.message)}" for c in data.failures]
        lines.append("")
    for r in data.runs:
        lines += [f"Reproduce run {r.id}:", "", _fence(r.command), ""]
    if command:
        lines += ["Report generated by:", "", _fence(command), ""]
    return "\n".join(lines)


def render_markdown(
    store: Store, run_ids: list[int], *, baseline: int | None = None, command: str = ""
) -> str:
    """The markdown report of ``run_ids`` (with regressions against ``baseline``)."""
    return markdown_from_data(collect(store, run_ids, baseline), command)
