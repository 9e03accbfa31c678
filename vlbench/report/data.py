"""Everything a report shows, gathered from the store once: ``collect`` feeds both the HTML page
and the markdown summary, so a pull-request comment never disagrees with the attached page.

Everything comes from what was stored with the run: the canonical input a model was measured
against, the paper's figures cited for it, each stage's category. A run stored before these were
recorded reads "not recorded" (canonical input) or as ``vlbench.upgrade`` derived it; nothing is
looked up in today's presets, so a report needs neither torch nor the model packages.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from vlbench import paper
from vlbench.compare import StageComparison, compare_cases, ranked
from vlbench.gate import compare_runs
from vlbench.report.charts import Bar, Series, breakdown
from vlbench.report.contention import MachineSection, machine_section
from vlbench.report.devices import DeviceRow, device_rows, label_devices
from vlbench.report.registry import SECTIONS
from vlbench.report.section import Shown, build_sections
from vlbench.results import (
    STAGE_GAP_LIMIT,
    CaseResult,
    StageResult,
    Summary,
    stage_depths,
    stage_gap,
)
from vlbench.rounds import pool_rounds
from vlbench.stats import UNSTABLE_CV
from vlbench.store import RunRecord, Store
from vlbench.upgrade import stage_category

NOT_RECORDED = "canonical input not recorded"


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
    #: the model's canonical input where the case was measured at another, or NOT_RECORDED
    canonical: str | None = None


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
    #: the registered sections with something to show (vlbench.report.registry), in page order
    sections: list[Shown] = field(default_factory=list)
    #: what the machine was doing while each ok case ran (vlbench.report.contention)
    machine: MachineSection | None = None


def input_text(size: tuple[int, int], text_len: int) -> str:
    return f"{size[0]}x{size[1]}+{text_len}"


def spec_text(result: CaseResult) -> str:
    s = result.spec
    task = f" {s.task}" if s.task else ""  # a retrieval case: batch_size is the gallery's N
    return f"b{s.batch_size} {input_text(s.image_size, s.text_len)} {s.precision}{task}"


def canonical_input(result: CaseResult) -> tuple[tuple[int, int], int] | None:
    """The model's canonical input as stored with the case; None: not recorded."""
    size, text_len = result.canonical_image_size, result.canonical_text_len
    if size is None or text_len is None:
        return None
    return (size[0], size[1]), text_len


def canonical_note(result: CaseResult) -> str | None:
    """What a table says beside the measured input: nothing when it is the canonical one."""
    canonical = canonical_input(result)
    if canonical is None:
        return NOT_RECORDED
    if canonical == (tuple(result.spec.image_size), result.spec.text_len):
        return None
    return f"canonical {input_text(*canonical)}"


def _headline_cases(cases: list[Case]) -> list[Case]:
    """One ok case per model and precision, as in Figure 1: the smallest batch (normally 1), at
    the model's canonical input when the run has it, else the first input measured."""
    chosen: dict[tuple[Any, ...], tuple[tuple[int, bool, int], Case]] = {}
    for order, case in enumerate(cases):
        r = case.result
        if r.status != "ok" or r.end_to_end is None:
            continue
        s = r.spec
        key = (case.run_id, s.model, s.precision, s.device, case.device)
        rank = (s.batch_size, canonical_input(r) != (tuple(s.image_size), s.text_len), order)
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
        if r.spec.region_backend:  # the same model on another detector
            label += f" on {r.spec.region_backend}"
        if r.spec.side is not None:  # an interleaved A/B run: A is the baseline side
            label += f" [{r.spec.side}]"
        if multi_run:
            label += f" (run {run_id})"
        out.append(Case(run_id, r, label))
    return out


def _table6(headline: list[Case]) -> list[Table6Line]:
    lines = []
    for case in headline:
        r = case.result
        assert r.end_to_end is not None
        tokens = f"{r.tokens.get('image', '?')}+{r.tokens.get('text', '?')}"
        theirs = r.paper_row.tokens if r.paper_row else None
        text_params = sum(s.params for s in r.stages if s.parent is None and s.kind == "text")
        lines.append(Table6Line(
            case=case, tokens=tokens, paper_tokens=theirs if theirs != tokens else None,
            params_m=r.params_total / 1e6, params_m_no_text=(r.params_total - text_params) / 1e6,
            gflops=r.flops_total / 1e9, time=r.end_to_end, paper=r.paper_row,
            canonical=canonical_note(r),
        ))
    return lines


def _bars(headline: list[Case]) -> list[Bar]:
    """Our bar per headline case, each followed by the paper's Figure 1 bar stored with it
    (once per paper model)."""
    bars: list[Bar] = []
    shown: set[str] = set()
    for case in headline:
        r = case.result
        assert r.end_to_end is not None
        bars.append(Bar(case.label, breakdown(r), r.end_to_end.median_ms))
        ref = r.paper_bar
        if ref is not None and ref.preset not in shown:
            shown.add(ref.preset)
            bars.append(Bar(f"{ref.model} (paper, {paper.PAPER_DEVICE})", ref.parts_ms,
                            ref.total_ms, from_paper=True))
    return bars


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


def _stage_lines(result: CaseResult) -> list[StageLine]:
    depths = stage_depths(result.stages)
    lines = []
    for s in result.stages:
        depth = depths[s.name]
        median = s.timing.median_ms if s.timing else None
        rate = s.flops / (median / 1e3) / 1e9 if median and s.flops else None
        work = ", ".join(f"{k} {v:,}" for k, v in s.workload.items())
        lines.append(StageLine(s, depth, stage_category(s), rate, work,
                               bool(s.timing and s.timing.cv > UNSTABLE_CV)))
    return lines


def _details(cases: list[Case]) -> list[CaseDetail]:
    out = []
    for index, case in enumerate(cases):
        if case.result.status != "ok":
            continue
        gap = stage_gap(case.result)
        out.append(CaseDetail(f"case-{index}", case, gap,
                              gap is not None and abs(gap) > STAGE_GAP_LIMIT,
                              _stage_lines(case.result)))
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


def _comparisons(data: ReportData, store: Store, run_ids: list[int]) -> None:
    """Each run against the baseline; without one, an interleaved A/B run's own two sides."""
    if data.baseline is not None:
        for run_id in run_ids:
            if run_id != data.baseline:
                data.comparisons[run_id] = ranked(compare_runs(store, data.baseline, run_id))
        return
    for run_id in run_ids:
        sides = {s: [r for r in store.cases(run_id) if r.spec.side == s] for s in ("A", "B")}
        if sides["A"] and sides["B"]:
            data.comparisons[run_id] = ranked(compare_cases(
                sides["A"], sides["B"], interleaved=True, what=f"run {run_id}'s sides").stages)
            data.interleaved.add(run_id)


def collect(store: Store, run_ids: list[int], baseline: int | None = None) -> ReportData:
    """Everything a report shows, from the store (unknown ids raise the store's KeyError)."""
    if not run_ids:
        raise ValueError("a report needs at least one run")
    runs = [store.get_run(run_id) for run_id in run_ids]
    # one row per case however many rounds (vlbench.rounds); the comparisons use the rounds
    cases = _label_cases([(run_id, r) for run_id in run_ids
                          for r in pool_rounds(store.cases(run_id))])
    cases = label_devices(cases)  # runs over several devices: per device, never pooled
    forward = [c for c in cases if c.result.spec.task is None]  # tasks: their own sections
    headline = _headline_cases(forward)
    throughput, input_cost = _scaling(forward)
    data = ReportData(
        runs=runs, cases=cases, headline=headline, bars=_bars(headline),
        table6=_table6(headline), ratios=_ratios(headline), details=_details(cases),
        throughput=throughput, input_cost=input_cost,
        failures=[c for c in cases if c.result.status != "ok"], baseline=baseline,
        devices=device_rows(cases), sections=build_sections(SECTIONS, cases),
        machine=machine_section(cases),
    )
    _comparisons(data, store, run_ids)
    return data
