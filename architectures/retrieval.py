"""Ranking a gallery with a ``VLModel``, each fusion scheme in its natural way (``strategies``).

- "cached": a dual encoder (CLIP, VLMo's dual way) never lets the two sides meet before the
  similarity, so it embeds the gallery once, offline, and ranks a query with one tower forward,
  one matrix product and a sort.
- "joint": a fusion model (single or two stream) cannot: every (query, candidate) pair needs
  its own joint forward. What it can cache is the candidate side's embedder output -- an
  image's patch or region tokens (text to image), a text's token embeddings (image to text) --
  so its offline step runs only that embedder, and its query step runs the query's embedder
  once and the fusion over the N pairs in batches, scoring each pair with an image-text
  matching head.
- "rerank": a model with both a contrastive (ITC) and a fusion (ITM) path (ALBEF, BLIP) ranks
  the gallery with the first and fuses only the top k (``architectures.rerank``); VLMo's fusion
  way can too, as a what-if (``Retriever.what_if``).

``Retriever`` holds the two steps as submodules, ``gallery`` and ``query``, whose names (and their
children's) are the stage vocabulary the harness times; like ``VLModel`` it knows nothing of
timing. Directions: ``t2i`` (a text query, a gallery of images) and ``i2t`` (the reverse).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from feature_extractors import Stage, StageKind, Tokens, declared_stages

from .fusion import DualEncoder, build_fusion
from .heads import MatchHead
from .model import VLModel
from .preset import Preset
from .ranking import Ranked, Ranking, Similarity, broadcast, cat_tokens, take
from .rerank import RerankGallery, RerankIndex, RerankQuery

DIRECTIONS = ("t2i", "i2t")
#: how a model ranks a gallery (module docstring); ``strategies`` says which a fusion offers
STRATEGIES = ("cached", "joint", "rerank")


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


class Encoded(nn.Module):
    """A cached gallery's tower for a fusion that is not a plain dual encoder (VLMo's dual way):
    tokens -> unit embeddings (B, E) through its ``encode_image`` / ``encode_text``."""

    def __init__(self, fusion: nn.Module, side: str) -> None:
        super().__init__()
        self.fusion = fusion
        self.side = side

    def forward(self, tokens: Tokens) -> torch.Tensor:
        if self.side == "visual":
            return self.fusion.encode_image(tokens)
        return self.fusion.encode_text(tokens)


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
        q = broadcast(query, candidates.embeds.shape[0])
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

    def pair_step(self, inputs: tuple[Any, ...], gallery: Tokens
                  ) -> tuple[Callable[[int], torch.Tensor], int]:
        """The batched part as a function of the batch size (the first candidates), and the
        most pairs a query scores: N."""
        query = self.get_submodule(self.side)(*inputs)
        return (lambda b: self.pairs(query, take(gallery, 0, b))), gallery.embeds.shape[0]


def _offers(fusion: nn.Module, *methods: str) -> bool:
    return all(callable(getattr(fusion, m, None)) for m in methods)


def strategies(fusion: nn.Module) -> tuple[str, ...]:
    """The strategies a fusion offers, its natural one first, read from what it declares (here
    and nowhere else): ``fuses`` False (its forward is a product of two embeddings, not a joint
    forward; default True) with ``encode_image`` / ``encode_text``: "cached"; a fusion with
    ``index_image`` / ``index_text`` / ``fuse`` as well (an ITC and an ITM path): "rerank",
    then "joint"; any other fusion: "joint"."""
    if not getattr(fusion, "fuses", True):
        if not _offers(fusion, "encode_image", "encode_text"):
            raise TypeError(f"{type(fusion).__name__} neither fuses a pair nor embeds each side "
                            "alone: it cannot rank a gallery")
        return ("cached",)
    if _offers(fusion, "encode_image", "encode_text", "index_image", "index_text", "fuse"):
        return ("rerank", "joint")
    return ("joint",)


def preset_strategies(preset: Preset) -> tuple[str, ...]:
    """``strategies`` of a preset's fusion, built on the meta device (no memory, no weights):
    what a suite asks before it gives a model its re-ranking cases."""
    config = preset.fusion
    with torch.device("meta"):
        fusion = build_fusion(config, text_dim=config.text_width, vision_dim=config.vision_width)
    return strategies(fusion)


def _towers(fusion: nn.Module) -> dict[str, nn.Module]:
    """A cached gallery's towers: a dual encoder's tower and projection modules (each stage
    holds its own tower's weights only), else the fusion's ``encode_image`` / ``encode_text``."""
    if isinstance(fusion, DualEncoder):
        return {"visual": Projected(fusion.vision_tower, fusion.interaction.vision_proj),
                "text": Projected(fusion.text_tower, fusion.interaction.text_proj)}
    return {"visual": Encoded(fusion, "visual"), "text": Encoded(fusion, "text")}


class Retriever(nn.Module):
    """A model's two retrieval steps: ``gallery`` (offline, once per gallery) and ``query`` (per
    query), by ``strategy`` (default: the model's natural one, ``strategies``); ``k``: a
    re-ranking's candidates per query (``architectures.rerank``), for "rerank" only.
    ``forward(step, ...)`` runs one step, so that hooks and FLOP counters see the retriever as
    the root of every step. Shares the model's modules (and weights)."""

    def __init__(self, model: VLModel, direction: str, match: nn.Module | None = None, *,
                 strategy: str | None = None, k: int | None = None) -> None:
        super().__init__()
        if direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {direction!r}; valid: {', '.join(DIRECTIONS)}")
        offered = strategies(model.fusion)
        self.strategy = strategy or offered[0]
        if self.strategy not in offered:
            raise ValueError(f"{model.fusion_name or type(model.fusion).__name__} cannot "
                             f"retrieve by {self.strategy!r}; it offers {', '.join(offered)}")
        if (k is None) == (self.strategy == "rerank"):
            raise ValueError(f"k is a re-ranking's candidate count: give it for 'rerank' only "
                             f"(strategy {self.strategy!r}, k {k!r})")
        self.direction = direction
        #: why this strategy is not the model's published retrieval (VLMo's re-ranking), if so
        self.what_if = (getattr(model.fusion, "rerank_what_if", None)
                        if self.strategy == "rerank" else None)
        self.query_side, self.gallery_side = (("text", "visual") if direction == "t2i"
                                              else ("visual", "text"))
        self.gallery, self.query = self._steps(model, match, k)
        self.substages = {"gallery": StageKind.OFFLINE, "query": StageKind.PER_QUERY}

    def _steps(self, model: VLModel, match: nn.Module | None, k: int | None
               ) -> tuple[nn.Module, nn.Module]:
        embed = {"visual": model.visual, "text": model.text}
        kind = {"visual": model.visual_kind, "text": StageKind.TEXT}
        fusion = model.fusion

        def side(name: str) -> dict[str, Any]:
            return {"side": name, "embed": embed[name], "embed_kind": kind[name]}

        q, g = self.query_side, self.gallery_side
        if self.strategy == "cached":
            towers = _towers(fusion)
            return (GalleryEncoder(**side(g), tower=towers[g]),
                    CachedQuery(**side(q), tower=towers[q]))
        match = match or MatchHead(in_dim=fusion.out_dim)
        if self.strategy == "rerank":
            assert k is not None
            return (RerankGallery(**side(g), fusion=fusion),
                    RerankQuery(**side(q), fusion=fusion, match=match, k=k))
        pairs = PairScorer(fusion=fusion, fusion_kind=model.fusion_kind, match=match,
                           query_side=q)
        return GalleryEncoder(**side(g), tower=None), JointQuery(**side(q), pairs=pairs)

    @property
    def dual(self) -> bool:
        """Whether the gallery is cached as embeddings and a query is one product."""
        return self.strategy == "cached"

    def k_for(self, n: int) -> int | None:
        """The candidates a re-ranking fuses against a gallery of ``n`` (k clamped to N)."""
        return self.query.topk.clamped(n) if self.strategy == "rerank" else None

    def cost_terms(self) -> dict[str, list[str]] | None:
        """A re-ranking's query stages behind rank(N) and fuse(k) (``RerankQuery.terms``)."""
        return self.query.cost_terms() if self.strategy == "rerank" else None

    def pair_step(self, inputs: tuple[Any, ...], cache: Tokens | RerankIndex
                  ) -> tuple[Callable[[int], torch.Tensor], int] | None:
        """The query step's batched part as a function of its batch size, and the most pairs
        one query scores (N, or a re-ranking's k clamped to N); None for a cached gallery."""
        step = getattr(self.query, "pair_step", None)
        return step(inputs, cache) if step is not None else None

    def stages(self) -> list[Stage]:
        """``gallery`` and ``query`` with their declared sub-stages."""
        return declared_stages(self)

    def forward(self, step: str, *args: Any) -> torch.Tensor | Tokens | RerankIndex | Ranked:
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
    output, or, without one, its own ITM logit for "match" (ALBEF, BLIP)."""
    out = model(images, input_ids, attention_mask)
    if not getattr(model.fusion, "fuses", True):
        return out.pooled.sum(dim=-1)
    if match is not None:
        return match(out.pooled)
    if out.match is None:
        raise ValueError("a fusion model's pairs need a matching head to score them")
    return out.match[:, 1]


__all__ = ["DIRECTIONS", "STRATEGIES", "Encoded", "PairScorer", "Ranked", "RerankIndex",
           "Retriever", "cat_tokens", "pair_scores", "preset_strategies", "strategies", "take"]
