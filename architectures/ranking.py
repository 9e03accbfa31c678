"""The pieces every retrieval strategy shares (``architectures.retrieval``,
``architectures.rerank``): token batches joined, sliced, gathered and broadcast; the cosine
similarity against a cached gallery; a top-k; the final sort. Each step a strategy times is a
module, so that the harness can hook it by name."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from feature_extractors import Tokens


@dataclass(frozen=True)
class Ranked:
    """``scores`` (M,) the scored items' scores; ``order`` (M,) their gallery indices, best
    first; ``candidates`` (M,) the gallery index of each score (a re-ranking's top k), or None
    when every one of the N items was scored, in gallery order (M = N)."""

    scores: torch.Tensor
    order: torch.Tensor
    candidates: torch.Tensor | None = None


def cat_tokens(parts: Sequence[Tokens]) -> Tokens:
    """Token batches joined along the batch; batches with fewer tokens (adaptive region
    selection) are padded with masked-out zeros."""
    n = max(p.embeds.shape[1] for p in parts)

    def pad(t: torch.Tensor, value: float | bool) -> torch.Tensor:
        extra = n - t.shape[1]
        if extra == 0:
            return t
        shape = (t.shape[0], extra, *t.shape[2:])
        return torch.cat([t, t.new_full(shape, value)], dim=1)

    boxes = None
    if all(p.boxes is not None for p in parts):
        boxes = torch.cat([pad(p.boxes, 0.0) for p in parts])  # type: ignore[arg-type]
    grids = {p.grid for p in parts}
    return Tokens(torch.cat([pad(p.embeds, 0.0) for p in parts]),
                  torch.cat([pad(p.mask, False) for p in parts]), boxes,
                  grids.pop() if len(grids) == 1 else None)


def take(tokens: Tokens, start: int, stop: int) -> Tokens:
    """Items ``start:stop`` of a token batch (views, no copy)."""
    boxes = tokens.boxes[start:stop] if tokens.boxes is not None else None
    return Tokens(tokens.embeds[start:stop], tokens.mask[start:stop], boxes, tokens.grid)


def gather(tokens: Tokens, index: torch.Tensor) -> Tokens:
    """Items ``index`` (B,) of a token batch, in that order (a copy: (B, T, D))."""
    boxes = tokens.boxes[index] if tokens.boxes is not None else None
    return Tokens(tokens.embeds[index], tokens.mask[index], boxes, tokens.grid)


def broadcast(tokens: Tokens, batch: int) -> Tokens:
    """One item's tokens repeated ``batch`` times (a view until a layer projects them)."""
    boxes = tokens.boxes.expand(batch, -1, -1) if tokens.boxes is not None else None
    return Tokens(tokens.embeds.expand(batch, -1, -1), tokens.mask.expand(batch, -1), boxes,
                  tokens.grid)


class Similarity(nn.Module):
    """Cosine similarity of one query embedding with every cached gallery embedding."""

    def forward(self, query: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
        return gallery @ query[0]  # (N, E) @ (E,) -> (N,)


class TopK(nn.Module):
    """The gallery indices of the ``k`` best scores, best first; ``k`` is clamped to the
    gallery (k = 256 against N = 10 keeps all 10)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self.k = k

    def clamped(self, n: int) -> int:
        """The k a gallery of ``n`` items gets."""
        return min(self.k, n)

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return torch.topk(scores, self.clamped(scores.shape[0])).indices  # (k,)


class Ranking(nn.Module):
    """The scored items ordered by score, best first (a full sort of what was scored): all N
    items, or a re-ranking's k ``candidates`` (their gallery indices)."""

    def forward(self, scores: torch.Tensor, candidates: torch.Tensor | None = None) -> Ranked:
        order = torch.argsort(scores, descending=True, stable=True)
        return Ranked(scores, order if candidates is None else candidates[order], candidates)
