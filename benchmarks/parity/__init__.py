"""Parity with the reference implementations (Hugging Face ``transformers``): the config mapping
and submodule pairing per model family, shared by ``tests/test_parity*.py`` and the full-size
script ``python -m benchmarks.parity`` (``script.py``). One module per family: ``vilt_clip``,
``lxmert_visualbert``, ``blip``; ``families`` says which implements a preset; ``common`` holds
the counting they share; the script times both sides through vlbench's own measurement.
``detectron2`` holds our region detector against the same detector on detectron2's modules
(``python -m benchmarks.parity.detectron2``)."""

from .blip import (
    BLIP_CONFIG_DIFFERENCES,
    blip_config,
    blip_param_name,
    load_blip_weights,
    reference_blip,
    reference_itc_unmasked,
    reference_itm_unmasked,
)
from .common import (
    Pair,
    as_preset,
    count_flops,
    count_params,
    disable_tf32,
    matched_params,
    pair_counts,
    precomputed_twin,
    sdpa_flops,
    unmapped_by_side,
    unmapped_params,
)
from .families import (
    FAMILIES,
    parity_preset,
    reference_config,
    reference_family,
    reference_inputs,
    reference_model,
    submodule_pairs,
)
from .lxmert_visualbert import (
    lxmert_config,
    lxmert_param_name,
    normalised_boxes,
    reference_lxmert,
    reference_visualbert,
    visualbert_config,
)
from .vilt_clip import clip_config, reference_clip, reference_vilt, vilt_config

__all__ = [
    "BLIP_CONFIG_DIFFERENCES",
    "FAMILIES",
    "Pair",
    "as_preset",
    "blip_config",
    "blip_param_name",
    "clip_config",
    "count_flops",
    "count_params",
    "disable_tf32",
    "load_blip_weights",
    "lxmert_config",
    "lxmert_param_name",
    "matched_params",
    "normalised_boxes",
    "pair_counts",
    "parity_preset",
    "precomputed_twin",
    "reference_blip",
    "reference_clip",
    "reference_config",
    "reference_family",
    "reference_inputs",
    "reference_itc_unmasked",
    "reference_itm_unmasked",
    "reference_lxmert",
    "reference_model",
    "reference_vilt",
    "reference_visualbert",
    "sdpa_flops",
    "submodule_pairs",
    "unmapped_by_side",
    "unmapped_params",
    "visualbert_config",
    "vilt_config",
]
