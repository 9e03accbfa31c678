"""The case context: what one case is measured with, built once per case.

Building it resolves the model once, applies the case's precision once (and measures the matmul
peak under those flags), builds the model and its inputs, and starts the case's settings record.
Scenarios (``vlbench.scenarios``) read everything from it and turn their measurements into a
result through its one stage-result builder, so every kind of case reports stages alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from architectures import build_model, case_preset, load_sources
from feature_extractors import ImageBatch, RegionBatch, Stage

from . import paper
from .calibrate import RECHECK_S, matmul_peak_flops
from .contention import Observation, assess
from .options import MeasureOptions
from .precision import apply_precision, autocast
from .results import FLOP_CONVENTION, CaseResult, CaseSpec, Contention, StageResult, Summary
from .stats import summarize


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


def apply_threads(threads: int | None) -> None:
    """Set torch's intra-op thread count (None: leave it); every process that measures does it
    here."""
    if threads is not None:
        torch.set_num_threads(threads)


def flushes_denormals() -> bool:
    """Whether the CPU flushes denormal floats to zero now (torch has a setter,
    ``torch.set_flush_denormal``, which vlbench never calls, but no getter): probed with one
    float32 denormal product."""
    tiny = torch.tensor([1e-39], dtype=torch.float32)
    return bool((tiny * 1.0).item() == 0.0)


#: measured matmul peak per (device, precision, threads), once per process (worker)
_PEAKS: dict[tuple[str, str, int], float | None] = {}


def matmul_peak(device: torch.device, precision: str) -> float | None:
    """The device's matmul FLOP/s at ``precision`` (``vlbench.calibrate``) under the flags in
    force, measured once per process and thread count; None where the product cannot run at
    that precision here."""
    key = (str(device), precision, torch.get_num_threads())
    if key not in _PEAKS:
        try:
            _PEAKS[key] = matmul_peak_flops(device, precision)
        except RuntimeError:  # e.g. a dtype without a matmul kernel on this device
            _PEAKS[key] = None
    return _PEAKS[key]


@dataclass(frozen=True)
class ModelIdentity:
    """What a result says about the model besides its measurements: registry names, token
    counts, its canonical input and the published figures it is cited beside."""

    embedder: str = ""
    fusion: str = ""
    tokens: Mapping[str, int] = field(default_factory=dict)
    canonical_image_size: tuple[int, int] | None = None
    canonical_text_len: int | None = None
    paper_row: paper.Table6Row | None = None
    paper_bar: paper.Figure1Bar | None = None


@dataclass(frozen=True)
class Subject:
    """A model given as it is rather than by name (the Python API): the module, its example
    inputs (positional, or keyword), the stages to time and what results say about it."""

    module: nn.Module
    inputs: tuple[Any, ...] | Mapping[str, Any]
    stages: tuple[Stage, ...] = ()
    identity: ModelIdentity = ModelIdentity()


@dataclass
class CaseContext:
    """One case's model, inputs, device, options, matmul peak and settings record."""

    spec: CaseSpec
    options: MeasureOptions
    device: torch.device
    model: nn.Module
    inputs: tuple[Any, ...] | Mapping[str, Any]
    stages: tuple[Stage, ...]
    identity: ModelIdentity
    peak_flops: float | None
    settings: dict[str, Any]

    @classmethod
    def for_preset(cls, spec: CaseSpec, options: MeasureOptions, *, head: bool) -> CaseContext:
        """A preset or ``EMBEDDER+FUSION`` pair by name: built with random weights (or those of
        ``--weights``; an ``hf-`` preset from ``--hf-dir``), its example inputs at the case's
        sizes, its declared stages."""
        device, settings, peak = _prepare(spec, options, head=head)
        preset = case_preset(spec.model, spec.region_backend, options.d2_config, options.d2_weights)
        model = build_model(preset, head=head, hf_dir=options.hf_dir)
        # checkpoint path, size, SHA-256; an hf- model's class and attention implementation
        settings.update(load_sources(model, preset, weights=options.weights))
        model = model.to(device).eval()
        inputs = model.example_inputs(spec.batch_size, spec.image_size, spec.text_len,
                                      device=device, seed=options.seed)
        identity = ModelIdentity(
            embedder=model.embedder_name, fusion=model.fusion_name,
            tokens=model.num_tokens(spec.image_size, spec.text_len),
            canonical_image_size=tuple(preset.image_size), canonical_text_len=preset.text_len,
            paper_row=paper.table6_row(spec.model), paper_bar=paper.figure1_bar(spec.model))
        return cls(spec, options, device, model, inputs, tuple(model.stages()), identity, peak,
                   settings)

    @classmethod
    def for_subject(cls, spec: CaseSpec, options: MeasureOptions,
                    subject: Subject) -> CaseContext:
        """Any module with its example inputs and the stages to time (the Python API); the
        inputs are moved to the case's device."""
        device, settings, peak = _prepare(spec, options, head=False)
        inputs = _to_device(subject.inputs, device)
        return cls(spec, options, device, subject.module.to(device).eval(), inputs,
                   tuple(subject.stages), subject.identity, peak, settings)

    def run(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` as every timed call runs: inference mode, the case's autocast."""
        with torch.inference_mode(), autocast(self.spec.precision, self.device.type):
            return fn()

    def call(self, module: Callable[..., Any]) -> Any:
        """``module`` on the example inputs, as every timed call runs (``run``)."""
        if isinstance(self.inputs, Mapping):
            return self.run(lambda: module(**self.inputs))
        return self.run(lambda: module(*self.inputs))

    def forward(self) -> Any:
        """One forward of the model on its example inputs."""
        return self.call(self.model)

    def contention(self, seen: Observation) -> Contention:
        """The case's contention record (``vlbench.contention``): what the sampler saw while it
        ran, and the matmul peak measured again now, under the case's flags and threads, against
        the one its shares of peak divide by."""
        try:
            after: float | None = matmul_peak_flops(self.device, self.spec.precision,
                                                    min_time_s=RECHECK_S)
        except RuntimeError:  # as for the first calibration: no product at this precision
            after = None
        return assess(seen, threads=torch.get_num_threads(), peak_before=self.peak_flops,
                      peak_after=after)

    def stage_results(self, stages: Sequence[Stage], *, samples: Mapping[str, Sequence[float]],
                      calls: Mapping[str, int], flops: Mapping[str, int],
                      params: Mapping[str, int], workload: Mapping[str, Mapping[str, int]],
                      peaks: Mapping[str, int] | None = None) -> tuple[StageResult, ...]:
        """Every stage's record: its timing (where timed), achieved FLOP/s and share of the
        matmul peak, parameters, memory, workload and report category."""
        out = []
        for s in stages:
            timing = summarize(samples[s.name]) if samples.get(s.name) else None
            achieved = _achieved(flops[s.name], timing)
            out.append(StageResult(
                name=s.name, kind=str(s.kind), parent=s.parent, timing=timing,
                calls=calls.get(s.name, 1), flops=flops[s.name], params=params[s.name],
                peak_mem_bytes=(peaks or {}).get(s.name),
                samples_ms=tuple(round(v, 4) for v in samples.get(s.name, ())),
                host_sync=s.host_sync, workload=dict(workload.get(s.name, {})),
                achieved_flops_per_s=achieved,
                peak_share=achieved / self.peak_flops if achieved and self.peak_flops else None,
                category=s.kind.category))
        return tuple(out)

    def result(self, *, stages: tuple[StageResult, ...], end_to_end_ms: Sequence[float],
               stage_sum_ms: float | None, flops_total: int, params_total: int,
               peak_mem_bytes: int | None) -> CaseResult:
        """The case's ``ok`` record, with the model's identity and the settings record."""
        i = self.identity
        return CaseResult(
            spec=self.spec, status="ok", embedder=i.embedder, fusion=i.fusion,
            tokens=dict(i.tokens), end_to_end=summarize(end_to_end_ms),
            end_to_end_samples_ms=tuple(round(v, 4) for v in end_to_end_ms),
            stage_sum_ms=stage_sum_ms, stages=stages, flops_total=flops_total,
            params_total=params_total, peak_mem_bytes=peak_mem_bytes, settings=self.settings,
            canonical_image_size=i.canonical_image_size, canonical_text_len=i.canonical_text_len,
            paper_row=i.paper_row, paper_bar=i.paper_bar)


def _prepare(spec: CaseSpec, options: MeasureOptions, *,
             head: bool) -> tuple[torch.device, dict[str, Any], float | None]:
    """The one place a case's precision is applied; the matmul peak is measured right after,
    under the same flags; then the seed. Returns the device, the settings record, the peak."""
    device = torch.device(spec.device)
    settings = apply_precision(spec.precision)
    peak = matmul_peak(device, spec.precision)
    settings.update(seed=options.seed, head=head, threads=torch.get_num_threads(),
                    flush_denormal=flushes_denormals(), mode=spec.mode,
                    timing=options.timing.__dict__, flop_convention=FLOP_CONVENTION,
                    peak_flops=peak)
    torch.manual_seed(options.seed)
    return device, settings, peak


def _to_device(inputs: Any, device: torch.device) -> Any:
    """Tensors (and ``to``-able batches) of a tuple or mapping of inputs on ``device``."""
    def move(value: Any) -> Any:
        movable = isinstance(value, (torch.Tensor, ImageBatch, RegionBatch))
        return value.to(device) if movable else value

    if isinstance(inputs, Mapping):
        return {k: move(v) for k, v in inputs.items()}
    return tuple(move(v) for v in inputs)


def _achieved(flops: int, timing: Summary | None) -> float | None:
    """FLOPs over the median seconds; None when untimed or without FLOPs."""
    if timing is None or timing.median_ms <= 0 or not flops:
        return None
    return flops / (timing.median_ms / 1e3)
