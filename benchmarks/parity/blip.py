"""BLIP (align-fuse, shared layout) against transformers' ``BlipForImageTextRetrieval``.

transformers' default ``BlipConfig()`` is BLIP-base for retrieval at 384x384 (223.74 M
parameters); ``blip_config`` maps a preset onto it field by field. Two of its defaults differ from
the official BLIP and from our ``blip-base`` without changing a parameter or a FLOP: the text
encoder's heads (transformers 8; ``med_config.json`` 12) and the ViT's LayerNorm eps (transformers
1e-5; BLIP's ``vit.py`` 1e-6). ``BLIP_CONFIG_DIFFERENCES`` lists them; the tests check that the
mapped config differs from the default there and only there.

Both of transformers' BLIP attentions are hand-written (eager); ours run SDPA, counted by the
CPU SDPA FLOP formula. The vision attention's fused ``qkv`` is our separate query, key and value
(``load_blip_weights`` splits it); everything else maps one to one. The name mapping is
``architectures.weight_maps`` (shared with ``--weights``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from architectures import Preset
from architectures.fusion import AlignFuseConfig
from architectures.weight_maps import blip_param_name
from feature_extractors import BertTextConfig, ImageBatch, PatchProjectionConfig

from .common import Pair, _blocks, _require, as_preset

#: (sub-config, field) -> (transformers' default, official BLIP / ours): no parameter or FLOP
#: depends on either
BLIP_CONFIG_DIFFERENCES = {
    ("text_config", "num_attention_heads"): (8, 12),
    ("vision_config", "layer_norm_eps"): (1e-5, 1e-6),
}


def blip_config(preset: str | Preset) -> Any:
    """The ``BlipConfig`` equal to an align-fuse preset with BLIP's shared layout."""
    from transformers import BlipConfig

    p = as_preset(preset)
    v, t, f = p.visual, p.text, p.fusion
    _require(isinstance(v, PatchProjectionConfig) and isinstance(t, BertTextConfig)
             and isinstance(f, AlignFuseConfig), f"{p.name} is not an align-fuse preset")
    _require(f.layout == "shared" and f.fusion_depth == f.text_depth,
             "BLIP's text encoder has a cross-attention in every layer (shared layout)")
    _require(v.absolute_positions and v.bias and v.pos_grid[0] == v.pos_grid[1],
             "BLIP's ViT embeds patches with a bias and a square learned position table")
    _require(v.width == f.vision_width and t.width == f.text_width,
             "BLIP has no width adapters")
    _require(t.type_vocab_size == 0 and t.add_positions,
             "BLIP's text embeddings are word + position (no token type)")
    _require(t.eps == f.text_eps, "BlipTextConfig has a single layer_norm_eps")
    text = {"vocab_size": t.vocab_size, "hidden_size": f.text_width,
            "encoder_hidden_size": f.vision_width, "intermediate_size": f.text_mlp_dim,
            "num_hidden_layers": f.text_depth, "num_attention_heads": f.text_heads,
            "max_position_embeddings": t.max_positions, "layer_norm_eps": f.text_eps,
            "hidden_act": "gelu",
            # BLIP's [DEC] token (30522 at full size); a tiny vocabulary needs one inside it
            "bos_token_id": min(30522, t.vocab_size - 2)}
    vision = {"hidden_size": f.vision_width, "intermediate_size": f.vision_mlp_dim,
              "num_hidden_layers": f.vision_depth, "num_attention_heads": f.vision_heads,
              "image_size": v.pos_grid[0] * v.patch_size, "patch_size": v.patch_size,
              "layer_norm_eps": f.vision_eps, "hidden_act": "gelu"}
    return BlipConfig(text_config=text, vision_config=vision,
                      image_text_hidden_size=f.embed_dim, attn_implementation="eager")


def reference_blip(preset: str | Preset) -> nn.Module:
    """transformers' ``BlipForImageTextRetrieval`` for a BLIP preset, random init, on the current
    default device; its forward with ``use_itm_head=True`` (the default) is our forward."""
    from transformers import BlipForImageTextRetrieval

    return BlipForImageTextRetrieval(blip_config(preset))


def blip_inputs(images: ImageBatch, input_ids: torch.Tensor, attention_mask: torch.Tensor
                ) -> dict[str, torch.Tensor]:
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "pixel_values": images.tensor}


def blip_pairs(p: Preset) -> list[Pair]:
    f = p.fusion
    return [
        Pair("visual", ("visual",), ("vision_model.embeddings",)),
        *_blocks("fusion.vision_tower.encoder.blocks", "vision_model.encoder.layers",
                 f.vision_depth),
        Pair("fusion.vision_tower.norm", ("fusion.vision_tower.norm",),
             ("vision_model.post_layernorm",)),
        Pair("text", ("text",), ("text_encoder.embeddings",)),
        *_blocks("fusion.text_layers", "text_encoder.encoder.layer", f.text_depth),
        Pair("fusion.itc_head.vision_proj", ("fusion.itc_head.vision_proj",), ("vision_proj",)),
        Pair("fusion.itc_head.text_proj", ("fusion.itc_head.text_proj",), ("text_proj",)),
        Pair("fusion.itm_head", ("fusion.itm_head",), ("itm_head",)),
    ]


@torch.no_grad()
def load_blip_weights(ours: nn.Module, theirs: nn.Module) -> None:
    """Copy the reference's weights into ours (every parameter of either side used once)."""
    src = dict(theirs.named_parameters())
    used: dict[str, int] = {}
    for name, param in ours.named_parameters():
        theirs_name, chunk = blip_param_name(name)
        tensor = src[theirs_name]
        if chunk is not None:
            tensor = tensor.chunk(3, dim=0)[chunk]
        param.copy_(tensor.reshape(param.shape))
        used[theirs_name] = used.get(theirs_name, 0) + tensor.numel()
    missing = {n for n, t in src.items() if used.get(n) != t.numel()}
    if missing:
        raise KeyError(f"reference parameters not copied: {sorted(missing)}")


def reference_itm_unmasked(theirs: nn.Module, pixel_values: torch.Tensor,
                           input_ids: torch.Tensor) -> torch.Tensor:
    """ITM logits (B, 2): ``BlipForImageTextRetrieval.forward`` with ``use_itm_head=True``, line
    for line, its all-ones attention masks left out. transformers' mask helpers read mask values
    (``padding_mask.all()``), which the meta device has not; with every token real the masks
    change no output and no FLOP (the tests check both at tiny size)."""
    image = theirs.vision_model(pixel_values=pixel_values).last_hidden_state  # (B, Nv, Dv)
    grounded = theirs.text_encoder(input_ids=input_ids, encoder_hidden_states=image)
    return theirs.itm_head(grounded.last_hidden_state[:, 0])


def reference_itc_unmasked(theirs: nn.Module, pixel_values: torch.Tensor,
                           input_ids: torch.Tensor) -> torch.Tensor:
    """ITC similarities (B, B): the same forward with ``use_itm_head=False``, masks left out."""
    image = theirs.vision_model(pixel_values=pixel_values).last_hidden_state
    text = theirs.text_encoder(input_ids=input_ids).last_hidden_state  # (B, Nt, D)
    image_feat = F.normalize(theirs.vision_proj(image[:, 0]), dim=-1)
    text_feat = F.normalize(theirs.text_proj(text[:, 0]), dim=-1)
    return image_feat @ text_feat.t()
