"""Text embedders: token ids -> ``Tokens``. Shared by every model of a family, so the ViLT paper
leaves them out of its timings; vlbench times them as their own stage."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .tokens import Tokens


@dataclass(frozen=True)
class BertTextConfig:
    """BERT-style word + position + token-type embeddings, then LayerNorm (ViLT, UNITER, ...).

    ``type_vocab_size=0``: no token-type table (BLIP's text embeddings are word + position).
    ``add_positions=False``: the position table is kept but not added (VLMo's BERT embeddings
    with ``position_embedding_type="rel_pos"``: the table is in its checkpoint, the positions
    come from the fusion's relative position bias)."""

    vocab_size: int = 30522
    width: int = 768
    max_positions: int = 40  # ViLT's max text length; BERT itself has 512
    type_vocab_size: int = 2
    eps: float = 1e-12
    add_positions: bool = True


def canonical_bert_text(width: int, tiny: bool) -> tuple[BertTextConfig, None]:
    """The text side of a composed pair whose fusion reads BERT-style tokens."""
    return BertTextConfig(vocab_size=1000 if tiny else 30522, width=width,
                          max_positions=16 if tiny else 512), None


class BertTextEmbedding(nn.Module):
    def __init__(
        self, *, vocab_size: int, width: int, max_positions: int, type_vocab_size: int, eps: float,
        add_positions: bool = True,
    ) -> None:
        super().__init__()
        self.out_dim = width
        self.vocab_size = vocab_size
        self.max_positions = max_positions
        self.word = nn.Embedding(vocab_size, width)
        self.position = nn.Embedding(max_positions, width)
        self.add_positions = add_positions
        self.token_type = nn.Embedding(type_vocab_size, width) if type_vocab_size else None
        self.norm = nn.LayerNorm(width, eps=eps)
        self.register_buffer("position_ids", torch.arange(max_positions), persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Tokens:
        n = input_ids.shape[1]  # (B, N)
        if n > self.max_positions:
            raise ValueError(f"text length {n} exceeds the {self.max_positions} positions")
        x = self.word(input_ids)  # (B, N, D)
        if self.add_positions:
            x = x + self.position(self.position_ids[:n])
        if self.token_type is not None:
            x = x + self.token_type.weight[0]  # a single segment: type 0 everywhere
        return Tokens(self.norm(x), attention_mask.bool())


@dataclass(frozen=True)
class ClipTextConfig:
    """CLIP-style token + learned position embeddings (no norm: the tower normalises)."""

    vocab_size: int = 49408
    width: int = 512
    max_positions: int = 77


def canonical_clip_text(width: int, tiny: bool) -> tuple[ClipTextConfig, None]:
    """The text side of a composed dual encoder: CLIP's 49,408-token vocabulary, 77 positions."""
    if tiny:
        return ClipTextConfig(vocab_size=1000, width=width, max_positions=16), None
    return ClipTextConfig(width=width), None


class ClipTextEmbedding(nn.Module):
    def __init__(self, *, vocab_size: int, width: int, max_positions: int) -> None:
        super().__init__()
        self.out_dim = width
        self.vocab_size = vocab_size
        self.max_positions = max_positions
        self.token = nn.Embedding(vocab_size, width)
        self.position = nn.Embedding(max_positions, width)
        nn.init.normal_(self.token.weight, std=0.02)
        nn.init.normal_(self.position.weight, std=0.01)
        self.register_buffer("position_ids", torch.arange(max_positions), persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Tokens:
        n = input_ids.shape[1]  # (B, N)
        if n > self.max_positions:
            raise ValueError(f"text length {n} exceeds the {self.max_positions} positions")
        x = self.token(input_ids) + self.position(self.position_ids[:n])
        return Tokens(x, attention_mask.bool())
