"""Ranking a gallery with a ``VLModel``, each fusion scheme in its natural way.

A dual encoder (CLIP) never lets the two sides meet before the similarity, so it embeds the
gallery once, offline, and ranks a query with one tower forward, one matrix product and a sort.
A fusion model (single or two stream) cannot: every (query, candidate) pair needs its own joint
forward. What it can cache is the candidate side's embedder output -- an image's patch or region
tokens (text to image), a text's token embeddings (image to text) -- so its offline step runs
only that embedder, and its query step runs the query's embedder once and the fusion over the N
pairs in batches, scoring each pair with an image-text matching head.

``Retriever`` holds the two steps as submodules, ``gallery`` and ``query``, whose names (and their
children's) are the stage vocabulary the harness times; like ``VLModel`` it knows nothing of
timing. Directions: ``t2i`` (a text query, a gallery of images) and ``i2t`` (the reverse).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from feature_extractors import Stage, StageKind, Tokens, declared_stages

from .fusion import DualEncoder
from .heads import MatchHead
from .model import VLModel

DIRECTIONS = ("t2i", "i2t")


@dataclass(frozen=True)
class Ranked:
    """``scores`` (N,) each gallery item's score, in gallery order; ``order`` (N,) the gallery
    indices, best first."""

    scores: torch.Tensor
    order: torch.Tensor


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


class Projected(nn.Module):
    """A dual encoder's tower, projection and normalisation: tokens -> unit embeddings (B, E)."""

    def __init__(self, tower: nn.Module, proj: nn.Module) -> None:
        super().__init__()
        self.tower = tower
        self.proj = proj

    def forward(self, tokens: Tokens) -> torch.Tensor:
        return F.normalize(self.proj(self.tower(tokens)), dim=-1)


class GalleryEncoder(nn.Module):
    """Offline, once per gallery: every item through the embedder of its side (``visual`` or
    ``text``) and, for a dual encoder, its ``tower``, batch by batch. The joined result is the
    cache a query reads: unit embeddings (N, E), or the embedder's tokens (N, T, D)."""

    def __init__(self, *, side: str, embed: nn.Module, embed_kind: StageKind,
                 tower: nn.Module | None) -> None:
        super().__init__()
        self.side = side
        self.add_module(side, embed)
        self.tower = tower
        self.substages = {side: embed_kind}
        if tower is not None:
            self.substages["tower"] = StageKind.SINGLE_MODALITY

    def forward(self, batches: Sequence[tuple[Any, ...]]) -> torch.Tensor | Tokens:
        embed = self.get_submodule(self.side)
        out = []
        for batch in batches:
            x = embed(*batch)
            out.append(x if self.tower is None else self.tower(x))
        return torch.cat(out) if self.tower is not None else cat_tokens(out)


class Similarity(nn.Module):
    """Cosine similarity of one query embedding with every cached gallery embedding."""

    def forward(self, query: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
        return gallery @ query[0]  # (N, E) @ (E,) -> (N,)


class Ranking(nn.Module):
    """The whole gallery ordered by score, best first (a full sort, not a top-k)."""

    def forward(self, scores: torch.Tensor) -> Ranked:
        return Ranked(scores, torch.argsort(scores, descending=True, stable=True))


class PairScorer(nn.Module):
    """One joint forward over a batch of (query, candidate) pairs and the matching head: (B,)
    scores. The query's tokens are broadcast over the batch (a view until the fusion
    concatenates or projects them)."""

    def __init__(self, *, fusion: nn.Module, fusion_kind: StageKind, match: nn.Module,
                 query_side: str) -> None:
        super().__init__()
        self.fusion = fusion
        self.match = match
        self.query_side = query_side
        self.substages = {"fusion": fusion_kind, "match": StageKind.HEAD}

    def forward(self, query: Tokens, candidates: Tokens) -> torch.Tensor:
        b = candidates.embeds.shape[0]
        boxes = query.boxes.expand(b, -1, -1) if query.boxes is not None else None
        q = Tokens(query.embeds.expand(b, -1, -1), query.mask.expand(b, -1), boxes, query.grid)
        text, vision = (q, candidates) if self.query_side == "text" else (candidates, q)
        return self.match(self.fusion(text, vision).pooled)  # (B,)


class CachedQuery(nn.Module):
    """Dual encoder, per query: the query through its embedder and tower, one product with the
    cached gallery embeddings, a sort. Nothing here grows with N but the product and the sort."""

    def __init__(self, *, side: str, embed: nn.Module, embed_kind: StageKind,
                 tower: nn.Module) -> None:
        super().__init__()
        self.side = side
        self.add_module(side, embed)
        self.tower = tower
        self.score = Similarity()
        self.rank = Ranking()
        self.substages = {side: embed_kind, "tower": StageKind.SINGLE_MODALITY,
                          "score": StageKind.INTERACTION, "rank": StageKind.RANKING}

    def forward(self, inputs: tuple[Any, ...], gallery: torch.Tensor,
                batch_size: int | None = None) -> Ranked:
        query = self.tower(self.get_submodule(self.side)(*inputs))  # (1, E)
        return self.rank(self.score(query, gallery))


class JointQuery(nn.Module):
    """Fusion model, per query: the query's embedder once, then ``pairs`` (the joint forward and
    the matching head) over the N cached candidates in batches of ``batch_size``, then a sort."""

    def __init__(self, *, side: str, embed: nn.Module, embed_kind: StageKind,
                 pairs: PairScorer) -> None:
        super().__init__()
        self.side = side
        self.add_module(side, embed)
        self.pairs = pairs
        self.rank = Ranking()
        self.substages = {side: embed_kind, "pairs": StageKind.INTERACTION,
                          "rank": StageKind.RANKING}

    def forward(self, inputs: tuple[Any, ...], gallery: Tokens,
                batch_size: int | None = None) -> Ranked:
        query: Tokens = self.get_submodule(self.side)(*inputs)  # (1, Tq, D)
        n = gallery.embeds.shape[0]
        step = batch_size or n
        scores = [self.pairs(query, take(gallery, i, i + step)) for i in range(0, n, step)]
        return self.rank(torch.cat(scores))


class Retriever(nn.Module):
    """A model's two retrieval steps: ``gallery`` (offline, once per gallery) and ``query`` (per
    query). ``forward(step, ...)`` runs one of them, so that hooks and FLOP counters see the
    retriever as the root of every step. Shares the model's modules (and weights)."""

    def __init__(self, model: VLModel, direction: str, match: nn.Module | None = None) -> None:
        super().__init__()
        if direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {direction!r}; valid: {', '.join(DIRECTIONS)}")
        self.direction = direction
        query_side, gallery_side = ("text", "visual") if direction == "t2i" else ("visual", "text")
        embed = {"visual": model.visual, "text": model.text}
        kind = {"visual": model.visual_kind, "text": StageKind.TEXT}
        fusion = model.fusion
        self.dual = isinstance(fusion, DualEncoder)
        if self.dual:
            towers = {"visual": Projected(fusion.vision_tower, fusion.interaction.vision_proj),
                      "text": Projected(fusion.text_tower, fusion.interaction.text_proj)}
            self.gallery = GalleryEncoder(side=gallery_side, embed=embed[gallery_side],
                                          embed_kind=kind[gallery_side],
                                          tower=towers[gallery_side])
            self.query: nn.Module = CachedQuery(side=query_side, embed=embed[query_side],
                                                embed_kind=kind[query_side],
                                                tower=towers[query_side])
        else:
            pairs = PairScorer(fusion=fusion, fusion_kind=model.fusion_kind,
                               match=match or MatchHead(in_dim=fusion.out_dim),
                               query_side=query_side)
            self.gallery = GalleryEncoder(side=gallery_side, embed=embed[gallery_side],
                                          embed_kind=kind[gallery_side], tower=None)
            self.query = JointQuery(side=query_side, embed=embed[query_side],
                                    embed_kind=kind[query_side], pairs=pairs)
        self.query_side, self.gallery_side = query_side, gallery_side
        self.substages = {"gallery": StageKind.OFFLINE, "query": StageKind.PER_QUERY}

    def stages(self) -> list[Stage]:
        """``gallery`` and ``query`` with their declared sub-stages."""
        return declared_stages(self)

    def forward(self, step: str, *args: Any) -> torch.Tensor | Tokens | Ranked:
        if step == "gallery":
            return self.gallery(*args)
        if step == "query":
            return self.query(*args)
        raise ValueError(f"unknown step {step!r}; valid: gallery, query")


def pair_scores(model: VLModel, images: Any, input_ids: torch.Tensor,
                attention_mask: torch.Tensor, match: nn.Module | None = None) -> torch.Tensor:
    """Scores of aligned (image, text) pairs through the whole model, nothing cached: the
    reference the retrieval steps must reproduce. A dual encoder's score is the cosine
    similarity (its pooled output sums to it); a fusion model's is ``match`` on the pooled
    output."""
    out = model(images, input_ids, attention_mask)
    if isinstance(model.fusion, DualEncoder):
        return out.pooled.sum(dim=-1)
    if match is None:
        raise ValueError("a fusion model's pairs need a matching head to score them")
    return match(out.pooled)
