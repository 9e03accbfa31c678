"""The report as one self-contained HTML page, rendered from ``collect``'s data.

Why this shape: the page fetches nothing (inline CSS, charts as inline SVG, no script) so it opens
offline and as a CI artifact; every string from a user or a run goes through jinja2's autoescape,
and only our own charts' SVG is marked safe. Sections registered in ``vlbench.report.registry``
are included in registry order, each with its own template.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from vlbench import paper
from vlbench.case_keys import case_key
from vlbench.contention import state
from vlbench.report.charts import report_charts
from vlbench.report.data import Case, ReportData, spec_text
from vlbench.report.text import FLOP_NOTE, html_ms, number, peak_percent, percent
from vlbench.results import STAGE_GAP_LIMIT, stage_gap
from vlbench.stats import UNSTABLE_CV
from vlbench.store_schema import finite

__all__ = ["Case", "render_html"]  # Case: where callers have always found it

_LONG_VALUE = 160  # environment values longer than this go in a <pre> block


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(value, dict):
        out: list[tuple[str, str]] = []
        for key in sorted(value, key=str):
            out += _flatten(value[key], f"{prefix}.{key}" if prefix else str(key))
        return out
    text = value if isinstance(value, str) else json.dumps(finite(value), default=str,
                                                           allow_nan=False)
    return [(prefix, text)]


def _environment(data: ReportData) -> list[dict[str, Any]]:
    """Per run: short values as a table, long ones (torch's build config) as <pre> blocks,
    and the precision flags each precision ran with."""
    blocks = []
    for run in data.runs:
        rows = _flatten(run.env)
        flags: dict[str, dict[str, Any]] = {}
        for case in data.cases:
            r = case.result
            if case.run_id == run.id and r.settings and r.spec.precision not in flags:
                flags[r.spec.precision] = {k: v for k, v in r.settings.items() if k != "timing"}
        blocks.append({
            "run": run,
            "env": [(k, v) for k, v in rows if len(v) <= _LONG_VALUE and "\n" not in v],
            "long": [(k, v) for k, v in rows if len(v) > _LONG_VALUE or "\n" in v],
            "settings": _flatten(run.settings.get("timing", {}), "timing")
            + [(k, v) for k, v in _flatten(run.settings) if not k.startswith(("cases", "timing"))],
            "precision": {p: _flatten(f) for p, f in flags.items()},
        })
    return blocks


def _key_text(key: str) -> str:
    """A case key (model|batch|HxW|text|precision|device) without the model, as in the tables."""
    parts = key.split("|")
    if len(parts) != 6:
        return key
    return f"b{parts[1]} {parts[2]}+{parts[3]} {parts[4]} {parts[5]}"


def render_html(data: ReportData, command: str = "") -> Iterable[str]:
    """The report page, as chunks (streamed into a temporary file by ``write_report``)."""
    env = Environment(
        loader=PackageLoader("vlbench.report", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html", "html.j2", "xml")),
        undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )
    env.filters.update(ms=html_ms, num=number, pct=percent, share=peak_percent)
    charts = [replace(c, svg=Markup(c.svg))
              for c in report_charts(data.bars, data.throughput, data.input_cost)]
    return env.get_template("report.html.j2").generate(
        data=data, charts=charts, command=command, paper=paper, flop_note=FLOP_NOTE,
        gap_limit=STAGE_GAP_LIMIT, unstable_cv=UNSTABLE_CV, environment=_environment(data),
        case_key=case_key, spec_text=spec_text, stage_gap=stage_gap, key_text=_key_text,
        machine_state=state,
    )
