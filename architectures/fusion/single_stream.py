"""Single-stream fusion: one transformer over the concatenated [text; image] tokens (ViLT,
UNITER, VisualBERT). Everything here is modality interaction."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from feature_extractors import StageKind, Tokens

from ..layers import Encoder, adapter
from .base import FusionOutput


@dataclass(frozen=True)
class SingleStreamConfig:
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    activation: str = "gelu"
    eps: float = 1e-12
    num_modalities: int = 2

    @property
    def text_width(self) -> int:
        return self.width

    @property
    def vision_width(self) -> int:
        return self.width


#: a composed pair's single stream at test widths (the base one is BERT-base, the defaults)
TINY_SINGLE_STREAM = SingleStreamConfig(width=64, depth=2, heads=2, mlp_dim=128)


class SingleStream(nn.Module):
    """Modality-type embeddings, pre-LN blocks, final LayerNorm, pooler (Linear + tanh on the
    first token, which is the text [CLS])."""

    substages = {"encoder": StageKind.INTERACTION}

    def __init__(
        self,
        *,
        text_dim: int,
        vision_dim: int,
        width: int,
        depth: int,
        heads: int,
        mlp_dim: int,
        activation: str,
        eps: float,
        num_modalities: int,
    ) -> None:
        super().__init__()
        self.out_dim = width
        self.text_in = adapter(text_dim, width)
        self.vision_in = adapter(vision_dim, width)
        self.modality = nn.Embedding(num_modalities, width)
        self.encoder = Encoder(
            width=width, depth=depth, heads=heads, mlp_dim=mlp_dim, activation=activation, eps=eps
        )
        self.norm = nn.LayerNorm(width, eps=eps)
        self.pooler = nn.Linear(width, width)

    def forward(self, text: Tokens, vision: Tokens) -> FusionOutput:
        t = self.text_in(text.embeds) + self.modality.weight[0]  # (B, Nt, D)
        v = self.vision_in(vision.embeds) + self.modality.weight[1]  # (B, Nv, D)
        x = torch.cat([t, v], dim=1)  # (B, Nt + Nv, D)
        mask = torch.cat([text.mask, vision.mask], dim=1)
        x = self.norm(self.encoder(x, mask))
        pooled = torch.tanh(self.pooler(x[:, 0]))
        nt = t.shape[1]
        return FusionOutput(pooled=pooled, text=x[:, :nt], vision=x[:, nt:])
