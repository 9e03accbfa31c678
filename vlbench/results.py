"""Immutable records of what a run measured: the vocabulary shared by measuring, store, export
and reports.

A case is one (model, batch size, input size, precision, device) measurement. Its record carries
everything a later reader needs without the code that produced it: the statistics, the raw
samples, FLOPs and parameters per stage, each stage's report category, the model's canonical
input and the published figures it is compared with, and the status (``ok`` / ``oom`` /
``error``). Pure: no torch, no model packages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .paper import Figure1Bar, Table6Row

#: Version of the exported JSON layout (``vlbench export --format json``). Bump on any change
#: that renames or removes a field; adding a field keeps the version.
SCHEMA_VERSION = 1

STATUSES = ("ok", "oom", "error")
#: execution modes a case can ask for (``CaseSpec.mode``)
EXECUTION_MODES = ("eager", "compile", "cudagraphs", "compile-fusion")
#: the region detector's implementations other than vlbench's own (``CaseSpec.region_backend``)
REGION_BACKENDS = ("detectron2",)
#: numeric precisions a case can ask for (``CaseSpec.precision``; ``vlbench.precision`` sets them)
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
#: how every FLOP count of vlbench is counted (torch.utils.flop_counter's convention)
FLOP_CONVENTION = "one multiply-add = 2 FLOPs"
#: a gap between the stage sum and end-to-end above this share is flagged in tables and reports
STAGE_GAP_LIMIT = 0.05
#: settings that are measurements (they differ between two runs of one case), not how it ran
MEASURED_SETTINGS = frozenset({"peak_flops", "hooked_end_to_end_ms", "energy",
                               "kernels_per_forward", "compile_s"})


@dataclass(frozen=True)
class Summary:
    """Robust statistics of one series of timings, in milliseconds."""

    median_ms: float
    iqr_ms: float
    p90_ms: float
    mean_ms: float
    cv: float  # coefficient of variation: std / mean
    n: int
    ci_low_ms: float  # distribution-free confidence interval of the median
    ci_high_ms: float
    ci_coverage: float  # the exact coverage the order statistics give for this n (e.g. 0.96)
    unstable: bool  # cv above the stability threshold


@dataclass(frozen=True)
class StageResult:
    """One named stage of one case: time (when timed), FLOPs, parameters, memory."""

    name: str
    kind: str  # what the stage does (feature_extractors.StageKind): backbone, region_ops, ...
    parent: str | None  # enclosing stage, None for a top-level stage
    timing: Summary | None
    calls: int  # forward calls per model forward (LXMERT's shared cross-attention: 2)
    flops: int  # convention: one multiply-add counts 2 FLOPs
    params: int
    peak_mem_bytes: int | None = None  # GPU only: allocator peak while the stage ran
    samples_ms: tuple[float, ...] = ()
    host_sync: bool = False  # the stage synchronises with the host by design (NMS, selection)
    workload: dict[str, int] = field(default_factory=dict)  # data-dependent work it did
    #: flops / median seconds; None when the stage was not timed (compiled cases) or did no FLOPs
    achieved_flops_per_s: float | None = None
    #: achieved FLOP/s over the run's measured matmul peak at the case's precision
    peak_share: float | None = None
    #: the report category of ``kind`` (``feature_extractors.StageKind.category``), stored so
    #: that readers need no model code; "" only in records built by hand
    category: str = ""


def stage_depths(stages: Sequence[StageResult]) -> dict[str, int]:
    """Each stage's nesting depth (0: top level), from the ``parent`` links."""
    parents = {s.name: s.parent for s in stages}
    depths = {}
    for s in stages:
        depth, up = 0, s.parent
        while up is not None and depth < len(stages):
            depth, up = depth + 1, parents.get(up)
        depths[s.name] = depth
    return depths


@dataclass(frozen=True)
class Contention:
    """What the machine was doing while one case ran, and whether that makes its figures
    suspect (``vlbench.contention`` measures it and states the rule). On a case, None means
    "not measured" (a run stored before vlbench measured it), never "quiet"."""

    #: CPUs the kernel's run queue counts over (the online CPUs)
    cores: int
    #: torch intra-op threads the case ran with
    threads: int
    #: run-queue samples taken while the case ran
    samples: int
    #: mean runnable tasks besides the case's own threads (the kernel's procs_running, less the
    #: process's own tasks in state R); None where /proc/stat is unreadable
    runnable_others: float | None
    runnable_others_max: int | None
    #: mean of the other runnable tasks beyond the cores the case leaves free (cores - threads)
    excess: float | None
    #: process CPU time / (wall time x threads): below 1 when threads waited or idled
    cpu_util: float | None
    #: involuntary context switches of the process while the case ran
    involuntary_switches: int | None
    #: share of the case's threads' runnable time spent waiting for a CPU (/proc schedstat)
    run_delay: float | None
    #: share of the machine's CPU time the hypervisor gave to other guests (/proc/stat steal)
    steal: float | None
    #: FLOP/s of the matmul calibration the case's shares of peak divide by, and of a short one
    #: right after the case
    peak_before: float | None
    peak_after: float | None
    #: seconds the sampler ran (the scenario's measurement, model build excluded)
    wall_s: float
    contended: bool
    #: why it is contended, one phrase per signal over its limit
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class CaseSpec:
    """What to measure: enough to reproduce the case."""

    model: str
    batch_size: int
    image_size: tuple[int, int]  # (height, width)
    text_len: int
    precision: str
    device: str
    #: execution mode: "eager", "compile" (torch.compile, timed end to end only),
    #: "cudagraphs" (CUDA graph replay, GPU only, timed end to end only) or "compile-fusion"
    #: (torch.compile of the model's ``fusion`` only, the rest eager; timed end to end only)
    mode: str = "eager"
    #: torch intra-op threads for this case; None: the run's setting
    threads: int | None = None
    #: round of ``vlbench run --rounds R`` (0-based); each round runs in fresh worker processes
    round: int = 0
    #: side of an interleaved A/B run ("A" baseline, "B" current); None: an ordinary run
    side: str | None = None
    #: what is timed (the scenario): None for one forward of the model; "retrieval-t2i" /
    #: "retrieval-i2t" for ranking a gallery of ``gallery_size`` candidates
    task: str | None = None
    #: a re-ranking retrieval case's candidates per query (``architectures.rerank``): the ITC
    #: ranking's top k go through the fusion, k clamped to the gallery size (the k used is
    #: ``settings["retrieval"]["k"]``); None for every other case
    rerank_k: int | None = None
    #: why the case is measured on a GPU only (a suite entry's ``gpu_only``); on another device
    #: it is recorded as skipped (``is_skipped``) with this reason
    gpu_only: str | None = None
    #: the region detector's implementation: None for vlbench's own (torchvision parts),
    #: "detectron2" for the same detector on detectron2's modules (``architectures.backends``)
    region_backend: str | None = None

    @property
    def gallery_size(self) -> int | None:
        """A retrieval case's gallery size N (stored in ``batch_size``, whose place it takes in
        the case key and the export); None for a forward case."""
        return self.batch_size if self.task is not None else None


@dataclass(frozen=True)
class CaseResult:
    """The outcome of one case; ``status`` other than ``ok`` carries ``message`` and no timings."""

    spec: CaseSpec
    status: str
    message: str = ""
    embedder: str = ""
    fusion: str = ""
    tokens: dict[str, int] = field(default_factory=dict)  # {"text": 40, "image": 241}
    end_to_end: Summary | None = None
    end_to_end_samples_ms: tuple[float, ...] = ()
    stage_sum_ms: float | None = None  # sum of the top-level stages' medians
    stages: tuple[StageResult, ...] = ()
    flops_total: int = 0
    params_total: int = 0
    peak_mem_bytes: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # precision flags, threads, seeds
    wall_s: float = 0.0  # wall time spent on the case, build included
    #: the model's canonical input (its preset's), None where not recorded (runs stored before
    #: it was, models timed through the Python API)
    canonical_image_size: tuple[int, int] | None = None
    canonical_text_len: int | None = None
    #: the ViLT paper's Table 6 row and Figure 1 bar for this model, as cited when measured
    paper_row: Table6Row | None = None
    paper_bar: Figure1Bar | None = None
    #: what the machine was doing while the case ran; None: not measured
    contention: Contention | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> CaseResult:
        spec = CaseSpec(**{**data["spec"], "image_size": tuple(data["spec"]["image_size"])})
        e2e = Summary(**data["end_to_end"]) if data.get("end_to_end") else None
        stages = tuple(
            StageResult(
                **{
                    **s,
                    "timing": Summary(**s["timing"]) if s.get("timing") else None,
                    "samples_ms": tuple(s.get("samples_ms", ())),
                    "workload": dict(s.get("workload", {})),
                }
            )
            for s in data.get("stages", ())
        )
        rest = {
            k: v for k, v in data.items()
            if k not in {"spec", "end_to_end", "stages", "paper_row", "paper_bar", "contention"}
        }
        rest["end_to_end_samples_ms"] = tuple(rest.get("end_to_end_samples_ms", ()))
        if rest.get("canonical_image_size") is not None:
            rest["canonical_image_size"] = tuple(rest["canonical_image_size"])
        row, bar = data.get("paper_row"), data.get("paper_bar")
        busy = data.get("contention")
        contention = (Contention(**{**busy, "reasons": tuple(busy.get("reasons", ()))})
                      if busy else None)
        return CaseResult(spec=spec, end_to_end=e2e, stages=stages,
                          paper_row=Table6Row(**row) if row else None,
                          paper_bar=Figure1Bar(**bar) if bar else None,
                          contention=contention, **rest)


#: how the message of a case recorded as skipped begins (a GPU-only case on another device);
#: its status is "error", so a resume tries it again
SKIPPED = "skipped"


def is_skipped(result: CaseResult) -> bool:
    """A case that was not measured by design (``CaseSpec.gpu_only`` off a GPU), not a failure."""
    return result.status == "error" and result.message.startswith(SKIPPED)


def stage_gap(result: CaseResult) -> float | None:
    """(stage sum - end-to-end) / end-to-end, the share the hooks or the glue account for."""
    if result.end_to_end is None or result.stage_sum_ms is None:
        return None
    return (result.stage_sum_ms - result.end_to_end.median_ms) / result.end_to_end.median_ms
