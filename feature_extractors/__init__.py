"""Embedders: images or token ids -> ``Tokens``.

Plain PyTorch, importable on its own. ``EMBEDDERS`` maps a name to an ``EmbedderSpec`` (the
config dataclass and the module it builds); ``build_embedder(config)`` turns a config into a
module with explicit keyword arguments, so leaf modules never see a config object.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from torch import nn

from .grid import ResNetGrid, ResNetGridConfig
from .patch import PatchProjection, PatchProjectionConfig
from .region.extractor import (
    PrecomputedRegions,
    PrecomputedRegionsConfig,
    RegionBatch,
    RegionFeatures,
    RegionFeaturesConfig,
)
from .registry import Registry, UnknownNameError
from .text import BertTextConfig, BertTextEmbedding, ClipTextConfig, ClipTextEmbedding
from .tokens import ImageBatch, Tokens


@dataclass(frozen=True)
class EmbedderSpec:
    name: str
    modality: str  # "visual" or "text"
    kind: str  # stage category: patch, grid, region, text
    config: type
    module: type[nn.Module]
    description: str
    #: visual embedders of plugins: (fusion width, tiny) -> (config, canonical image size), so
    #: that ``EMBEDDER+FUSION`` pairs can compose them; the built-in ones are known to compose
    canonical: Callable[[int, bool], tuple[Any, tuple[int, int]]] | None = None


EMBEDDERS: Registry[EmbedderSpec] = Registry("embedder")
EMBEDDERS.register(
    "patch",
    EmbedderSpec("patch", "visual", "patch", PatchProjectionConfig, PatchProjection,
                 "linear patch projection (ViLT, CLIP/ViT stem)"),
)
EMBEDDERS.register(
    "grid",
    EmbedderSpec("grid", "visual", "grid", ResNetGridConfig, ResNetGrid,
                 "ResNet grid features, 2x2 max pool (Pixel-BERT)"),
)
EMBEDDERS.register(
    "region",
    EmbedderSpec("region", "visual", "region", RegionFeaturesConfig, RegionFeatures,
                 "Faster R-CNN region features (bottom-up attention: RPN, RoIAlign, NMS)"),
)
EMBEDDERS.register(
    "precomputed",
    EmbedderSpec("precomputed", "visual", "precomputed", PrecomputedRegionsConfig,
                 PrecomputedRegions, "region features computed offline (no detector)"),
)
EMBEDDERS.register(
    "bert-text",
    EmbedderSpec("bert-text", "text", "text", BertTextConfig, BertTextEmbedding,
                 "BERT word + position + type embeddings, LayerNorm"),
)
EMBEDDERS.register(
    "clip-text",
    EmbedderSpec("clip-text", "text", "text", ClipTextConfig, ClipTextEmbedding,
                 "CLIP token + position embeddings"),
)


def spec_for_config(config: Any) -> EmbedderSpec:
    for name in EMBEDDERS:
        spec = EMBEDDERS.get(name)
        if isinstance(config, spec.config):
            return spec
    raise TypeError(f"no embedder registered for {type(config).__name__}")


def build_embedder(config: Any) -> nn.Module:
    """Build the embedder a config dataclass describes."""
    spec = spec_for_config(config)
    return spec.module(**{f.name: getattr(config, f.name) for f in fields(config)})


__all__ = [
    "EMBEDDERS",
    "BertTextConfig",
    "BertTextEmbedding",
    "ClipTextConfig",
    "ClipTextEmbedding",
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
    "Tokens",
    "UnknownNameError",
    "build_embedder",
    "spec_for_config",
]
