"""Any visual embedder with any fusion scheme: ``"patch+two-stream"`` builds a valid model.

A composed pair takes documented defaults: the fusion at its published base size (single stream:
BERT-base; two stream: ViLBERT-base; dual encoder: CLIP ViT-B), the visual embedder at its
canonical settings with its token width set to the fusion's visual width (patch 32 at 384x640;
grid ResNet-50 and region R101-C4 at 800x1333), a BERT-style text embedder (CLIP-style for the
dual encoder) and 40 text tokens. ``size="tiny"`` gives the same pair at test widths. A pair name
works wherever a preset name does. ``timm:<name>`` names any timm model as the embedder
(``timm:convnext_base+single-stream``): built for 384x640 rounded down to its stride, kept as
named at ``size="tiny"`` (only the fusion shrinks).
"""

from __future__ import annotations

from feature_extractors import (
    EMBEDDERS,
    UnknownNameError,
    check_visual_input,
    spec_for_config,
    visual_embedder,
)

from .fusion import FUSIONS, fusion_spec_for_config
from .hf import HF_PRESETS, HFPreset
from .preset import PRESETS, Preset
from .variants import apply_variant, split_variant

SIZES = ("base", "tiny")


def compose(visual: str, fusion: str, size: str = "base") -> Preset:
    """The preset for an ``embedder+fusion`` pair, from what the two registry entries declare:
    the fusion's default config (base or tiny), the embedder's canonical settings at the fusion's
    visual width, and the fusion's text embedder at its text width."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; valid: {', '.join(SIZES)}")
    embedder = visual_embedder(visual)  # one-line KeyError listing the visual embedders
    scheme = FUSIONS.get(fusion)
    if scheme.defaults is None:
        raise UnknownNameError(f"fusion {fusion!r} cannot be composed: its FusionSpec has no "
                               "'defaults' (base config, tiny config)")
    if embedder.canonical is None:
        raise UnknownNameError(f"embedder {visual!r} cannot be composed: its EmbedderSpec has "
                               "no 'canonical' (width, tiny) -> (config, image size)")
    tiny = size == "tiny"
    fusion_config = scheme.defaults[int(tiny)]
    visual_config, image_size = embedder.canonical(fusion_config.vision_width, tiny)
    text = EMBEDDERS.get(scheme.text_embedder)
    if text.canonical is None:
        raise UnknownNameError(f"text embedder {text.name!r} has no 'canonical' settings")
    text_config, _ = text.canonical(fusion_config.text_width, tiny)
    return Preset(
        name=f"{visual}+{fusion}" + ("-tiny" if tiny else ""),
        description=f"composed: {embedder.description} + {scheme.description}",
        visual=visual_config,
        text=text_config,
        fusion=fusion_config,
        image_size=image_size,
        text_len=8 if tiny else 40,
    )


def check_input(preset: Preset | HFPreset, image_size: tuple[int, int]) -> None:
    """ValueError, one line, for an image a native preset's embedder cannot take at all;
    transformers' own classes check their inputs themselves."""
    if isinstance(preset, Preset):
        check_visual_input(preset.visual, image_size)


def resolve_preset(name: str, size: str | None = None) -> Preset | HFPreset:
    """A preset, an ``hf-`` preset (transformers' own class, ``architectures.hf``) or an
    ``embedder+fusion`` pair by name; ``size="tiny"`` gives its tiny twin.

    A ``-tiny`` suffix works too. Unknown names fail with one line listing what exists. A
    ``[field=value,...]`` suffix varies the visual embedder's config (``architectures.variants``:
    ``uniter-base[nms=class-agnostic]``; with ``size="tiny"``, ``uniter-base-tiny[...]``).
    """
    if size not in (None, *SIZES):
        raise ValueError(f"unknown size {size!r}; valid: {', '.join(SIZES)}")
    base, overrides = split_variant(name)
    if overrides:
        return apply_variant(resolve_preset(base, size), overrides)
    if "+" in name:
        pair = name.removesuffix("-tiny")
        visual, _, fusion = pair.partition("+")
        tiny = size == "tiny" or name.endswith("-tiny")
        return compose(visual, fusion, "tiny" if tiny else "base")
    if size == "tiny" and not name.endswith("-tiny"):
        name = f"{name}-tiny"
    if name in HF_PRESETS:
        return HF_PRESETS.get(name)
    try:
        return PRESETS.get(name)
    except UnknownNameError:
        raise UnknownNameError(
            f"unknown model {name!r}; valid: {', '.join(PRESETS.names())}, "
            f"{', '.join(HF_PRESETS.names())}, or a pair "
            f"EMBEDDER+FUSION such as patch+two-stream (see 'vlbench list pairs')") from None


def pair_matrix() -> dict[tuple[str, str], list[str]]:
    """(visual embedder, fusion) -> the published presets of that pair, for every pair."""
    visuals = [n for n in EMBEDDERS if EMBEDDERS.get(n).modality == "visual"]
    matrix: dict[tuple[str, str], list[str]] = {(v, f): [] for v in visuals for f in FUSIONS}
    for name in PRESETS:
        if name.endswith("-tiny"):
            continue
        p = PRESETS.get(name)
        key = (spec_for_config(p.visual).name, fusion_spec_for_config(p.fusion).name)
        matrix[key].append(name)
    return matrix
