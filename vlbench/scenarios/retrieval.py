"""Retrieval: the time to rank a gallery of N items for one query, per architecture.

A case with ``task`` "retrieval-t2i" (a text query, N images) or "retrieval-i2t" (an image
query, N texts) and ``gallery_size`` N is measured here, in two steps the model's own code runs
(``architectures.retrieval.Retriever``), each timed like any forward:

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

A model with a contrastive and a fusion path (ALBEF, BLIP; VLMo's fusion way as a what-if)
re-ranks (``architectures.rerank``): its gallery step caches each item's ITC embedding and the
token sequence its fusion reads (an image's tower output: the cache's bytes are recorded, and a
cache that does not fit is an ``oom`` record), its query step ranks by ITC (``query.tower``,
``query.score``), keeps the top k (``query.topk``; the case's ``rerank_k`` clamped to N, both
recorded) and fuses those k pairs in batches (``query.pairs``) before a sort of the k.

Batch sizes are found, not configured (``batching.find_batch_size``): the gallery's batch and a
fusion model's pair batch are each the largest that fits, up to N. Results record both, the
number of batches and the sizes tried. ``vlbench.retrieval_cost`` fits the cost model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from architectures.rerank import RerankIndex
from architectures.retrieval import Retriever, strategies
from feature_extractors import ImageBatch, RegionBatch, Stage, Tokens, stage_workload

from ..context import CaseContext
from ..energy import with_energy
from ..failures import UnsupportedCase, is_out_of_memory
from ..flops import count_flops, count_params
from ..memory import peak_bytes, reset_peak
from ..results import CaseResult, CaseSpec
from ..retrieval_cost import TASKS
from ..stats import summarize
from ..timing import Measurement, measure
from .batching import BatchProbe, find_batch_size

#: a gallery of images is held as N distinct images up to this size; beyond it, one batch of
#: distinct images is reused for every batch (the work does not depend on the pixels)
POOL_BYTES = 512 * 2**20


def direction(task: str) -> str:
    """'retrieval-t2i' -> 't2i'."""
    return task.removeprefix("retrieval-")


@dataclass
class _Inputs:
    """The query's inputs and a maker of gallery inputs, per direction."""

    query: tuple[Any, ...]
    gallery: Callable[[int], tuple[Any, ...]]


def _inputs(model: Any, spec: CaseSpec, seed: int, device: torch.device) -> _Inputs:
    def images(n: int, s: int) -> tuple[Any, ...]:
        return (model.example_images(n, spec.image_size, device=device, seed=s),)

    def texts(n: int, s: int) -> tuple[Any, ...]:
        return model.example_texts(n, spec.text_len, device=device, seed=s)

    if direction(spec.task or "") == "t2i":
        return _Inputs(texts(1, seed), lambda n: images(n, seed + 1))
    return _Inputs(images(1, seed), lambda n: texts(n, seed + 1))


def _slice(item: Any, start: int, stop: int) -> Any:
    """Items ``start:stop`` of a batch of any input kind (views)."""
    if isinstance(item, ImageBatch):
        return ImageBatch(item.tensor[start:stop], item.image_sizes[start:stop])
    if isinstance(item, RegionBatch):
        return RegionBatch(item.features[start:stop], item.boxes[start:stop],
                           item.image_sizes[start:stop])
    return item[start:stop]


def _nbytes(value: Any) -> int:
    """Bytes held by a batch of any input kind, or by a gallery cache."""
    if isinstance(value, tuple):
        return sum(_nbytes(v) for v in value)
    if isinstance(value, ImageBatch):
        return value.tensor.nbytes
    if isinstance(value, RegionBatch):
        return value.features.nbytes + value.boxes.nbytes
    if isinstance(value, Tokens):
        return sum(t.nbytes for t in (value.embeds, value.mask, value.boxes) if t is not None)
    if isinstance(value, RerankIndex):
        return value.embeddings.nbytes + _nbytes(value.states)
    return value.nbytes


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


@dataclass
class _Step:
    """One timed step: its stages, samples, FLOPs and workload."""

    stages: list[Stage]
    measured: Measurement
    flops_total: int
    flops: dict[str, int]
    workload: dict[str, dict[str, int]]
    energy: dict[str, Any]


def _time_step(ctx: CaseContext, retriever: Retriever, stages: tuple[Stage, ...], prefix: str,
               forward: Callable[[], object]) -> _Step:
    stages = [s for s in stages if s.name.split(".")[0] == prefix]
    total, flops = count_flops(retriever, forward, stages)
    measured, energy = with_energy(
        ctx.device, lambda: measure(forward, retriever, stages, ctx.device, ctx.options.timing),
        lambda done: done.forwards)
    workload = {s.name: w for s in stages if (w := stage_workload(retriever, s))}
    return _Step(stages, measured, total, flops, workload, energy)


class Retrieval:
    name = "retrieval"
    tasks = TASKS
    uses_head = False

    def check(self, spec: CaseSpec) -> None:
        if spec.mode != "eager":
            raise UnsupportedCase(f"retrieval cases are timed eager only, not {spec.mode}")
        if spec.rerank_k is not None and spec.rerank_k < 1:
            raise UnsupportedCase(f"rerank_k must be at least 1, got {spec.rerank_k}")

    def measure(self, ctx: CaseContext) -> CaseResult:
        """Probe batch sizes, time the gallery step, then the query step; the stages of both
        steps in one result."""
        spec, n = ctx.spec, ctx.spec.gallery_size or 0
        retriever = _retriever(ctx).to(ctx.device).eval()
        steps = tuple(retriever.stages())
        inputs = _inputs(ctx.model, spec, ctx.options.seed, ctx.device)
        params_total, params = count_params(retriever, steps)
        gallery_probe = find_batch_size(
            lambda b: ctx.run(lambda: retriever("gallery", [inputs.gallery(b)])), n)
        batches, items_note = gallery_batches(inputs.gallery, n, gallery_probe.size)
        state: dict[str, Any] = {}

        def gallery_forward() -> object:
            state.pop("cache", None)  # hold one cache at a time
            state["cache"] = ctx.run(lambda: retriever("gallery", batches))
            return state["cache"]

        reset_peak(ctx.device)
        gallery = _time_gallery(ctx, retriever, steps, gallery_forward, n)
        cache = state["cache"]
        pair_probe = _probe_pairs(ctx, retriever, inputs, cache)
        pair_batch = pair_probe.size if pair_probe else None
        query = _time_step(ctx, retriever, steps, "query", lambda: ctx.run(
            lambda: retriever("query", inputs.query, cache, pair_batch)))
        ctx.settings["retrieval"] = _describe(retriever, spec, gallery_probe, pair_probe,
                                              items_note, cache, gallery.measured,
                                              ctx.model.visual_kind)
        ctx.settings["iterations"] = _iterations(gallery.measured, query.measured)
        ctx.settings["energy"] = query.energy  # per query: what one search costs
        workload = _workload(gallery, query, n, gallery_probe.size, pair_probe,
                             retriever.k_for(n))
        stages = ctx.stage_results(
            steps, samples={**gallery.measured.stages_ms, **query.measured.stages_ms},
            calls={**gallery.measured.calls, **query.measured.calls},
            flops={**gallery.flops, **query.flops}, params=params, workload=workload)
        query_stage = next(r for r in stages if r.name == "query")
        return ctx.result(
            stages=stages, end_to_end_ms=query.measured.end_to_end_ms,
            stage_sum_ms=query_stage.timing.median_ms if query_stage.timing else None,
            flops_total=query.flops_total, params_total=params_total,
            peak_mem_bytes=peak_bytes(ctx.device))


def _retriever(ctx: CaseContext) -> Retriever:
    """The model's natural strategy; a re-ranking takes the case's ``rerank_k``, which only a
    re-ranking may have (a suite gives it to those models alone)."""
    spec = ctx.spec
    natural = strategies(ctx.model.fusion)[0]
    if (spec.rerank_k is not None) != (natural == "rerank"):
        have = f"rerank_k {spec.rerank_k}" if spec.rerank_k is not None else "no rerank_k"
        raise UnsupportedCase(f"{spec.model} retrieves by {natural!r} and the case has {have}: "
                              "rerank_k goes with re-ranking models only")
    return Retriever(ctx.model, direction(spec.task or ""), k=spec.rerank_k)


def _time_gallery(ctx: CaseContext, retriever: Retriever, steps: tuple[Stage, ...],
                  forward: Callable[[], object], n: int) -> _Step:
    """The gallery step; a cache that does not fit is out of memory, said so (the case's
    ``oom`` record), not a crash."""
    try:
        return _time_step(ctx, retriever, steps, "gallery", forward)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc) else type(exc).__name__
        raise MemoryError(f"the gallery cache of {n} items ({_CACHED[retriever.strategy]}) "
                          f"does not fit: {first}") from exc


def _probe_pairs(ctx: CaseContext, retriever: Retriever, inputs: _Inputs,
                 cache: Any) -> BatchProbe | None:
    """The pair batch: the largest that fits, up to the pairs a query scores (N, or a
    re-ranking's k); None for a dual encoder."""
    found = ctx.run(lambda: retriever.pair_step(inputs.query, cache))
    if found is None:
        return None
    step, limit = found
    return find_batch_size(lambda b: ctx.run(lambda: step(b)), limit)


def _workload(gallery: _Step, query: _Step, n: int, gallery_batch: int,
              pair_probe: BatchProbe | None, k: int | None) -> dict[str, dict[str, int]]:
    """The stages' recorded work, plus what the steps did per gallery: items and batches."""
    workload = {**gallery.workload, **query.workload}
    workload["gallery"] = {"items": n, "batch": gallery_batch,
                           "batches": math.ceil(n / gallery_batch)}
    if pair_probe is not None:
        pairs = n if k is None else k
        workload["query.pairs"] = {"pairs": pairs, "batch": pair_probe.size,
                                   "batches": math.ceil(pairs / pair_probe.size)}
    if k is not None:
        workload["query.topk"] = {"k": k, "items": n}
    return workload


#: what each strategy caches per gallery item, in words
_CACHED = {"cached": "unit embeddings", "joint": "embedder tokens",
           "rerank": "ITC embeddings and the token sequences the fusion reads"}


def _words(retriever: Retriever, visual_kind: str, k: int | None) -> tuple[str, str]:
    """(offline, per query): what each step runs and caches, in words."""
    q, g = retriever.query_side, retriever.gallery_side
    item = "image" if g == "visual" else "text"
    if retriever.strategy == "cached":
        return (f"each {item} through the {g} embedder, the {g} tower and the projection; "
                "cached: unit embeddings",
                f"the {q} embedder and tower once, one (N x E) product, a sort")
    if retriever.strategy == "rerank":
        return (f"each {item} through the {g} embedder and the ITC path; cached: its unit "
                "embedding and the token sequence the fusion reads",
                f"the {q} embedder and ITC path once, one (N x E) product, the top k = {k}, "
                "the fusion and its matching head over the k pairs in batches, a sort of the k")
    tokens = f"{visual_kind} tokens" if g == "visual" else "token embeddings"
    return (f"each {item} through the {g} embedder; cached: its {tokens}",
            f"the {q} embedder once, then the fusion and a matching head per pair, in batches; "
            "a sort")


def _describe(retriever: Retriever, spec: CaseSpec, gallery_probe: BatchProbe,
              pair_probe: BatchProbe | None, items_note: str, cache: Any,
              gallery: Measurement, visual_kind: str) -> dict[str, Any]:
    """What each step ran and what it cached, in words and numbers, for the record."""
    n = spec.gallery_size or 0
    k = retriever.k_for(n)
    offline, per_query = _words(retriever, visual_kind, k)
    pairs = n if k is None else k
    out = {
        "task": spec.task, "direction": retriever.direction, "strategy": retriever.strategy,
        "gallery_items": n, "offline": offline, "per_query": per_query,
        "gallery_inputs": items_note, **_cache_record(cache),
        "gallery_batch": gallery_probe.size, "gallery_batches": math.ceil(n / gallery_probe.size),
        "gallery_probe": gallery_probe.settings(),
        "gallery_end_to_end_ms": summarize(gallery.end_to_end_ms).median_ms,
        "pair_batch": pair_probe.size if pair_probe else None,
        "pair_batches": math.ceil(pairs / pair_probe.size) if pair_probe else None,
        "pair_probe": pair_probe.settings() if pair_probe else None,
        "batch_sizes_found": "largest that fits up to N: doubling from 1, bisection after an "
                             "out of memory (vlbench.scenarios.batching.find_batch_size)",
    }
    if k is not None:
        out.update(k=k, k_requested=spec.rerank_k, cost_terms=retriever.cost_terms(),
                   what_if=retriever.what_if)
    return out


def _cache_record(cache: Any) -> dict[str, Any]:
    """The gallery cache's shape and bytes (a re-ranking's: the token sequences' too)."""
    if isinstance(cache, RerankIndex):
        return {"cached_shape": list(cache.states.embeds.shape),
                "cached_embedding_shape": list(cache.embeddings.shape),
                "cached_bytes": _nbytes(cache), "cached_states_bytes": _nbytes(cache.states)}
    shape = cache.embeds.shape if isinstance(cache, Tokens) else cache.shape
    return {"cached_shape": list(shape), "cached_bytes": _nbytes(cache)}


def _iterations(gallery: Measurement, query: Measurement) -> str:
    def how(m: Measurement) -> str:
        return "shared (slow CPU step)" if m.shared else "interleaved"

    return (f"gallery step {how(gallery)}, query step {how(query)}: end-to-end "
            "iterations without hooks unless shared")


RETRIEVAL = Retrieval()
