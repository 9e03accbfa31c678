"""Component benchmarks: each stage of each preset timed in isolation with pytest-benchmark.

A stage is timed on the inputs it really receives: one forward with a pre-hook on every stage
records each stage's arguments (cloned, so later work cannot change them), and the benchmark
calls the stage module on fresh clones of those arguments. This complements ``vlbench run``,
which times stages from hooks inside whole forwards: here a stage's time carries no hook and
no neighbouring stage, and pytest-benchmark's saving and comparison come for free.

``benchmark.pedantic`` rather than ``benchmark(...)``: each round needs fresh inputs from an
untimed setup, and on CUDA the timed function must end with ``torch.cuda.synchronize()`` or it
would time only the kernel launches. The rounds come from one calibration call just before:
at least ``--benchmark-min-rounds``, and about ``--benchmark-max-time`` of wall time.

    pytest benchmarks/test_components.py --vlbench-models vilt-b32 --vlbench-size base
"""

from __future__ import annotations

import dataclasses
import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest
import torch
from torch import nn

from architectures import Preset, Stage, VLModel, build_model, resolve_preset
from vlbench.flops import count_flops

if TYPE_CHECKING:
    from .conftest import BenchOptions

BATCH_SIZE = 1
SEED = 0

Call = tuple[tuple[Any, ...], dict[str, Any]]  # (args, kwargs) of one module call


def clone_tree(obj: Any) -> Any:
    """Deep copy of the tensors in a call's arguments: tensors, containers and dataclasses
    (``Tokens``, ``ImageBatch``); anything else (ints, host sizes) is shared."""
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a named tuple
        return type(obj)(*(clone_tree(v) for v in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(clone_tree(v) for v in obj)
    if isinstance(obj, dict):
        return type(obj)((k, clone_tree(v)) for k, v in obj.items())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {f.name: clone_tree(getattr(obj, f.name))
                   for f in dataclasses.fields(obj) if f.init}
        return dataclasses.replace(obj, **changes)
    return obj


@dataclass
class Prepared:
    """A built model with each stage's captured first calls (one per module: a named set has
    several), its calls and FLOPs per forward."""

    name: str
    preset: Preset
    model: VLModel
    device: torch.device
    inputs: Call
    stages: dict[str, Stage]
    first_call: dict[str, list[tuple[nn.Module, Call]]] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    flops: dict[str, int] = field(default_factory=dict)
    flops_total: int = 0


def prepare(name: str, opts: BenchOptions) -> Prepared:
    """Build ``name`` at ``opts.size``; count FLOPs in a first (warm-up) forward, then capture
    every stage's first call in a second, hooked forward."""
    preset = resolve_preset(name, opts.size)
    device = torch.device(opts.device)
    torch.manual_seed(SEED)
    model = build_model(preset).to(device).eval()
    images, ids, mask = model.example_inputs(BATCH_SIZE, preset.image_size, preset.text_len,
                                             device=device, seed=SEED)
    stages = {s.name: s for s in model.stages()}
    prepared = Prepared(name, preset, model, device, ((images, ids, mask), {}), stages)

    def forward() -> object:
        with torch.inference_mode():
            return model(images, ids, mask)

    prepared.flops_total, prepared.flops = count_flops(model, forward, stages)

    def capture(stage: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            prepared.calls[stage] = prepared.calls.get(stage, 0) + 1
            seen = prepared.first_call.setdefault(stage, [])
            if all(m is not module for m, _ in seen):  # each module's first call
                seen.append((module, (clone_tree(args), clone_tree(kwargs))))
        return hook

    handles = []
    for stage in stages.values():  # a named set hooks each of its (distinct) modules
        modules = {id(m): m for m in map(model.get_submodule, stage.modules)}
        handles += [m.register_forward_pre_hook(capture(stage.name), with_kwargs=True)
                    for m in modules.values()]
    try:
        forward()
    finally:
        for handle in handles:
            handle.remove()
    never = sorted(set(stages) - set(prepared.first_call))
    if never:
        raise RuntimeError(f"{preset.name}: declared stages never ran: {', '.join(never)}")
    return prepared


class ModelCache:
    """Holds the one model being benchmarked: the collection order runs a model's benchmarks
    together, and base-size presets do not all fit in memory at once."""

    def __init__(self, opts: BenchOptions) -> None:
        self.opts = opts
        self.current: Prepared | None = None

    def get(self, name: str) -> Prepared:
        if self.current is None or self.current.name != name:
            self.current = None
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self.current = prepare(name, self.opts)
        return self.current


@pytest.fixture(scope="session")
def models(vlbench_options: BenchOptions) -> ModelCache:
    return ModelCache(vlbench_options)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_pedantic(benchmark: Any, steps: list[tuple[nn.Module, Call]], device: torch.device,
                 config: pytest.Config) -> None:
    """Time each ``module(*args, **kwargs)`` of ``steps`` in turn (one module, or a named set's
    modules on their first calls) on fresh clones of the calls, synchronising inside the timed
    function on CUDA; the clone happens (and finishes) in the untimed setup."""

    def setup() -> Call:
        with torch.inference_mode():
            calls = [clone_tree(call) for _, call in steps]
        _sync(device)
        return (calls,), {}

    def target(calls: list[Call]) -> None:
        with torch.inference_mode():
            for (module, _), (args, kwargs) in zip(steps, calls, strict=True):
                module(*args, **kwargs)
        _sync(device)

    rounds = 1
    if not benchmark.disabled:  # disabled (the test run): one call, no calibration
        # Calibrate now, on the machine as it is, as the plugin itself does (an estimate taken
        # earlier turns into thousands of rounds when the machine gets busier); the setup is
        # included so that --benchmark-max-time bounds the wall time of a microsecond stage.
        began = time.perf_counter()
        args, kwargs = setup()
        target(*args, **kwargs)
        once = time.perf_counter() - began
        min_rounds = int(config.getoption("benchmark_min_rounds"))
        max_time = float(config.getoption("benchmark_max_time"))  # its default stays a string
        rounds = max(min_rounds, math.ceil(max_time / max(once, 1e-6)))
    # On CPU the capture forwards and the calibration call have warmed the stage; CUDA
    # also settles lazy initialisation, the allocator and kernel selection.
    warmup = 3 if device.type == "cuda" else 0
    benchmark.pedantic(target, setup=setup, rounds=rounds, warmup_rounds=warmup, iterations=1)


def describe(prepared: Prepared, opts: BenchOptions) -> dict[str, Any]:
    """What every benchmark of this model records next to its numbers."""
    preset = prepared.preset
    return {
        "model": preset.name,
        "requested": prepared.name,
        "size": opts.size,
        "device": opts.device,
        "precision": opts.precision,
        "batch_size": BATCH_SIZE,
        "image_size": list(preset.image_size),
        "text_len": preset.text_len,
        "tokens": prepared.model.num_tokens(preset.image_size, preset.text_len),
    }


def test_stage(benchmark: Any, models: ModelCache, vlbench_options: BenchOptions,
               pytestconfig: pytest.Config, model_name: str, stage_name: str) -> None:
    prepared = models.get(model_name)
    stage = prepared.stages[stage_name]
    calls = prepared.calls[stage_name]
    benchmark.group = prepared.preset.name
    benchmark.extra_info.update(
        describe(prepared, vlbench_options),
        stage=stage.name, kind=stage.kind, parent=stage.parent, host_sync=stage.host_sync,
        calls=calls,
        # A stage run several times per forward (two-stream layer groups, LXMERT's shared
        # cross-attention) is timed on its first call's inputs only; a named set of modules on
        # each module's first call, in turn.
        timed_call=_timed_call(calls, len(prepared.first_call[stage_name])),
        flops_per_forward=prepared.flops[stage_name],
    )
    run_pedantic(benchmark, prepared.first_call[stage_name], prepared.device, pytestconfig)


def _timed_call(calls: int, modules: int) -> str:
    if modules > 1:
        return f"the first call of each of its {modules} modules ({calls} calls per forward)"
    return "only call" if calls == 1 else f"first of {calls} calls per forward"


def test_end_to_end(benchmark: Any, models: ModelCache, vlbench_options: BenchOptions,
                    pytestconfig: pytest.Config, model_name: str) -> None:
    prepared = models.get(model_name)
    benchmark.group = prepared.preset.name
    benchmark.extra_info.update(
        describe(prepared, vlbench_options),
        stage="end_to_end", kind="end_to_end", parent=None, host_sync=any(
            s.host_sync for s in prepared.stages.values()),
        calls=1, timed_call="only call", flops_per_forward=prepared.flops_total,
    )
    run_pedantic(benchmark, [(prepared.model, prepared.inputs)], prepared.device, pytestconfig)
