"""Align before fuse (ALBEF, Li et al., NeurIPS 2021; BLIP, Li et al., ICML 2022): a ViT image
tower and a BERT text encoder aligned contrastively (ITC), and text layers with cross-attention to
the image tokens for image-text matching (ITM).

The layout of the BERT layers is configuration:

- ``"disjoint"`` (ALBEF, salesforce/ALBEF ``xbert.py``, ``fusion_layer`` 6): ``text_depth``
  text-only layers, then ``fusion_depth`` layers of their own with cross-attention. Both paths
  run the text layers; the ITM path runs the fusion layers on their output.
- ``"shared"`` (BLIP, salesforce/BLIP ``med.py``): one stack of ``text_depth`` layers whose top
  ``fusion_depth`` (BLIP: all 12) hold a cross-attention. The ITC path runs them without it, the
  ITM path runs the same layers again from the text embeddings, cross-attending: the same
  weights, run twice when both paths run, counted once.

Every BERT layer is post-LN: self-attention, cross-attention where the path uses it, FFN.

``forward`` is **the ITM path for one pair** -- image tower, text encoder with cross-attention,
ITM head -- what ViLT and UNITER are timed doing; ``match`` holds the ITM logits (B, 2),
``pooled`` the multimodal [CLS]. ``itc`` is the ITC path (image tower, text encoder without
cross-attention, projections, cosine similarity), what a retrieval scenario times, with
``encode_image`` / ``encode_text`` for a cached gallery. ``index_image`` / ``index_text`` /
``fuse`` split the two paths the way a re-ranking runs them (``architectures.rerank``): each
side's ITC embedding with the states the ITM path reads of it, and the ITM path from those
states. Its stages are ``itc_substages``
(``declared_stages(fusion, fusion.itc_substages)``), since a hook fires on every call of a
module and the shared layers serve both paths.

ITM stages (``substages``): ``vision_tower`` and ``text_encoder`` (single modality; the text
layers the ITM path runs without cross-attention: ALBEF's 6, BLIP's none), ``fusion_layers``
(interaction: the layers that cross-attend, one call each), ``itm_head`` (head). ITC stages:
``vision_tower``, ``text_encoder`` (the text-only work; where a layer also holds a
cross-attention the set names its self-attention and FFN, two calls per layer, so that its
parameters are the path's own), ``itc`` (interaction, as a dual encoder's projections).

Left out: the contrastive temperature (one parameter, used by the training loss only; retrieval
ranks by the raw cosine similarity in both official evaluations and in transformers'
``BlipForImageTextRetrieval``), the momentum encoders and queues (training only), dropout. The
ViT's patch embedding, [CLS] and position table are the patch embedder; the word, position (and
ALBEF's token-type) embeddings are the text embedder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from feature_extractors import StageKind, Substage, Tokens

from ..layers import AttentionSublayer, Encoder, FeedForward, adapter, key_padding_mask
from .base import FusionOutput

LAYOUTS = ("disjoint", "shared")


@dataclass(frozen=True)
class AlignFuseConfig:
    """Defaults: ALBEF-base (ViT-B/16, BERT-base split 6 + 6, ITC at 256)."""

    vision_width: int = 768
    vision_depth: int = 12
    vision_heads: int = 12
    vision_mlp_dim: int = 3072
    vision_eps: float = 1e-6
    text_width: int = 768
    text_depth: int = 6  # the text encoder: what the ITC path runs
    fusion_depth: int = 6  # layers with cross-attention
    text_heads: int = 12
    text_mlp_dim: int = 3072
    text_eps: float = 1e-12
    layout: str = "disjoint"  # "disjoint" (ALBEF) or "shared" (BLIP)
    embed_dim: int = 256  # the ITC projections' width

    def __post_init__(self) -> None:
        check_layout(self.layout, self.text_depth, self.fusion_depth)


def check_layout(layout: str, text_depth: int, fusion_depth: int) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    if text_depth < 0 or fusion_depth < 1:
        raise ValueError(f"need text_depth >= 0 and fusion_depth >= 1, got {text_depth} and "
                         f"{fusion_depth}")
    if layout == "shared" and fusion_depth > text_depth:
        raise ValueError(f"a shared layout's {fusion_depth} cross-attending layers must be among "
                         f"its {text_depth} text layers")


#: ALBEF's layout at test widths (a composed pair's align-fuse)
TINY_ALIGN_FUSE = AlignFuseConfig(
    vision_width=64, vision_depth=2, vision_heads=2, vision_mlp_dim=128, text_width=64,
    text_depth=1, fusion_depth=1, text_heads=2, text_mlp_dim=128, embed_dim=32)


class ImageTower(nn.Module):
    """The ViT's blocks and final LayerNorm over the patch embedder's tokens: (B, N, D)."""

    def __init__(self, *, in_dim: int, width: int, depth: int, heads: int, mlp_dim: int,
                 eps: float) -> None:
        super().__init__()
        self.input = adapter(in_dim, width)
        self.encoder = Encoder(width=width, depth=depth, heads=heads, mlp_dim=mlp_dim, eps=eps)
        self.norm = nn.LayerNorm(width, eps=eps)

    def forward(self, tokens: Tokens) -> torch.Tensor:
        return self.norm(self.encoder(self.input(tokens.embeds), tokens.mask))


class TextLayer(nn.Module):
    """A BERT layer (``xbert``/``med`` ``BertLayer``): post-LN self-attention, cross-attention to
    the image tokens when it has one and is given them, post-LN FFN."""

    def __init__(self, width: int, heads: int, mlp_dim: int, *, image_width: int, eps: float,
                 cross: bool) -> None:
        super().__init__()
        self.attention = AttentionSublayer(width, heads, eps=eps)
        self.cross = (AttentionSublayer(width, heads, context_width=image_width, eps=eps)
                      if cross else None)
        self.ffn = FeedForward(width, mlp_dim, eps=eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None,
                image: torch.Tensor | None = None,
                image_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.attention(x, attn_mask=mask)
        if image is not None and self.cross is not None:
            x = self.cross(x, image, attn_mask=image_mask)  # (B, Nt, D) over (B, Nv, Dv)
        return self.ffn(x)


class Similarity(nn.Module):
    """ITC: projections of each [CLS] to ``embed_dim``, normalised; cosine similarity."""

    def __init__(self, *, vision_width: int, text_width: int, embed_dim: int) -> None:
        super().__init__()
        self.vision_proj = nn.Linear(vision_width, embed_dim)
        self.text_proj = nn.Linear(text_width, embed_dim)

    def forward(self, image: torch.Tensor, text: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        img = F.normalize(self.vision_proj(image), dim=-1)  # (B, E)
        txt = F.normalize(self.text_proj(text), dim=-1)  # (B, E)
        return img * txt, img @ txt.t()  # (B, E) summing to each pair's score; (B, B)


class AlignFuse(nn.Module):
    """Image tower, BERT text layers (some with cross-attention) laid out by ``layout``, ITC
    projections and ITM head; ``forward`` is the ITM path, ``itc`` the ITC path (module
    docstring)."""

    def __init__(self, *, text_dim: int, vision_dim: int, vision_width: int, vision_depth: int,
                 vision_heads: int, vision_mlp_dim: int, vision_eps: float, text_width: int,
                 text_depth: int, fusion_depth: int, text_heads: int, text_mlp_dim: int,
                 text_eps: float, layout: str, embed_dim: int) -> None:
        super().__init__()
        check_layout(layout, text_depth, fusion_depth)
        self.out_dim = text_width
        self.vision_tower = ImageTower(in_dim=vision_dim, width=vision_width, depth=vision_depth,
                                       heads=vision_heads, mlp_dim=vision_mlp_dim, eps=vision_eps)
        self.text_in = adapter(text_dim, text_width)
        self.layout = layout
        shared = layout == "shared"
        first_cross = text_depth - fusion_depth if shared else text_depth

        def layer(cross: bool) -> TextLayer:
            return TextLayer(text_width, text_heads, text_mlp_dim, image_width=vision_width,
                             eps=text_eps, cross=cross)

        self.text_layers = nn.ModuleList(layer(shared and i >= first_cross)
                                         for i in range(text_depth))
        self.cross_layers = nn.ModuleList(layer(True) for _ in range(0 if shared else fusion_depth))
        self.itc_head = Similarity(vision_width=vision_width, text_width=text_width,
                                   embed_dim=embed_dim)
        self.itm_head = nn.Linear(text_width, 2)
        # the ITM path's layers: the text layers before the first cross-attention, then the
        # layers that cross-attend (BLIP: the text layers themselves, run again)
        fusing = (_paths("text_layers", range(first_cross, text_depth)) if shared
                  else _paths("cross_layers", range(fusion_depth)))
        self.substages = {"vision_tower": StageKind.SINGLE_MODALITY}
        if first_cross:
            self.substages["text_encoder"] = Substage(
                StageKind.SINGLE_MODALITY, _paths("text_layers", range(first_cross)))
        self.substages["fusion_layers"] = Substage(StageKind.INTERACTION, fusing)
        self.substages["itm_head"] = StageKind.HEAD
        self.itc_substages = {"vision_tower": StageKind.SINGLE_MODALITY}
        if text_depth:
            self.itc_substages["text_encoder"] = Substage(
                StageKind.SINGLE_MODALITY, self._text_only_paths())
        self.itc_substages["itc_head"] = StageKind.INTERACTION

    def _text_only_paths(self) -> tuple[str, ...]:
        """The modules the ITC path runs in the text layers: a whole layer, or the
        self-attention and FFN of a layer that also holds a cross-attention."""
        out: list[str] = []
        for i, layer in enumerate(self.text_layers):
            whole = layer.cross is None
            out.extend([f"text_layers.{i}"] if whole
                       else [f"text_layers.{i}.attention", f"text_layers.{i}.ffn"])
        return tuple(out)

    def _text(self, text: Tokens, image: torch.Tensor | None, image_mask: torch.Tensor | None
              ) -> torch.Tensor:
        """The text through the text layers (cross-attending where they can, if ``image`` is
        given) and, with ``image``, ALBEF's own cross-attention layers: (B, Nt, D)."""
        t = self.text_in(text.embeds)  # (B, Nt, D)
        mask = key_padding_mask(text.mask)  # (B, 1, 1, Nt)
        for layer in self.text_layers:
            t = layer(t, mask, image, image_mask)
        if image is not None:
            for layer in self.cross_layers:
                t = layer(t, mask, image, image_mask)
        return t

    def encode_image(self, vision: Tokens) -> torch.Tensor:
        """ITC image embedding: (B, embed_dim), unit length."""
        return self.index_image(vision)[0]

    def encode_text(self, text: Tokens) -> torch.Tensor:
        """ITC text embedding (no cross-attention): (B, embed_dim), unit length."""
        return self.index_text(text)[0]

    def index_image(self, vision: Tokens) -> tuple[torch.Tensor, Tokens]:
        """What a re-ranking index keeps of an image (``architectures.rerank``): its ITC
        embedding (B, embed_dim) and the tower's output (B, Nv, Dv), which the ITM path's
        cross-attention reads -- one tower forward for both."""
        image = self.vision_tower(vision)  # (B, Nv, Dv)
        embedding = F.normalize(self.itc_head.vision_proj(image[:, 0]), dim=-1)
        return embedding, Tokens(image, vision.mask, grid=vision.grid)

    def index_text(self, text: Tokens) -> tuple[torch.Tensor, Tokens]:
        """A text's ITC embedding (B, embed_dim) and what the ITM path reads of it: ALBEF's
        text-layer output (its fusion layers continue from it, as ``encoder_embeds``), BLIP's
        token embeddings (its shared layers run again, cross-attending)."""
        t = self._text(text, None, None)  # (B, Nt, D)
        embedding = F.normalize(self.itc_head.text_proj(t[:, 0]), dim=-1)
        return embedding, (text if self.layout == "shared" else Tokens(t, text.mask))

    def fuse(self, text: Tokens, image: Tokens) -> FusionOutput:
        """The ITM path from what ``index_text`` and ``index_image`` keep (the text's states
        and the tower's output): ``forward`` without the towers, what re-ranking runs per
        pair."""
        image_mask = key_padding_mask(image.mask)
        if self.layout == "shared":
            t = self._text(text, image.embeds, image_mask)  # (B, Nt, D)
        else:
            t, mask = text.embeds, key_padding_mask(text.mask)
            for layer in self.cross_layers:
                t = layer(t, mask, image.embeds, image_mask)
        return FusionOutput(pooled=t[:, 0], text=t, vision=image.embeds,
                            match=self.itm_head(t[:, 0]))

    def itc(self, text: Tokens, vision: Tokens) -> FusionOutput:
        """The ITC path: ``logits`` (B, B) image-to-text cosine similarities; ``pooled`` the
        elementwise products of the aligned pairs' embeddings (each sums to its pair's score)."""
        image = self.vision_tower(vision)  # (B, Nv, Dv)
        t = self._text(text, None, None)  # (B, Nt, D)
        pooled, logits = self.itc_head(image[:, 0], t[:, 0])
        return FusionOutput(pooled=pooled, text=t, vision=image, logits=logits)

    def forward(self, text: Tokens, vision: Tokens) -> FusionOutput:
        image = Tokens(self.vision_tower(vision), vision.mask)  # (B, Nv, Dv)
        if self.layout == "shared":
            return self.fuse(text, image)
        return self.fuse(Tokens(self._text(text, None, None), text.mask), image)


def _paths(prefix: str, indices: range) -> tuple[str, ...]:
    return tuple(f"{prefix}.{i}" for i in indices)
