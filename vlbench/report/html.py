"""Gather a run's results into report data and write the self-contained HTML report.

Why this shape: one ``collect`` feeds both the HTML and the markdown report, so a pull-request
comment never disagrees with the attached page. The HTML page fetches nothing (inline CSS, charts
as inline SVG, no script) so it opens offline and as a CI artifact; every string from a user or a
run goes through jinja2's autoescape. The file is written to a temporary sibling and renamed, so a
failure leaves no partial report (and keeps an older one intact).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from vlbench import paper
from vlbench.compare import StageComparison, compare_cases, ranked
from vlbench.gate import compare_runs
from vlbench.report.charts import Bar, Series, breakdown, category_of, report_charts
from vlbench.report.devices import DeviceRow, device_rows, label_devices
from vlbench.report.retrieval import RetrievalSection, retrieval_section
from vlbench.results import STAGE_GAP_LIMIT, CaseResult, StageResult, Summary, stage_gap
from vlbench.rounds import pool_rounds
from vlbench.stats import UNSTABLE_CV
from vlbench.store import RunRecord, Store, case_key

REPORTS_DIR = Path("reports")
_LONG_VALUE = 160  # environment values longer than this go in a <pre> block


@dataclass(frozen=True)
class Case:
    run_id: int
    result: CaseResult
    label: str
    #: the device that measured it, only in runs spread over several (vlbench.report.devices)
    device: str | None = None


@dataclass(frozen=True)
class Table6Line:
    case: Case
    tokens: str
    paper_tokens: str | None  # only where it differs from ours
    params_m: float
    params_m_no_text: float  # the paper's convention: without the shared text embedding
    gflops: float
    time: Summary
    paper: paper.Table6Row | None


@dataclass(frozen=True)
class Ratio:
    kind: str  # region or grid
    numerator: str
    denominator: str
    end_to_end: float
    visual: float | None
    paper_end_to_end: float
    paper_visual: float


@dataclass(frozen=True)
class StageLine:
    stage: StageResult
    depth: int
    category: str
    gflops_per_s: float | None
    workload: str
    unstable: bool


@dataclass(frozen=True)
class CaseDetail:
    anchor: str
    case: Case
    gap: float | None
    gap_flag: bool
    lines: list[StageLine]


@dataclass
class ReportData:
    runs: list[RunRecord]
    cases: list[Case]
    headline: list[Case]  # one per model: the smallest batch (normally 1), ok
    bars: list[Bar]
    table6: list[Table6Line]
    ratios: list[Ratio]
    details: list[CaseDetail]
    throughput: list[Series]
    input_cost: list[Series]
    failures: list[Case]
    comparisons: dict[int, list[StageComparison]] = field(default_factory=dict)
    baseline: int | None = None
    interleaved: set[int] = field(default_factory=set)  # runs compared side A against side B
    devices: list[DeviceRow] = field(default_factory=list)  # only for mixed-device runs
    retrieval: RetrievalSection | None = None  # runs with retrieval cases


def _spec_text(result: CaseResult) -> str:
    s = result.spec
    task = f" {s.task}" if s.task else ""  # a retrieval case: batch_size is the gallery's N
    return (f"b{s.batch_size} {s.image_size[0]}x{s.image_size[1]}+{s.text_len} "
            f"{s.precision}{task}")


def _canonical(model: str) -> tuple[tuple[int, int], int] | None:
    """The preset's canonical input, or None when the model packages or the preset are absent."""
    try:
        from architectures import PRESETS
    except ImportError:  # the report must render without the model packages
        return None
    if model not in PRESETS:
        return None
    preset = PRESETS.get(model)
    return tuple(preset.image_size), preset.text_len


def _headline_cases(cases: list[Case]) -> list[Case]:
    """One ok case per model and precision, as in Figure 1: the smallest batch (normally 1), at
    the preset's canonical input when the run has it, else the first input measured."""
    chosen: dict[tuple[Any, ...], tuple[tuple[int, bool, int], Case]] = {}
    for order, case in enumerate(cases):
        r = case.result
        if r.status != "ok" or r.end_to_end is None:
            continue
        s = r.spec
        key = (case.run_id, s.model, s.precision, s.device, case.device)
        rank = (s.batch_size, _canonical(s.model) != (tuple(s.image_size), s.text_len), order)
        if key not in chosen or rank < chosen[key][0]:
            chosen[key] = (rank, case)
    return [case for _, case in sorted(chosen.values(), key=lambda item: item[0][2])]


def _label_cases(pairs: list[tuple[int, CaseResult]]) -> list[Case]:
    """Labels that stay unique: the model, plus run and input only where needed."""
    multi_run = len({run_id for run_id, _ in pairs}) > 1
    per_model: dict[str, set[str]] = defaultdict(set)
    for _, r in pairs:
        s = r.spec
        per_model[s.model].add(f"{s.image_size}{s.text_len}{s.precision}{s.device}")
    out = []
    for run_id, r in pairs:
        label = r.spec.model
        if len(per_model[r.spec.model]) > 1:
            s = r.spec
            label += f" {s.image_size[0]}x{s.image_size[1]}+{s.text_len} {s.precision}"
        if r.spec.side is not None:  # an interleaved A/B run: A is the baseline side
            label += f" [{r.spec.side}]"
        if multi_run:
            label += f" (run {run_id})"
        out.append(Case(run_id, r, label))
    return out


def _paper_tokens(model: str, ours: str) -> str | None:
    """The Table 6 token count from the preset, shown only where it differs from ours."""
    try:
        from architectures import PRESETS
    except ImportError:
        return None
    theirs = PRESETS.get(model).paper_tokens if model in PRESETS else None
    return theirs if theirs and theirs != ours else None


def _table6(headline: list[Case]) -> list[Table6Line]:
    lines = []
    for case in headline:
        r = case.result
        assert r.end_to_end is not None
        tokens = f"{r.tokens.get('image', '?')}+{r.tokens.get('text', '?')}"
        text_params = sum(s.params for s in r.stages if s.parent is None and s.kind == "text")
        lines.append(Table6Line(
            case=case, tokens=tokens, paper_tokens=_paper_tokens(r.spec.model, tokens),
            params_m=r.params_total / 1e6, params_m_no_text=(r.params_total - text_params) / 1e6,
            gflops=r.flops_total / 1e9, time=r.end_to_end, paper=paper.table6_row(r.spec.model),
        ))
    return lines


def _visual_ms(result: CaseResult) -> float | None:
    top = next((s for s in result.stages if s.name == "visual" and s.timing), None)
    return top.timing.median_ms if top and top.timing else None


def _ratios(headline: list[Case]) -> list[Ratio]:
    """Region / patch and grid / patch, end to end and for the visual embedders alone, against a
    patch model of the same run, batch, precision and device: a single-stream one (ViLT) first,
    since CLIP's towers would make the ratio about a dual encoder, not about the embedder."""
    def setting(c: Case) -> tuple[Any, ...]:
        s = c.result.spec
        return c.run_id, s.batch_size, s.precision, s.device, c.device

    patches = sorted((c for c in headline if c.result.embedder == "patch"),
                     key=lambda c: c.result.fusion != "single-stream")
    out = []
    for case in headline:
        kind, r = case.result.embedder, case.result
        ref = next((p for p in patches if setting(p) == setting(case)), None)
        if kind not in paper.PAPER_RATIO_END_TO_END or ref is None:
            continue
        assert r.end_to_end is not None and ref.result.end_to_end is not None
        num_v, den_v = _visual_ms(r), _visual_ms(ref.result)
        out.append(Ratio(
            kind=kind, numerator=case.label, denominator=ref.label,
            end_to_end=r.end_to_end.median_ms / ref.result.end_to_end.median_ms,
            visual=num_v / den_v if num_v and den_v else None,
            paper_end_to_end=paper.PAPER_RATIO_END_TO_END[kind],
            paper_visual=paper.PAPER_RATIO_VISUAL[kind],
        ))
    return sorted(out, key=lambda ratio: ratio.kind != "region")


def _details(cases: list[Case]) -> list[CaseDetail]:
    out = []
    for index, case in enumerate(cases):
        r = case.result
        if r.status != "ok":
            continue
        parents = {s.name: s.parent for s in r.stages}
        lines = []
        for s in r.stages:
            depth, up = 0, s.parent
            while up is not None:
                depth, up = depth + 1, parents.get(up)
            median = s.timing.median_ms if s.timing else None
            rate = s.flops / (median / 1e3) / 1e9 if median and s.flops else None
            work = ", ".join(f"{k} {v:,}" for k, v in s.workload.items())
            lines.append(StageLine(s, depth, category_of(s.kind), rate, work,
                                   bool(s.timing and s.timing.cv > UNSTABLE_CV)))
        gap = stage_gap(r)
        out.append(CaseDetail(f"case-{index}", case, gap,
                              gap is not None and abs(gap) > STAGE_GAP_LIMIT, lines))
    return out


def _scaling(cases: list[Case]) -> tuple[list[Series], list[Series]]:
    """Throughput against batch size and latency against input size, where a run varied them."""
    by_batch: dict[tuple[Any, ...], dict[float, float]] = defaultdict(dict)
    by_size: dict[tuple[Any, ...], dict[float, float]] = defaultdict(dict)
    names: dict[tuple[Any, ...], str] = {}
    for case in cases:
        r = case.result
        if r.status != "ok" or r.end_to_end is None:
            continue
        s, median = r.spec, r.end_to_end.median_ms
        run = f" (run {case.run_id})" if " (run " in case.label else ""
        run += f" [{case.device}]" if case.device else ""  # never one series over two devices
        bkey = ("b", case.run_id, s.model, s.image_size, s.text_len, s.precision, s.device,
                case.device)
        by_batch[bkey][float(s.batch_size)] = s.batch_size / (median / 1e3)
        names[bkey] = f"{s.model} {s.image_size[0]}x{s.image_size[1]} {s.precision}{run}"
        skey = ("s", case.run_id, s.model, s.batch_size, s.text_len, s.precision, s.device,
                case.device)
        by_size[skey][s.image_size[0] * s.image_size[1] / 1e6] = median
        names[skey] = f"{s.model} b{s.batch_size} {s.precision}{run}"

    def series(groups: dict[tuple[Any, ...], dict[float, float]]) -> list[Series]:
        return [Series(names[k], sorted(v.items())) for k, v in groups.items() if len(v) > 1]

    return series(by_batch), series(by_size)


def collect(store: Store, run_ids: list[int], baseline: int | None = None) -> ReportData:
    """Everything a report shows, from the store (unknown ids raise the store's KeyError)."""
    if not run_ids:
        raise ValueError("a report needs at least one run")
    runs = [store.get_run(run_id) for run_id in run_ids]
    # one row per case however many rounds (vlbench.rounds); the comparisons use the rounds
    cases = _label_cases([(run_id, r) for run_id in run_ids
                          for r in pool_rounds(store.cases(run_id))])
    cases = label_devices(cases)  # runs over several devices: per device, never pooled
    plain = [c for c in cases if c.result.spec.task is None]  # retrieval: its own section
    headline = _headline_cases(plain)
    bars: list[Bar] = []
    shown_paper: set[str] = set()
    for case in headline:
        r = case.result
        assert r.end_to_end is not None
        bars.append(Bar(case.label, breakdown(r), r.end_to_end.median_ms))
        ref = paper.figure1_bar(r.spec.model)
        if ref is not None and ref.preset not in shown_paper:
            shown_paper.add(ref.preset)
            bars.append(Bar(f"{ref.model} (paper, {paper.PAPER_DEVICE})", ref.parts_ms,
                            ref.total_ms, from_paper=True))
    throughput, input_cost = _scaling(plain)
    data = ReportData(
        runs=runs, cases=cases, headline=headline, bars=bars, table6=_table6(headline),
        ratios=_ratios(headline), details=_details(cases), throughput=throughput,
        input_cost=input_cost, failures=[c for c in cases if c.result.status != "ok"],
        baseline=baseline, devices=device_rows(cases),
    )
    data.retrieval = retrieval_section(cases)
    if baseline is not None:
        for run_id in run_ids:
            if run_id != baseline:
                data.comparisons[run_id] = ranked(compare_runs(store, baseline, run_id))
    for run_id in run_ids:  # an interleaved A/B run compares its own sides
        sides = {s: [r for r in store.cases(run_id) if r.spec.side == s] for s in ("A", "B")}
        if baseline is None and sides["A"] and sides["B"]:
            data.comparisons[run_id] = ranked(compare_cases(
                sides["A"], sides["B"], interleaved=True, what=f"run {run_id}'s sides").stages)
            data.interleaved.add(run_id)
    return data


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(value, dict):
        out: list[tuple[str, str]] = []
        for key in sorted(value, key=str):
            out += _flatten(value[key], f"{prefix}.{key}" if prefix else str(key))
        return out
    text = value if isinstance(value, str) else json.dumps(value, default=str)
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


def render_html(data: ReportData, command: str = "") -> Iterable[str]:
    """The report page, as chunks: streamed into the temporary file by ``write_report``."""
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
    from markupsafe import Markup

    env = Environment(
        loader=PackageLoader("vlbench.report", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html", "html.j2", "xml")),
        undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )
    env.filters.update(ms=_fmt_ms, num=_fmt_num, pct=lambda v: "-" if v is None else f"{v:.1%}")
    charts = [replace(c, svg=Markup(c.svg))
              for c in report_charts(data.bars, data.throughput, data.input_cost)]
    return env.get_template("report.html.j2").generate(
        data=data, charts=charts, command=command, paper=paper, gap_limit=STAGE_GAP_LIMIT,
        unstable_cv=UNSTABLE_CV, environment=_environment(data), case_key=case_key,
        spec_text=_spec_text, stage_gap=stage_gap, key_text=_key_text,
    )


def _key_text(key: str) -> str:
    """A case key (model|batch|HxW|text|precision|device) without the model, as in the tables."""
    parts = key.split("|")
    if len(parts) != 6:
        return key
    return f"b{parts[1]} {parts[2]}+{parts[3]} {parts[4]} {parts[5]}"


def _fmt_ms(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}" if value >= 1 else f"{value:.3f}"


def _fmt_num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def default_path(run_ids: list[int], fmt: str) -> Path:
    suffix = "md" if fmt == "markdown" else "html"
    return REPORTS_DIR / f"vlbench-run{'-'.join(str(i) for i in run_ids)}.{suffix}"


def write_atomic(path: Path, chunks: Iterable[str]) -> None:
    """Write via a temporary file in the same directory and ``os.replace``: all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a report is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_report(
    store: Store,
    run_ids: list[int],
    *,
    baseline: int | None = None,
    out: Path | None = None,
    fmt: Literal["html", "markdown"] = "html",
    command: str = "",
) -> Path:
    """Write the report of ``run_ids`` (with a ``baseline`` comparison) and return its path.

    Default path: ``reports/vlbench-run<ID>.html`` (``.md`` for markdown) under the current
    directory. Raises KeyError (the store's UnknownRunError) for an unknown run and ValueError
    for a baseline with no cases in common or an unknown format.
    """
    if fmt not in ("html", "markdown"):
        raise ValueError(f"unknown report format {fmt!r}; valid: html, markdown")
    path = Path(out) if out is not None else default_path(run_ids, fmt)
    data = collect(store, run_ids, baseline)
    if fmt == "markdown":
        from vlbench.report.markdown import markdown_from_data

        write_atomic(path, [markdown_from_data(data, command)])
    else:
        write_atomic(path, render_html(data, command))
    return path
