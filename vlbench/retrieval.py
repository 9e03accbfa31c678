"""Retrieval cases: the time to rank a gallery of N items for one query, per architecture.

A case with ``task`` "retrieval-t2i" (a text query, N images) or "retrieval-i2t" (an image
query, N texts) and ``batch_size`` N is measured here, in two steps the model's own code runs
(``architectures.retrieval.Retriever``), each timed with ``vlbench.timing.measure`` like any
forward:

- ``gallery``, the offline cost, once per gallery. A dual encoder embeds the N items through
  embedder, tower and projection (``gallery.visual`` / ``gallery.text``, ``gallery.tower``) and
  caches the unit embeddings. A fusion model caches the only thing it can, the gallery side's
  embedder output: patch or region tokens per image (``gallery.visual``: the detector runs
  here, offline) or token embeddings per text (``gallery.text``).
- ``query``, the cost per query once the gallery is cached (the case's end-to-end). A dual
  encoder: the query's embedder and tower, one (N x E) product (``query.score``) and a sort
  (``query.rank``). A fusion model: the query's embedder once (``query.text``, or for an image
  query ``query.visual``, its detector included), then the joint forward and a matching head
  over the N pairs in batches (``query.pairs``, one call per batch), then the sort.

Batch sizes are found, not configured (``find_batch_size``): the gallery's batch and a fusion
model's pair batch are each the largest that fits, up to N. Results record both, the number of
batches and the sizes tried. ``vlbench.retrieval_cost`` fits the cost model to the cases.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from architectures import build_model, resolve_preset
from architectures.retrieval import Retriever, take
from feature_extractors import (
    ImageBatch,
    RegionBatch,
    Stage,
    Tokens,
    spec_for_config,
    stage_workload,
)

from .flops import count_flops, count_params
from .memory import peak_bytes, reset_peak
from .precision import apply_precision, autocast
from .results import CaseResult, CaseSpec, StageResult
from .retrieval_cost import TASKS
from .runner import (
    CaseOptions,
    UnsupportedCase,
    _fusion_name,
    flushes_denormals,
    is_out_of_memory,
    peak_flops_for,
    release_memory,
)
from .stats import summarize
from .timing import Measurement, measure

#: a gallery of images is held as N distinct images up to this size; beyond it, one batch of
#: distinct images is reused for every batch (the work does not depend on the pixels)
POOL_BYTES = 512 * 2**20


@dataclass(frozen=True)
class BatchProbe:
    """What ``find_batch_size`` found: ``size`` ran; ``oom_at``, if any, was the smallest size
    that ran out of memory; ``tried`` in order."""

    size: int
    tried: tuple[int, ...]
    oom_at: int | None

    def settings(self) -> dict[str, Any]:
        return {"tried": list(self.tried), "oom_at": self.oom_at}


def find_batch_size(step: Callable[[int], object], limit: int) -> BatchProbe:
    """The largest batch in 1..``limit`` that ``step(batch)`` runs without running out of
    memory, by trying it: doubling from 1 (the last try capped at ``limit``) until ``limit``
    runs or a size runs out of memory, then bisecting between the largest size that ran and
    the smallest that did not, to within an eighth. Out of memory is what
    ``vlbench.runner.is_out_of_memory`` says (a GPU's ``OutOfMemoryError``; on a CPU, an
    allocation refused under the worker's memory budget); memory is released after each
    failure. Any other error propagates, and so does out of memory at size 1, which makes the
    case an ``oom`` record like any other suite's."""
    if limit < 1:
        raise ValueError(f"need a limit of at least 1, got {limit}")
    tried: list[int] = []

    def fits(size: int) -> bool:
        tried.append(size)
        try:
            step(size)
        except Exception as exc:  # noqa: BLE001 - only out of memory is an answer
            if size == 1 or not is_out_of_memory(exc):
                raise
            failed = True
        else:
            failed = False
        release_memory()  # the failed attempt's frames are gone with ``exc``
        return not failed

    good, bad, size = 0, None, 1
    while True:
        if not fits(size):
            bad = size
            break
        good = size
        if size >= limit:
            break
        size = min(2 * size, limit)
    while bad is not None and bad - good > max(1, good // 8):
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return BatchProbe(good, tuple(tried), bad)


def direction(task: str) -> str:
    """'retrieval-t2i' -> 't2i'."""
    return task.removeprefix("retrieval-")


def _slice(item: Any, start: int, stop: int) -> Any:
    """Items ``start:stop`` of a batch of any input kind (views)."""
    if isinstance(item, ImageBatch):
        return ImageBatch(item.tensor[start:stop], item.image_sizes[start:stop])
    if isinstance(item, RegionBatch):
        return RegionBatch(item.features[start:stop], item.boxes[start:stop],
                           item.image_sizes[start:stop])
    return item[start:stop]


def _nbytes(inputs: tuple[Any, ...]) -> int:
    total = 0
    for item in inputs:
        if isinstance(item, ImageBatch):
            total += item.tensor.nbytes
        elif isinstance(item, RegionBatch):
            total += item.features.nbytes + item.boxes.nbytes
        else:
            total += item.nbytes
    return total


@dataclass
class _Inputs:
    """The query's inputs and a maker of gallery inputs, per direction."""

    query: tuple[Any, ...]
    gallery: Callable[[int], tuple[Any, ...]]
    gallery_kind: str  # "images" or "texts"


def _inputs(model: Any, spec: CaseSpec, seed: int, device: torch.device) -> _Inputs:
    def images(n: int, s: int) -> tuple[Any, ...]:
        return (model.example_images(n, spec.image_size, device=device, seed=s),)

    def texts(n: int, s: int) -> tuple[Any, ...]:
        return model.example_texts(n, spec.text_len, device=device, seed=s)

    if direction(spec.task or "") == "t2i":
        return _Inputs(texts(1, seed), lambda n: images(n, seed + 1), "images")
    return _Inputs(images(1, seed), lambda n: texts(n, seed + 1), "texts")


def gallery_batches(make: Callable[[int], tuple[Any, ...]], n: int,
                    batch: int) -> tuple[list[tuple[Any, ...]], str]:
    """The N gallery items in batches of ``batch`` (the last one short), and what they are:
    N distinct items where they fit in ``POOL_BYTES``, else one batch of distinct items reused
    for every batch."""
    one = _nbytes(make(1))
    distinct = n if n * one <= POOL_BYTES else batch
    pool = make(distinct)
    batches = []
    for start in range(0, n, batch):
        count = min(batch, n - start)
        lo = start if distinct == n else 0
        batches.append(tuple(_slice(x, lo, lo + count) for x in pool))
    note = (f"{n} distinct random items" if distinct == n else
            f"a pool of {distinct} random items reused for each of the {len(batches)} batches "
            "(the work does not depend on the content)")
    return batches, note


def _nbytes_of(cache: torch.Tensor | Tokens) -> int:
    if isinstance(cache, Tokens):
        return sum(t.nbytes for t in (cache.embeds, cache.mask, cache.boxes) if t is not None)
    return cache.nbytes


def measure_retrieval_case(spec: CaseSpec, options: CaseOptions) -> CaseResult:
    """Measure one retrieval case (see the module docstring): probe batch sizes, time the
    gallery step, then the query step; stages of both steps in one result."""
    if spec.task not in TASKS:
        raise UnsupportedCase(f"unknown task {spec.task!r}; valid: {', '.join(TASKS)}")
    if spec.mode != "eager":
        raise UnsupportedCase(f"retrieval cases are timed eager only, not {spec.mode}")
    device = torch.device(spec.device)
    preset = resolve_preset(spec.model)
    peak_flops = peak_flops_for(device, spec.precision)
    settings = apply_precision(spec.precision)
    settings.update(seed=options.seed, head=False, threads=torch.get_num_threads(),
                    flush_denormal=flushes_denormals(), mode=spec.mode,
                    timing=options.timing.__dict__, flop_convention="2 per multiply-add",
                    peak_flops=peak_flops)
    torch.manual_seed(options.seed)
    model = build_model(preset).to(device).eval()
    retriever = Retriever(model, direction(spec.task)).to(device).eval()
    n = spec.batch_size
    inputs = _inputs(model, spec, options.seed, device)

    def run(fn: Callable[[], Any]) -> Any:
        with torch.inference_mode(), autocast(spec.precision, device.type):
            return fn()

    stages = retriever.stages()
    gallery_stages = [s for s in stages if s.name.split(".")[0] == "gallery"]
    query_stages = [s for s in stages if s.name.split(".")[0] == "query"]
    params_total, params = count_params(retriever, stages)

    # offline step: the gallery, in the largest batches that fit
    gallery_probe = find_batch_size(
        lambda b: run(lambda: retriever("gallery", [inputs.gallery(b)])), n)
    batches, items_note = gallery_batches(inputs.gallery, n, gallery_probe.size)
    state: dict[str, Any] = {}

    def gallery_forward() -> object:
        state.pop("cache", None)  # hold one cache at a time
        state["cache"] = run(lambda: retriever("gallery", batches))
        return state["cache"]

    reset_peak(device)
    _, gallery_flops = count_flops(retriever, gallery_forward, gallery_stages)
    gallery = measure(gallery_forward, retriever, gallery_stages, device, options.timing)
    cache = state["cache"]
    gallery_workload = _workloads(retriever, gallery_stages)

    # per query: a fusion model's pairs in the largest batches that fit
    pair_probe = None
    if not retriever.dual:
        side = retriever.query.get_submodule(retriever.query_side)
        query_tokens = run(lambda: side(*inputs.query))
        pair_probe = find_batch_size(
            lambda b: run(lambda: retriever.query.pairs(query_tokens, take(cache, 0, b))), n)
        del query_tokens
    pair_batch = pair_probe.size if pair_probe else None

    def query_forward() -> object:
        return run(lambda: retriever("query", inputs.query, cache, pair_batch))

    query_flops_total, query_flops = count_flops(retriever, query_forward, query_stages)
    query = measure(query_forward, retriever, query_stages, device, options.timing)
    peak = peak_bytes(device)
    workload = {**gallery_workload, **_workloads(retriever, query_stages)}
    workload["gallery"] = {"items": n, "batch": gallery_probe.size,
                           "batches": math.ceil(n / gallery_probe.size)}
    if pair_batch is not None:
        workload["query.pairs"] = {"pairs": n, "batch": pair_batch,
                                   "batches": math.ceil(n / pair_batch)}
    for name in ("query.score", "query.rank"):
        if name in workload:
            workload[name] = {"items": n}

    settings["retrieval"] = _describe(retriever, spec, gallery_probe, pair_probe, items_note,
                                      cache, gallery, model.visual_kind)
    settings["iterations"] = _iterations(gallery, query)
    flops = {**gallery_flops, **query_flops}
    timed = {**gallery.stages_ms, **query.stages_ms}
    calls = {**gallery.calls, **query.calls}
    results = []
    for s in stages:
        timing = summarize(timed[s.name]) if timed.get(s.name) else None
        achieved = (flops[s.name] / (timing.median_ms / 1e3)
                    if timing is not None and timing.median_ms > 0 and flops[s.name] else None)
        results.append(StageResult(
            name=s.name, kind=s.kind, parent=s.parent, timing=timing,
            calls=calls.get(s.name, 1), flops=flops[s.name], params=params[s.name],
            samples_ms=tuple(round(v, 4) for v in timed.get(s.name, ())),
            host_sync=s.host_sync, workload=workload.get(s.name, {}),
            achieved_flops_per_s=achieved,
            peak_share=achieved / peak_flops if achieved is not None and peak_flops else None,
        ))
    query_stage = next(r for r in results if r.name == "query")
    return CaseResult(
        spec=spec, status="ok",
        embedder=spec_for_config(preset.visual).name, fusion=_fusion_name(preset),
        tokens=model.num_tokens(spec.image_size, spec.text_len),
        end_to_end=summarize(query.end_to_end_ms),
        end_to_end_samples_ms=tuple(round(v, 4) for v in query.end_to_end_ms),
        stage_sum_ms=query_stage.timing.median_ms if query_stage.timing else None,
        stages=tuple(results),
        flops_total=query_flops_total, params_total=params_total, peak_mem_bytes=peak,
        settings=settings,
    )


def _workloads(retriever: Retriever, stages: list[Stage]) -> dict[str, dict[str, int]]:
    """Data-dependent work a stage recorded in its last call (a detector's proposals)."""
    return {s.name: work for s in stages if (work := stage_workload(retriever, s))}


def _describe(retriever: Retriever, spec: CaseSpec, gallery_probe: BatchProbe,
              pair_probe: BatchProbe | None, items_note: str, cache: torch.Tensor | Tokens,
              gallery: Measurement, visual_kind: str) -> dict[str, Any]:
    """What each step ran and what it cached, in words and numbers, for the record."""
    n = spec.batch_size
    q, g = retriever.query_side, retriever.gallery_side
    item = "image" if g == "visual" else "text"
    if retriever.dual:
        strategy = "cached"
        offline = (f"each {item} through the {g} embedder, the {g} tower and the projection; "
                   "cached: unit embeddings")
        per_query = f"the {q} embedder and tower once, one (N x E) product, a sort"
    else:
        strategy = "joint"
        tokens = f"{visual_kind} tokens" if g == "visual" else "token embeddings"
        offline = f"each {item} through the {g} embedder; cached: its {tokens}"
        per_query = (f"the {q} embedder once, then the fusion and a matching head per pair, in "
                     "batches; a sort")
    shape = cache.embeds.shape if isinstance(cache, Tokens) else cache.shape
    return {
        "task": spec.task, "direction": retriever.direction, "strategy": strategy,
        "gallery_items": n, "offline": offline, "per_query": per_query,
        "gallery_inputs": items_note, "cached_shape": list(shape),
        "cached_bytes": _nbytes_of(cache),
        "gallery_batch": gallery_probe.size, "gallery_batches": math.ceil(n / gallery_probe.size),
        "gallery_probe": gallery_probe.settings(),
        "gallery_end_to_end_ms": summarize(gallery.end_to_end_ms).median_ms,
        "pair_batch": pair_probe.size if pair_probe else None,
        "pair_batches": math.ceil(n / pair_probe.size) if pair_probe else None,
        "pair_probe": pair_probe.settings() if pair_probe else None,
        "batch_sizes_found": "largest that fits up to N: doubling from 1, bisection after an "
                             "out of memory (vlbench.retrieval.find_batch_size)",
    }


def _iterations(gallery: Measurement, query: Measurement) -> str:
    def how(m: Measurement) -> str:
        return "shared (slow CPU step)" if m.shared else "interleaved"

    return (f"gallery step {how(gallery)}, query step {how(query)}: end-to-end "
            "iterations without hooks unless shared")
