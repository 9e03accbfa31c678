"""One forward of a model: the ViLT paper's measurement, per stage.

Eager cases are timed per stage with hooks, end to end without them (``vlbench.timing``);
compiled and graph-captured cases end to end only (``vlbench.compiled``): a hook would split a
compiled graph, and never runs on replay. FLOPs are counted on the eager model first, which
doubles as its first warm-up.
"""

from __future__ import annotations

from statistics import median
from typing import Any

import torch

from feature_extractors import ImageBatch, RegionBatch, stage_workload

from ..compiled import measure_end_to_end, prepare_compiled
from ..context import CaseContext
from ..energy import with_energy
from ..failures import UnsupportedCase
from ..flops import count_flops, count_params
from ..memory import peak_bytes, reset_peak
from ..results import EXECUTION_MODES, SKIPPED, CaseResult, CaseSpec
from ..timing import Measurement, StageMemory, measure
from ..trace import count_kernels, write_trace


class Forward:
    name = "forward"
    tasks = (None,)
    uses_head = True

    def check(self, spec: CaseSpec) -> None:
        if spec.mode not in EXECUTION_MODES:
            raise UnsupportedCase(f"unknown mode {spec.mode!r}; valid: "
                                  f"{', '.join(EXECUTION_MODES)}")
        if spec.mode == "cudagraphs" and torch.device(spec.device).type != "cuda":
            raise UnsupportedCase("CUDA graphs need a GPU")
        if spec.gpu_only and torch.device(spec.device).type != "cuda":
            raise UnsupportedCase(f"{SKIPPED} on {spec.device}: {spec.gpu_only}")

    def measure(self, ctx: CaseContext) -> CaseResult:
        synced = [s.name for s in ctx.stages if s.host_sync]
        if ctx.spec.mode == "cudagraphs" and synced:
            raise UnsupportedCase("CUDA graphs cannot capture data-dependent stages "
                                  f"({', '.join(synced)})")
        ctx.settings["visual_input_shape"] = _visual_input_shape(ctx.inputs)
        params_total, params = count_params(ctx.model, ctx.stages)
        flops_total, flops = count_flops(ctx.model, ctx.forward, ctx.stages)
        reset_peak(ctx.device)
        timed, measured = _time(ctx)
        peak = peak_bytes(ctx.device)
        stage_peaks = _stage_peaks(ctx)
        if ctx.options.trace_dir:
            ctx.settings["trace"] = write_trace(ctx.spec, timed, ctx.device,
                                                ctx.options.trace_dir)
        if ctx.device.type == "cuda":  # the launch-bound floor: kernels one forward launches
            ctx.settings["kernels_per_forward"] = count_kernels(timed, ctx.device)
        workload = {s.name: stage_workload(ctx.model, s) for s in ctx.stages}
        stages = ctx.stage_results(ctx.stages, samples=measured.stages_ms, calls=measured.calls,
                                   flops=flops, params=params, workload=workload,
                                   peaks=stage_peaks)
        top = [r.timing.median_ms for r in stages if r.parent is None and r.timing]
        return ctx.result(stages=stages, end_to_end_ms=measured.end_to_end_ms,
                          stage_sum_ms=sum(top) if ctx.spec.mode == "eager" and top else None,
                          flops_total=flops_total, params_total=params_total,
                          peak_mem_bytes=peak)


def _time(ctx: CaseContext) -> tuple[Any, Measurement]:
    """The callable timed and its samples, inside the case's energy window (GPU)."""
    (timed, measured), ctx.settings["energy"] = with_energy(
        ctx.device, lambda: _time_by_mode(ctx), lambda done: done[1].forwards)
    return timed, measured


def _time_by_mode(ctx: CaseContext) -> tuple[Any, Measurement]:
    """Per stage when eager, end to end otherwise."""
    if ctx.spec.mode == "eager":
        measured = measure(ctx.forward, ctx.model, ctx.stages, ctx.device, ctx.options.timing,
                           nvtx=ctx.options.nvtx)
        ctx.settings["iterations"] = (
            "shared: end-to-end around the hooked forward (slow CPU case)" if measured.shared
            else "interleaved: end-to-end in separate iterations without hooks")
        if not measured.shared and measured.hooked_ms:  # the hooks' overhead, for the record
            ctx.settings["hooked_end_to_end_ms"] = round(median(measured.hooked_ms), 4)
        return ctx.forward, measured
    # never hook a compiled or captured model: it is timed end to end only
    timed, cold_s, extra = prepare_compiled(ctx)
    ctx.settings.update(compile_s=round(cold_s, 4), stages_timed=False, **extra)
    samples = measure_end_to_end(timed, ctx.device, ctx.options.timing)
    ctx.settings["iterations"] = f"end to end only ({ctx.spec.mode}): stages not timed"
    return timed, Measurement(end_to_end_ms=samples,
                              forwards=ctx.options.timing.warmup + len(samples))


def _stage_peaks(ctx: CaseContext) -> dict[str, int]:
    """GPU eager cases: the allocator's peak per stage, from one more forward."""
    if ctx.device.type != "cuda" or ctx.spec.mode != "eager":
        return {}
    with StageMemory(ctx.model, ctx.stages, ctx.device) as tracker:
        ctx.forward()
    return tracker.peaks


def _visual_input_shape(inputs: Any) -> list[int] | None:
    """The exact visual tensor timed: a detector's input is padded to its stride (800x1333 ->
    800x1344); precomputed regions are features."""
    first = inputs[0] if isinstance(inputs, tuple) and inputs else None
    if isinstance(first, ImageBatch):
        return list(first.tensor.shape)
    if isinstance(first, RegionBatch):
        return list(first.features.shape)
    return None


FORWARD = Forward()
