"""Our parameter names against the reference library's (transformers' ViLT, CLIP, LXMERT,
VisualBERT, BLIP): the one mapping that the parity checks (``benchmarks/parity``,
``tests/test_parity*.py``) and ``--weights`` (``architectures.weights``) both use.

``NAMINGS[family].source(our_name)`` says which reference tensor a parameter of ours is (and,
for BLIP's fused vision ``qkv``, which third of it); ``reference_family(preset)`` says which
family implements a preset, refusing presets no reference expresses.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from feature_extractors import PrecomputedRegionsConfig, RegionFeaturesConfig

from .fusion import AlignFuseConfig, DualEncoderConfig, SingleStreamConfig, TwoStreamConfig
from .preset import Preset


@dataclass(frozen=True)
class Source:
    """A reference tensor: its name and, for a fused tensor, which of three row blocks."""

    name: str
    chunk: int | None = None


@dataclass(frozen=True)
class ReferenceNaming:
    """One family's naming. ``reference``: the transformers class whose names these are;
    ``base_prefix``: where that family's task classes hold it (``vilt.`` in
    ``ViltForQuestionAnswering``); ``task_heads``: those classes' head prefixes, ignored when
    a preset has no counterpart; ``kept``: our parameters with no reference counterpart (kept at
    their initialisation); ``ignored``: reference parameters with none of ours."""

    family: str
    reference: str
    model_type: str
    source: Callable[[str], Source]
    base_prefix: str = ""
    task_heads: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()
    note: str = ""


def reference_family(p: Preset) -> str:
    """Which reference implements the preset: vilt, clip, lxmert, visualbert or blip."""
    if isinstance(p.visual, RegionFeaturesConfig):
        base = p.name.removesuffix("-tiny")
        twin = f"{base}-precomputed" + ("-tiny" if base != p.name else "")
        raise ValueError(f"{p.name} runs a detector, which no reference has; compare "
                         f"{twin} instead")
    if isinstance(p.visual, PrecomputedRegionsConfig):
        if isinstance(p.fusion, TwoStreamConfig):
            return "lxmert"
        if isinstance(p.fusion, SingleStreamConfig):
            return "visualbert"
    elif isinstance(p.fusion, SingleStreamConfig):
        return "vilt"
    elif isinstance(p.fusion, DualEncoderConfig):
        return "clip"
    elif isinstance(p.fusion, AlignFuseConfig):
        if p.fusion.layout == "shared":
            return "blip"
        raise ValueError("ALBEF has no installable implementation; "
                         "tests/test_align_fuse.py checks it against its official constructors")
    raise ValueError(f"no reference implementation for {p.name}")


def _renamer(rules: list[tuple[str, str]], reference: str) -> Callable[[str], Source]:
    """Regex renames, first match wins."""
    compiled = [(re.compile(a), b) for a, b in rules]

    def source(ours: str) -> Source:
        for pattern, repl in compiled:
            if pattern.search(ours):
                return Source(pattern.sub(repl, ours))
        raise KeyError(f"no {reference} counterpart for {ours}")
    return source


def _blocks(ours: str, theirs: str, table: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(rf"^{ours}\.(\d+)\.{a}", rf"{theirs}.\1.{b}") for a, b in table]


_VILT_BLOCK = [
    (r"norm1\.", "layernorm_before."),
    (r"attn\.(query|key|value)\.", r"attention.attention.\2."),  # \1: the block index
    (r"attn\.out\.", "attention.output.dense."),
    (r"norm2\.", "layernorm_after."),
    (r"mlp\.fc1\.", "intermediate.dense."),
    (r"mlp\.fc2\.", "output.dense."),
]
_CLIP_BLOCK = [
    (r"norm1\.", "layer_norm1."),
    (r"attn\.query\.", "self_attn.q_proj."),
    (r"attn\.key\.", "self_attn.k_proj."),
    (r"attn\.value\.", "self_attn.v_proj."),
    (r"attn\.out\.", "self_attn.out_proj."),
    (r"norm2\.", "layer_norm2."),
    (r"mlp\.", "mlp."),
]
# post-LN BERT layers against our pre-LN blocks: the same tensors, paired in order
_BERT_BLOCK = [
    (r"attn\.(query|key|value)\.", r"attention.self.\2."),
    (r"attn\.out\.", "attention.output.dense."),
    (r"norm1\.", "attention.output.LayerNorm."),
    (r"mlp\.fc1\.", "intermediate.dense."),
    (r"mlp\.fc2\.", "output.dense."),
    (r"norm2\.", "output.LayerNorm."),
]

VILT_RULES = [
    (r"^visual\.proj\.", "embeddings.patch_embeddings.projection."),
    (r"^visual\.cls_token$", "embeddings.cls_token"),
    (r"^visual\.pos_embed$", "embeddings.position_embeddings"),
    (r"^text\.word\.", "embeddings.text_embeddings.word_embeddings."),
    (r"^text\.position\.", "embeddings.text_embeddings.position_embeddings."),
    (r"^text\.token_type\.", "embeddings.text_embeddings.token_type_embeddings."),
    (r"^text\.norm\.", "embeddings.text_embeddings.LayerNorm."),
    (r"^fusion\.modality\.", "embeddings.token_type_embeddings."),
    *_blocks(r"fusion\.encoder\.blocks", "encoder.layer", _VILT_BLOCK),
    (r"^fusion\.norm\.", "layernorm."),
    (r"^fusion\.pooler\.", "pooler.dense."),
    (r"^head\.mlp\.", "classifier."),  # --head: the VQA classifier of ViltForQuestionAnswering
]
CLIP_RULES = [
    (r"^visual\.proj\.", "vision_model.embeddings.patch_embedding."),
    (r"^visual\.cls_token$", "vision_model.embeddings.class_embedding"),
    (r"^visual\.pos_embed$", "vision_model.embeddings.position_embedding.weight"),
    (r"^fusion\.vision_tower\.norm_pre\.", "vision_model.pre_layrnorm."),
    *_blocks(r"fusion\.vision_tower\.encoder\.blocks", "vision_model.encoder.layers",
             _CLIP_BLOCK),
    (r"^fusion\.vision_tower\.norm_post\.", "vision_model.post_layernorm."),
    (r"^text\.token\.", "text_model.embeddings.token_embedding."),
    (r"^text\.position\.", "text_model.embeddings.position_embedding."),
    *_blocks(r"fusion\.text_tower\.encoder\.blocks", "text_model.encoder.layers", _CLIP_BLOCK),
    (r"^fusion\.text_tower\.norm\.", "text_model.final_layer_norm."),
    (r"^fusion\.interaction\.vision_proj\.", "visual_projection."),
    (r"^fusion\.interaction\.text_proj\.", "text_projection."),
    (r"^fusion\.interaction\.logit_scale$", "logit_scale"),
]
VISUALBERT_RULES = [
    (r"^text\.word\.", "embeddings.word_embeddings."),
    (r"^text\.position\.", "embeddings.position_embeddings."),
    (r"^text\.token_type\.", "embeddings.token_type_embeddings."),
    (r"^text\.norm\.", "embeddings.LayerNorm."),
    (r"^visual\.embed\.feature\.", "embeddings.visual_projection."),
    # their one LayerNorm normalises text and regions together; ours normalise each apart
    (r"^visual\.embed\.norm\.", "embeddings.LayerNorm."),
    (r"^fusion\.modality\.", "embeddings.visual_token_type_embeddings."),
    *_blocks(r"fusion\.encoder\.blocks", "encoder.layer", _BERT_BLOCK),
    (r"^fusion\.pooler\.", "pooler.dense."),
]

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
    """Our parameter name -> ``LxmertModel``'s; the finest level of the parity pairing for
    LXMERT. Raises KeyError for a name with no counterpart."""
    layer = re.match(r"fusion\.\w+\.(?:layers|blocks)\.(\d+)\.", ours)
    index = layer.group(1) if layer else ""
    for a, b in _LXMERT_RULES:
        a, b = a.format(i=index), b.format(i=index)
        if ours.startswith(a):
            return b + ours[len(a):]
    raise KeyError(f"no LxmertModel counterpart for {ours}")


_VIT = "vision_model.encoder.layers.{i}."
_TEXT = "text_encoder.encoder.layer.{i}."
# ours -> theirs parameter-name prefixes, first match wins; {i} is the layer index
_BLIP_RULES = (
    ("visual.proj.", "vision_model.embeddings.patch_embedding."),
    ("visual.cls_token", "vision_model.embeddings.class_embedding"),
    ("visual.pos_embed", "vision_model.embeddings.position_embedding"),
    ("fusion.vision_tower.encoder.blocks.{i}.norm1.", _VIT + "layer_norm1."),
    ("fusion.vision_tower.encoder.blocks.{i}.attn.out.", _VIT + "self_attn.projection."),
    ("fusion.vision_tower.encoder.blocks.{i}.norm2.", _VIT + "layer_norm2."),
    ("fusion.vision_tower.encoder.blocks.{i}.mlp.", _VIT + "mlp."),
    ("fusion.vision_tower.norm.", "vision_model.post_layernorm."),
    ("text.word.", "text_encoder.embeddings.word_embeddings."),
    ("text.position.", "text_encoder.embeddings.position_embeddings."),
    ("text.norm.", "text_encoder.embeddings.LayerNorm."),
    ("fusion.text_layers.{i}.attention.attention.out.", _TEXT + "attention.output.dense."),
    ("fusion.text_layers.{i}.attention.attention.", _TEXT + "attention.self."),
    ("fusion.text_layers.{i}.attention.norm.", _TEXT + "attention.output.LayerNorm."),
    ("fusion.text_layers.{i}.cross.attention.out.", _TEXT + "crossattention.output.dense."),
    ("fusion.text_layers.{i}.cross.attention.", _TEXT + "crossattention.self."),
    ("fusion.text_layers.{i}.cross.norm.", _TEXT + "crossattention.output.LayerNorm."),
    ("fusion.text_layers.{i}.ffn.mlp.fc1.", _TEXT + "intermediate.dense."),
    ("fusion.text_layers.{i}.ffn.mlp.fc2.", _TEXT + "output.dense."),
    ("fusion.text_layers.{i}.ffn.norm.", _TEXT + "output.LayerNorm."),
    ("fusion.itc_head.", ""),
    ("fusion.itm_head.", "itm_head."),
)
_QKV = re.compile(r"fusion\.vision_tower\.encoder\.blocks\.(\d+)\.attn\.(query|key|value)\.")


def blip_param_name(ours: str) -> tuple[str, int | None]:
    """Our parameter name -> (``BlipForImageTextRetrieval``'s name, chunk): ``chunk`` is 0, 1 or
    2 for our vision query, key and value (rows of their fused ``qkv``), else None. Raises
    KeyError for a name with no counterpart."""
    qkv = _QKV.match(ours)
    if qkv:
        chunk = ("query", "key", "value").index(qkv.group(2))
        return _VIT.format(i=qkv.group(1)) + "self_attn.qkv." + ours[qkv.end():], chunk
    layer = re.search(r"\.(?:blocks|text_layers)\.(\d+)\.", ours)
    index = layer.group(1) if layer else ""
    for a, b in _BLIP_RULES:
        a, b = a.format(i=index), b.format(i=index)
        if ours.startswith(a):
            return b + ours[len(a):], None
    raise KeyError(f"no BlipForImageTextRetrieval counterpart for {ours}")


NAMINGS: dict[str, ReferenceNaming] = {
    "vilt": ReferenceNaming(
        "vilt", "ViltModel", "vilt", _renamer(VILT_RULES, "ViltModel"), base_prefix="vilt.",
        task_heads=("classifier.", "mlm_score.", "rank_output.")),
    "clip": ReferenceNaming("clip", "CLIPModel", "clip", _renamer(CLIP_RULES, "CLIPModel")),
    "lxmert": ReferenceNaming(
        "lxmert", "LxmertModel", "lxmert", lambda n: Source(lxmert_param_name(n)),
        base_prefix="lxmert.", task_heads=("cls.", "obj_predict_head.", "answer_head.")),
    "visualbert": ReferenceNaming(
        "visualbert", "VisualBertModel", "visual_bert",
        _renamer(VISUALBERT_RULES, "VisualBertModel"), base_prefix="visual_bert.",
        task_heads=("cls.", "attention."),
        kept=("fusion.norm.weight", "fusion.norm.bias"),
        ignored=("embeddings.visual_position_embeddings.weight",),
        note="VisualBERT is post-LN and ours pre-LN: its tensors load pair by pair, but the "
             "model does not compute VisualBERT's function"),
    "blip": ReferenceNaming("blip", "BlipForImageTextRetrieval", "blip",
                            lambda n: Source(*blip_param_name(n))),
}
