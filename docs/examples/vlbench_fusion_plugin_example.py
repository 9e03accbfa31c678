"""An example vlbench plugin that registers only a fusion scheme: shared attention over the joined
[text; image] sequence with a feed-forward layer per modality. It composes with every visual
embedder, built-in or plugin, exactly as the built-in fusions do::

    vlbench run --plugin docs/examples/vlbench_fusion_plugin_example.py \\
        --compose patch+modality-ffn,grid+modality-ffn,region+modality-ffn --size tiny

What makes it composable is its registry entry: ``defaults`` (the base and the tiny config of a
composed pair) and a config that names its ``text_width`` and ``vision_width``. Its stages show
the other half of the contract: ``attention``, ``text_ffn`` and ``vision_ffn`` are *named sets of
modules* (``Substage(kind, modules=...)``), each summed over the layers it runs in, with its call
count recorded; a hook on the layer container would never fire, since the forward calls the
layers' parts one by one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from architectures import FUSIONS, FusionOutput
from architectures.fusion import FusionSpec
from architectures.layers import AttentionSublayer, FeedForward, adapter, key_padding_mask
from feature_extractors import StageKind, Substage, Tokens


@dataclass(frozen=True)
class ModalityFFNConfig:
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    eps: float = 1e-12

    @property
    def text_width(self) -> int:
        return self.width

    @property
    def vision_width(self) -> int:
        return self.width


class ModalityLayer(nn.Module):
    """Post-LN self-attention over both modalities, then each modality's own feed-forward."""

    def __init__(self, width: int, heads: int, mlp_dim: int, eps: float) -> None:
        super().__init__()
        self.attn = AttentionSublayer(width, heads, eps=eps)
        self.text_ffn = FeedForward(width, mlp_dim, eps=eps)
        self.vision_ffn = FeedForward(width, mlp_dim, eps=eps)


class ModalityFFN(nn.Module):
    def __init__(self, *, text_dim: int, vision_dim: int, width: int, depth: int, heads: int,
                 mlp_dim: int, eps: float) -> None:
        super().__init__()
        self.out_dim = width
        self.text_in = adapter(text_dim, width)
        self.vision_in = adapter(vision_dim, width)
        self.layers = nn.ModuleList(ModalityLayer(width, heads, mlp_dim, eps) for _ in range(depth))
        self.pooler = nn.Linear(width, width)

        def every(part: str) -> tuple[str, ...]:
            return tuple(f"layers.{i}.{part}" for i in range(depth))

        self.substages = {
            "attention": Substage(StageKind.INTERACTION, every("attn")),
            "text_ffn": Substage(StageKind.SINGLE_MODALITY, every("text_ffn")),
            "vision_ffn": Substage(StageKind.SINGLE_MODALITY, every("vision_ffn")),
        }

    def forward(self, text: Tokens, vision: Tokens) -> FusionOutput:
        t, v = self.text_in(text.embeds), self.vision_in(vision.embeds)  # (B, Nt, D), (B, Nv, D)
        nt = t.shape[1]
        x = torch.cat([t, v], dim=1)  # (B, Nt + Nv, D)
        mask = key_padding_mask(torch.cat([text.mask, vision.mask], dim=1))
        for layer in self.layers:
            x = layer.attn(x, attn_mask=mask)
            x = torch.cat([layer.text_ffn(x[:, :nt]), layer.vision_ffn(x[:, nt:])], dim=1)
        return FusionOutput(pooled=torch.tanh(self.pooler(x[:, 0])), text=x[:, :nt],
                            vision=x[:, nt:])


FUSIONS.register("modality-ffn", FusionSpec(
    "modality-ffn", StageKind.INTERACTION, ModalityFFNConfig, ModalityFFN,
    "example plugin: shared attention, a feed-forward layer per modality",
    defaults=(ModalityFFNConfig(), ModalityFFNConfig(width=64, depth=2, heads=2, mlp_dim=128))))
