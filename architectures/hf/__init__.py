"""transformers' own vision-language models timed per stage: the ``hf-`` presets.

``HF_PRESETS`` holds the presets (``hf-vilt``, ``hf-clip``, ...; each with a ``-tiny`` twin),
``STAGE_MAPS`` the stage map of each library class they build. A plugin registers a map for a
class vlbench does not know with ``register_stage_map`` and a preset that builds it with
``register_hf_preset`` (``docs/examples/vlbench_hf_plugin_example.py``). transformers is imported
only when a model is built.
"""

from __future__ import annotations

from .families import pixels, token_ids  # importing it registers the built-in stage maps
from .local import read_hf_dir
from .model import HFModel
from .presets import HF_PRESETS, HFPreset, build_hf_model, register_hf_preset
from .stage_map import (
    STAGE_MAPS,
    InputShape,
    MethodStage,
    StageMap,
    prefixed,
    register_stage_map,
)

__all__ = [
    "HF_PRESETS",
    "STAGE_MAPS",
    "HFModel",
    "HFPreset",
    "InputShape",
    "MethodStage",
    "StageMap",
    "build_hf_model",
    "pixels",
    "prefixed",
    "read_hf_dir",
    "register_hf_preset",
    "register_stage_map",
    "token_ids",
]
