"""A vlbench plugin that times a transformers class vlbench does not map: GIT's ``GitModel``
(Wang et al. 2022, "GIT: A Generative Image-to-text Transformer").

Two registrations: a *stage map* for the class (which library modules make up each of vlbench's
stages, and how to make random inputs of its form), and a *preset* that builds it (its config
and canonical input). Then it runs like any ``hf-`` model::

    vlbench list hf --plugin docs/examples/vlbench_hf_plugin_example.py
    vlbench run --plugin docs/examples/vlbench_hf_plugin_example.py --models hf-git,hf-clip
    vlbench run --plugin docs/examples/vlbench_hf_plugin_example.py --models hf-git \\
        --hf-dir path/to/your/git/save_pretrained/dir

To find the module names, read the class's ``forward`` and ``print(model)``: a stage is a set of
modules the forward *calls* (a layer container that the forward loops over is listed as the
container: vlbench takes each of its children, since a hook on the container never fires). The
map is checked when the model is built: a module that is not there is an error naming the
transformers version, and a stage that never runs is an error when it is timed.
"""

from __future__ import annotations

from typing import Any

import torch

from architectures.hf import (
    HFPreset,
    InputShape,
    StageMap,
    pixels,
    register_hf_preset,
    register_stage_map,
    token_ids,
)
from feature_extractors import StageKind, Substage

VISION = "image_encoder.vision_model"  # GIT's image encoder: a CLIP ViT


def git_inputs(config: Any, shape: InputShape, gen: torch.Generator) -> dict[str, Any]:
    """GitModel's keyword inputs: random token ids (no tokenizer) and pixels."""
    ids, mask = token_ids(config, shape, gen)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels(shape, gen)}


def git_image_tokens(config: Any, shape: InputShape) -> int:
    """Patches plus the class token: every image token enters GIT's single stream."""
    h, w = shape.image_size
    patch = config.vision_config.patch_size
    return (h // patch) * (w // patch) + 1


register_stage_map("GitModel", StageMap(
    stages={
        "visual": Substage(StageKind.PATCH, (f"{VISION}.embeddings",)),
        "text": Substage(StageKind.TEXT, ("embeddings",)),
        "fusion": Substage(StageKind.INTERACTION, (
            f"{VISION}.pre_layrnorm", f"{VISION}.encoder", f"{VISION}.post_layernorm",
            "visual_projection", "encoder")),
        # the CLIP ViT runs on the image alone before the text sees it
        "fusion.vision_tower": Substage(StageKind.SINGLE_MODALITY, (
            f"{VISION}.pre_layrnorm", f"{VISION}.encoder", f"{VISION}.post_layernorm")),
        # one transformer over [projected image tokens; text], causal on the text
        "fusion.encoder": Substage(StageKind.INTERACTION, ("visual_projection", "encoder")),
    },
    inputs=git_inputs,
    image_tokens=git_image_tokens,
))

register_hf_preset(HFPreset(
    name="hf-git", description="GIT base (Wang et al. 2022), transformers' GitModel; 40 text "
    "tokens, as ViLT", model_class="GitModel", config_class="GitConfig",
    image_size=(224, 224), text_len=40))
register_hf_preset(HFPreset(
    name="hf-git-tiny", description="hf-git twin for tests", model_class="GitModel",
    config_class="GitConfig", image_size=(64, 64), text_len=8,
    config={"vision_config": {"hidden_size": 64, "intermediate_size": 128,
                              "num_hidden_layers": 2, "num_attention_heads": 2,
                              "image_size": 64, "patch_size": 16},
            "vocab_size": 1000, "hidden_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "intermediate_size": 128,
            "max_position_embeddings": 64}))
