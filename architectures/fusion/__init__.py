"""Fusion schemes: ``forward(text: Tokens, vision: Tokens) -> FusionOutput``."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from torch import nn

from feature_extractors import Registry

from .base import FusionOutput
from .dual_encoder import DualEncoder, DualEncoderConfig
from .single_stream import SingleStream, SingleStreamConfig
from .two_stream import TwoStream, TwoStreamConfig


@dataclass(frozen=True)
class FusionSpec:
    name: str
    kind: str  # stage category of the fusion stage as a whole
    config: type
    module: type[nn.Module]
    description: str


FUSIONS: Registry[FusionSpec] = Registry("fusion")
FUSIONS.register("single-stream", FusionSpec(
    "single-stream", "interaction", SingleStreamConfig, SingleStream,
    "one transformer over [text; image] tokens (ViLT, UNITER, VisualBERT)"))
FUSIONS.register("two-stream", FusionSpec(
    "two-stream", "interaction", TwoStreamConfig, TwoStream,
    "text and visual streams joined by co-attention blocks (ViLBERT, LXMERT)"))
FUSIONS.register("dual-encoder", FusionSpec(
    "dual-encoder", "interaction", DualEncoderConfig, DualEncoder,
    "separate vision and text towers, projections, dot product (CLIP)"))


def fusion_spec_for_config(config: Any) -> FusionSpec:
    for name in FUSIONS:
        spec = FUSIONS.get(name)
        if isinstance(config, spec.config):
            return spec
    raise TypeError(f"no fusion registered for {type(config).__name__}")


def build_fusion(config: Any, *, text_dim: int, vision_dim: int) -> nn.Module:
    spec = fusion_spec_for_config(config)
    kwargs = {f.name: getattr(config, f.name) for f in fields(config)}
    return spec.module(text_dim=text_dim, vision_dim=vision_dim, **kwargs)


__all__ = [
    "FUSIONS",
    "DualEncoder",
    "DualEncoderConfig",
    "FusionOutput",
    "FusionSpec",
    "SingleStream",
    "SingleStreamConfig",
    "TwoStream",
    "TwoStreamConfig",
    "build_fusion",
    "fusion_spec_for_config",
]
