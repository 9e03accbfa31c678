"""Presets of the models that align image and text with a contrastive loss (ITC) beside or before
their fusion: VLMo (modality experts) and ALBEF / BLIP (align before fuse), each with a ``-tiny``
twin. Imported by ``presets`` so that ``PRESETS`` holds them.

Canonical inputs (batch 1 in the latency suite, beside ViLT's 384x640):

- **VLMo: 384x384 + 40 text tokens** (576 patches + [CLS]). 384 is the fine-tuning resolution of
  NLVR2 (where VLMo runs as a fusion encoder) and of retrieval (where it runs as a dual encoder),
  so ``vlmo-base`` and ``vlmo-base-dual`` time the same input and differ only in the way the
  weights run; VQA fine-tunes at 480x480 (900 patches), pretraining is at 224. 40 is
  ``max_text_len`` in every official config. The relative position table is sized for the
  24x24 patch grid, so another resolution is another model (``dataclasses.replace`` the
  preset's ``image_grid`` and ``image_size``), as the official code rebuilds it.
- **ALBEF and BLIP: 384x384** (their retrieval fine-tuning resolution); text 30 tokens for ALBEF
  (``max_length=30`` in its ``Retrieval.py``) and 35 for BLIP (``max_length=35``).

Visual side of VLMo: its patch embedding (a 16x16 convolution with bias and a [CLS] token) has no
absolute position table (``use_abs_pos_emb=False``): positions enter as a relative bias in
attention, hence ``absolute_positions=False``. Its text embedding is transformers' 4.x
``BertEmbeddings`` with ``position_embedding_type="rel_pos"``: word and token-type embeddings and a
LayerNorm, the 40-row position table present in the checkpoint but never added
(``add_positions=False``). ALBEF's text embedding is BERT's (word, position, token type,
LayerNorm); BLIP's ``med.py`` has no token-type table (``type_vocab_size=0``).
"""

from __future__ import annotations

from feature_extractors import BertTextConfig, PatchProjectionConfig

from .fusion import AlignFuseConfig, ModalityExpertsConfig
from .heads import VQAHeadConfig
from .preset import Preset, register_pair

VLMO_SOURCE = "Bao et al. 2022 (VLMo), arXiv 2111.02358; microsoft/unilm vlmo/"


def _vlmo(name: str, *, stack: tuple[int, int, int, int], vl_start: int, way: str, image: int,
          text_len: int, vocab: int, text_positions: int, answers: int,
          description: str) -> Preset:
    """``stack``: (width, depth, heads, mlp); the fusion way carries VLMo's VQA head (ViLT's
    shape: Linear(D, 2D), LayerNorm, GELU, Linear(2D, answers))."""
    width, depth, heads, mlp = stack
    grid = (image // 16, image // 16)
    return Preset(
        name=name,
        description=description,
        visual=PatchProjectionConfig(width=width, patch_size=16, pos_grid=grid, bias=True,
                                     absolute_positions=False),
        text=BertTextConfig(vocab_size=vocab, width=width, max_positions=text_len,
                            add_positions=False),
        fusion=ModalityExpertsConfig(width=width, depth=depth, heads=heads, mlp_dim=mlp,
                                     vl_start=vl_start, way=way, image_grid=grid,
                                     text_positions=text_positions),
        image_size=(image, image),
        text_len=text_len,
        head=VQAHeadConfig(hidden=2 * width, answers=answers) if way == "fusion" else None,
        source=VLMO_SOURCE,
    )


_WAYS = {"fusion": ("", "fusion encoder (VQA, NLVR2)"),
         "dual": ("-dual", "dual encoder (retrieval): each modality through the stack alone")}

for _way, (_suffix, _how) in _WAYS.items():
    register_pair(
        _vlmo(f"vlmo-base{_suffix}", stack=(768, 12, 12, 3072), vl_start=10, way=_way,
              image=384, text_len=40, vocab=30522, text_positions=196, answers=3129,
              description=f"VLMo-Base as a {_how}: 12 multiway layers, VL-FFN in the top 2, "
                          "384x384 (576 patches) + 40 text"),
        _vlmo(f"vlmo-base{_suffix}-tiny", stack=(64, 3, 2, 128), vl_start=2, way=_way,
              image=64, text_len=8, vocab=1000, text_positions=16, answers=10,
              description=f"VLMo-Base twin for tests ({_way}): 3 layers, VL-FFN in the top 1"),
    )
    register_pair(
        _vlmo(f"vlmo-large{_suffix}", stack=(1024, 24, 16, 4096), vl_start=21, way=_way,
              image=384, text_len=40, vocab=30522, text_positions=196, answers=3129,
              description=f"VLMo-Large as a {_how}: 24 multiway layers, VL-FFN in the top 3, "
                          "384x384 (576 patches) + 40 text"),
        _vlmo(f"vlmo-large{_suffix}-tiny", stack=(96, 4, 2, 192), vl_start=3, way=_way,
              image=64, text_len=8, vocab=1000, text_positions=16, answers=10,
              description=f"VLMo-Large twin for tests ({_way}): 4 layers, VL-FFN in the top 1"),
    )


def _align_fuse(name: str, *, fusion: AlignFuseConfig, image: int, text_len: int, vocab: int,
                positions: int, token_types: int, description: str, source: str) -> Preset:
    """A ViT-B/16-style patch embedder (bias, [CLS], learned positions at the image's grid) and
    BERT text embeddings at the fusion's widths."""
    grid = (image // 16, image // 16)
    return Preset(
        name=name,
        description=description,
        visual=PatchProjectionConfig(width=fusion.vision_width, patch_size=16, pos_grid=grid,
                                     bias=True),
        text=BertTextConfig(vocab_size=vocab, width=fusion.text_width, max_positions=positions,
                            type_vocab_size=token_types),
        fusion=fusion,
        image_size=(image, image),
        text_len=text_len,
        source=source,
    )


#: ALBEF-base (the defaults): 6 text layers, then 6 layers of their own with cross-attention
ALBEF = AlignFuseConfig()
#: BLIP-base: one 12-layer text encoder with a cross-attention in every layer, run twice
BLIP = AlignFuseConfig(text_depth=12, fusion_depth=12, layout="shared")
_TINY_VIT = {"vision_width": 64, "vision_depth": 2, "vision_heads": 2, "vision_mlp_dim": 128,
             "text_width": 64, "text_heads": 2, "text_mlp_dim": 128, "embed_dim": 32}

register_pair(
    _align_fuse("albef-base", fusion=ALBEF, image=384, text_len=30, vocab=30522, positions=512,
                token_types=2, source="Li et al. 2021 (ALBEF), arXiv 2107.07651",
                description="ALBEF (retrieval): ViT-B/16 at 384x384 (576 patches), BERT-base "
                            "split 6 text + 6 cross-attention layers, ITM path, 30 text"),
    _align_fuse("albef-base-tiny", fusion=AlignFuseConfig(**_TINY_VIT, text_depth=1,
                                                          fusion_depth=1),
                image=64, text_len=8, vocab=1000, positions=16, token_types=2, source="",
                description="ALBEF twin for tests: 2 image layers, 1 text + 1 fusion layer"),
)
register_pair(
    _align_fuse("blip-base", fusion=BLIP, image=384, text_len=35, vocab=30524, positions=512,
                token_types=0, source="Li et al. 2022 (BLIP), arXiv 2201.12086",
                description="BLIP (retrieval): ViT-B/16 at 384x384 (576 patches), one BERT-base "
                            "text encoder with cross-attention in all 12 layers, ITM path, "
                            "35 text"),
    _align_fuse("blip-base-tiny", fusion=AlignFuseConfig(**_TINY_VIT, text_depth=2,
                                                         fusion_depth=2, layout="shared"),
                image=64, text_len=8, vocab=1000, positions=16, token_types=0, source="",
                description="BLIP twin for tests: 2 image layers, 2 shared text layers"),
)
