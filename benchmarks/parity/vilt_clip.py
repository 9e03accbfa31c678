"""ViLT (single stream on patches) and CLIP (dual encoder) against transformers' ``ViltModel``
and ``CLIPModel``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from architectures import Preset
from architectures.fusion import DualEncoderConfig, SingleStreamConfig
from feature_extractors import (
    BertTextConfig,
    ClipTextConfig,
    ImageBatch,
    PatchProjectionConfig,
)

from .common import Pair, _blocks, _require, as_preset


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



def vilt_inputs(images: ImageBatch, input_ids: torch.Tensor, attention_mask: torch.Tensor
                ) -> dict[str, torch.Tensor]:
    """``ViltModel``'s keyword inputs: every pixel real, as in our ImageBatch."""
    pixels = images.tensor
    b, _, h, w = pixels.shape
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixels,
            "pixel_mask": torch.ones(b, h, w, dtype=torch.long, device=pixels.device)}


def clip_inputs(images: ImageBatch, input_ids: torch.Tensor, attention_mask: torch.Tensor
                ) -> dict[str, torch.Tensor]:
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "pixel_values": images.tensor}


def vilt_pairs(p: Preset) -> list[Pair]:
    f = p.fusion
    return [
        Pair("visual", ("visual",), ("embeddings.patch_embeddings", "embeddings.cls_token",
                                     "embeddings.position_embeddings")),
        Pair("text", ("text",), ("embeddings.text_embeddings",)),
        Pair("fusion.modality", ("fusion.modality",), ("embeddings.token_type_embeddings",)),
        *_blocks("fusion.encoder.blocks", "encoder.layer", f.depth),
        Pair("fusion.norm", ("fusion.norm",), ("layernorm",)),
        Pair("fusion.pooler", ("fusion.pooler",), ("pooler",)),
    ]


def clip_pairs(p: Preset) -> list[Pair]:
    f = p.fusion
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
