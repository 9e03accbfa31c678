"""The two-stream configurations the tests share (ViLBERT and LXMERT at full size and tiny) and
how they build a fusion and its token inputs."""

from __future__ import annotations

from dataclasses import asdict, replace

import torch
from torch import nn

from architectures.fusion.two_stream import TwoStream, TwoStreamConfig
from feature_extractors import Tokens

VILBERT = TwoStreamConfig()  # the defaults are ViLBERT-base
LXMERT = TwoStreamConfig(
    text_width=768, text_depth=9, text_heads=12, text_mlp_dim=3072,
    vision_width=768, vision_depth=5, vision_heads=12, vision_mlp_dim=3072,
    cross_width=768, cross_heads=12,
    text_layers_before_cross=(9,) * 5, vision_layers_before_cross=(5,) * 5,
    shared_cross_weights=True, cross_self_attention=True, pooled="text",
)
# Tiny widths. The ViLBERT-like layout has text layers before the first block, a block before any
# visual layer, and layers left over after the last block in both streams.
VILBERT_TINY = TwoStreamConfig(
    text_width=32, text_depth=4, text_heads=4, text_mlp_dim=64,
    vision_width=48, vision_depth=3, vision_heads=4, vision_mlp_dim=40,
    cross_width=64, cross_heads=4,
    text_layers_before_cross=(2, 3), vision_layers_before_cross=(0, 1), pooled="product",
)
LXMERT_TINY = TwoStreamConfig(
    text_width=32, text_depth=3, text_heads=4, text_mlp_dim=64,
    vision_width=32, vision_depth=2, vision_heads=4, vision_mlp_dim=64,
    cross_width=32, cross_heads=4,
    text_layers_before_cross=(3, 3), vision_layers_before_cross=(2, 2),
    shared_cross_weights=True, cross_self_attention=True, pooled="text",
)
TINY = {"vilbert": VILBERT_TINY, "lxmert": LXMERT_TINY}
TEXT_DIM, VISION_DIM = 24, 40  # the embedders' widths: adapters map them to the streams


def build(config: TwoStreamConfig, *, text_dim: int = TEXT_DIM, vision_dim: int = VISION_DIM,
          seed: int = 0) -> TwoStream:
    torch.manual_seed(seed)
    return TwoStream(text_dim=text_dim, vision_dim=vision_dim, **asdict(config)).eval()


def tokens(batch: int, n: int, dim: int, *, pad: int = 0, seed: int = 1) -> Tokens:
    """``n`` real tokens, then ``pad`` padding tokens of random content."""
    gen = torch.Generator().manual_seed(seed)
    embeds = torch.randn(batch, n + pad, dim, generator=gen)
    mask = torch.zeros(batch, n + pad, dtype=torch.bool)
    mask[:, :n] = True
    return Tokens(embeds, mask)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def tiny_widths(config: TwoStreamConfig) -> TwoStreamConfig:
    """A published layout at tiny widths (fast to run)."""
    shared = config.shared_cross_weights
    return replace(config, text_width=32, text_heads=4, text_mlp_dim=48,
                   vision_width=32 if shared else 40, vision_heads=4, vision_mlp_dim=48,
                   cross_width=32 if shared else 48, cross_heads=4)


LAYOUTS = {
    "vilbert-tiny": VILBERT_TINY,
    "lxmert-tiny": LXMERT_TINY,
    "vilbert-layout": tiny_widths(VILBERT),
    "lxmert-layout": tiny_widths(LXMERT),
    "no-text-layers": replace(tiny_widths(LXMERT), text_depth=0,
                              text_layers_before_cross=(0,) * 5),
}
