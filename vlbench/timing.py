"""Named-stage timing from outside the model.

Forward pre/post hooks on the named submodules take the time: CUDA events on GPU (recorded
asynchronously, one synchronisation when the iteration ends, not one per stage) and
``time.perf_counter_ns`` on CPU. A stage called several times in one forward sums its calls and
records the count. End-to-end latency is taken in separate iterations with no hooks attached,
interleaved with the hooked ones so that drift hits both alike. The model knows nothing of this.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn

from feature_extractors import Stage, stage_paths

from .options import TimingOptions


class StageNotFiredError(RuntimeError):
    """A declared stage did not run during a forward: the stage vocabulary is wrong."""


@dataclass
class Measurement:
    """Raw samples in milliseconds: one per iteration. ``shared`` says whether the end-to-end
    samples were taken around the hooked forwards (slow CPU cases) or in separate iterations."""

    end_to_end_ms: list[float] = field(default_factory=list)
    stages_ms: dict[str, list[float]] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    shared: bool = False
    #: the hooked iterations' own end-to-end times: beside ``end_to_end_ms`` (taken without
    #: hooks, interleaved) they give the hooks' overhead
    hooked_ms: list[float] = field(default_factory=list)
    #: forwards run in all, warm-up included (what an energy window divides by)
    forwards: int = 0


def _hook(model: nn.Module, stages: Sequence[Stage | str], pre: Callable[..., None],
          post: Callable[..., None]) -> list[Any]:
    """Forward pre/post hooks on every module of every stage, called with the stage's name (a
    named set's modules all report to their stage; a module it names twice, shared between
    layers, is hooked once)."""
    handles = []
    for stage in stages:
        name, paths = stage_paths(stage)
        modules = {id(m): m for m in (model.get_submodule(path) for path in paths)}
        for module in modules.values():
            handles.append(module.register_forward_pre_hook(partial(pre, name)))
            handles.append(module.register_forward_hook(partial(post, name)))
    return handles


class StageHooks:
    """Context manager: while active, every forward of the stages' modules is timed (a stage
    that is a named set of modules sums their calls).

    ``collect()`` ends an iteration: it returns {stage: (milliseconds, calls)} and resets.
    """

    def __init__(self, model: nn.Module, stages: Sequence[Stage | str],
                 device: torch.device, nvtx: bool = False) -> None:
        self.model, self.stages = model, list(stages)
        names = [stage_paths(s)[0] for s in self.stages]
        self.cuda = device.type == "cuda"
        self.nvtx = nvtx  # each stage call also an NVTX range named after it (Nsight Systems)
        self._open: dict[str, list[Any]] = {name: [] for name in names}
        self._spans: dict[str, list[Any]] = {name: [] for name in names}
        self._handles: list[Any] = []

    def __enter__(self) -> StageHooks:
        self._handles = _hook(self.model, self.stages, self._pre, self._post)
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _now(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter_ns()

    def _pre(self, name: str, module: nn.Module, args: Any) -> None:
        if self.nvtx:
            torch.cuda.nvtx.range_push(name)
        self._open[name].append(self._now())

    def _post(self, name: str, module: nn.Module, args: Any, output: Any) -> None:
        start = self._open[name].pop()
        self._spans[name].append((start, self._now()))
        if self.nvtx:
            torch.cuda.nvtx.range_pop()

    def collect(self) -> dict[str, tuple[float, int]]:
        if self.cuda:
            torch.cuda.synchronize()  # the one synchronisation of the iteration
        out = {}
        for name, spans in self._spans.items():
            if self.cuda:
                total = sum(start.elapsed_time(end) for start, end in spans)
            else:
                total = sum(end - start for start, end in spans) / 1e6
            out[name] = (float(total), len(spans))
            spans.clear()
            self._open[name].clear()
        return out


def time_end_to_end(forward: Callable[[], object], device: torch.device) -> float:
    """One forward, no hooks, in milliseconds."""
    if device.type == "cuda":
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        forward()
        end.record()
        torch.cuda.synchronize()
        return float(start.elapsed_time(end))
    t0 = time.perf_counter_ns()
    forward()
    return (time.perf_counter_ns() - t0) / 1e6


def measure(
    forward: Callable[[], object],
    model: nn.Module,
    stages: Sequence[Stage | str],
    device: torch.device,
    options: TimingOptions,
    nvtx: bool = False,
) -> Measurement:
    """Warm up, then alternate hooked (per-stage) and plain (end-to-end) iterations.

    A CPU forward slower than ``options.cpu_share_above_s`` (measured on the first warm-up)
    stops warming up and shares iterations: its end-to-end sample is the hooked forward's.
    ``nvtx``: the hooked iterations' stages are NVTX ranges too.
    """
    shared, warm = False, 0
    for _ in range(options.warmup):
        warm_ms = time_end_to_end(forward, device)
        warm += 1
        if device.type == "cpu" and warm_ms / 1e3 > options.cpu_share_above_s:
            shared = True
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    result = Measurement(stages_ms={stage_paths(s)[0]: [] for s in stages}, shared=shared,
                         forwards=warm)
    hooks = StageHooks(model, stages, device, nvtx=nvtx)
    began = time.perf_counter()
    while True:
        with hooks:
            hooked_ms = time_end_to_end(forward, device)
            per_stage = hooks.collect()
        check_fired(per_stage)
        result.hooked_ms.append(hooked_ms)
        for name, (ms, calls) in per_stage.items():
            result.stages_ms[name].append(ms)
            result.calls[name] = calls
        result.end_to_end_ms.append(hooked_ms if shared else time_end_to_end(forward, device))
        result.forwards += 1 if shared else 2
        if options.done(len(result.end_to_end_ms), time.perf_counter() - began):
            return result


def check_fired(per_stage: dict[str, tuple[float, int]]) -> None:
    silent = [name for name, (_, calls) in per_stage.items() if calls == 0]
    if silent:
        raise StageNotFiredError(f"declared stage(s) never ran in a forward: {', '.join(silent)}")


class StageMemory:
    """GPU only: the allocator's peak while each named stage ran, above what was allocated when
    it began. Nested stages share the one peak counter, so each reset first folds the running
    peak into every open stage."""

    def __init__(self, model: nn.Module, stages: Sequence[Stage | str],
                 device: torch.device) -> None:
        self.model, self.stages = model, list(stages)
        self.device = device
        self.peaks: dict[str, int] = {stage_paths(s)[0]: 0 for s in self.stages}
        self._open: list[tuple[str, int, list[int]]] = []  # (name, base, [running peak])
        self._handles: list[Any] = []

    def __enter__(self) -> StageMemory:
        self._handles = _hook(self.model, self.stages, self._pre, self._post)
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _fold(self) -> None:
        peak = torch.cuda.max_memory_allocated(self.device)
        for _, _, running in self._open:
            running[0] = max(running[0], peak)

    def _pre(self, name: str, module: nn.Module, args: Any) -> None:
        self._fold()
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        self._open.append((name, base, [base]))

    def _post(self, name: str, module: nn.Module, args: Any, output: Any) -> None:
        self._fold()
        _, base, running = self._open.pop()
        self.peaks[name] = max(self.peaks[name], running[0] - base)
