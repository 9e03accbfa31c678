"""Export stored runs as JSON, CSV or a pandas DataFrame, in a layout other tools can rely on.

The JSON layout below is the documented schema (``vlbench.results``). Its version is
``vlbench.results.SCHEMA_VERSION``: renaming or removing a field bumps it, adding one does not, so
readers should ignore fields they do not know. Only the last attempt of each case is exported.
Times are milliseconds; ``None`` (JSON ``null``) means "not measured". ``vlbench.read_export``
reads an export back (``vlbench compare FILE.json``), exports of older releases included.

Top level

=================  ==========  ================================================================
field              type        meaning
=================  ==========  ================================================================
schema             str         always ``"vlbench.results"``
schema_version     int         layout version, ``SCHEMA_VERSION``
runs               list[run]   the exported runs, in the order asked for
=================  ==========  ================================================================

run

=================  ==========  ================================================================
id                 int         run id in the store (``vlbench ... --run ID``)
label              str|null    the user's label for the run
suite              str|null    the suite the run executed
status             str         running, finished, interrupted or failed (a dead run that never
                               finished reads interrupted)
started_at         str         UTC ISO 8601
finished_at        str|null    UTC ISO 8601; null while running or after a crash
host               str         host name the run ran on
command            str         the command line that started the run
environment        object      software/hardware environment recorded at start
settings           object      run-wide settings (repeats, warm-up, seeds, ...)
cases              list[case]  one entry per case, in measurement order
=================  ==========  ================================================================

case (``case_row``)

=================  ==========  ================================================================
case_key           str         stable identity of the case within its run
model              str         model name
embedder           str         visual embedder (e.g. region features, patches)
fusion             str         fusion style (single-stream, dual-stream, ...)
batch_size         int         batch size; a retrieval case's gallery size N (see gallery_size)
gallery_size       int|null    a retrieval case's gallery size N; null for a forward case
image_size         [int, int]  input image [height, width] in pixels
text_len           int         text length in tokens
tokens             object      tokens per modality, e.g. {"text": 40, "image": 241}
precision          str         numeric precision (fp32, fp16, bf16, ...)
device             str         device the case ran on (cpu, cuda, ...)
mode               str         execution mode: eager, compile (torch.compile) or cudagraphs;
                               compiled and captured cases are timed end to end only (their
                               stages carry FLOPs and parameters, no timing)
threads            int|null    torch CPU threads the case set (a thread sweep); null: the run's
                               setting (``settings.threads`` records the count in force)
round              int         round of ``--rounds`` (0-based), each in fresh worker processes
side               str|null    ``A`` (baseline) or ``B`` (current) in an interleaved A/B run
task               str|null    null: one forward; ``retrieval-t2i``/``retrieval-i2t``: ranking a
                               gallery of ``batch_size`` candidates
rerank_k           int|null    a re-ranking retrieval case's candidates per query as asked (the
                               k used, clamped to N: ``settings.retrieval.k``); null otherwise
region_backend     str|null    ``detectron2``: the region detector on detectron2's modules; null:
                               vlbench's own (or no detector)
status             str         ok, oom or error
message            str         why a case is not ok; empty when ok
end_to_end         timing|null end-to-end latency of one forward; null when not ok
stage_sum_ms       float|null  sum of the top-level stages' medians (compare with end_to_end)
stages             object      {stage name: stage}, in execution order
flops_total        int         FLOPs of one forward (``vlbench.results.FLOP_CONVENTION``)
params_total       int         parameter count
peak_mem_bytes     int|null    peak memory of the case: the CUDA allocator's peak on GPU, the
                               resident-set high-water mark (VmHWM) of the process on CPU
settings           object      per-case settings (precision flags, threads, seeds,
                               flush_denormal, peak_flops: the matmul FLOP/s measured at the
                               case's precision; compile cases: compile_s, the first compiled
                               forward's seconds, stages_timed false, graph_breaks; trace: the
                               chrome trace's path under --trace)
wall_s             float       wall time spent on the case, model build included
canonical_input    object|null the model's canonical input as recorded when measured,
                               {"image_size": [height, width], "text_len": n}; null: not
                               recorded (runs stored before it was, models timed through the API)
paper              object|null the ViLT paper's figures for the model as cited when measured,
                               {"table6_row": row|null, "figure1_bar": bar|null}; null where the
                               paper has neither (tiny twins, models it does not list)
contention         object|null what the machine was doing while the case ran (below); null:
                               not measured (runs stored before vlbench measured it), which
                               is never to be read as quiet
=================  ==========  ================================================================

contention (``vlbench.results.Contention``; the rule: ``vlbench.contention``)

====================  ============  =============================================================
contended             bool          the machine was busy enough to make the figures suspect:
                                    ``vlbench compare`` calls the case's comparisons inconclusive
reasons               list[str]     why, one phrase per signal over its limit; [] when quiet
cores                 int           CPUs the kernel's run queue counts over (online CPUs)
threads               int           torch threads the case ran with
samples               int           run-queue samples taken while the case ran
runnable_others       float|null    mean runnable tasks besides the case's own threads
runnable_others_max   int|null      the most seen in one sample
excess                float|null    mean of those beyond the free cores (cores - threads)
cpu_util              float|null    process CPU time / (wall time x threads)
involuntary_switches  int|null      involuntary context switches of the process
run_delay             float|null    share of the threads' runnable time spent waiting for a CPU
steal                 float|null    share of the machine's CPU time stolen by a hypervisor
peak_before           float|null    FLOP/s of the matmul calibration the shares of peak divide by
peak_after            float|null    FLOP/s of a short calibration right after the case
wall_s                float         seconds sampled (the measurement, model build excluded)
====================  ============  =============================================================

paper row (``paper.table6_row``; ``vlbench.paper.Table6Row``)

=================  ==========  ================================================================
model              str         the paper's model name (e.g. "ViLT-B/32")
preset             str|null    our preset it corresponds to
embed              str         the paper's embedder column: region, grid or linear
tokens             str         image + text tokens as printed ("200+40"; "?" where left open)
params_m           float       parameters, millions (without the shared text embedding)
gflops             float       GFLOPs (the paper does not state its FLOP convention)
time_ms            float       the paper's approximate time, ms (NVIDIA P40, batch 1)
=================  ==========  ================================================================

paper bar (``paper.figure1_bar``; ``vlbench.paper.Figure1Bar``)

=================  ==========  ================================================================
model              str         the paper's model name
preset             str         our preset it corresponds to
parts_ms           object      {report category: ms}, the bar's segments
total_ms           float       the bar's total, ms
=================  ==========  ================================================================

timing (``end_to_end``)

=================  ==========  ================================================================
median_ms          float       median latency
iqr_ms             float       inter-quartile range
p90_ms             float       90th percentile
mean_ms            float       mean latency
cv                 float       coefficient of variation (std / mean)
n                  int         number of timed repetitions
ci_low_ms          float       lower bound of the distribution-free confidence interval of the
                               median
ci_high_ms         float       upper bound of that interval
ci_coverage        float       exact coverage of that interval for this n (e.g. 0.96)
unstable           bool        cv above the stability threshold: treat the median with care
samples_ms         list[float] every timed repetition, in order
=================  ==========  ================================================================

stage (``stages[name]``)

=================  ==========  ================================================================
kind               str         what the stage does (backbone, region_ops, patch, text, ...)
category           str         its report category (backbone, region operations, patch or grid
                               embedding, text embedding, single-modality encoders, modality
                               interaction, head, other)
parent             str|null    enclosing stage; null for a top-level stage. Nested stages are
                               included in their parent: do not add them up with it
median_ms          float|null  median latency; null when the stage was not timed
iqr_ms             float|null  inter-quartile range
p90_ms             float|null  90th percentile
cv                 float|null  coefficient of variation
n                  int|null    number of timed repetitions
calls              int         calls of this stage per model forward
flops              int         FLOPs per model forward
params             int         parameters of the stage
peak_mem_bytes     int|null    GPU allocator peak while the stage ran
host_sync          bool        the stage synchronises with the host by design (NMS, selection)
workload           object      data-dependent work the stage did in one forward, e.g.
                               {"boxes_in_nms": 480000, "boxes_kept_nms": 5123}; {} if none
achieved_flops/s   float|null  (key ``achieved_flops_per_s``) flops / median seconds; null
                               when the stage was not timed or did no FLOPs
peak_share         float|null  achieved FLOP/s / ``settings.peak_flops``; above 1.0 the peak
                               is invalid (contention while it was measured, a calibration too
                               small for the machine, or a FLOP over-count): readers show
                               "peak invalid", never the figure
peak_invalid       bool        ``peak_share`` is above 1.0
samples_ms         list[float] every timed repetition, in order
=================  ==========  ================================================================

CSV (``export_csv``) and DataFrame (``to_dataframe``) flatten this to one row per case with
``stage = "end_to_end"`` (its flops/params/peak memory are the case totals) followed by one row
per stage, with the columns in ``CSV_COLUMNS``. ``parent`` is there so that sums over stages can
skip nested ones. Every row of a case repeats its ``contended`` (empty: not measured) and
``contention_reasons`` (joined with "; ").
"""

from __future__ import annotations

import csv
import dataclasses
import io
from typing import TYPE_CHECKING, Any

from vlbench.case_keys import case_key
from vlbench.contention import valid_share
from vlbench.results import SCHEMA_VERSION, CaseResult, StageResult, Summary
from vlbench.store import Store
from vlbench.upgrade import stage_category

if TYPE_CHECKING:
    import pandas

SCHEMA_NAME = "vlbench.results"

_CASE_COLUMNS = (
    "run_id", "model", "embedder", "fusion", "batch_size", "image_h", "image_w", "text_len",
    "precision", "device", "mode", "threads", "round", "side", "task", "rerank_k",
    "region_backend", "status",
    "message",
)
_STAGE_TIMING_FIELDS = ("median_ms", "iqr_ms", "p90_ms", "cv", "n")
_STAGE_COLUMNS = ("kind", "parent", *_STAGE_TIMING_FIELDS, "calls", "flops", "params",
                  "peak_mem_bytes", "achieved_flops_per_s", "peak_share")
#: the case's contention verdict, repeated on each of its rows
_CONTENTION_COLUMNS = ("contended", "contention_reasons")
#: Columns of the CSV and the DataFrame, in order.
CSV_COLUMNS = (*_CASE_COLUMNS, "stage", *_STAGE_COLUMNS, *_CONTENTION_COLUMNS)


def _timing(summary: Summary, samples_ms: tuple[float, ...]) -> dict[str, Any]:
    return {
        "median_ms": summary.median_ms,
        "iqr_ms": summary.iqr_ms,
        "p90_ms": summary.p90_ms,
        "mean_ms": summary.mean_ms,
        "cv": summary.cv,
        "n": summary.n,
        "ci_low_ms": summary.ci_low_ms,
        "ci_high_ms": summary.ci_high_ms,
        "ci_coverage": summary.ci_coverage,
        "unstable": summary.unstable,
        "samples_ms": list(samples_ms),
    }


def stage_row(stage: StageResult) -> dict[str, Any]:
    """One stage in the export layout (``stages[name]``)."""
    timing = stage.timing
    return {
        "kind": stage.kind,
        "category": stage_category(stage),
        "parent": stage.parent,
        **{f: getattr(timing, f) if timing else None for f in _STAGE_TIMING_FIELDS},
        "calls": stage.calls,
        "flops": stage.flops,
        "params": stage.params,
        "peak_mem_bytes": stage.peak_mem_bytes,
        "host_sync": stage.host_sync,
        "workload": dict(stage.workload),
        "samples_ms": list(stage.samples_ms),
        "achieved_flops_per_s": stage.achieved_flops_per_s,
        "peak_share": stage.peak_share,
        "peak_invalid": stage.peak_share is not None and not valid_share(stage.peak_share),
    }


def _canonical_input(result: CaseResult) -> dict[str, Any] | None:
    size, text_len = result.canonical_image_size, result.canonical_text_len
    if size is None and text_len is None:
        return None
    return {"image_size": list(size) if size is not None else None, "text_len": text_len}


def _paper(result: CaseResult) -> dict[str, Any] | None:
    row, bar = result.paper_row, result.paper_bar
    if row is None and bar is None:
        return None
    return {"table6_row": dataclasses.asdict(row) if row else None,
            "figure1_bar": dataclasses.asdict(bar) if bar else None}


def case_row(result: CaseResult) -> dict[str, Any]:
    """One case in the export layout (see the module docstring): flat, JSON-ready, self-contained.

    Raises ValueError when two stages share a name, since ``stages`` is keyed by name and one
    would silently hide the other.
    """
    spec = result.spec
    stages: dict[str, dict[str, Any]] = {}
    for stage in result.stages:
        if stage.name in stages:
            raise ValueError(f"case {case_key(spec)} has two stages named {stage.name!r}")
        stages[stage.name] = stage_row(stage)
    ok = result.status == "ok" and result.end_to_end is not None
    return {
        "case_key": case_key(spec),
        "model": spec.model,
        "embedder": result.embedder,
        "fusion": result.fusion,
        "batch_size": spec.batch_size,
        "gallery_size": spec.gallery_size,
        "image_size": [spec.image_size[0], spec.image_size[1]],
        "text_len": spec.text_len,
        "tokens": dict(result.tokens),
        "precision": spec.precision,
        "device": spec.device,
        "mode": spec.mode,
        "threads": spec.threads,
        "round": spec.round,
        "side": spec.side,
        "task": spec.task,
        "rerank_k": spec.rerank_k,
        "region_backend": spec.region_backend,
        "status": result.status,
        "message": result.message,
        "end_to_end": _timing(result.end_to_end, result.end_to_end_samples_ms) if ok else None,
        "stage_sum_ms": result.stage_sum_ms,
        "stages": stages,
        "flops_total": result.flops_total,
        "params_total": result.params_total,
        "peak_mem_bytes": result.peak_mem_bytes,
        "settings": dict(result.settings),
        "wall_s": result.wall_s,
        "canonical_input": _canonical_input(result),
        "paper": _paper(result),
        "contention": _contention(result),
    }


def _contention(result: CaseResult) -> dict[str, Any] | None:
    busy = result.contention
    return None if busy is None else {**dataclasses.asdict(busy), "reasons": list(busy.reasons)}


def export_json(store: Store, run_ids: list[int]) -> dict[str, Any]:
    """The documented JSON layout for the given runs (unknown ids raise the store's KeyError)."""
    runs = []
    for run_id in run_ids:
        run = store.get_run(run_id)
        runs.append(
            {
                "id": run.id,
                "label": run.label,
                "suite": run.suite,
                "status": run.status,
                "started_at": run.started_at,
                "finished_at": run.finished_at,
                "host": run.host,
                "command": run.command,
                "environment": run.env,
                "settings": run.settings,
                "cases": [case_row(result) for result in store.cases(run_id)],
            }
        )
    return {"schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION, "runs": runs}


def _flat_rows(export: dict[str, Any]) -> list[dict[str, Any]]:
    """CSV/DataFrame rows from an export dict, so both flat forms come from one code path: per
    case an ``end_to_end`` row (the case totals), then one row per stage."""
    rows: list[dict[str, Any]] = []
    for run in export["runs"]:
        for case in run["cases"]:
            height, width = case["image_size"]
            busy = case.get("contention")
            common = {
                "run_id": run["id"], "image_h": height, "image_w": width,
                **{k: case[k] for k in ("model", "embedder", "fusion", "batch_size", "text_len",
                                        "precision", "device", "status", "message")},
                "mode": case.get("mode", "eager"), "round": case.get("round", 0),
                **{k: case.get(k) for k in ("threads", "side", "task", "rerank_k",
                                                   "region_backend")},
                "contended": busy["contended"] if busy else None,
                "contention_reasons": "; ".join(busy["reasons"]) if busy else None,
            }
            e2e = case["end_to_end"] or {}
            rows.append({**common, "stage": "end_to_end", "kind": "end_to_end", "parent": None,
                         **{f: e2e.get(f) for f in _STAGE_TIMING_FIELDS}, "calls": None,
                         "flops": case["flops_total"], "params": case["params_total"],
                         "peak_mem_bytes": case["peak_mem_bytes"],
                         "achieved_flops_per_s": None, "peak_share": None})
            rows.extend({**common, "stage": name, **{c: stage.get(c) for c in _STAGE_COLUMNS}}
                        for name, stage in case["stages"].items())
    return rows


def export_csv(store: Store, run_ids: list[int]) -> str:
    """A flat CSV (columns ``CSV_COLUMNS``) for spreadsheets; write it with ``newline=""``."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(_flat_rows(export_json(store, run_ids)))
    return buffer.getvalue()


def to_dataframe(
    store_or_export: Store | dict[str, Any], run_ids: list[int] | None = None
) -> pandas.DataFrame:
    """The CSV's rows as a DataFrame, for analysis; a Store exports ``run_ids`` (default: all)."""
    import pandas as pd

    if isinstance(store_or_export, Store):
        ids = store_or_export.run_ids() if run_ids is None else run_ids
        export = export_json(store_or_export, ids)
    else:
        export = store_or_export
        if run_ids is not None:
            wanted = set(run_ids)
            export = {**export, "runs": [r for r in export["runs"] if r["id"] in wanted]}
    return pd.DataFrame.from_records(_flat_rows(export), columns=list(CSV_COLUMNS))
