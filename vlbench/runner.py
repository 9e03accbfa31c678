"""Runs cases: builds a model from its preset, counts FLOPs and parameters per stage, times it,
and turns the raw samples into a ``CaseResult``. A failing case (out of memory, any error) is
recorded as that case's failure and the run goes on.

``run_cases`` runs in this process or, with ``CaseOptions(isolated=True)`` (the default of
``vlbench run``), in reused worker processes (``vlbench.worker``) so that a crash or the kernel's
OOM killer takes a case, not the run. Both paths call ``run_case`` with the same options.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from architectures import build_model, resolve_preset
from feature_extractors import spec_for_config

from .flops import count_flops, count_params
from .memory import peak_bytes, reset_peak
from .precision import apply_precision, autocast
from .results import CaseResult, CaseSpec, StageResult
from .stats import summarize
from .timing import StageMemory, TimingOptions, measure

#: a gap between the stage sum and end-to-end above this share is flagged in reports
STAGE_GAP_LIMIT = 0.05


class DeviceError(ValueError):
    """The requested device is not usable here."""


def resolve_device(name: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; 'cuda' without a GPU is an error."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError("device 'cuda' requested but no CUDA GPU is visible; "
                              "use --device cpu")
        return name
    if name == "cpu":
        return name
    raise DeviceError(f"unknown device {name!r}; valid: auto, cpu, cuda, cuda:N")


@dataclass(frozen=True)
class CaseOptions:
    """How every case of a run is measured; recorded with the run (``settings``) so that a
    resume measures the missing cases exactly as the first pass did."""

    timing: TimingOptions = TimingOptions()
    head: bool = False
    seed: int = 0
    #: torch intra-op threads, applied in whichever process measures; None keeps torch's default
    threads: int | None = None
    #: run cases in reused worker processes (vlbench.worker) instead of this one
    isolated: bool = False
    #: bytes of private memory a CPU worker may hold (RLIMIT_DATA); None: no limit
    memory_budget: int | None = None

    def settings(self) -> dict[str, Any]:
        """The run-settings entries that ``from_settings`` reads back."""
        return {"timing": dict(self.timing.__dict__), "head": self.head, "seed": self.seed,
                "threads": self.threads, "isolation": "process" if self.isolated else "none",
                "memory_budget_bytes": self.memory_budget}

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> CaseOptions:
        """Rebuild the options of a stored run (runs from before isolation ran in-process)."""
        return cls(timing=TimingOptions(**settings["timing"]), head=bool(settings["head"]),
                   seed=int(settings["seed"]), threads=settings.get("threads"),
                   isolated=settings.get("isolation", "none") == "process",
                   memory_budget=settings.get("memory_budget_bytes"))


def apply_threads(threads: int | None) -> None:
    """Set torch's intra-op thread count; the one place both execution paths do it."""
    if threads is not None:
        torch.set_num_threads(threads)


def run_case(spec: CaseSpec, options: CaseOptions = CaseOptions()) -> CaseResult:
    """Measure one case; never raises for a failure of the case itself."""
    began = time.perf_counter()
    try:
        result = _measure_case(spec, options)
    except Exception as exc:  # noqa: BLE001 - a case's failure is data, not a crash
        status = "oom" if is_out_of_memory(exc) else "error"
        message = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
        if status == "error":
            message += f" [{traceback.extract_tb(exc.__traceback__)[-1].name}]"
        del exc  # drop the frames that hold tensors before freeing memory
        result = CaseResult(spec=spec, status=status, message=message)
    finally:
        release_memory()
    return CaseResult(**{**result.__dict__, "wall_s": round(time.perf_counter() - began, 3)})


def release_memory() -> None:
    """Hand a finished case's memory back: CUDA's cache, and glibc's free lists, which otherwise
    keep a reused worker's resident set high and inflate the next case's CPU peak (VmHWM is
    reset to the current RSS, not to zero)."""
    gc.collect()
    _malloc_trim()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return any(s in text for s in ("out of memory", "can't allocate memory", "not enough memory"))


def _measure_case(spec: CaseSpec, options: CaseOptions) -> CaseResult:
    preset = resolve_preset(spec.model)
    device = torch.device(spec.device)
    settings = apply_precision(spec.precision)
    settings.update(seed=options.seed, head=options.head, threads=torch.get_num_threads(),
                    timing=options.timing.__dict__, flop_convention="2 per multiply-add")
    torch.manual_seed(options.seed)
    model = build_model(preset, head=options.head).to(device).eval()
    inputs = model.example_inputs(spec.batch_size, spec.image_size, spec.text_len,
                                  device=device, seed=options.seed)
    # the exact tensor timed: a detector's input is padded to its stride (800x1333 -> 800x1344)
    visual_input = getattr(inputs[0], "tensor", getattr(inputs[0], "features", None))
    settings["visual_input_shape"] = list(visual_input.shape) if visual_input is not None else None

    def forward() -> object:
        with torch.inference_mode(), autocast(spec.precision, device.type):
            return model(*inputs)

    stages = model.stages()
    names = [s.name for s in stages]
    params_total, params = count_params(model, names)
    flops_total, flops = count_flops(model, forward, names)  # doubles as the first warm-up

    reset_peak(device)
    measured = measure(forward, model, names, device, options.timing)
    peak = peak_bytes(device)
    settings["iterations"] = (
        "shared: end-to-end around the hooked forward (slow CPU case)" if measured.shared
        else "interleaved: end-to-end in separate iterations without hooks")
    stage_peaks: dict[str, int] = {}
    if device.type == "cuda":
        with StageMemory(model, names, device) as tracker:
            forward()
        stage_peaks = tracker.peaks

    workload = {name: dict(getattr(model.get_submodule(name), "last_workload", None) or {})
                for name in names}
    stage_results = tuple(
        StageResult(
            name=s.name, kind=s.kind, parent=s.parent,
            timing=summarize(measured.stages_ms[s.name]),
            calls=measured.calls[s.name], flops=flops[s.name], params=params[s.name],
            peak_mem_bytes=stage_peaks.get(s.name),
            samples_ms=tuple(round(v, 4) for v in measured.stages_ms[s.name]),
            host_sync=s.host_sync,
            workload=workload[s.name],
        )
        for s in stages
    )
    top = [r for r in stage_results if r.parent is None]
    return CaseResult(
        spec=spec,
        status="ok",
        embedder=spec_for_config(preset.visual).name,
        fusion=_fusion_name(preset),
        tokens=model.num_tokens(spec.image_size, spec.text_len),
        end_to_end=summarize(measured.end_to_end_ms),
        end_to_end_samples_ms=tuple(round(v, 4) for v in measured.end_to_end_ms),
        stage_sum_ms=sum(r.timing.median_ms for r in top if r.timing),
        stages=stage_results,
        flops_total=flops_total,
        params_total=params_total,
        peak_mem_bytes=peak,
        settings=settings,
    )


def _fusion_name(preset: object) -> str:
    from architectures.fusion import fusion_spec_for_config

    return fusion_spec_for_config(preset.fusion).name


def _oom_key(spec: CaseSpec) -> tuple:
    """Cases that differ only in batch size: one model at one input, precision and device."""
    return (spec.model, tuple(spec.image_size), spec.text_len, spec.precision, spec.device)


@dataclass
class OomCutoff:
    """Once a batch size is out of memory, a larger one of the same model and input would be too:
    skip it rather than spend a worker start and an allocation failure on it. Cases are drawn
    lazily through ``cases`` and every result is reported to ``note``, so the rule holds for the
    in-process and the worker path alike."""

    #: smallest batch size that ran out of memory, per ``_oom_key``
    limits: dict[tuple, int] = field(default_factory=dict)
    skipped: list[CaseSpec] = field(default_factory=list)

    def note(self, result: CaseResult) -> None:
        if result.status == "oom":
            key = _oom_key(result.spec)
            self.limits[key] = min(self.limits.get(key, result.spec.batch_size),
                                   result.spec.batch_size)

    def cases(self, specs: Iterable[CaseSpec]) -> Iterator[CaseSpec]:
        for spec in specs:
            limit = self.limits.get(_oom_key(spec))
            if limit is not None and spec.batch_size > limit:
                self.skipped.append(spec)
                continue
            yield spec


def run_cases(
    cases: Iterable[CaseSpec],
    options: CaseOptions,
    on_result: Callable[[CaseResult], None],
    before: Callable[[CaseSpec], None] | None = None,
) -> list[CaseResult]:
    """Run cases in order, handing each result to ``on_result`` (the store) as it finishes.
    Larger batch sizes of a model are skipped after an ``oom`` (``OomCutoff``)."""
    cutoff = OomCutoff()

    def noted(result: CaseResult) -> None:
        cutoff.note(result)
        on_result(result)

    if options.isolated:
        from .worker import run_isolated

        return run_isolated(cutoff.cases(cases), options, noted, before=before)
    apply_threads(options.threads)
    results = []
    for spec in cutoff.cases(cases):
        if before is not None:
            before(spec)
        result = run_case(spec, options)
        noted(result)
        results.append(result)
    return results


def stage_gap(result: CaseResult) -> float | None:
    """(stage sum - end-to-end) / end-to-end, the share the hooks or the glue account for."""
    if result.end_to_end is None or result.stage_sum_ms is None:
        return None
    return (result.stage_sum_ms - result.end_to_end.median_ms) / result.end_to_end.median_ms
