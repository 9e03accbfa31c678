"""Fusion schemes, heads and the published model presets, composed into ``VLModel``.

``build_model("vilt-b32")`` builds a preset with random weights (timing does not depend on
weights; nothing is downloaded). ``list_models()`` names every preset.
"""

from __future__ import annotations

from feature_extractors import Stage, build_embedder, spec_for_config

from . import presets, presets_itc  # noqa: F401 - importing them registers the presets
from .compose import compose, pair_matrix, resolve_preset
from .fusion import FUSIONS, FusionOutput, build_fusion, fusion_spec_for_config
from .heads import build_head
from .model import VLModel
from .preset import PRESETS, Preset
from .variants import is_variant


def build_model(preset: str | Preset, *, head: bool = False) -> VLModel:
    """A model from a preset or ``embedder+fusion`` pair name, or a ``Preset``;
    ``head=True`` adds its task head."""
    p = resolve_preset(preset) if isinstance(preset, str) else preset
    embedder, scheme = spec_for_config(p.visual), fusion_spec_for_config(p.fusion)
    visual = build_embedder(p.visual)
    text = build_embedder(p.text)
    fusion = build_fusion(p.fusion, text_dim=text.out_dim, vision_dim=visual.out_dim)
    task_head = None
    if head:
        if p.head is None:
            raise ValueError(f"model {p.name!r} has no task head")
        task_head = build_head(p.head, in_dim=fusion.out_dim)
    model = VLModel(visual, text, fusion, task_head, visual_kind=embedder.kind,
                    fusion_kind=scheme.kind, embedder_name=embedder.name,
                    fusion_name=scheme.name)
    model.stages()  # the stage declarations are checked here: a bad one fails at build time
    return model


def list_models() -> list[str]:
    return PRESETS.names()


__all__ = [
    "FUSIONS",
    "PRESETS",
    "FusionOutput",
    "Preset",
    "Stage",
    "VLModel",
    "build_model",
    "compose",
    "is_variant",
    "list_models",
    "pair_matrix",
    "resolve_preset",
]
