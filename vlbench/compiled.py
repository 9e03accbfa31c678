"""Compiled and graph-captured cases (``compile``: the whole model; ``compile-fusion``: its
``fusion`` only), timed end to end only: a forward hook would split a compiled graph at every
stage boundary and never runs on CUDA-graph replay (DESIGN: "Hooks and compilation do not mix").
The cold-start cost (compiling, or warming up and capturing) is returned separately so it is
recorded, not hidden in the samples."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from .context import CaseContext
from .failures import UnsupportedCase
from .options import TimingOptions
from .timing import time_end_to_end


def check_backend(name: str | None) -> None:
    """``--compile-backend``: a backend ``torch.compile`` knows (its registry, third-party
    entry points included), refused before the run starts rather than by every compile case."""
    if name is None:
        return
    import torch._dynamo  # torch's compiler stack: loaded only when a backend is named

    if name not in torch._dynamo.list_backends(exclude_tags=()):
        raise ValueError(f"--compile-backend {name!r} is not a torch.compile backend; valid: "
                         f"{', '.join(torch._dynamo.list_backends())} (and debug ones such as "
                         "aot_eager, eager)")


def prepare_compiled(ctx: CaseContext) -> tuple[Callable[[], object], float, dict[str, Any]]:
    """The forward to time for a compiled or captured case, the cold-start seconds (the first
    compiled forward, or warm-up plus capture) and what to record about it."""
    if ctx.spec.mode in ("compile", "compile-fusion"):
        return _compile(ctx)
    return _capture(ctx)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _compile(ctx: CaseContext) -> tuple[Callable[[], object], float, dict[str, Any]]:
    import torch._dynamo  # torch's compiler stack: loaded only for compile cases

    backend = ctx.options.compile_backend
    torch._dynamo.reset()  # every case pays its own compile: the cold start is recorded
    torch._dynamo.utils.counters.clear()
    kwargs = {"backend": backend} if backend else {}
    if ctx.spec.mode == "compile-fusion":
        # the fusion alone, in place (nn.Module.compile keeps the module tree); the detector's
        # data-dependent stages stay eager, as a deployment that compiles the transformer has it
        fusion = getattr(ctx.model, "fusion", None)
        if not isinstance(fusion, torch.nn.Module):
            raise UnsupportedCase("compile-fusion needs a model with a 'fusion' submodule")
        fusion.compile(**kwargs)
        compiled = ctx.model
    else:
        compiled = torch.compile(ctx.model, **kwargs)

    def timed() -> object:
        return ctx.call(compiled)

    began = time.perf_counter()
    timed()
    _sync(ctx.device)
    cold = time.perf_counter() - began
    breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
    return timed, cold, {"compile_backend": backend or "inductor", "graph_breaks": breaks,
                         "compiled": "fusion" if ctx.spec.mode == "compile-fusion" else "model"}


def _capture(ctx: CaseContext) -> tuple[Callable[[], object], float, dict[str, Any]]:
    device, forward = ctx.device, ctx.forward
    # cudagraphs: warm up on a side stream, capture one forward, time its replay; autocast's
    # weight-cast cache stays off meanwhile, as torch's CUDA-graph notes ask
    began = time.perf_counter()
    cache = torch.is_autocast_cache_enabled()
    torch.set_autocast_cache_enabled(False)
    try:
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(3):
                forward()
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            forward()
        _sync(device)
    finally:
        torch.set_autocast_cache_enabled(cache)
    return graph.replay, time.perf_counter() - began, {}


def measure_end_to_end(forward: Callable[[], object], device: torch.device,
                       options: TimingOptions) -> list[float]:
    """End-to-end samples only (compiled and captured cases), with the stopping rule of every
    timing loop (``TimingOptions.done``); ``options.warmup`` forwards come first."""
    for _ in range(options.warmup):
        time_end_to_end(forward, device)
    samples: list[float] = []
    began = time.perf_counter()
    while not options.done(len(samples), time.perf_counter() - began):
        samples.append(time_end_to_end(forward, device))
    return samples
