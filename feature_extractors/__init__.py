"""Embedders: images or token ids -> ``Tokens``, and the contract between models and harness.

Plain PyTorch, importable on its own. ``EMBEDDERS`` maps a name to an ``EmbedderSpec`` (the
config dataclass, the module it builds and how a composed pair builds it), and ``timm:<name>``
names any timm model, its entry built on demand;
``build_embedder(config)`` turns a config into a module with explicit keyword arguments, so leaf
modules never see a config object. ``stages`` holds the stage contract every model speaks.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from torch import nn

from .embedder import EmbedderSpec, check_visual_input, example_visual_input, image_tokens
from .grid import ResNetGrid, ResNetGridConfig, canonical_grid
from .patch import PatchProjection, PatchProjectionConfig, canonical_patch
from .region.detectron2 import (
    Detectron2Regions,
    Detectron2RegionsConfig,
    canonical_region_d2,
    detectron2_available,
    require_detectron2,
)
from .region.extractor import (
    TINY_REGIONS,
    PrecomputedRegions,
    PrecomputedRegionsConfig,
    RegionBatch,
    RegionFeatures,
    RegionFeaturesConfig,
    canonical_precomputed,
    canonical_region,
)
from .registry import Registry, UnknownNameError
from .stages import (
    Stage,
    StageDeclarationError,
    StageKind,
    Substage,
    declared_stages,
    stage_kind,
    stage_paths,
    stage_workload,
    workload_of,
)
from .text import (
    BertTextConfig,
    BertTextEmbedding,
    ClipTextConfig,
    ClipTextEmbedding,
    canonical_bert_text,
    canonical_clip_text,
)
from .timm_backbone import TimmBackbone, TimmBackboneConfig, timm_spec
from .tokens import ImageBatch, Tokens

EMBEDDERS: Registry[EmbedderSpec] = Registry("embedder")
EMBEDDERS.register("patch", EmbedderSpec(
    "patch", "visual", StageKind.PATCH, PatchProjectionConfig, PatchProjection,
    "linear patch projection (ViLT, CLIP/ViT stem)", canonical_patch))
EMBEDDERS.register("grid", EmbedderSpec(
    "grid", "visual", StageKind.GRID, ResNetGridConfig, ResNetGrid,
    "ResNet grid features, 2x2 max pool (Pixel-BERT)", canonical_grid))
EMBEDDERS.register("region", EmbedderSpec(
    "region", "visual", StageKind.REGION, RegionFeaturesConfig, RegionFeatures,
    "Faster R-CNN region features (bottom-up attention: RPN, RoIAlign, NMS)", canonical_region))
# detectron2 is optional (not on PyPI): its backend is listed only where it is installed, so
# every registered embedder builds (architectures.backends.with_region_backend says how to get it)
if detectron2_available():
    EMBEDDERS.register("region-d2", EmbedderSpec(
        "region-d2", "visual", StageKind.REGION, Detectron2RegionsConfig, Detectron2Regions,
        "the same region features on detectron2's modules (or a user's detectron2 config)",
        canonical_region_d2))
EMBEDDERS.register("precomputed", EmbedderSpec(
    "precomputed", "visual", StageKind.PRECOMPUTED, PrecomputedRegionsConfig, PrecomputedRegions,
    "region features computed offline (no detector)", canonical_precomputed))
EMBEDDERS.register("bert-text", EmbedderSpec(
    "bert-text", "text", StageKind.TEXT, BertTextConfig, BertTextEmbedding,
    "BERT word + position + type embeddings, LayerNorm", canonical_bert_text))
EMBEDDERS.register("clip-text", EmbedderSpec(
    "clip-text", "text", StageKind.TEXT, ClipTextConfig, ClipTextEmbedding,
    "CLIP token + position embeddings", canonical_clip_text))
EMBEDDERS.register_prefix(
    "timm", timm_spec, help="any timm model by its timm.list_models() name, random weights")


def spec_for_config(config: Any) -> EmbedderSpec:
    """The registry entry that builds ``config``; a config of a family of names (``timm:<name>``)
    says its name as ``registry_name``."""
    family_name = getattr(config, "registry_name", None)
    if family_name is not None:
        return EMBEDDERS.get(family_name)
    for name in EMBEDDERS:
        spec = EMBEDDERS.get(name)
        if isinstance(config, spec.config):
            return spec
    raise TypeError(f"no embedder registered for {type(config).__name__}")


def visual_embedder(name: str) -> EmbedderSpec:
    """A visual embedder's spec by name; a one-line KeyError listing the visual embedders."""
    spec = EMBEDDERS.get(name)
    if spec.modality != "visual":
        visuals = [n for n in EMBEDDERS if EMBEDDERS.get(n).modality == "visual"]
        raise UnknownNameError(f"unknown visual embedder {name!r}; valid: {', '.join(visuals)}")
    return spec


def build_embedder(config: Any) -> nn.Module:
    """Build the embedder a config dataclass describes."""
    spec = spec_for_config(config)
    return spec.module(**{f.name: getattr(config, f.name) for f in fields(config)})


__all__ = [
    "EMBEDDERS",
    "TINY_REGIONS",
    "BertTextConfig",
    "BertTextEmbedding",
    "ClipTextConfig",
    "ClipTextEmbedding",
    "Detectron2Regions",
    "Detectron2RegionsConfig",
    "EmbedderSpec",
    "ImageBatch",
    "PatchProjection",
    "PatchProjectionConfig",
    "PrecomputedRegions",
    "PrecomputedRegionsConfig",
    "RegionBatch",
    "RegionFeatures",
    "RegionFeaturesConfig",
    "Registry",
    "ResNetGrid",
    "ResNetGridConfig",
    "Stage",
    "StageDeclarationError",
    "StageKind",
    "Substage",
    "TimmBackbone",
    "TimmBackboneConfig",
    "Tokens",
    "UnknownNameError",
    "build_embedder",
    "check_visual_input",
    "declared_stages",
    "detectron2_available",
    "example_visual_input",
    "image_tokens",
    "require_detectron2",
    "spec_for_config",
    "stage_kind",
    "stage_paths",
    "stage_workload",
    "visual_embedder",
    "workload_of",
]
