"""Parity with the reference implementations (Hugging Face ``transformers``) at full size.

Our models are written from the papers, so their parameter counts, FLOPs and speed are only
credible next to an independent implementation of the same architecture. This module is the one
place where a preset is translated into the reference's config (``reference_vilt``,
``reference_clip``, ``reference_lxmert``, ``reference_visualbert``) and where our submodules are
paired with theirs (``submodule_pairs``); ``tests/test_parity.py`` and
``tests/test_parity_regions.py`` import both, and the script below prints the comparison at full
size:

    python -m benchmarks.parity [--device auto|cpu|cuda] [--models vilt-b32,clip-vit-b32]
                                [--repeats N] [--warmup N]

LXMERT and VisualBERT take region features, not images, so ``--models lxmert,visualbert``
compares their ``-precomputed`` presets (the reference has no detector to compare with). Both of
transformers' implementations are eager-only (hand-written softmax(QK^T)V; asking for SDPA raises),
so they run with ``attn_implementation="eager"``; ours run SDPA, and the CPU SDPA FLOP formula is
registered so both sides count the same attention matmuls.

Weights are random (timing and counts do not depend on them); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from architectures import PRESETS, Preset, VLModel, build_model
from architectures.fusion import DualEncoderConfig, SingleStreamConfig, TwoStreamConfig
from feature_extractors import (
    BertTextConfig,
    ClipTextConfig,
    ImageBatch,
    PatchProjectionConfig,
    PrecomputedRegionsConfig,
    RegionBatch,
    RegionFeaturesConfig,
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


def lxmert_config(preset: str | Preset) -> Any:
    """The ``LxmertConfig`` equal to a two-stream preset on precomputed LXMERT-style regions."""
    from transformers import LxmertConfig

    p = as_preset(preset)
    v, t, f = p.visual, p.text, p.fusion
    _require(isinstance(v, PrecomputedRegionsConfig) and isinstance(t, BertTextConfig)
             and isinstance(f, TwoStreamConfig),
             f"{p.name} is not an LXMERT-style preset on precomputed regions")
    _require(v.embedding == "lxmert" and v.location_dims == 4 and not v.global_token,
             "LXMERT embeds a feature and a 4-d box, (LN(fc(f)) + LN(fc(box))) / 2, no image token")
    _require(v.width == t.width == f.text_width == f.vision_width == f.cross_width,
             "LxmertConfig has one hidden_size (no adapters, no separate cross width)")
    _require(f.text_heads == f.vision_heads == f.cross_heads, "LxmertConfig has one head count")
    _require(f.text_mlp_dim == f.vision_mlp_dim, "LxmertConfig has one intermediate_size")
    n = len(f.text_layers_before_cross)
    _require(f.text_layers_before_cross == (f.text_depth,) * n
             and f.vision_layers_before_cross == (f.vision_depth,) * n,
             "LXMERT runs every single-modality layer before its cross-modality layers")
    _require(f.shared_cross_weights and f.cross_self_attention and f.pooled == "text",
             "LXMERT's cross layer shares its cross-attention, has self-attention, pools text")
    _require(t.eps == f.eps == 1e-12, "LXMERT's LayerNorms hard-code eps 1e-12")
    return LxmertConfig(
        vocab_size=t.vocab_size,
        hidden_size=f.text_width,
        num_attention_heads=f.text_heads,
        intermediate_size=f.text_mlp_dim,
        hidden_act="gelu",  # our FeedForward's activation (exact erf GELU)
        max_position_embeddings=t.max_positions,
        type_vocab_size=t.type_vocab_size,
        l_layers=f.text_depth,
        r_layers=f.vision_depth,
        x_layers=n,
        visual_feat_dim=v.feature_dim,
        visual_pos_dim=v.location_dims,
        attn_implementation="eager",  # LxmertModel has no SDPA path (asking for it raises)
    )


def visualbert_config(preset: str | Preset) -> Any:
    """The ``VisualBertConfig`` equal to a single-stream preset on precomputed VisualBERT-style
    regions (a projection of the 2048-d feature, no box)."""
    from transformers import VisualBertConfig

    p = as_preset(preset)
    v, t, f = p.visual, p.text, p.fusion
    _require(isinstance(v, PrecomputedRegionsConfig) and isinstance(t, BertTextConfig)
             and isinstance(f, SingleStreamConfig),
             f"{p.name} is not a VisualBERT-style preset on precomputed regions")
    _require(v.embedding == "visualbert" and v.location_dims == 0 and not v.global_token,
             "VisualBERT embeds the region feature only (no box, no image token)")
    _require(v.width == t.width == f.width, "VisualBERT has no width adapters")
    _require(f.num_modalities == t.type_vocab_size,
             "our modality table pairs with VisualBERT's visual token-type table (type_vocab_size)")
    _require(t.eps == f.eps, "VisualBertConfig has a single layer_norm_eps")
    return VisualBertConfig(
        vocab_size=t.vocab_size,
        hidden_size=f.width,
        visual_embedding_dim=v.feature_dim,
        num_hidden_layers=f.depth,
        num_attention_heads=f.heads,
        intermediate_size=f.mlp_dim,
        hidden_act=f.activation,
        max_position_embeddings=t.max_positions,
        type_vocab_size=t.type_vocab_size,
        layer_norm_eps=f.eps,
        attn_implementation="eager",  # VisualBertModel has no SDPA path (asking for it raises)
    )


def reference_lxmert(preset: str | Preset) -> nn.Module:
    """transformers' ``LxmertModel`` (with pooler) for an LXMERT precomputed-region preset,
    random init, on the current default device."""
    from transformers import LxmertModel

    return LxmertModel(lxmert_config(preset))


def reference_visualbert(preset: str | Preset) -> nn.Module:
    """transformers' ``VisualBertModel`` (with pooler) for a VisualBERT precomputed-region
    preset, random init, on the current default device."""
    from transformers import VisualBertModel

    return VisualBertModel(visualbert_config(preset))


def precomputed_twin(name: str) -> str:
    """The name of a region preset's twin on precomputed features (``lxmert`` ->
    ``lxmert-precomputed``, ``lxmert-tiny`` -> ``lxmert-precomputed-tiny``)."""
    base = name.removesuffix("-tiny")
    return f"{base}-precomputed" + ("-tiny" if base != name else "")


def reference_family(preset: str | Preset) -> str:
    """Which reference implements the preset: vilt, clip, lxmert or visualbert."""
    p = as_preset(preset)
    if isinstance(p.visual, RegionFeaturesConfig):
        raise ValueError(f"{p.name} runs a detector, which no reference has; compare "
                         f"{precomputed_twin(p.name)} instead")
    if isinstance(p.visual, PrecomputedRegionsConfig):
        if isinstance(p.fusion, TwoStreamConfig):
            return "lxmert"
        if isinstance(p.fusion, SingleStreamConfig):
            return "visualbert"
    elif isinstance(p.fusion, SingleStreamConfig):
        return "vilt"
    elif isinstance(p.fusion, DualEncoderConfig):
        return "clip"
    raise ValueError(f"no reference implementation for {p.name}")


REFERENCES: dict[str, Callable[[str | Preset], nn.Module]] = {
    "vilt": reference_vilt,
    "clip": reference_clip,
    "lxmert": reference_lxmert,
    "visualbert": reference_visualbert,
}


CONFIGS: dict[str, Callable[[str | Preset], Any]] = {
    "vilt": vilt_config,
    "clip": clip_config,
    "lxmert": lxmert_config,
    "visualbert": visualbert_config,
}


def reference_config(preset: str | Preset) -> Any:
    """The reference's config for a preset (raises ValueError where it cannot express it)."""
    return CONFIGS[reference_family(preset)](preset)


def reference_model(preset: str | Preset) -> nn.Module:
    """The reference model of whichever family the preset belongs to."""
    return REFERENCES[reference_family(preset)](preset)


def normalised_boxes(regions: RegionBatch) -> torch.Tensor:
    """LXMERT's ``visual_pos``: pixel xyxy boxes divided by each image's width and height,
    written out here rather than taken from our ``location_features`` (which it checks)."""
    scale = torch.tensor([[w, h, w, h] for h, w in regions.image_sizes],
                         dtype=regions.boxes.dtype, device=regions.boxes.device)
    return regions.boxes / scale[:, None, :]  # (B, N, 4)


def reference_inputs(
    preset: str | Preset, images: ImageBatch | RegionBatch, input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """The reference's keyword inputs carrying the same tensors as ours."""
    fam = reference_family(preset)
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if isinstance(images, RegionBatch):  # every region real, as in our PrecomputedRegions
        feats = images.features
        ones = torch.ones(feats.shape[:2], dtype=torch.long, device=feats.device)
        if fam == "lxmert":
            kwargs.update(visual_feats=feats, visual_pos=normalised_boxes(images),
                          visual_attention_mask=ones)
        else:  # VisualBERT's authors give every visual token type 1
            kwargs.update(visual_embeds=feats, visual_attention_mask=ones,
                          visual_token_type_ids=ones)
        return kwargs
    pixels = images.tensor
    kwargs["pixel_values"] = pixels
    if fam == "vilt":  # every pixel real, as in our ImageBatch
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
    fam = reference_family(p)
    if fam == "lxmert":
        return [
            # LxmertVisualFeatureEncoder sits in their encoder; in ours it is the region embedder
            Pair("visual", ("visual",), ("encoder.visn_fc",)),
            Pair("text", ("text",), ("embeddings",)),
            *_blocks("fusion.text_stream.layers", "encoder.layer", f.text_depth),
            *_blocks("fusion.vision_stream.layers", "encoder.r_layers", f.vision_depth),
            *_blocks("fusion.co_attention.blocks", "encoder.x_layers",
                     len(f.text_layers_before_cross)),
            Pair("fusion.pooler", ("fusion.pooler",), ("pooler",)),
        ]
    if fam == "visualbert":
        # Their embeddings module holds both modalities' embeddings: paired part by part.
        # Unpaired by design (see tests/test_parity_regions.py): our region embedding's LayerNorm
        # and fusion's final LayerNorm; their visual position table.
        return [
            Pair("visual.embed.feature", ("visual.embed.feature",),
                 ("embeddings.visual_projection",)),
            Pair("text.word", ("text.word",), ("embeddings.word_embeddings",)),
            Pair("text.position", ("text.position",), ("embeddings.position_embeddings",)),
            Pair("text.token_type", ("text.token_type",), ("embeddings.token_type_embeddings",)),
            # theirs normalises [text; visual] with this one LayerNorm, ours the text only
            Pair("text.norm", ("text.norm",), ("embeddings.LayerNorm",)),
            # both 2-row type tables; VisualBERT adds row 1 to every region (row 0 unused), we
            # add row 0 to text and row 1 to regions
            Pair("fusion.modality", ("fusion.modality",),
                 ("embeddings.visual_token_type_embeddings",)),
            *_blocks("fusion.encoder.blocks", "encoder.layer", f.depth),
            Pair("fusion.pooler", ("fusion.pooler",), ("pooler",)),
        ]
    if fam == "vilt":
        return [
            Pair("visual", ("visual",), ("embeddings.patch_embeddings", "embeddings.cls_token",
                                         "embeddings.position_embeddings")),
            Pair("text", ("text",), ("embeddings.text_embeddings",)),
            Pair("fusion.modality", ("fusion.modality",), ("embeddings.token_type_embeddings",)),
            *_blocks("fusion.encoder.blocks", "encoder.layer", f.depth),
            Pair("fusion.norm", ("fusion.norm",), ("layernorm",)),
            Pair("fusion.pooler", ("fusion.pooler",), ("pooler",)),
        ]
    if fam == "clip":
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


# ours -> LxmertModel parameter names, per sublayer: (our suffix, their suffix) given the
# sublayer's attention and output prefixes (LxmertAttention + LxmertAttentionOutput) or its
# intermediate and output prefixes (LxmertIntermediate + LxmertOutput)
_LX_SUBLAYER = (("attention.query.", "{att}.query."), ("attention.key.", "{att}.key."),
                ("attention.value.", "{att}.value."), ("attention.out.", "{out}.dense."),
                ("norm.", "{out}.LayerNorm."))
_LX_FFN = (("mlp.fc1.", "{inter}.dense."), ("mlp.fc2.", "{out}.dense."),
           ("norm.", "{out}.LayerNorm."))


def _lxmert_rules() -> list[tuple[str, str]]:
    rules = [
        ("visual.embed.feature.", "encoder.visn_fc.visn_fc."),
        ("visual.embed.feature_norm.", "encoder.visn_fc.visn_layer_norm."),
        ("visual.embed.location.", "encoder.visn_fc.box_fc."),
        ("visual.embed.location_norm.", "encoder.visn_fc.box_layer_norm."),
        ("text.word.", "embeddings.word_embeddings."),
        ("text.position.", "embeddings.position_embeddings."),
        ("text.token_type.", "embeddings.token_type_embeddings."),
        ("text.norm.", "embeddings.LayerNorm."),
        ("fusion.pooler.text.", "pooler.dense."),
    ]

    def add(ours: str, table: tuple[tuple[str, str], ...], **theirs: str) -> None:
        rules.extend((ours + a, b.format(**theirs)) for a, b in table)

    for stream, layers in (("text_stream", "encoder.layer"), ("vision_stream", "encoder.r_layers")):
        ours = f"fusion.{stream}.layers.{{i}}."
        add(ours + "attn.", _LX_SUBLAYER, att=f"{layers}.{{i}}.attention.self",
            out=f"{layers}.{{i}}.attention.output")
        add(ours + "ffn.", _LX_FFN, inter=f"{layers}.{{i}}.intermediate",
            out=f"{layers}.{{i}}.output")
    block, x = "fusion.co_attention.blocks.{i}.", "encoder.x_layers.{i}"
    add(block + "cross.shared.", _LX_SUBLAYER, att=f"{x}.visual_attention.att",
        out=f"{x}.visual_attention.output")
    add(block + "text_self.", _LX_SUBLAYER, att=f"{x}.lang_self_att.self",
        out=f"{x}.lang_self_att.output")
    add(block + "vision_self.", _LX_SUBLAYER, att=f"{x}.visn_self_att.self",
        out=f"{x}.visn_self_att.output")
    add(block + "text_ffn.", _LX_FFN, inter=f"{x}.lang_inter", out=f"{x}.lang_output")
    add(block + "vision_ffn.", _LX_FFN, inter=f"{x}.visn_inter", out=f"{x}.visn_output")
    return rules


_LXMERT_RULES = _lxmert_rules()


def lxmert_param_name(ours: str) -> str:
    """Our parameter name -> ``LxmertModel``'s (what a weight loader would use); the finest
    level of ``submodule_pairs`` for LXMERT. Raises KeyError for a name with no counterpart."""
    layer = re.match(r"fusion\.\w+\.(?:layers|blocks)\.(\d+)\.", ours)
    index = layer.group(1) if layer else ""
    for a, b in _LXMERT_RULES:
        a, b = a.format(i=index), b.format(i=index)
        if ours.startswith(a):
            return b + ours[len(a):]
    raise KeyError(f"no LxmertModel counterpart for {ours}")


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


def parity_preset(name: str) -> str:
    """The preset compared for ``name``: a region preset's ``-precomputed`` twin, since the
    references take region features and have no detector; any other preset itself."""
    p = as_preset(name)
    twin = precomputed_twin(name)
    if isinstance(p.visual, RegionFeaturesConfig) and twin in PRESETS:
        return twin
    return name


def _describe_input(p: Preset, ours: VLModel) -> str:
    if isinstance(p.visual, PrecomputedRegionsConfig):
        n = ours.num_tokens(p.image_size, p.text_len)["image"]
        return f"{n} precomputed regions"
    h, w = p.image_size
    return f"{h}x{w} image"


def compare(name: str, device: torch.device, repeats: int, warmup: int) -> dict[str, float]:
    """Print parameters, FLOPs and latency both sides for one preset; return the ratios."""
    p = as_preset(name)
    ours, theirs = build_pair(p, device)
    pairs = submodule_pairs(p)
    bad = [(lbl, a, b) for lbl, a, b in pair_counts(ours, theirs, pairs) if a != b]
    rest_ours, rest_theirs = unmapped_by_side(ours, theirs, pairs)
    po, pt = count_params(ours), count_params(theirs)
    visual, ids, mask = ours.example_inputs(1, p.image_size, p.text_len, device=device)
    kwargs = reference_inputs(p, visual, ids, mask)

    def run_ours() -> object:
        return ours(visual, ids, mask)

    def run_theirs() -> object:
        return theirs(**kwargs)

    with torch.inference_mode():
        fo, _ = count_flops(run_ours)
        ft, _ = count_flops(run_theirs)
        to, tt = time_interleaved(run_ours, run_theirs, device, repeats=repeats, warmup=warmup)
    mo, io = _median_iqr(to)
    mt, it = _median_iqr(tt)
    attn = getattr(getattr(theirs, "config", None), "_attn_implementation", None)
    print(f"== {name}  ({_describe_input(p, ours)}, {p.text_len} text tokens, batch 1, fp32, "
          f"{device})")
    print(f"   reference: transformers {type(theirs).__name__}"
          + (f" (attention: {attn}; ours: SDPA)" if attn else ""))
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
    for side, rest in (("ours", rest_ours), ("theirs", rest_theirs)):
        if rest:
            print(f"   unpaired {side}: {sum(rest.values()):,} ("
                  + ", ".join(f"{n} {k:,}" for n, k in rest.items()) + ")")
    return {"params": po / pt, "flops": fo / ft, "latency": mo / mt}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS),
                    help="comma-separated presets (ViLT, CLIP, LXMERT or VisualBERT family; "
                         "a region preset means its -precomputed twin)")
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
    targets: list[tuple[str, str]] = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        try:  # refuse every unusable name before spending minutes on the others
            targets.append((name, parity_preset(name)))
            reference_config(targets[-1][1])
        except KeyError as err:  # unknown name: the registry's one-line message
            ap.error(str(err).strip("'\""))
        except ValueError as err:  # a preset the references cannot express
            ap.error(f"{targets[-1][1]}: {err}")
    for name, target in targets:
        if target != name:
            print(f"({name}: comparing {target}; the reference takes region features)")
        compare(target, device, args.repeats, args.warmup)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
