"""The report's region-backend parity section: a region model measured with vlbench's own
detector (torchvision parts) beside the same detector on detectron2's modules
(``--region-backend detectron2``), stage by stage: parameters, FLOPs, workload and time, with the
ratio ours / theirs.

Why from the store: the two backends' stages carry the same names and kinds, so any run (or two
runs) that measured a case both ways is a parity check a reader can open later, with each side
timed in its own worker like every case. Pairs are matched by the case's identity without its
backend; a case measured in rounds shows its pooled medians. Registered as ``SECTION``; its page
part is ``templates/_backends.html.j2``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from vlbench.case_keys import identity_key
from vlbench.contention import BUSY, state
from vlbench.report.section import ReportCase, Section
from vlbench.report.text import escape
from vlbench.results import CaseResult, StageResult, stage_depths
from vlbench.table import case_text

#: FLOPs of a stage agree when they differ by at most this share (the parity's tolerance)
FLOPS_TOLERANCE = 0.01
FORWARD = "forward"


def _agreement(what: str, differing: list[str], same: str, differ: str) -> str:
    return f"{what} {same}" if not differing else f"{what} {differ} {', '.join(differing)}"


@dataclass(frozen=True)
class Side:
    """One backend's figures for one stage (None: the stage is absent or untimed there)."""

    params: int | None
    flops: int | None
    ms: float | None
    workload: dict[str, int]


@dataclass(frozen=True)
class StagePair:
    stage: str
    depth: int
    ours: Side
    theirs: Side

    @property
    def ratio(self) -> float | None:
        """Time ours / theirs; > 1: ours is slower."""
        if self.ours.ms is None or not self.theirs.ms:
            return None
        return self.ours.ms / self.theirs.ms

    @property
    def flops_gap(self) -> float | None:
        """(ours - theirs) / theirs of the FLOPs; None where a side has none recorded."""
        if self.ours.flops is None or not self.theirs.flops:
            return None
        return (self.ours.flops - self.theirs.flops) / self.theirs.flops

    @property
    def workload_diff(self) -> list[str]:
        """``name ours/theirs`` for each workload figure the sides disagree on."""
        names = dict.fromkeys([*self.ours.workload, *self.theirs.workload])
        return [f"{n} {self.ours.workload.get(n, '-')}/{self.theirs.workload.get(n, '-')}"
                for n in names if self.ours.workload.get(n) != self.theirs.workload.get(n)]


@dataclass(frozen=True)
class BackendPair:
    """One case measured with both backends."""

    label: str
    case: str
    run_ids: tuple[int, int]
    stages: list[StagePair]
    #: which side was measured on a contended machine ("" when neither)
    busy: str

    @property
    def runs(self) -> str:
        first, second = self.run_ids
        return f"run {first}" if first == second else f"runs {first} and {second}"

    @property
    def params_differ(self) -> list[str]:
        return [s.stage for s in self.stages if s.ours.params != s.theirs.params]

    @property
    def flops_differ(self) -> list[str]:
        return [s.stage for s in self.stages
                if s.flops_gap is not None and abs(s.flops_gap) > FLOPS_TOLERANCE]

    @property
    def workload_differs(self) -> list[str]:
        return [s.stage for s in self.stages if s.workload_diff]

    @property
    def summary(self) -> str:
        """One sentence: what agrees and what does not."""
        parts = [_agreement("parameters", self.params_differ, "equal", "differ in"),
                 _agreement("FLOPs", self.flops_differ, "within 1%", "beyond 1% in"),
                 _agreement("workload", self.workload_differs, "equal", "differs in")]
        forward = self.stages[-1].ratio
        if forward is not None:
            parts.append(f"forward ours / theirs {forward:.2f}")
        if self.busy:
            parts.append(f"measured on a busy machine ({self.busy}): times suspect")
        return "; ".join(parts)


@dataclass(frozen=True)
class BackendsSection:
    pairs: list[BackendPair]


def _side(stage: StageResult | None) -> Side:
    if stage is None:
        return Side(None, None, None, {})
    ms = stage.timing.median_ms if stage.timing is not None else None
    return Side(stage.params, stage.flops, ms, dict(stage.workload))


def _forward(result: CaseResult) -> Side:
    ms = result.end_to_end.median_ms if result.end_to_end is not None else None
    return Side(result.params_total, result.flops_total, ms, {})


def stage_pairs(ours: CaseResult, theirs: CaseResult) -> list[StagePair]:
    """Every stage of either side in our order (theirs-only stages last), then the forward."""
    mine = {s.name: s for s in ours.stages}
    other = {s.name: s for s in theirs.stages}
    ordered = [*mine.values(), *(s for n, s in other.items() if n not in mine)]
    depths = {**stage_depths(theirs.stages), **stage_depths(ours.stages)}
    pairs = [StagePair(s.name, depths[s.name], _side(mine.get(s.name)),
                       _side(other.get(s.name))) for s in ordered]
    return [*pairs, StagePair(FORWARD, 0, _forward(ours), _forward(theirs))]


def _busy(ours: CaseResult, theirs: CaseResult) -> str:
    sides = [name for name, r in (("ours", ours), ("detectron2's", theirs))
             if state(r.contention) == BUSY]
    return " and ".join(sides)


def backends_section(cases: Sequence[ReportCase]) -> BackendsSection | None:
    """A pair per successful case measured with both backends; None without any."""
    ok = [c for c in cases if c.result.status == "ok"]
    vlbench_side = {}
    for c in ok:
        if c.result.spec.region_backend is None:
            vlbench_side.setdefault((identity_key(c.result.spec), c.result.spec.side), c)
    pairs = []
    for c in ok:
        spec = c.result.spec
        if spec.region_backend is None:
            continue
        plain = dataclasses.replace(spec, region_backend=None)
        mine = vlbench_side.get((identity_key(plain), spec.side))
        if mine is None:
            continue
        pairs.append(BackendPair(
            label=mine.label,
            case=f"{case_text(plain)} against {spec.region_backend}",
            run_ids=(mine.run_id, c.run_id), stages=stage_pairs(mine.result, c.result),
            busy=_busy(mine.result, c.result)))
    return BackendsSection(pairs) if pairs else None


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def backends_markdown(section: BackendsSection) -> list[str]:
    lines = ["### Region backends: vlbench's detector against detectron2's", ""]
    for pair in section.pairs:
        lines += [f"**{escape(pair.label)}**, {escape(pair.case)} ({pair.runs}): "
                  f"{escape(pair.summary)}.", "",
                  "| stage | params ours | detectron2 | GFLOPs ours | detectron2 | ms ours | "
                  "detectron2 | ours / theirs | workload differs |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for s in pair.stages:
            gflops = [None if x is None else x / 1e9 for x in (s.ours.flops, s.theirs.flops)]
            lines.append(
                f"| {'  ' * s.depth}{escape(s.stage)} | {_num(s.ours.params, ',')} | "
                f"{_num(s.theirs.params, ',')} | {_num(gflops[0], '.3f')} | "
                f"{_num(gflops[1], '.3f')} | {_num(s.ours.ms, '.1f')} | "
                f"{_num(s.theirs.ms, '.1f')} | {_num(s.ratio, '.2f')} | "
                f"{escape(', '.join(s.workload_diff)) or '-'} |")
        lines.append("")
    return lines


SECTION = Section(name="backends", title="Region backends", build=backends_section,
                  template="_backends.html.j2", markdown=backends_markdown)
