"""What every family's parity check shares: resolving a preset, refusing what a reference
cannot express, pairing parameter prefixes and counting them, counting FLOPs. Timing goes
through vlbench's own measurement (``script.time_pair``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from architectures import PRESETS, Preset
from vlbench.flops import register_sdpa_cpu_formula


def as_preset(preset: str | Preset) -> Preset:
    return PRESETS.get(preset) if isinstance(preset, str) else preset


def _require(ok: bool, message: str) -> None:
    """The reference cannot express this preset; a silent approximation would fake parity."""
    if not ok:
        raise ValueError(message)


def precomputed_twin(name: str) -> str:
    """The name of a region preset's twin on precomputed features (``lxmert`` ->
    ``lxmert-precomputed``, ``lxmert-tiny`` -> ``lxmert-precomputed-tiny``)."""
    base = name.removesuffix("-tiny")
    return f"{base}-precomputed" + ("-tiny" if base != name else "")


# --------------------------------------------------------------------------- submodule pairing


@dataclass(frozen=True)
class Pair:
    """Parameter-name prefixes on each side that implement the same part of the model."""

    label: str
    ours: tuple[str, ...]
    theirs: tuple[str, ...]


def _blocks(ours: str, theirs: str, depth: int) -> list[Pair]:
    return [Pair(f"{ours}.{i}", (f"{ours}.{i}",), (f"{theirs}.{i}",)) for i in range(depth)]


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def matched_params(model: nn.Module, prefixes: Iterable[str]) -> dict[str, int]:
    """{parameter name: numel} for the parameters under any of ``prefixes``."""
    prefixes = tuple(prefixes)
    return {n: p.numel() for n, p in model.named_parameters()
            if any(_under(n, pre) for pre in prefixes)}


def count_params(model: nn.Module, prefixes: Iterable[str] | None = None) -> int:
    """Parameters under ``prefixes`` (all of them when None)."""
    if prefixes is None:
        return sum(p.numel() for p in model.parameters())
    return sum(matched_params(model, prefixes).values())


def pair_counts(
    ours: nn.Module, theirs: nn.Module, pairs: Sequence[Pair]
) -> list[tuple[str, int, int]]:
    """(label, our parameters, their parameters) per pair."""
    return [(pr.label, count_params(ours, pr.ours), count_params(theirs, pr.theirs))
            for pr in pairs]


def unmapped_params(model: nn.Module, prefixes: Iterable[str]) -> dict[str, int]:
    """{parameter name: numel} for the parameters under none of ``prefixes``: a side's
    remainder once every pair is taken out (the deliberate differences, when the pairs are
    right)."""
    prefixes = tuple(prefixes)
    return {n: p.numel() for n, p in model.named_parameters()
            if not any(_under(n, pre) for pre in prefixes)}


def unmapped_by_side(
    ours: nn.Module, theirs: nn.Module, pairs: Sequence[Pair]
) -> tuple[dict[str, int], dict[str, int]]:
    """Our and their unmapped remainders."""
    return (unmapped_params(ours, [x for pr in pairs for x in pr.ours]),
            unmapped_params(theirs, [x for pr in pairs for x in pr.theirs]))




# --------------------------------------------------------------------------- FLOPs and timing


def count_flops(run: Callable[[], object]) -> tuple[int, dict[Any, int]]:
    """Total forward FLOPs of ``run()`` and the global per-op counts (with the CPU SDPA formula
    registered, which ``FlopCounterMode`` otherwise counts as zero)."""
    register_sdpa_cpu_formula()
    with FlopCounterMode(display=False) as counter:
        run()
    return int(counter.get_total_flops()), dict(counter.get_flop_counts()["Global"])


def sdpa_flops(per_op: dict[Any, int]) -> int:
    """FLOPs of the fused attention ops (any ``scaled_dot_product`` kernel)."""
    return sum(v for op, v in per_op.items() if "scaled_dot_product" in str(op))


def disable_tf32() -> None:
    """fp32 stays fp32: TF32 would make the comparison depend on a precision setting."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        matmul.fp32_precision = "ieee"
    else:
        matmul.allow_tf32 = False
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        conv.fp32_precision = "ieee"
    else:
        torch.backends.cudnn.allow_tf32 = False
