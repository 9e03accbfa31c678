"""The built-in stage maps: transformers' ViLT, CLIP, SigLIP, BLIP (retrieval), LXMERT,
VisualBERT and BridgeTower in vlbench's stage vocabulary, with random inputs of each one's form.

Names follow the native presets (``visual``, ``text``, ``fusion`` and its children), so a run of
``hf-vilt`` beside ``vilt-b32`` lines up stage by stage. Where a library module does the work of
two stages, the map says which stage gets it and why. Written against transformers 5.24 (5.17
has the same module names); a renamed module fails when the model is built, naming the version.
"""

from __future__ import annotations

from typing import Any

import torch

from feature_extractors import StageKind, Substage

from .stage_map import InputShape, StageMap, prefixed, register_stage_map

K = StageKind


def _set(kind: StageKind, *modules: str) -> Substage:
    return Substage(kind, modules)


def token_ids(config: Any, shape: InputShape, gen: torch.Generator, *, offset: int = 0
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids (B, L) avoiding the pad id, the last one the end-of-text id where the config
    has one in its vocabulary (CLIP pools there), else the highest id; an all-ones mask.
    ``offset``: positions the model reserves (RoBERTa starts at pad + 1)."""
    limit = config.max_position_embeddings - offset
    if shape.text_len > limit:
        raise ValueError(f"text length {shape.text_len} exceeds what {type(config).__name__} "
                         f"allows ({limit} positions)")
    vocab = config.vocab_size
    ids = torch.randint(1, vocab - 1, (shape.batch, shape.text_len), generator=gen)
    pad = getattr(config, "pad_token_id", None)
    if isinstance(pad, int):
        ids[ids == pad] = pad + 1
    eos = getattr(config, "eos_token_id", None)
    ids[:, -1] = eos if isinstance(eos, int) and 0 <= eos < vocab else vocab - 1
    return ids, torch.ones(shape.batch, shape.text_len, dtype=torch.long)


def pixels(shape: InputShape, gen: torch.Generator, channels: int = 3) -> torch.Tensor:
    h, w = shape.image_size
    return torch.randn(shape.batch, channels, h, w, generator=gen)


def _resize(vision: Any, shape: InputShape) -> dict[str, Any]:
    """ViT-style towers refuse another size unless asked to interpolate their positions."""
    size = vision.image_size
    return {} if tuple(shape.image_size) == (size, size) else {"interpolate_pos_encoding": True}


def _vit_tokens(vision: Any, shape: InputShape, cls: int = 1) -> int:
    h, w = shape.image_size
    return (h // vision.patch_size) * (w // vision.patch_size) + cls


# --------------------------------------------------------------------------- ViLT


def vilt_inputs(config: Any, shape: InputShape, gen: torch.Generator) -> dict[str, Any]:
    ids, mask = token_ids(config, shape, gen)
    h, w = shape.image_size
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels(shape, gen),
            "pixel_mask": torch.ones(shape.batch, h, w, dtype=torch.long)}


def vilt_tokens(config: Any, shape: InputShape) -> int:
    n = _vit_tokens(config, shape, cls=0)
    cap = config.max_image_length
    return (n if cap is None or cap < 0 else min(n, cap)) + 1


VILT = StageMap(
    stages={
        # the visual work is the method ViltEmbeddings.visual_embed (patch projection, position
        # interpolation per image, patch sampling), not patch_embeddings (a bare conv)
        "visual": _set(K.PATCH, "embeddings.visual_embed"),
        "text": _set(K.TEXT, "embeddings.text_embeddings"),
        "fusion": _set(K.INTERACTION, "embeddings.token_type_embeddings", "encoder", "layernorm",
                       "pooler"),
        "fusion.encoder": _set(K.INTERACTION, "encoder"),
    },
    inputs=vilt_inputs,
    image_tokens=vilt_tokens,
    methods={"embeddings.visual_embed": ("patch_embeddings", "cls_token", "position_embeddings")},
    # .item(), nonzero and multinomial: no meta device, no CUDA graphs
    host_sync=frozenset({"visual"}),
    note="visual_embed synchronises with the host (.item(), nonzero, multinomial)",
)
register_stage_map("ViltModel", VILT)
register_stage_map("ViltForQuestionAnswering", prefixed(
    VILT, "vilt.", {"head": _set(K.HEAD, "classifier")}))


# --------------------------------------------------------------------------- CLIP and SigLIP


def clip_inputs(config: Any, shape: InputShape, gen: torch.Generator) -> dict[str, Any]:
    ids, mask = token_ids(config.text_config, shape, gen)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels(shape, gen),
            **_resize(config.vision_config, shape)}


def siglip_inputs(config: Any, shape: InputShape, gen: torch.Generator) -> dict[str, Any]:
    """No attention mask: SigLIP's processor pads to the maximum length and passes none."""
    ids, _ = token_ids(config.text_config, shape, gen)
    return {"input_ids": ids, "pixel_values": pixels(shape, gen),
            **_resize(config.vision_config, shape)}


register_stage_map("CLIPModel", StageMap(
    stages={
        "visual": _set(K.PATCH, "vision_model.embeddings"),
        "text": _set(K.TEXT, "text_model.embeddings"),
        "fusion": _set(K.INTERACTION, "vision_model.pre_layrnorm", "vision_model.encoder",
                       "vision_model.post_layernorm", "text_model.encoder",
                       "text_model.final_layer_norm", "visual_projection", "text_projection"),
        "fusion.vision_tower": _set(K.SINGLE_MODALITY, "vision_model.pre_layrnorm",
                                    "vision_model.encoder", "vision_model.post_layernorm"),
        "fusion.text_tower": _set(K.SINGLE_MODALITY, "text_model.encoder",
                                  "text_model.final_layer_norm"),
        # a dual encoder's projections count as interaction (as the native dual encoder's)
        "fusion.interaction": _set(K.INTERACTION, "visual_projection", "text_projection"),
    },
    inputs=clip_inputs,
    image_tokens=lambda c, s: _vit_tokens(c.vision_config, s),
))

register_stage_map("SiglipModel", StageMap(
    stages={
        "visual": _set(K.PATCH, "vision_model.embeddings"),
        "text": _set(K.TEXT, "text_model.embeddings"),
        "fusion": _set(K.INTERACTION, "vision_model.encoder", "vision_model.post_layernorm",
                       "vision_model.head", "text_model.encoder",
                       "text_model.final_layer_norm", "text_model.head"),
        "fusion.vision_tower": _set(K.SINGLE_MODALITY, "vision_model.encoder",
                                    "vision_model.post_layernorm"),
        "fusion.text_tower": _set(K.SINGLE_MODALITY, "text_model.encoder",
                                  "text_model.final_layer_norm"),
        # the towers' pooling heads (attention pooling; a linear map) play CLIP's projections
        "fusion.interaction": _set(K.INTERACTION, "vision_model.head", "text_model.head"),
    },
    inputs=siglip_inputs,
    image_tokens=lambda c, s: _vit_tokens(c.vision_config, s, cls=0),
))


# --------------------------------------------------------------------------- BLIP


def blip_inputs(config: Any, shape: InputShape, gen: torch.Generator) -> dict[str, Any]:
    ids, mask = token_ids(config.text_config, shape, gen)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels(shape, gen),
            **_resize(config.vision_config, shape)}


register_stage_map("BlipForImageTextRetrieval", StageMap(
    stages={  # the ITM path (use_itm_head=True, the default), as the native blip-base forward
        "visual": _set(K.PATCH, "vision_model.embeddings"),
        "text": _set(K.TEXT, "text_encoder.embeddings"),
        "fusion": _set(K.INTERACTION, "vision_model.encoder", "vision_model.post_layernorm",
                       "text_encoder.encoder", "itm_head"),
        "fusion.vision_tower": _set(K.SINGLE_MODALITY, "vision_model.encoder",
                                    "vision_model.post_layernorm"),
        # every text layer cross-attends to the image: the fusion layers
        "fusion.fusion_layers": _set(K.INTERACTION, "text_encoder.encoder"),
        "fusion.itm_head": _set(K.HEAD, "itm_head"),
    },
    inputs=blip_inputs,
    image_tokens=lambda c, s: _vit_tokens(c.vision_config, s),
))


# --------------------------------------------------------------------------- region features


def boxes(shape: InputShape, gen: torch.Generator) -> torch.Tensor:
    """(B, N, 4) boxes x1 y1 x2 y2, normalised to the image (LXMERT's ``visual_pos``)."""
    corner = torch.rand(shape.batch, shape.regions, 2, generator=gen) * 0.5
    size = torch.rand(shape.batch, shape.regions, 2, generator=gen) * 0.5
    return torch.cat([corner, corner + size], dim=-1)


def lxmert_inputs(config: Any, shape: InputShape, gen: torch.Generator) -> dict[str, Any]:
    ids, mask = token_ids(config, shape, gen)
    feats = torch.rand(shape.batch, shape.regions, config.visual_feat_dim, generator=gen)
    return {"input_ids": ids, "attention_mask": mask, "visual_feats": feats,
            "visual_pos": boxes(shape, gen),
            "visual_attention_mask": torch.ones(shape.batch, shape.regions, dtype=torch.long)}


def visualbert_inputs(config: Any, shape: InputShape, gen: torch.Generator) -> dict[str, Any]:
    """Every visual token of type 1, as VisualBERT's authors feed it."""
    ids, mask = token_ids(config, shape, gen)
    feats = torch.rand(shape.batch, shape.regions, config.visual_embedding_dim, generator=gen)
    ones = torch.ones(shape.batch, shape.regions, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "visual_embeds": feats,
            "visual_attention_mask": ones, "visual_token_type_ids": ones}


def _regions(config: Any, shape: InputShape) -> int:
    return shape.regions


register_stage_map("LxmertModel", StageMap(
    stages={
        # the region feature encoder sits inside LXMERT's encoder; it is the visual embedding
        "visual": _set(K.PRECOMPUTED, "encoder.visn_fc"),
        "text": _set(K.TEXT, "embeddings"),
        "fusion": _set(K.INTERACTION, "encoder.layer", "encoder.r_layers", "encoder.x_layers",
                       "pooler"),
        "fusion.text_stream": _set(K.SINGLE_MODALITY, "encoder.layer"),
        "fusion.vision_stream": _set(K.SINGLE_MODALITY, "encoder.r_layers"),
        "fusion.co_attention": _set(K.INTERACTION, "encoder.x_layers"),
        "fusion.pooler": _set(K.INTERACTION, "pooler"),
    },
    inputs=lxmert_inputs,
    image_tokens=_regions,
))

register_stage_map("VisualBertModel", StageMap(
    stages={
        # one embeddings module embeds both: its visual and text parts are named sets; its
        # LayerNorm normalises [text; regions] together and is counted with the text (as the
        # parity pairing pairs it with the native text LayerNorm)
        "visual": _set(K.PRECOMPUTED, "embeddings.visual_projection",
                       "embeddings.visual_token_type_embeddings",
                       "embeddings.visual_position_embeddings"),
        "text": _set(K.TEXT, "embeddings.word_embeddings", "embeddings.position_embeddings",
                     "embeddings.token_type_embeddings", "embeddings.LayerNorm"),
        "fusion": _set(K.INTERACTION, "encoder", "pooler"),
        "fusion.encoder": _set(K.INTERACTION, "encoder"),
    },
    inputs=visualbert_inputs,
    image_tokens=_regions,
))


# --------------------------------------------------------------------------- BridgeTower


def bridgetower_inputs(config: Any, shape: InputShape, gen: torch.Generator) -> dict[str, Any]:
    text = config.text_config
    ids, mask = token_ids(text, shape, gen, offset=text.pad_token_id + 1)
    h, w = shape.image_size
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels(shape, gen),
            "pixel_mask": torch.ones(shape.batch, h, w, dtype=torch.long),
            **_resize(config.vision_config, shape)}


_BT_VISION = "vision_model.visual"
_BT_BRIDGE = (f"{_BT_VISION}.ln_post", "cross_modal_text_transform",
              "cross_modal_image_transform", "token_type_embeddings",
              "cross_modal_text_layernorm", "cross_modal_image_layernorm",
              "cross_modal_text_layers", "cross_modal_image_layers",
              "cross_modal_text_link_tower", "cross_modal_image_link_tower")
_BT_POOLERS = ("cross_modal_text_pooler", "cross_modal_image_pooler")

register_stage_map("BridgeTowerModel", StageMap(
    # BridgeTowerModel.forward calls its text and vision layers one by one: named sets of layers
    stages={
        "visual": _set(K.PATCH, f"{_BT_VISION}.embeddings", f"{_BT_VISION}.ln_pre"),
        "text": _set(K.TEXT, "text_model.embeddings"),
        "fusion": _set(K.INTERACTION, "text_model.encoder.layer",
                       f"{_BT_VISION}.transformer.resblocks", *_BT_BRIDGE, *_BT_POOLERS),
        "fusion.text_tower": _set(K.SINGLE_MODALITY, "text_model.encoder.layer"),
        "fusion.vision_tower": _set(K.SINGLE_MODALITY, f"{_BT_VISION}.transformer.resblocks"),
        # the bridges (each uni-modal layer's output normalised, projected, linked in) and the
        # cross-modal layers
        "fusion.co_attention": _set(K.INTERACTION, *_BT_BRIDGE),
        "fusion.pooler": _set(K.INTERACTION, *_BT_POOLERS),
    },
    inputs=bridgetower_inputs,
    image_tokens=lambda c, s: _vit_tokens(c.vision_config, s),
))
