"""Parity with the reference implementations (Hugging Face ``transformers``) at full size.

Our models are written from the papers, so their parameter counts, FLOPs and speed are only
credible next to an independent implementation of the same architecture. This module is the one
place where a preset is translated into the reference's config (``reference_vilt``,
``reference_clip``) and where our submodules are paired with theirs (``submodule_pairs``);
``tests/test_parity.py`` imports both, and the script below prints the comparison at full size:

    python -m benchmarks.parity [--device auto|cpu|cuda] [--models vilt-b32,clip-vit-b32]
                                [--repeats N] [--warmup N]

Weights are random (timing and counts do not depend on them); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from architectures import PRESETS, Preset, VLModel, build_model
from architectures.fusion import DualEncoderConfig, SingleStreamConfig
from feature_extractors import (
    BertTextConfig,
    ClipTextConfig,
    ImageBatch,
    PatchProjectionConfig,
)
from vlbench.flops import register_sdpa_cpu_formula

DEFAULT_MODELS = ("vilt-b32", "clip-vit-b32")


# --------------------------------------------------------------------------- config mapping


def as_preset(preset: str | Preset) -> Preset:
    return PRESETS.get(preset) if isinstance(preset, str) else preset


def _require(ok: bool, message: str) -> None:
    """The reference cannot express this preset; a silent approximation would fake parity."""
    if not ok:
        raise ValueError(message)


def vilt_config(preset: str | Preset) -> Any:
    """The ``ViltConfig`` equal to a single-stream preset (patch + BERT text embeddings)."""
    from transformers import ViltConfig

    p = as_preset(preset)
    v, t, f = p.visual, p.text, p.fusion
    _require(isinstance(v, PatchProjectionConfig) and isinstance(t, BertTextConfig)
             and isinstance(f, SingleStreamConfig), f"{p.name} is not a ViLT-style preset")
    _require(v.pos_grid[0] == v.pos_grid[1], "ViltConfig has a square position grid only")
    _require(v.bias, "ViLT's patch projection has a bias")
    _require(v.width == t.width == f.width, "ViLT has no width adapters")
    _require(t.eps == f.eps, "ViltConfig has a single layer_norm_eps")
    return ViltConfig(
        vocab_size=t.vocab_size,
        type_vocab_size=t.type_vocab_size,
        max_position_embeddings=t.max_positions,
        hidden_size=f.width,
        num_hidden_layers=f.depth,
        num_attention_heads=f.heads,
        intermediate_size=f.mlp_dim,
        hidden_act=f.activation,
        layer_norm_eps=f.eps,
        qkv_bias=True,
        image_size=v.pos_grid[0] * v.patch_size,  # the grid the position table is trained at
        patch_size=v.patch_size,
        num_channels=v.in_channels,
        modality_type_vocab_size=f.num_modalities,
        max_image_length=-1,  # keep every patch, as our PatchProjection does at inference
        attn_implementation="eager",  # ViLT has no SDPA path in transformers
    )


def clip_config(preset: str | Preset) -> Any:
    """The ``CLIPConfig`` equal to a dual-encoder preset (patch + CLIP text embeddings)."""
    from transformers import CLIPConfig

    p = as_preset(preset)
    v, t, f = p.visual, p.text, p.fusion
    _require(isinstance(v, PatchProjectionConfig) and isinstance(t, ClipTextConfig)
             and isinstance(f, DualEncoderConfig), f"{p.name} is not a CLIP-style preset")
    _require(v.pos_grid[0] == v.pos_grid[1], "CLIPVisionConfig has a square image only")
    _require(not v.bias, "CLIP's patch projection has no bias")
    _require(v.width == f.vision_width and t.width == f.text_width, "CLIP has no width adapters")
    text = {
        "vocab_size": t.vocab_size,
        "max_position_embeddings": t.max_positions,
        "hidden_size": f.text_width,
        "num_hidden_layers": f.text_depth,
        "num_attention_heads": f.text_heads,
        "intermediate_size": f.text_mlp_dim,
        "hidden_act": f.activation,
        "layer_norm_eps": f.eps,
        # end of text is the highest id, as in ``VLModel.example_inputs``; pooling reads it
        "bos_token_id": t.vocab_size - 2,
        "eos_token_id": t.vocab_size - 1,
    }
    vision = {
        "hidden_size": f.vision_width,
        "num_hidden_layers": f.vision_depth,
        "num_attention_heads": f.vision_heads,
        "intermediate_size": f.vision_mlp_dim,
        "hidden_act": f.activation,
        "layer_norm_eps": f.eps,
        "image_size": v.pos_grid[0] * v.patch_size,
        "patch_size": v.patch_size,
        "num_channels": v.in_channels,
    }
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=f.embed_dim,
                      attn_implementation="sdpa")


def reference_vilt(preset: str | Preset) -> nn.Module:
    """transformers' ``ViltModel`` (with pooler) for a ViLT preset, random init, on the current
    default device (``with torch.device("meta"):`` builds it without memory)."""
    from transformers import ViltModel

    return ViltModel(vilt_config(preset))


def reference_clip(preset: str | Preset) -> nn.Module:
    """transformers' ``CLIPModel`` for a CLIP preset, random init, on the current default device."""
    from transformers import CLIPModel

    return CLIPModel(clip_config(preset))


def reference_model(preset: str | Preset) -> nn.Module:
    """The reference model of whichever family the preset belongs to."""
    p = as_preset(preset)
    if isinstance(p.fusion, SingleStreamConfig):
        return reference_vilt(p)
    if isinstance(p.fusion, DualEncoderConfig):
        return reference_clip(p)
    raise ValueError(f"no reference implementation for {p.name}")


def reference_inputs(
    preset: str | Preset, images: ImageBatch, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The reference's keyword inputs carrying the same tensors as ours."""
    p = as_preset(preset)
    pixels = images.tensor
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixels}
    if isinstance(p.fusion, SingleStreamConfig):  # every pixel real, as in our ImageBatch
        b, _, h, w = pixels.shape
        kwargs["pixel_mask"] = torch.ones(b, h, w, dtype=torch.long, device=pixels.device)
    return kwargs


# --------------------------------------------------------------------------- submodule pairing


@dataclass(frozen=True)
class Pair:
    """Parameter-name prefixes on each side that implement the same part of the model."""

    label: str
    ours: tuple[str, ...]
    theirs: tuple[str, ...]


def _blocks(ours: str, theirs: str, depth: int) -> list[Pair]:
    return [Pair(f"{ours}.{i}", (f"{ours}.{i}",), (f"{theirs}.{i}",)) for i in range(depth)]


def submodule_pairs(preset: str | Preset) -> list[Pair]:
    """Our submodules against the reference's, block by block; meant to partition both sides'
    parameters (the test checks that, so a new unmapped parameter fails it)."""
    p = as_preset(preset)
    f = p.fusion
    if isinstance(f, SingleStreamConfig):
        return [
            Pair("visual", ("visual",), ("embeddings.patch_embeddings", "embeddings.cls_token",
                                         "embeddings.position_embeddings")),
            Pair("text", ("text",), ("embeddings.text_embeddings",)),
            Pair("fusion.modality", ("fusion.modality",), ("embeddings.token_type_embeddings",)),
            *_blocks("fusion.encoder.blocks", "encoder.layer", f.depth),
            Pair("fusion.norm", ("fusion.norm",), ("layernorm",)),
            Pair("fusion.pooler", ("fusion.pooler",), ("pooler",)),
        ]
    if isinstance(f, DualEncoderConfig):
        return [
            Pair("visual", ("visual",), ("vision_model.embeddings",)),
            Pair("fusion.vision_tower.norm_pre", ("fusion.vision_tower.norm_pre",),
                 ("vision_model.pre_layrnorm",)),
            *_blocks("fusion.vision_tower.encoder.blocks", "vision_model.encoder.layers",
                     f.vision_depth),
            Pair("fusion.vision_tower.norm_post", ("fusion.vision_tower.norm_post",),
                 ("vision_model.post_layernorm",)),
            Pair("text", ("text",), ("text_model.embeddings",)),
            *_blocks("fusion.text_tower.encoder.blocks", "text_model.encoder.layers",
                     f.text_depth),
            Pair("fusion.text_tower.norm", ("fusion.text_tower.norm",),
                 ("text_model.final_layer_norm",)),
            Pair("fusion.interaction.vision_proj", ("fusion.interaction.vision_proj",),
                 ("visual_projection",)),
            Pair("fusion.interaction.text_proj", ("fusion.interaction.text_proj",),
                 ("text_projection",)),
            Pair("fusion.interaction.logit_scale", ("fusion.interaction.logit_scale",),
                 ("logit_scale",)),
        ]
    raise ValueError(f"no reference implementation for {p.name}")


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


def _timed(call: Callable[[], object], device: torch.device) -> float:
    """One call's wall time in ms, with the device drained before and after."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    call()
    if cuda:
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1e3


def time_interleaved(
    ours: Callable[[], object], theirs: Callable[[], object], device: torch.device, *,
    repeats: int, warmup: int,
) -> tuple[list[float], list[float]]:
    """Alternate the two calls so drift (clocks, thermals, other load) hits both alike."""
    for _ in range(warmup):
        ours()
        theirs()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    a, b = [], []
    for _ in range(repeats):
        a.append(_timed(ours, device))
        b.append(_timed(theirs, device))
    return a, b


def _median_iqr(samples_ms: Sequence[float]) -> tuple[float, float]:
    try:
        from vlbench.stats import summarize
    except ImportError:  # stats module not there: plain median, no spread
        return statistics.median(samples_ms), float("nan")
    s = summarize(samples_ms)
    return s.median_ms, s.iqr_ms


# --------------------------------------------------------------------------- script


def build_pair(
    preset: str | Preset, device: torch.device, seed: int = 0
) -> tuple[VLModel, nn.Module]:
    """Ours and the reference, random init, eval mode, on ``device``."""
    torch.manual_seed(seed)
    ours = build_model(preset).to(device).eval()
    theirs = reference_model(preset).to(device).eval()
    return ours, theirs


def compare(name: str, device: torch.device, repeats: int, warmup: int) -> dict[str, float]:
    """Print parameters, FLOPs and latency both sides for one preset; return the ratios."""
    p = as_preset(name)
    ours, theirs = build_pair(p, device)
    pairs = submodule_pairs(p)
    bad = [(lbl, a, b) for lbl, a, b in pair_counts(ours, theirs, pairs) if a != b]
    po, pt = count_params(ours), count_params(theirs)
    images, ids, mask = ours.example_inputs(1, p.image_size, p.text_len, device=device)
    kwargs = reference_inputs(p, images, ids, mask)

    def run_ours() -> object:
        return ours(images, ids, mask)

    def run_theirs() -> object:
        return theirs(**kwargs)

    with torch.inference_mode():
        fo, _ = count_flops(run_ours)
        ft, _ = count_flops(run_theirs)
        to, tt = time_interleaved(run_ours, run_theirs, device, repeats=repeats, warmup=warmup)
    mo, io = _median_iqr(to)
    mt, it = _median_iqr(tt)
    h, w = p.image_size
    print(f"== {name}  ({h}x{w} image, {p.text_len} text tokens, batch 1, fp32, {device})")
    print(f"   reference: transformers {type(theirs).__name__}")
    print(f"   {'':14}{'ours':>14}{'theirs':>14}{'ours/theirs':>13}")
    print(f"   {'params (M)':14}{po / 1e6:14.3f}{pt / 1e6:14.3f}{po / pt:13.4f}")
    print(f"   {'GFLOPs':14}{fo / 1e9:14.3f}{ft / 1e9:14.3f}{fo / ft:13.4f}")
    print(f"   {'median ms':14}{mo:14.2f}{mt:14.2f}{mo / mt:13.3f}"
          f"   (IQR {io:.2f} / {it:.2f} ms, n={repeats})")
    if bad:
        for lbl, a, b in bad:
            print(f"   MISMATCH {lbl}: ours {a} vs theirs {b}")
    else:
        print(f"   submodule pairs: all {len(pairs)} equal in parameters")
    return {"params": po / pt, "flops": fo / ft, "latency": mo / mt}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS),
                    help="comma-separated presets (ViLT or CLIP family)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        ap.error("--repeats must be >= 1 and --warmup >= 0")
    dev = args.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(dev)
    disable_tf32()
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        compare(name, device, args.repeats, args.warmup)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
