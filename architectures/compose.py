"""Any visual embedder with any fusion scheme: ``"patch+two-stream"`` builds a valid model.

A composed pair takes documented defaults: the fusion at its published base size (single stream:
BERT-base; two stream: ViLBERT-base; dual encoder: CLIP ViT-B), the visual embedder at its
canonical settings with its token width set to the fusion's visual width (patch 32 at 384x640;
grid ResNet-50 and region R101-C4 at 800x1333), a BERT-style text embedder (CLIP-style for the
dual encoder) and 40 text tokens. ``size="tiny"`` gives the same pair at test widths. A pair name
works wherever a preset name does.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from feature_extractors import (
    EMBEDDERS,
    BertTextConfig,
    ClipTextConfig,
    PatchProjectionConfig,
    PrecomputedRegionsConfig,
    RegionFeaturesConfig,
    ResNetGridConfig,
    UnknownNameError,
)

from .fusion import FUSIONS, DualEncoderConfig, SingleStreamConfig, TwoStreamConfig
from .presets import PRESETS, TINY_REGIONS, TINY_VILBERT, Preset

SIZES = ("base", "tiny")

#: fusion name -> (base config, tiny config)
FUSION_DEFAULTS: dict[str, tuple[Any, Any]] = {
    "single-stream": (SingleStreamConfig(), SingleStreamConfig(width=64, depth=2, heads=2,
                                                               mlp_dim=128)),
    "two-stream": (TwoStreamConfig(), TINY_VILBERT),
    "dual-encoder": (DualEncoderConfig(), DualEncoderConfig(
        embed_dim=32, vision_width=64, vision_depth=2, vision_heads=2, vision_mlp_dim=128,
        text_width=32, text_depth=2, text_heads=2, text_mlp_dim=64)),
}


def _widths(fusion: Any) -> tuple[int, int]:
    """(text width, visual width) the fusion works at."""
    if isinstance(fusion, SingleStreamConfig):
        return fusion.width, fusion.width
    return fusion.text_width, fusion.vision_width


def _visual(name: str, width: int, tiny: bool) -> tuple[Any, tuple[int, int]]:
    """The embedder's config at its canonical settings, and its canonical image size."""
    if name == "patch":
        if tiny:
            return PatchProjectionConfig(width=width, patch_size=32, pos_grid=(2, 2)), (128, 160)
        return PatchProjectionConfig(width=width), (384, 640)
    if name == "grid":
        return ResNetGridConfig(backbone="tiny" if tiny else "r50"), (
            (128, 160) if tiny else (800, 1333))
    if name == "region":
        base = TINY_REGIONS if tiny else RegionFeaturesConfig()
        return replace(base, width=width), (128, 160) if tiny else (800, 1333)
    if name == "precomputed":
        boxes = TINY_REGIONS.num_boxes if tiny else 36
        return PrecomputedRegionsConfig(num_boxes=boxes, width=width), (
            (128, 160) if tiny else (800, 1333))
    spec = EMBEDDERS.get(name)  # one-line error for an unknown name
    if spec.modality == "visual" and spec.canonical is not None:  # a plugin's embedder
        return spec.canonical(width, tiny)
    if spec.modality == "visual":
        raise UnknownNameError(f"embedder {name!r} cannot be composed: its EmbedderSpec has "
                               "no 'canonical' (width, tiny) -> (config, image size)")
    raise UnknownNameError(f"embedder {name!r} is not a visual embedder")


def compose(visual: str, fusion: str, size: str = "base") -> Preset:
    """The preset for an ``embedder+fusion`` pair."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; valid: {', '.join(SIZES)}")
    spec = EMBEDDERS.get(visual)  # one-line KeyError listing the embedders
    if spec.modality != "visual":
        visuals = [n for n in EMBEDDERS if EMBEDDERS.get(n).modality == "visual"]
        raise UnknownNameError(f"unknown visual embedder {visual!r}; valid: {', '.join(visuals)}")
    FUSIONS.get(fusion)
    tiny = size == "tiny"
    fusion_config = FUSION_DEFAULTS[fusion][int(tiny)]
    text_width, visual_width = _widths(fusion_config)
    visual_config, image_size = _visual(visual, visual_width, tiny)
    if fusion == "dual-encoder":
        text = ClipTextConfig(vocab_size=1000, width=text_width, max_positions=16) if tiny else (
            ClipTextConfig(width=text_width))
    else:
        text = BertTextConfig(vocab_size=1000 if tiny else 30522, width=text_width,
                              max_positions=16 if tiny else 512)
    name = f"{visual}+{fusion}" + ("-tiny" if tiny else "")
    return Preset(
        name=name,
        description=f"composed: {spec.description} + {FUSIONS.get(fusion).description}",
        visual=visual_config,
        text=text,
        fusion=fusion_config,
        image_size=image_size,
        text_len=8 if tiny else 40,
    )


def resolve_preset(name: str, size: str | None = None) -> Preset:
    """A preset or an ``embedder+fusion`` pair by name; ``size="tiny"`` gives its tiny twin.

    A ``-tiny`` suffix works too. Unknown names fail with one line listing what exists.
    """
    if size not in (None, *SIZES):
        raise ValueError(f"unknown size {size!r}; valid: {', '.join(SIZES)}")
    if "+" in name:
        pair = name.removesuffix("-tiny")
        visual, _, fusion = pair.partition("+")
        tiny = size == "tiny" or name.endswith("-tiny")
        return compose(visual, fusion, "tiny" if tiny else "base")
    if size == "tiny" and not name.endswith("-tiny"):
        name = f"{name}-tiny"
    try:
        return PRESETS.get(name)
    except UnknownNameError:
        raise UnknownNameError(
            f"unknown model {name!r}; valid: {', '.join(PRESETS.names())}, or a pair "
            f"EMBEDDER+FUSION such as patch+two-stream (see 'vlbench list pairs')") from None


def pair_matrix() -> dict[tuple[str, str], list[str]]:
    """(visual embedder, fusion) -> the published presets of that pair, for every pair."""
    visuals = [n for n in EMBEDDERS if EMBEDDERS.get(n).modality == "visual"]
    matrix: dict[tuple[str, str], list[str]] = {(v, f): [] for v in visuals for f in FUSIONS}
    from feature_extractors import spec_for_config

    from .fusion import fusion_spec_for_config

    for name in PRESETS:
        if name.endswith("-tiny"):
            continue
        p = PRESETS.get(name)
        key = (spec_for_config(p.visual).name, fusion_spec_for_config(p.fusion).name)
        matrix[key].append(name)
    return matrix
