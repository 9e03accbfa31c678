"""What every fusion scheme returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FusionOutput:
    """``pooled`` (B, D): the joint representation a task head reads (single stream: the pooler
    on the first token; dual encoder: the normalised image and text embeddings multiplied
    elementwise, whose sum is the pair's cosine similarity). ``text`` (B, Nt, Dt) and ``vision``
    (B, Nv, Dv): the final sequences where the scheme has them. ``logits`` (B, B): a dual
    encoder's image-to-text similarity matrix. ``match`` (B, 2): image-text matching logits
    (no match, match), where the scheme's forward ends in its own ITM head (ALBEF, BLIP)."""

    pooled: torch.Tensor
    text: torch.Tensor | None = None
    vision: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    match: torch.Tensor | None = None
