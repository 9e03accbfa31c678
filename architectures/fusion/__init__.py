"""Fusion schemes: ``forward(text: Tokens, vision: Tokens) -> FusionOutput``.

A ``FusionSpec`` also says how an ``EMBEDDER+FUSION`` pair is built with it (``defaults``: its
base and tiny configs; ``text_embedder``: the text side it reads), so a plugin's fusion composes
with every embedder exactly as a built-in one does. A fusion config names the widths it works at
as ``text_width`` and ``vision_width`` (the embedders are built at those widths).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from torch import nn

from feature_extractors import Registry, StageKind

from .align_fuse import TINY_ALIGN_FUSE, AlignFuse, AlignFuseConfig
from .base import FusionOutput
from .dual_encoder import TINY_DUAL_ENCODER, DualEncoder, DualEncoderConfig
from .modality_experts import TINY_MODALITY_EXPERTS, ModalityExperts, ModalityExpertsConfig
from .single_stream import TINY_SINGLE_STREAM, SingleStream, SingleStreamConfig
from .two_stream import TINY_VILBERT, TwoStream, TwoStreamConfig


@dataclass(frozen=True)
class FusionSpec:
    name: str
    kind: StageKind | str  # stage kind of the fusion stage as a whole
    config: type
    module: type[nn.Module]
    description: str
    #: (base config, tiny config) of a composed pair; None: the fusion cannot be composed
    defaults: tuple[Any, Any] | None = None
    #: the text embedder (a name in ``feature_extractors.EMBEDDERS``) a composed pair uses
    text_embedder: str = "bert-text"


FUSIONS: Registry[FusionSpec] = Registry("fusion")
FUSIONS.register("single-stream", FusionSpec(
    "single-stream", StageKind.INTERACTION, SingleStreamConfig, SingleStream,
    "one transformer over [text; image] tokens (ViLT, UNITER, VisualBERT)",
    defaults=(SingleStreamConfig(), TINY_SINGLE_STREAM)))
FUSIONS.register("two-stream", FusionSpec(
    "two-stream", StageKind.INTERACTION, TwoStreamConfig, TwoStream,
    "text and visual streams joined by co-attention blocks (ViLBERT, LXMERT)",
    defaults=(TwoStreamConfig(), TINY_VILBERT)))
FUSIONS.register("dual-encoder", FusionSpec(
    "dual-encoder", StageKind.INTERACTION, DualEncoderConfig, DualEncoder,
    "separate vision and text towers, projections, dot product (CLIP)",
    defaults=(DualEncoderConfig(), TINY_DUAL_ENCODER), text_embedder="clip-text"))
FUSIONS.register("modality-experts", FusionSpec(
    "modality-experts", StageKind.INTERACTION, ModalityExpertsConfig, ModalityExperts,
    "shared attention, a feed-forward expert per modality, vision-language experts on top; "
    "run as a fusion or a dual encoder (VLMo)",
    defaults=(ModalityExpertsConfig(), TINY_MODALITY_EXPERTS)))
FUSIONS.register("align-fuse", FusionSpec(
    "align-fuse", StageKind.INTERACTION, AlignFuseConfig, AlignFuse,
    "image and text towers aligned by ITC, text-to-image cross-attention and an ITM head "
    "(ALBEF, BLIP)",
    defaults=(AlignFuseConfig(), TINY_ALIGN_FUSE)))


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
    "AlignFuse",
    "AlignFuseConfig",
    "DualEncoder",
    "DualEncoderConfig",
    "FusionOutput",
    "FusionSpec",
    "ModalityExperts",
    "ModalityExpertsConfig",
    "SingleStream",
    "SingleStreamConfig",
    "TwoStream",
    "TwoStreamConfig",
    "build_fusion",
    "fusion_spec_for_config",
]
