"""Which reference implements a preset, and each family's four parts: the reference's config,
the reference model, its keyword inputs and the submodule pairing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from architectures import PRESETS, Preset
from architectures.weight_maps import reference_family as weight_family
from feature_extractors import ImageBatch, RegionBatch, RegionFeaturesConfig

from .blip import blip_config, blip_inputs, blip_pairs, reference_blip
from .common import Pair, as_preset, precomputed_twin
from .lxmert_visualbert import (
    lxmert_config,
    lxmert_inputs,
    lxmert_pairs,
    reference_lxmert,
    reference_visualbert,
    visualbert_config,
    visualbert_inputs,
    visualbert_pairs,
)
from .vilt_clip import (
    clip_config,
    clip_inputs,
    clip_pairs,
    reference_clip,
    reference_vilt,
    vilt_config,
    vilt_inputs,
    vilt_pairs,
)


@dataclass(frozen=True)
class Family:
    config: Callable[[str | Preset], Any]
    model: Callable[[str | Preset], nn.Module]
    inputs: Callable[..., dict[str, torch.Tensor]]  # (images, input_ids, attention_mask)
    pairs: Callable[[Preset], list[Pair]]


FAMILIES: dict[str, Family] = {
    "vilt": Family(vilt_config, reference_vilt, vilt_inputs, vilt_pairs),
    "clip": Family(clip_config, reference_clip, clip_inputs, clip_pairs),
    "lxmert": Family(lxmert_config, reference_lxmert, lxmert_inputs, lxmert_pairs),
    "visualbert": Family(visualbert_config, reference_visualbert, visualbert_inputs,
                         visualbert_pairs),
    "blip": Family(blip_config, reference_blip, blip_inputs, blip_pairs),
}


def reference_family(preset: str | Preset) -> str:
    """Which reference implements the preset: vilt, clip, lxmert, visualbert or blip
    (``architectures.weight_maps``, shared with ``--weights``)."""
    return weight_family(as_preset(preset))


def reference_config(preset: str | Preset) -> Any:
    """The reference's config for a preset (raises ValueError where it cannot express it)."""
    return FAMILIES[reference_family(preset)].config(preset)


def reference_model(preset: str | Preset) -> nn.Module:
    """The reference model of whichever family the preset belongs to."""
    return FAMILIES[reference_family(preset)].model(preset)


def reference_inputs(
    preset: str | Preset, images: ImageBatch | RegionBatch, input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """The reference's keyword inputs carrying the same tensors as ours."""
    return FAMILIES[reference_family(preset)].inputs(images, input_ids, attention_mask)


def submodule_pairs(preset: str | Preset) -> list[Pair]:
    """Our submodules against the reference's, block by block; meant to partition both sides'
    parameters (the tests check that, so a new unmapped parameter fails them)."""
    p = as_preset(preset)
    return FAMILIES[reference_family(p)].pairs(p)


def parity_preset(name: str) -> str:
    """The preset compared for ``name``: a region preset's ``-precomputed`` twin, since the
    references take region features and have no detector; any other preset itself."""
    p = as_preset(name)
    twin = precomputed_twin(name)
    if isinstance(p.visual, RegionFeaturesConfig) and twin in PRESETS:
        return twin
    return name
