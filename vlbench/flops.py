"""FLOPs and parameters per named stage.

Convention: one multiply-add counts 2 FLOPs (``torch.utils.flop_counter``'s convention, and
open_clip's profile). ``FlopCounterMode`` has no formula for the CPU kernel of
``scaled_dot_product_attention`` and silently counts it as zero, which under-counts every
transformer by its attention term; ``register_sdpa_cpu_formula`` fixes that once per process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from feature_extractors import Stage, stage_paths

_CPU_SDPA_OPS = ("_scaled_dot_product_flash_attention_for_cpu",)


def register_sdpa_cpu_formula() -> None:
    """Give the CPU SDPA kernels the same formula torch uses for the CUDA ones (idempotent)."""
    for name in _CPU_SDPA_OPS:
        op = getattr(torch.ops.aten, name, None)
        if op is None or op in flop_counter.flop_registry:
            continue

        def sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
            return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

        flop_counter.register_flop_formula(op, get_raw=False)(sdpa_cpu_flop)


def count_flops(
    model: nn.Module, run: Callable[[], object], stages: Iterable[Stage | str]
) -> tuple[int, dict[str, int]]:
    """Run ``run()`` once under the FLOP counter: total FLOPs and FLOPs per stage.

    A module that runs several times in one forward is summed over its calls (the counter's
    module attribution does that by name); a stage that is a named set of modules sums them.
    """
    register_sdpa_cpu_formula()
    with FlopCounterMode(display=False) as counter:
        run()
    counts = counter.get_flop_counts()
    root = type(model).__name__
    per_stage = {}
    for stage in stages:
        name, paths = stage_paths(stage)
        per_stage[name] = int(sum(sum(counts.get(f"{root}.{p}", {}).values()) for p in paths))
    return int(counter.get_total_flops()), per_stage


def count_params(model: nn.Module, stages: Iterable[Stage | str]) -> tuple[int, dict[str, int]]:
    """Parameters in total and per stage; a parameter a stage's modules share counts once."""
    total = sum(p.numel() for p in model.parameters())
    per_stage = {}
    for stage in stages:
        name, paths = stage_paths(stage)
        unique = {id(p): p for path in paths for p in model.get_submodule(path).parameters()}
        per_stage[name] = sum(p.numel() for p in unique.values())
    return int(total), per_stage
