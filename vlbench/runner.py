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
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from architectures import build_model, resolve_preset
from feature_extractors import spec_for_config, stage_workload

from .calibrate import matmul_peak_flops
from .compiled import measure_end_to_end, prepare_compiled
from .flops import count_flops, count_params
from .memory import peak_bytes, reset_peak
from .precision import apply_precision, autocast
from .results import (  # noqa: F401 - STAGE_GAP_LIMIT, stage_gap: read here until readers move
    EXECUTION_MODES,
    STAGE_GAP_LIMIT,
    CaseResult,
    CaseSpec,
    StageResult,
    stage_gap,
)
from .stats import summarize
from .timing import StageMemory, TimingOptions, measure
from .trace import trace_path, write_trace  # noqa: F401 - trace_path is public here too


class DeviceError(ValueError):
    """The requested device is not usable here."""


class UnsupportedCase(ValueError):  # noqa: N818 - a case's verdict, recorded as its message
    """A case that cannot run as asked (CUDA graphs on a CPU); its message is recorded as is."""


def check_mode(mode: str) -> None:
    if mode not in EXECUTION_MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(EXECUTION_MODES)}")


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
    #: torch.compile backend for "compile" cases; None: torch's default (inductor)
    compile_backend: str | None = None
    #: write one torch.profiler chrome trace per case into this directory
    trace_dir: str | None = None
    #: who runs the cases: "local" (this machine) or "ray" (vlbench.ray_executor)
    executor: str = "local"
    #: Ray cluster to join; None starts Ray locally
    ray_address: str | None = None
    #: Ray on CPU nodes: let cases share a node's cores (default: one case per node)
    allow_shared: bool = False
    #: user plugin files loaded (vlbench.plugins) in every process that builds models
    plugins: tuple[str, ...] = ()
    #: Python interpreter of the worker processes; None: this one
    python: str | None = None
    #: interleaved A/B runs: side A's plugin files and interpreter (side B uses ``plugins`` and
    #: ``python``); both None: not an A/B run
    baseline_plugins: tuple[str, ...] | None = None
    baseline_python: str | None = None

    @property
    def interleaved(self) -> bool:
        return self.baseline_plugins is not None or self.baseline_python is not None

    def for_side(self, side: str | None) -> CaseOptions:
        """The options side ``"A"`` (baseline) or ``"B"``/None (current) measures with."""
        if side != "A":
            return self
        return replace(self, plugins=self.plugins if self.baseline_plugins is None
                       else self.baseline_plugins,
                       python=self.baseline_python or self.python)

    def settings(self) -> dict[str, Any]:
        """The run-settings entries that ``from_settings`` reads back."""
        return {"timing": dict(self.timing.__dict__), "head": self.head, "seed": self.seed,
                "threads": self.threads, "isolation": "process" if self.isolated else "none",
                "memory_budget_bytes": self.memory_budget,
                "compile_backend": self.compile_backend, "trace_dir": self.trace_dir,
                "executor": self.executor, "ray_address": self.ray_address,
                "allow_shared": self.allow_shared, "plugins": list(self.plugins),
                "python": self.python,
                "baseline_plugins": (None if self.baseline_plugins is None
                                     else list(self.baseline_plugins)),
                "baseline_python": self.baseline_python}

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> CaseOptions:
        """Rebuild the options of a stored run (runs from before isolation ran in-process)."""
        return cls(timing=TimingOptions(**settings["timing"]), head=bool(settings["head"]),
                   seed=int(settings["seed"]), threads=settings.get("threads"),
                   isolated=settings.get("isolation", "none") == "process",
                   memory_budget=settings.get("memory_budget_bytes"),
                   compile_backend=settings.get("compile_backend"),
                   trace_dir=settings.get("trace_dir"),
                   executor=settings.get("executor", "local"),
                   ray_address=settings.get("ray_address"),
                   allow_shared=bool(settings.get("allow_shared", False)),
                   plugins=tuple(settings.get("plugins", ())),
                   python=settings.get("python"),
                   baseline_plugins=(None if settings.get("baseline_plugins") is None
                                     else tuple(settings["baseline_plugins"])),
                   baseline_python=settings.get("baseline_python"))


def apply_threads(threads: int | None) -> None:
    """Set torch's intra-op thread count; the one place both execution paths do it."""
    if threads is not None:
        torch.set_num_threads(threads)


def run_case(spec: CaseSpec, options: CaseOptions = CaseOptions()) -> CaseResult:
    """Measure one case; never raises for a failure of the case itself."""
    began = time.perf_counter()
    run_threads = torch.get_num_threads()
    try:
        apply_threads(spec.threads)  # a thread sweep's case; restored for the next case below
        result = _measure_case(spec, options)
    except UnsupportedCase as exc:
        result = CaseResult(spec=spec, status="error", message=str(exc))
    except Exception as exc:  # noqa: BLE001 - a case's failure is data, not a crash
        status = "oom" if is_out_of_memory(exc) else "error"
        message = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
        if status == "error":
            message += f" [{traceback.extract_tb(exc.__traceback__)[-1].name}]"
        del exc  # drop the frames that hold tensors before freeing memory
        result = CaseResult(spec=spec, status=status, message=message)
    finally:
        if torch.get_num_threads() != run_threads:
            torch.set_num_threads(run_threads)
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
    check_mode(spec.mode)
    if spec.task is not None:  # ranking a gallery, not one forward (vlbench.retrieval)
        from .retrieval import measure_retrieval_case

        return measure_retrieval_case(spec, options)
    device = torch.device(spec.device)
    if spec.mode == "cudagraphs" and device.type != "cuda":
        raise UnsupportedCase("CUDA graphs need a GPU")
    preset = resolve_preset(spec.model)
    peak_flops = peak_flops_for(device, spec.precision)  # before the case's flags: it sets them
    settings = apply_precision(spec.precision)
    settings.update(seed=options.seed, head=options.head, threads=torch.get_num_threads(),
                    flush_denormal=flushes_denormals(), mode=spec.mode,
                    timing=options.timing.__dict__, flop_convention="2 per multiply-add",
                    peak_flops=peak_flops)
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
    if spec.mode == "cudagraphs":
        synced = [s.name for s in stages if s.host_sync]
        if synced:
            raise UnsupportedCase("CUDA graphs cannot capture data-dependent stages "
                                  f"({', '.join(synced)})")
    params_total, params = count_params(model, stages)
    # FLOPs always on the eager model (doubles as its first warm-up)
    flops_total, flops = count_flops(model, forward, stages)

    reset_peak(device)
    if spec.mode == "eager":
        timed = forward
        measured = measure(forward, model, stages, device, options.timing)
        stages_ms, calls = measured.stages_ms, measured.calls
        end_to_end_ms = measured.end_to_end_ms
        settings["iterations"] = (
            "shared: end-to-end around the hooked forward (slow CPU case)" if measured.shared
            else "interleaved: end-to-end in separate iterations without hooks")
    else:
        # never hook a compiled or captured model: it is timed end to end only
        timed, cold_s, extra = prepare_compiled(spec.mode, model, inputs, forward, device,
                                                 spec.precision, options.compile_backend)
        settings.update(compile_s=round(cold_s, 4), stages_timed=False, **extra)
        end_to_end_ms = measure_end_to_end(timed, device, options.timing)
        stages_ms, calls = {}, {}
        settings["iterations"] = f"end to end only ({spec.mode}): stages not timed"
    peak = peak_bytes(device)
    stage_peaks: dict[str, int] = {}
    if device.type == "cuda" and spec.mode == "eager":
        with StageMemory(model, stages, device) as tracker:
            forward()
        stage_peaks = tracker.peaks
    if options.trace_dir:
        settings["trace"] = write_trace(spec, timed, device, options.trace_dir)

    workload = {s.name: stage_workload(model, s) for s in stages}
    stage_results = []
    for s in stages:
        timing = summarize(stages_ms[s.name]) if s.name in stages_ms else None
        achieved = (flops[s.name] / (timing.median_ms / 1e3)
                    if timing is not None and timing.median_ms > 0 and flops[s.name] else None)
        stage_results.append(StageResult(
            name=s.name, kind=s.kind, parent=s.parent,
            timing=timing,
            calls=calls.get(s.name, 1), flops=flops[s.name], params=params[s.name],
            peak_mem_bytes=stage_peaks.get(s.name),
            samples_ms=tuple(round(v, 4) for v in stages_ms.get(s.name, ())),
            host_sync=s.host_sync,
            workload=workload[s.name],
            achieved_flops_per_s=achieved,
            peak_share=achieved / peak_flops if achieved is not None and peak_flops else None,
        ))
    top = [r for r in stage_results if r.parent is None]
    return CaseResult(
        spec=spec,
        status="ok",
        embedder=spec_for_config(preset.visual).name,
        fusion=_fusion_name(preset),
        tokens=model.num_tokens(spec.image_size, spec.text_len),
        end_to_end=summarize(end_to_end_ms),
        end_to_end_samples_ms=tuple(round(v, 4) for v in end_to_end_ms),
        stage_sum_ms=(sum(r.timing.median_ms for r in top if r.timing)
                      if spec.mode == "eager" else None),
        stages=tuple(stage_results),
        flops_total=flops_total,
        params_total=params_total,
        peak_mem_bytes=peak,
        settings=settings,
    )


def flushes_denormals() -> bool:
    """Whether the CPU flushes denormal floats to zero now (torch has a setter,
    ``torch.set_flush_denormal``, which vlbench never calls, but no getter): probed with one
    float32 denormal product."""
    tiny = torch.tensor([1e-39], dtype=torch.float32)
    return bool((tiny * 1.0).item() == 0.0)


#: measured matmul peak per (device, precision, threads), once per process (worker)
_PEAKS: dict[tuple[str, str, int], float | None] = {}


def peak_flops_for(device: torch.device, precision: str) -> float | None:
    """The device's matmul FLOP/s at ``precision`` (``vlbench.calibrate``), measured once per
    process and thread count; None where the product cannot run at that precision here."""
    key = (str(device), precision, torch.get_num_threads())
    if key not in _PEAKS:
        try:
            _PEAKS[key] = matmul_peak_flops(device, precision)
        except RuntimeError:  # e.g. a dtype without a matmul kernel on this device
            _PEAKS[key] = None
    return _PEAKS[key]


def _fusion_name(preset: object) -> str:
    from architectures.fusion import fusion_spec_for_config

    return fusion_spec_for_config(preset.fusion).name


def _oom_key(spec: CaseSpec) -> tuple:
    """Cases that differ only in batch size: one model at one input, precision, device, mode
    and thread count."""
    return (spec.model, tuple(spec.image_size), spec.text_len, spec.precision, spec.device,
            spec.mode, spec.threads, spec.side, spec.task)


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

    if options.executor == "ray":
        from .ray_executor import run_on_ray

        return run_on_ray(cutoff.cases(cases), options, noted, before=before)
    if options.isolated:
        from .worker import run_isolated

        return run_isolated(cutoff.cases(cases), options, noted, before=before)
    if options.interleaved:
        raise ValueError("an interleaved A/B run needs worker processes for its two sides")
    from .plugins import load_plugins

    load_plugins(options.plugins)
    apply_threads(options.threads)
    results = []
    for spec in cutoff.cases(cases):
        if before is not None:
            before(spec)
        result = run_case(spec, options)
        noted(result)
        results.append(result)
    return results
