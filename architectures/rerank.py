"""Re-ranking: how models with a contrastive (ITC) path and a fusion (ITM) path retrieve (ALBEF,
BLIP; VLMo's fusion way as a what-if). The whole gallery is ranked by the cheap ITC similarity;
only the top k candidates go through the fusion. Both papers' retrieval configurations use
k = 256 on COCO and 128 on Flickr30K.

- ``gallery`` (offline, once per gallery): each item through its embedder and the fusion's ITC
  path (``gallery.tower``), caching per item what both paths need: the ITC unit embedding and
  the token sequence the fusion reads (BLIP, ALBEF: the image tower's output, 577 x 768 values
  per 384x384 image, which the cross-attention reads). The cache is a ``RerankIndex``.
- ``query`` (per query): the query through its embedder and ITC path (``query.tower``), one
  (N x E) product with the cached embeddings (``query.score``), the k best (``query.topk``,
  k clamped to N), the fusion and its matching head over the k pairs in batches
  (``query.pairs``: each batch gathers its candidates' cached tokens), a sort of the k
  (``query.rank``). Cost: rank(N) = the steps up to the top-k, fuse(k) = the pairs and the sort
  (``RerankQuery.terms``).

A fusion offers re-ranking by having both paths (``architectures.retrieval.strategies`` reads
it there and nowhere else): ``index_image(vision)`` / ``index_text(text)`` -> (ITC unit
embeddings (B, E), the states its ITM path reads), and ``fuse(text_states, image_states)`` ->
``FusionOutput`` (scored by its ``match`` logits, else by a matching head on ``pooled``). A
fusion whose published retrieval does not re-rank says why in ``rerank_what_if``.

The steps' modules share the fusion (one set of weights); the ITC and ITM paths run some of
the same modules (BLIP's text layers), so the fusion's own stage declarations are not walked
here: a hook would fire for both paths.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from feature_extractors import StageKind, Tokens

from .ranking import Ranked, Ranking, Similarity, TopK, broadcast, cat_tokens, gather


@dataclass(frozen=True)
class RerankIndex:
    """A re-ranking's gallery cache: ``embeddings`` (N, E) unit ITC embeddings and ``states``
    (N, T, D) the token sequences the fusion reads."""

    embeddings: torch.Tensor
    states: Tokens

    def __len__(self) -> int:
        return self.embeddings.shape[0]


class IndexTower(nn.Module):
    """One side through the fusion's ITC path: tokens -> (unit embeddings (B, E), states)."""

    def __init__(self, fusion: nn.Module, side: str) -> None:
        super().__init__()
        self.fusion = fusion
        self.side = side

    def forward(self, tokens: Tokens) -> tuple[torch.Tensor, Tokens]:
        if self.side == "visual":
            return self.fusion.index_image(tokens)
        return self.fusion.index_text(tokens)


class RerankGallery(nn.Module):
    """Offline: every item through its embedder and ``tower``, batch by batch, joined into the
    ``RerankIndex`` a query reads."""

    def __init__(self, *, side: str, embed: nn.Module, embed_kind: StageKind,
                 fusion: nn.Module) -> None:
        super().__init__()
        self.side = side
        self.add_module(side, embed)
        self.tower = IndexTower(fusion, side)
        self.substages = {side: embed_kind, "tower": StageKind.SINGLE_MODALITY}

    def forward(self, batches: Sequence[tuple[Any, ...]]) -> RerankIndex:
        embed = self.get_submodule(self.side)
        embeddings, states = [], []
        for batch in batches:
            e, s = self.tower(embed(*batch))
            embeddings.append(e)
            states.append(s)
        return RerankIndex(torch.cat(embeddings), cat_tokens(states))


class RerankPairs(nn.Module):
    """The fusion's ITM path over a batch of candidates: their cached states gathered, the
    query's states broadcast, one ``fuse``; (B,) scores, the match logit."""

    def __init__(self, *, fusion: nn.Module, match: nn.Module, query_side: str) -> None:
        super().__init__()
        self.fusion = fusion
        self.match = match  # for a fusion whose ITM path has no head of its own (VLMo)
        self.query_side = query_side

    def forward(self, query: Tokens, states: Tokens, index: torch.Tensor) -> torch.Tensor:
        candidates = gather(states, index)  # (B, T, D)
        q = broadcast(query, index.shape[0])
        text, image = (q, candidates) if self.query_side == "text" else (candidates, q)
        out = self.fusion.fuse(text, image)
        return out.match[:, 1] if out.match is not None else self.match(out.pooled)  # (B,)


class RerankQuery(nn.Module):
    """Per query: embedder, ITC path, similarity, top-k, the fusion over the k pairs in
    batches of ``batch_size``, a sort of the k."""

    #: the stages (children of ``query``) behind each cost term (``vlbench.retrieval_cost``):
    #: rank(N), the ITC ranking of the gallery; fuse(k), the fusion of the k candidates
    terms = {"rank": ("tower", "score", "topk"), "fuse": ("pairs", "rank")}

    def __init__(self, *, side: str, embed: nn.Module, embed_kind: StageKind, fusion: nn.Module,
                 match: nn.Module, k: int) -> None:
        super().__init__()
        self.side = side
        self.add_module(side, embed)
        self.tower = IndexTower(fusion, side)
        self.score = Similarity()
        self.topk = TopK(k)
        self.pairs = RerankPairs(fusion=fusion, match=match, query_side=side)
        self.rank = Ranking()
        self.substages = {side: embed_kind, "tower": StageKind.SINGLE_MODALITY,
                          "score": StageKind.INTERACTION, "topk": StageKind.RANKING,
                          "pairs": StageKind.INTERACTION, "rank": StageKind.RANKING}

    def cost_terms(self) -> dict[str, list[str]]:
        """``terms`` with the query's embedder (``text`` or ``visual``) in the ranking."""
        return {"rank": [self.side, *self.terms["rank"]], "fuse": list(self.terms["fuse"])}

    def forward(self, inputs: tuple[Any, ...], index: RerankIndex,
                batch_size: int | None = None) -> Ranked:
        embedding, states = self.tower(self.get_submodule(self.side)(*inputs))  # (1, E); (1, T, D)
        top = self.topk(self.score(embedding, index.embeddings))  # (k,) gallery indices
        step = batch_size or top.shape[0]
        scores = [self.pairs(states, index.states, top[i : i + step])
                  for i in range(0, top.shape[0], step)]
        return self.rank(torch.cat(scores), top)

    def pair_step(self, inputs: tuple[Any, ...], index: RerankIndex
                  ) -> tuple[Callable[[int], torch.Tensor], int]:
        """The batched part as a function of the batch size (the first candidates), and the
        most pairs a query scores: k clamped to N."""
        _, states = self.tower(self.get_submodule(self.side)(*inputs))
        k = self.topk.clamped(len(index))
        index_all = torch.arange(k, device=index.embeddings.device)
        return (lambda b: self.pairs(states, index.states, index_all[:b])), k
