"""LXMERT (two streams) and VisualBERT (single stream) on precomputed regions against
transformers' ``LxmertModel`` and ``VisualBertModel`` (neither has a detector)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from architectures import Preset
from architectures.fusion import SingleStreamConfig, TwoStreamConfig
from architectures.weight_maps import lxmert_param_name  # noqa: F401 - the one mapping
from feature_extractors import BertTextConfig, PrecomputedRegionsConfig, RegionBatch

from .common import Pair, _blocks, _require, as_preset


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



def normalised_boxes(regions: RegionBatch) -> torch.Tensor:
    """LXMERT's ``visual_pos``: pixel xyxy boxes divided by each image's width and height,
    written out here rather than taken from our ``location_features`` (which it checks)."""
    scale = torch.tensor([[w, h, w, h] for h, w in regions.image_sizes],
                         dtype=regions.boxes.dtype, device=regions.boxes.device)
    return regions.boxes / scale[:, None, :]  # (B, N, 4)


def lxmert_inputs(regions: RegionBatch, input_ids: torch.Tensor, attention_mask: torch.Tensor
                  ) -> dict[str, torch.Tensor]:
    """Every region real, as in our PrecomputedRegions."""
    feats = regions.features
    ones = torch.ones(feats.shape[:2], dtype=torch.long, device=feats.device)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "visual_feats": feats,
            "visual_pos": normalised_boxes(regions), "visual_attention_mask": ones}


def visualbert_inputs(regions: RegionBatch, input_ids: torch.Tensor,
                      attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every region real; VisualBERT's authors give every visual token type 1."""
    feats = regions.features
    ones = torch.ones(feats.shape[:2], dtype=torch.long, device=feats.device)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "visual_embeds": feats,
            "visual_attention_mask": ones, "visual_token_type_ids": ones}


def lxmert_pairs(p: Preset) -> list[Pair]:
    f = p.fusion
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


def visualbert_pairs(p: Preset) -> list[Pair]:
    """Their embeddings module holds both modalities' embeddings: paired part by part.
    Unpaired by design (see tests/test_parity_regions.py): our region embedding's LayerNorm
    and fusion's final LayerNorm; their visual position table."""
    f = p.fusion
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
