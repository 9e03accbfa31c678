"""Fusion schemes, heads and the published model presets, composed into ``VLModel``.

``build_model("vilt-b32")`` builds a preset with random weights (timing does not depend on
weights; nothing is downloaded). ``list_models()`` names every preset. ``hf-`` presets
(``architectures.hf``) build transformers' own classes; ``build_loaded`` builds what a case
measures, with ``--hf-dir`` or ``--weights`` applied.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from feature_extractors import Stage, build_embedder, spec_for_config

from . import presets, presets_itc  # noqa: F401 - importing them registers the presets
from .backends import BACKENDS, case_preset, region_backend, with_region_backend
from .compose import check_input, compose, pair_matrix, resolve_preset
from .fusion import FUSIONS, FusionOutput, build_fusion, fusion_spec_for_config
from .heads import build_head
from .hf import HF_PRESETS, HFModel, HFPreset, build_hf_model, read_hf_dir
from .model import VLModel
from .preset import PRESETS, Preset
from .variants import is_variant
from .weights import check_weights, load_weights


def build_model(preset: str | Preset | HFPreset, *, head: bool = False,
                hf_dir: str | None = None) -> VLModel | HFModel:
    """A model from a preset or ``embedder+fusion`` pair name, or a ``Preset``;
    ``head=True`` adds its task head. An ``hf-`` preset builds transformers' class, from
    ``hf_dir`` (``--hf-dir``, a save_pretrained directory) where given."""
    p = resolve_preset(preset) if isinstance(preset, str) else preset
    if isinstance(p, HFPreset):
        return build_hf_model(p, head=head, hf_dir=hf_dir)
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


def load_sources(model: nn.Module, preset: Preset | HFPreset, *,
                 weights: str | None = None) -> dict[str, Any]:
    """What a case records of where its model came from, loading ``weights`` (``--weights``)
    into a native preset first: the checkpoint's path, size and SHA-256; for an ``hf-`` model,
    its class, transformers version, attention implementation and ``--hf-dir``."""
    if isinstance(preset, HFPreset):
        return dict(model.sources)
    return {"weights": load_weights(model, preset, weights)} if weights else {}


def build_loaded(preset: Preset | HFPreset, *, head: bool = False, hf_dir: str | None = None,
                 weights: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """``build_model`` then ``load_sources``: the model a case measures and its record. Each
    option applies to its kind of preset only."""
    model = build_model(preset, head=head, hf_dir=hf_dir)
    return model, load_sources(model, preset, weights=weights)


def check_sources(models: list[Preset | HFPreset], *, head: bool = False,
                  hf_dir: str | None = None, weights: str | None = None) -> None:
    """Refuse, before anything runs, what ``build_loaded`` would refuse: an ``--hf-dir`` of
    another model type, a checkpoint that does not match a native preset (checked on the meta
    device); each option given to a run with no model it applies to."""
    hf = [p for p in models if isinstance(p, HFPreset)]
    native = [p for p in models if not isinstance(p, HFPreset)]
    if hf_dir is not None and not hf:
        raise ValueError("--hf-dir builds hf- models (transformers' classes), and this run has "
                         "none; name one, e.g. --models hf-vilt")
    if weights is not None and not native:
        raise ValueError("--weights loads into native presets, and this run has none (an hf- "
                         "model takes --hf-dir)")
    for p in hf if hf_dir is not None else []:
        read_hf_dir(Path(hf_dir), p.config_class)
    for p in native if weights is not None else []:
        with torch.device("meta"):
            model = build_model(p, head=head)
        check_weights(model, p, weights)


def list_models() -> list[str]:
    return PRESETS.names()


__all__ = [
    "FUSIONS",
    "HF_PRESETS",
    "PRESETS",
    "FusionOutput",
    "HFModel",
    "HFPreset",
    "Preset",
    "Stage",
    "VLModel",
    "BACKENDS",
    "build_loaded",
    "case_preset",
    "region_backend",
    "with_region_backend",
    "build_model",
    "check_input",
    "check_sources",
    "load_sources",
    "compose",
    "is_variant",
    "list_models",
    "pair_matrix",
    "resolve_preset",
]
