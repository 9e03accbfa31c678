"""Dual encoder (CLIP-style): a vision tower and a text tower that never see each other, then
projections and a dot product. The towers are single-modality stages of their own; only the
projections and the similarity are modality interaction."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from feature_extractors import StageKind, Tokens

from ..layers import Encoder, adapter
from .base import FusionOutput


@dataclass(frozen=True)
class DualEncoderConfig:
    embed_dim: int = 512
    vision_width: int = 768
    vision_depth: int = 12
    vision_heads: int = 12
    vision_mlp_dim: int = 3072
    text_width: int = 512
    text_depth: int = 12
    text_heads: int = 8
    text_mlp_dim: int = 2048
    activation: str = "quick_gelu"
    eps: float = 1e-5


#: a composed pair's dual encoder at test widths (the base one is CLIP ViT-B, the defaults)
TINY_DUAL_ENCODER = DualEncoderConfig(
    embed_dim=32, vision_width=64, vision_depth=2, vision_heads=2, vision_mlp_dim=128,
    text_width=32, text_depth=2, text_heads=2, text_mlp_dim=64)


class VisionTower(nn.Module):
    """LayerNorm, encoder, LayerNorm on the first ([CLS]) token: (B, N, Din) -> (B, D)."""

    def __init__(self, *, in_dim: int, width: int, depth: int, heads: int, mlp_dim: int,
                 activation: str, eps: float) -> None:
        super().__init__()
        self.input = adapter(in_dim, width)
        self.norm_pre = nn.LayerNorm(width, eps=eps)
        self.encoder = Encoder(width=width, depth=depth, heads=heads, mlp_dim=mlp_dim,
                               activation=activation, eps=eps)
        self.norm_post = nn.LayerNorm(width, eps=eps)

    def forward(self, tokens: Tokens) -> torch.Tensor:
        x = self.encoder(self.norm_pre(self.input(tokens.embeds)), tokens.mask)
        return self.norm_post(x[:, 0])


class TextTower(nn.Module):
    """Causal encoder, final LayerNorm, pooled at the last real token (end of text).

    No padding mask is needed: under the causal mask, padding after the end-of-text token cannot
    reach it. The pooling index comes from the mask on the device, without a host round trip.
    """

    def __init__(self, *, in_dim: int, width: int, depth: int, heads: int, mlp_dim: int,
                 activation: str, eps: float) -> None:
        super().__init__()
        self.input = adapter(in_dim, width)
        self.encoder = Encoder(width=width, depth=depth, heads=heads, mlp_dim=mlp_dim,
                               activation=activation, eps=eps)
        self.norm = nn.LayerNorm(width, eps=eps)

    def forward(self, tokens: Tokens) -> torch.Tensor:
        x = self.norm(self.encoder(self.input(tokens.embeds), is_causal=True))  # (B, N, D)
        last = tokens.mask.sum(dim=1) - 1  # (B,) index of end of text
        return x[torch.arange(x.shape[0], device=x.device), last]


class Contrastive(nn.Module):
    """Projections to the joint space, normalisation, scaled cosine similarity."""

    def __init__(self, *, vision_width: int, text_width: int, embed_dim: int) -> None:
        super().__init__()
        self.vision_proj = nn.Linear(vision_width, embed_dim, bias=False)
        self.text_proj = nn.Linear(text_width, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        img = F.normalize(self.vision_proj(image), dim=-1)  # (B, E)
        txt = F.normalize(self.text_proj(text), dim=-1)  # (B, E)
        logits = self.logit_scale.exp() * img @ txt.t()  # (B, B)
        return img * txt, logits


class DualEncoder(nn.Module):
    substages = {
        "vision_tower": StageKind.SINGLE_MODALITY,
        "text_tower": StageKind.SINGLE_MODALITY,
        "interaction": StageKind.INTERACTION,
    }

    def __init__(self, *, text_dim: int, vision_dim: int, embed_dim: int, vision_width: int,
                 vision_depth: int, vision_heads: int, vision_mlp_dim: int, text_width: int,
                 text_depth: int, text_heads: int, text_mlp_dim: int, activation: str,
                 eps: float) -> None:
        super().__init__()
        self.out_dim = embed_dim
        self.vision_tower = VisionTower(in_dim=vision_dim, width=vision_width, depth=vision_depth,
                                        heads=vision_heads, mlp_dim=vision_mlp_dim,
                                        activation=activation, eps=eps)
        self.text_tower = TextTower(in_dim=text_dim, width=text_width, depth=text_depth,
                                    heads=text_heads, mlp_dim=text_mlp_dim,
                                    activation=activation, eps=eps)
        self.interaction = Contrastive(vision_width=vision_width, text_width=text_width,
                                       embed_dim=embed_dim)

    #: ``forward`` is a product of two separate embeddings, never a joint forward of a pair
    fuses = False

    def encode_image(self, vision: Tokens) -> torch.Tensor:
        return F.normalize(self.interaction.vision_proj(self.vision_tower(vision)), dim=-1)

    def encode_text(self, text: Tokens) -> torch.Tensor:
        return F.normalize(self.interaction.text_proj(self.text_tower(text)), dim=-1)

    def forward(self, text: Tokens, vision: Tokens) -> FusionOutput:
        pooled, logits = self.interaction(self.vision_tower(vision), self.text_tower(text))
        return FusionOutput(pooled=pooled, logits=logits)
