"""The ``hf-`` presets: transformers' own classes, timed per stage like the native presets.

Each is built from the library's default configuration, overridden only where the default is not
the published model, or from a local ``save_pretrained`` directory (``--hf-dir``). A preset with
a native twin takes the twin's canonical input (the config gives only the vocabulary and the
limits: ViLT's 40 positions are a limit, not a text length); one without takes its config's image
size. Nothing is fetched: no tokenizer, no processor, no hub name. Every preset has a ``-tiny``
twin for tests, at the native tiny twin's sizes (so weights saved from one load into the other).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from feature_extractors import Registry

from .local import load_hf_dir
from .model import HFModel
from .stage_map import STAGE_MAPS


@dataclass(frozen=True)
class HFPreset:
    """transformers' ``model_class`` from ``config_class(**config)``; ``--head`` builds
    ``head_class`` instead (None: no task head). ``twin``: the native preset whose canonical
    input this is; ``regions``: features per image for region-feature models."""

    name: str
    description: str
    model_class: str
    config_class: str
    image_size: tuple[int, int]
    text_len: int
    config: Mapping[str, Any] = field(default_factory=dict)
    twin: str | None = None
    regions: int = 0
    head_class: str | None = None
    source: str = ""

    def library_config(self) -> Any:
        import transformers

        return getattr(transformers, self.config_class)(**self.config)


HF_PRESETS: Registry[HFPreset] = Registry("transformers preset")


def register_hf_preset(preset: HFPreset) -> HFPreset:
    """Register an ``hf-`` preset (a plugin's too); its class needs a stage map."""
    return HF_PRESETS.register(preset.name, preset)


def build_hf_model(preset: HFPreset, *, head: bool = False, hf_dir: str | None = None
                   ) -> HFModel:
    """The preset's library model in an ``HFModel``, random weights, or the config (and the
    weights, where present) of ``hf_dir``. ``model.sources`` says what was built from what,
    with the attention implementation it runs (recorded with each case)."""
    import transformers

    if head and preset.head_class is None:
        raise ValueError(f"model {preset.name!r} has no task head")
    class_name = preset.head_class if head else preset.model_class
    stage_map = STAGE_MAPS.get(class_name)  # one line listing the mapped classes
    cls = getattr(transformers, class_name)
    if hf_dir is None:
        library, record = cls(preset.library_config()), {"hf_config": dict(preset.config)}
    else:
        library, record = load_hf_dir(preset.config_class, cls, hf_dir)
    model = HFModel(library.eval(), stage_map, name=preset.name, regions=preset.regions)
    model.sources = {"hf_class": class_name, "transformers": transformers.__version__,
                     "attn_implementation": model.attn_implementation, **record}
    return model


def _pair(published: HFPreset, tiny_config: Mapping[str, Any], *, image_size: tuple[int, int],
          text_len: int, twin: str | None = None, regions: int = 0) -> None:
    """A published preset and its tiny twin (same classes, tiny config and input)."""
    register_hf_preset(published)
    register_hf_preset(HFPreset(
        name=f"{published.name}-tiny", description=f"{published.name} twin for tests",
        model_class=published.model_class, config_class=published.config_class,
        image_size=image_size, text_len=text_len, config=tiny_config, twin=twin,
        regions=regions, head_class=published.head_class))


def _tiny_bert(width: int = 64, **extra: Any) -> dict[str, Any]:
    return {"vocab_size": 1000, "hidden_size": width, "num_hidden_layers": 2,
            "num_attention_heads": 2, "intermediate_size": 2 * width, **extra}


_VILT_TINY = _tiny_bert(max_position_embeddings=8, image_size=64, patch_size=32)
_CLIP_TINY = {
    "text_config": _tiny_bert(32, max_position_embeddings=16, hidden_act="quick_gelu",
                              bos_token_id=998, eos_token_id=999),
    "vision_config": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                      "intermediate_size": 128, "hidden_act": "quick_gelu", "image_size": 64,
                      "patch_size": 16},
    "projection_dim": 32,
}
_VISION_TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                "intermediate_size": 128, "image_size": 64, "patch_size": 16}


def _register() -> None:
    vilt = "ViLT-B/32 (Kim et al. 2021), transformers' ViltModel with its pooler"
    _pair(HFPreset("hf-vilt", vilt, "ViltModel", "ViltConfig", (384, 640), 40, twin="vilt-b32",
                   head_class="ViltForQuestionAnswering"),
          _VILT_TINY, image_size=(64, 96), text_len=8, twin="vilt-b32-tiny")
    _pair(HFPreset("hf-vilt-vqa", "ViLT-B/32 VQA, transformers' ViltForQuestionAnswering "
                   "(3,129 answers)", "ViltForQuestionAnswering", "ViltConfig", (384, 640), 40,
                   config={"num_labels": 3129}, twin="vilt-b32",
                   head_class="ViltForQuestionAnswering"),
          {**_VILT_TINY, "num_labels": 10}, image_size=(64, 96), text_len=8,
          twin="vilt-b32-tiny")
    _pair(HFPreset("hf-clip", "CLIP ViT-B/32, transformers' CLIPModel", "CLIPModel",
                   "CLIPConfig", (224, 224), 77, twin="clip-vit-b32"),
          _CLIP_TINY, image_size=(64, 64), text_len=16, twin="clip-vit-b32-tiny")
    _pair(HFPreset("hf-siglip", "SigLIP base/16 at 224 (Zhai et al. 2023), transformers' "
                   "SiglipModel; 64 text tokens, its padded length", "SiglipModel",
                   "SiglipConfig", (224, 224), 64,
                   # the tokenizer's end of text is its pad token, "</s>" (1); it has no bos
                   config={"text_config": {"eos_token_id": 1, "bos_token_id": None}}),
          {"text_config": _tiny_bert(64, max_position_embeddings=16, eos_token_id=1,
                                     bos_token_id=None),
           "vision_config": _VISION_TINY}, image_size=(64, 64), text_len=16)
    _pair(HFPreset("hf-blip", "BLIP base image-text retrieval (ITM path), transformers' "
                   "BlipForImageTextRetrieval", "BlipForImageTextRetrieval", "BlipConfig",
                   (384, 384), 35, twin="blip-base",
                   # the official BLIP (med_config.json, vit.py) where transformers' default
                   # differs: 12 text heads, ViT LayerNorm eps 1e-6
                   config={"text_config": {"num_attention_heads": 12},
                           "vision_config": {"layer_norm_eps": 1e-6}}),
          {"text_config": _tiny_bert(encoder_hidden_size=64, max_position_embeddings=16,
                                     bos_token_id=998),
           "vision_config": {**_VISION_TINY, "layer_norm_eps": 1e-6},
           "image_text_hidden_size": 32}, image_size=(64, 64), text_len=8,
          twin="blip-base-tiny")
    _register_regions()
    _pair(HFPreset("hf-bridgetower", "BridgeTower base (Xu et al. 2023), transformers' "
                   "BridgeTowerModel at its 288x288 pretraining size; 40 text tokens, as ViLT",
                   "BridgeTowerModel", "BridgeTowerConfig", (288, 288), 40),
          {"text_config": _tiny_bert(num_hidden_layers=3, max_position_embeddings=18),
           "vision_config": {"hidden_size": 64, "num_hidden_layers": 3, "image_size": 64,
                             "patch_size": 16},
           "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
          image_size=(64, 64), text_len=8)


def _register_regions() -> None:
    _pair(HFPreset("hf-lxmert", "LXMERT (Tan & Bansal 2019) on 36 precomputed regions, "
                   "transformers' LxmertModel", "LxmertModel", "LxmertConfig", (800, 1333), 20,
                   twin="lxmert-precomputed", regions=36),
          _tiny_bert(max_position_embeddings=16, l_layers=2, r_layers=2, x_layers=2),
          image_size=(128, 160), text_len=8, twin="lxmert-precomputed-tiny", regions=6)
    _pair(HFPreset("hf-visualbert", "VisualBERT (Li et al. 2019) on 36 precomputed 2048-d "
                   "regions, transformers' VisualBertModel", "VisualBertModel",
                   "VisualBertConfig", (800, 1333), 128,
                   config={"visual_embedding_dim": 2048},  # the default, 512, is not published
                   twin="visualbert-precomputed", regions=36),
          _tiny_bert(max_position_embeddings=16, visual_embedding_dim=2048),
          image_size=(128, 160), text_len=8, twin="visualbert-precomputed-tiny", regions=6)


_register()
