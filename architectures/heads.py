"""Task heads on the pooled output; the latency suite leaves them out (as the ViLT paper's
timings do) and ``--head`` adds them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class VQAHeadConfig:
    """ViLT's VQA classifier: Linear(D, 2D), LayerNorm, GELU, Linear(2D, answers)."""

    hidden: int = 1536
    answers: int = 3129


class VQAHead(nn.Module):
    def __init__(self, *, in_dim: int, hidden: int, answers: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, answers)
        )

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.mlp(pooled)  # (B, answers)


def build_head(config: VQAHeadConfig, *, in_dim: int) -> nn.Module:
    return VQAHead(in_dim=in_dim, hidden=config.hidden, answers=config.answers)


class MatchHead(nn.Module):
    """Image-text matching (ITM): Linear(D, 2) on the pooled output, as UNITER and ViLT rank a
    retrieval gallery; a pair's score is its "match" logit. Not part of any preset's forward:
    only the retrieval steps (``architectures.retrieval``) use it."""

    def __init__(self, *, in_dim: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(in_dim, 2)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(pooled)[:, 1]  # (B,) the match logit
