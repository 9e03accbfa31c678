"""Published models as frozen configs, each with a ``-tiny`` twin for tests.

A preset pins its canonical input (image size, text length) so every result says what was
measured. Family functions take the sizes, so a published preset and its twin differ only in
numbers, never in code.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from feature_extractors import (
    TINY_REGIONS,
    BertTextConfig,
    ClipTextConfig,
    PatchProjectionConfig,
    PrecomputedRegionsConfig,
    RegionFeaturesConfig,
    ResNetGridConfig,
)

from .fusion import DualEncoderConfig, SingleStreamConfig, TwoStreamConfig
from .fusion.two_stream import TINY_VILBERT
from .heads import VQAHeadConfig
from .preset import PRESETS, Preset, register_pair


def _vilt(name: str, *, width: int, depth: int, heads: int, mlp: int, patch: int,
          pos_grid: tuple[int, int], vocab: int, text_len: int, image_size: tuple[int, int],
          head_hidden: int, answers: int, description: str) -> Preset:
    return Preset(
        name=name,
        description=description,
        visual=PatchProjectionConfig(width=width, patch_size=patch, pos_grid=pos_grid, bias=True),
        text=BertTextConfig(vocab_size=vocab, width=width, max_positions=text_len),
        fusion=SingleStreamConfig(width=width, depth=depth, heads=heads, mlp_dim=mlp),
        image_size=image_size,
        text_len=text_len,
        head=VQAHeadConfig(hidden=head_hidden, answers=answers),
        paper_tokens="200+40" if name == "vilt-b32" else None,
        source="Kim et al. 2021 (ViLT), arXiv 2102.03334",
    )


def _clip(name: str, *, patch: int, image: int, vision: tuple[int, int, int, int],
          text: tuple[int, int, int, int], embed_dim: int, vocab: int, context: int,
          description: str) -> Preset:
    vw, vd, vh, vm = vision
    tw, td, th, tm = text
    grid = image // patch
    return Preset(
        name=name,
        description=description,
        visual=PatchProjectionConfig(width=vw, patch_size=patch, pos_grid=(grid, grid), bias=False),
        text=ClipTextConfig(vocab_size=vocab, width=tw, max_positions=context),
        fusion=DualEncoderConfig(
            embed_dim=embed_dim, vision_width=vw, vision_depth=vd, vision_heads=vh,
            vision_mlp_dim=vm, text_width=tw, text_depth=td, text_heads=th, text_mlp_dim=tm,
        ),
        image_size=(image, image),
        text_len=context,
        source="Radford et al. 2021 (CLIP), arXiv 2103.00020",
    )


register_pair(
    _vilt("vilt-b32", width=768, depth=12, heads=12, mlp=3072, patch=32, pos_grid=(12, 12),
          vocab=30522, text_len=40, image_size=(384, 640), head_hidden=1536, answers=3129,
          description="ViLT-B/32: patch projection + single-stream ViT-B, 240 patches + 40 text"),
    _vilt("vilt-b32-tiny", width=64, depth=2, heads=2, mlp=128, patch=32, pos_grid=(2, 2),
          vocab=1000, text_len=8, image_size=(64, 96), head_hidden=128, answers=10,
          description="ViLT-B/32 twin for tests: 2 layers, width 64"),
)

for _patch in (32, 16):
    register_pair(
        _clip(f"clip-vit-b{_patch}", patch=_patch, image=224, vision=(768, 12, 12, 3072),
              text=(512, 12, 8, 2048), embed_dim=512, vocab=49408, context=77,
              description=f"CLIP ViT-B/{_patch}: dual encoder, 224x224 + 77 text tokens"),
        _clip(f"clip-vit-b{_patch}-tiny", patch=_patch // 2, image=64, vision=(64, 2, 2, 128),
              text=(32, 2, 2, 64), embed_dim=32, vocab=1000, context=16,
              description=f"CLIP ViT-B/{_patch} twin for tests: 2 layers per tower"),
    )


#: A published BERT-base / BERT-large single-stream transformer: (width, depth, heads, mlp).
BERT_BASE = (768, 12, 12, 3072)
TINY_BERT = (64, 2, 2, 128)


def _bert_single_stream(name: str, *, visual: Any, bert: tuple[int, int, int, int], vocab: int,
                        max_positions: int, text_len: int, image_size: tuple[int, int],
                        description: str, paper_tokens: str | None, source: str) -> Preset:
    width, depth, heads, mlp = bert
    return Preset(
        name=name,
        description=description,
        visual=visual,
        text=BertTextConfig(vocab_size=vocab, width=width, max_positions=max_positions),
        fusion=SingleStreamConfig(width=width, depth=depth, heads=heads, mlp_dim=mlp),
        image_size=image_size,
        text_len=text_len,
        paper_tokens=paper_tokens,
        source=source,
    )


# "800x1333" is a resize bound (shorter side 800, longer at most 1333). The tensor timed is the
# bound itself, 800x1333 (aspect 5:3, the same as ViLT's 384x640), unpadded for a C4 detector
# (detectron2 pads only FPN inputs, to 32: VisualBERT's X152-FPN sees 800x1344).
register_pair(
    _bert_single_stream(
        "uniter-base", visual=RegionFeaturesConfig(location_dims=7, width=768), bert=BERT_BASE,
        vocab=28996, max_positions=512, text_len=60, image_size=(800, 1333),
        paper_tokens="36+60", source="Chen et al. 2020 (UNITER), arXiv 1909.11740",
        description="UNITER-Base: R101-C4 bottom-up-attention regions (36) + BERT-base "
                    "single stream, 60 text tokens"),
    _bert_single_stream(
        "uniter-base-tiny", visual=TINY_REGIONS, bert=TINY_BERT, vocab=1000, max_positions=16,
        text_len=8, image_size=(128, 160), paper_tokens=None, source="",
        description="UNITER-Base twin for tests: toy detector, 2 layers"),
)
register_pair(
    _bert_single_stream(
        "pixelbert-r50", visual=ResNetGridConfig(backbone="r50", pool=2), bert=BERT_BASE,
        vocab=30522, max_positions=512, text_len=40, image_size=(800, 1333),
        paper_tokens="260+?", source="Huang et al. 2020 (Pixel-BERT), arXiv 2004.00849",
        description="Pixel-BERT-R50: ResNet-50 grid (2x2 max pool, 12x21 = 252 tokens) + "
                    "BERT-base; text length unpublished, 40 as ViLT"),
    _bert_single_stream(
        "pixelbert-r50-tiny", visual=ResNetGridConfig(backbone="tiny", pool=2), bert=TINY_BERT,
        vocab=1000, max_positions=16, text_len=8, image_size=(128, 160), paper_tokens=None,
        source="", description="Pixel-BERT-R50 twin for tests: narrow trunk, 2 layers"),
)


register_pair(
    _bert_single_stream(
        "uniter-large", visual=RegionFeaturesConfig(location_dims=7, width=1024),
        bert=(1024, 24, 16, 4096), vocab=28996, max_positions=512, text_len=60,
        image_size=(800, 1333), paper_tokens=None,
        source="Chen et al. 2020 (UNITER), arXiv 1909.11740",
        description="UNITER-Large: R101-C4 regions (36) + BERT-large single stream, 60 text"),
    _bert_single_stream(
        "uniter-large-tiny", visual=replace(TINY_REGIONS, width=96), bert=(96, 3, 3, 192),
        vocab=1000, max_positions=16, text_len=8, image_size=(128, 160), paper_tokens=None,
        source="", description="UNITER-Large twin for tests: toy detector, 3 layers"),
)
# VisualBERT's detector was X152-FPN (the ViLT paper's Table 7); its region embedding is a
# projection of the 2048-d feature, no box location.
register_pair(
    _bert_single_stream(
        "visualbert",
        visual=RegionFeaturesConfig(backbone="x152-32x8d", head="fpn", location_dims=0,
                                    embedding="visualbert", width=768),
        bert=BERT_BASE, vocab=30522, max_positions=512, text_len=128, image_size=(800, 1333),
        paper_tokens="36+128", source="Li et al. 2019 (VisualBERT), arXiv 1908.03557",
        description="VisualBERT: X152-FPN regions (36) + BERT-base single stream, 128 text"),
    _bert_single_stream(
        "visualbert-tiny",
        visual=replace(TINY_REGIONS, head="fpn", location_dims=0, embedding="visualbert"),
        bert=TINY_BERT, vocab=1000, max_positions=16, text_len=8, image_size=(128, 160),
        paper_tokens=None, source="", description="VisualBERT twin for tests: toy FPN detector"),
)
register_pair(
    _bert_single_stream(
        "pixelbert-x152", visual=ResNetGridConfig(backbone="x152-32x8d", pool=2), bert=BERT_BASE,
        vocab=30522, max_positions=512, text_len=40, image_size=(600, 1000),
        paper_tokens="146+?", source="Huang et al. 2020 (Pixel-BERT), arXiv 2004.00849",
        description="Pixel-BERT-X152: ResNeXt-152 32x8d grid at 600x1000 (9x16 = 144 tokens) "
                    "+ BERT-base; x152-32x4d is the width the ViLT paper's Table 6 fits"),
    _bert_single_stream(
        "pixelbert-x152-tiny", visual=ResNetGridConfig(backbone="tiny", pool=2),
        bert=TINY_BERT, vocab=1000, max_positions=16, text_len=8, image_size=(128, 160),
        paper_tokens=None, source="", description="Pixel-BERT-X152 twin for tests"),
)


def _two_stream(name: str, *, visual: Any, fusion: TwoStreamConfig, vocab: int, text_len: int,
                image_size: tuple[int, int], description: str, paper_tokens: str | None,
                source: str) -> Preset:
    return Preset(
        name=name,
        description=description,
        visual=visual,
        text=BertTextConfig(vocab_size=vocab, width=fusion.text_width,
                            max_positions=max(text_len, 16 if name.endswith("-tiny") else 512)),
        fusion=fusion,
        image_size=image_size,
        text_len=text_len,
        paper_tokens=paper_tokens,
        source=source,
    )


#: ViLBERT-base: BERT-base text stream, 6 visual layers at 1024, co-attention after text layers
#: 6..11 and visual layers 0..5 (TwoStreamConfig's defaults)
VILBERT = TwoStreamConfig()
#: LXMERT: 9 language, 5 object-relationship, 5 cross-modality layers, one cross-attention
#: module shared by both directions
LXMERT = TwoStreamConfig(
    text_width=768, text_depth=9, text_heads=12, text_mlp_dim=3072, vision_width=768,
    vision_depth=5, vision_heads=12, vision_mlp_dim=3072, cross_width=768, cross_heads=12,
    text_layers_before_cross=(9,) * 5, vision_layers_before_cross=(5,) * 5,
    shared_cross_weights=True, cross_self_attention=True, pooled="text")
TINY_LXMERT = replace(
    LXMERT, text_width=64, text_depth=2, text_heads=2, text_mlp_dim=128, vision_width=64,
    vision_depth=2, vision_heads=2, vision_mlp_dim=128, cross_width=64, cross_heads=2,
    text_layers_before_cross=(2, 2), vision_layers_before_cross=(2, 2))

register_pair(
    _two_stream(
        "vilbert-base",
        visual=RegionFeaturesConfig(location_dims=5, width=1024, embedding="vilbert",
                                    global_token=True),
        fusion=VILBERT, vocab=30522, text_len=36, image_size=(800, 1333), paper_tokens="36+36",
        source="Lu et al. 2019 (ViLBERT), arXiv 1908.02265",
        description="ViLBERT-base: R101-C4 regions (36 + a whole-image token) + two streams "
                    "with 6 co-attention blocks, 36 text tokens"),
    _two_stream(
        "vilbert-base-tiny",
        visual=replace(TINY_REGIONS, location_dims=5, width=96, embedding="vilbert",
                       global_token=True),
        fusion=TINY_VILBERT, vocab=1000, text_len=8, image_size=(128, 160), paper_tokens=None,
        source="", description="ViLBERT-base twin for tests: toy detector, 2 co-attention"),
)
register_pair(
    _two_stream(
        "lxmert", visual=RegionFeaturesConfig(location_dims=4, width=768, embedding="lxmert"),
        fusion=LXMERT, vocab=30522, text_len=20, image_size=(800, 1333), paper_tokens="36+20",
        source="Tan & Bansal 2019 (LXMERT), arXiv 1908.07490",
        description="LXMERT: R101-C4 regions (36) + 9 language, 5 object, 5 cross layers, "
                    "20 text tokens"),
    _two_stream(
        "lxmert-tiny", visual=replace(TINY_REGIONS, location_dims=4, embedding="lxmert"),
        fusion=TINY_LXMERT, vocab=1000, text_len=8, image_size=(128, 160), paper_tokens=None,
        source="", description="LXMERT twin for tests: toy detector, 2 cross layers"),
)


def _precomputed(preset: Preset) -> Preset:
    """The same model on region features computed offline: only the region embedding runs."""
    region = preset.visual
    return replace(
        preset,
        name=f"{preset.name}-precomputed",
        description=f"{preset.description} -- on precomputed region features",
        visual=PrecomputedRegionsConfig(num_boxes=region.num_boxes,
                                        location_dims=region.location_dims, width=region.width,
                                        embedding=region.embedding,
                                        global_token=region.global_token),
    )


for _name in [n for n in PRESETS.names() if not n.endswith("-tiny")]:
    _preset = PRESETS.get(_name)
    if isinstance(_preset.visual, RegionFeaturesConfig):
        _tiny = _precomputed(PRESETS.get(f"{_name}-tiny"))
        register_pair(_precomputed(_preset), replace(_tiny, name=f"{_name}-precomputed-tiny"))
