"""An example vlbench plugin: a user's own visual embedder and a model preset that composes it with
the built-in single-stream fusion. Load it with ``vlbench --plugin`` on any command::

    vlbench list models --plugin docs/examples/vlbench_plugin_example.py
    vlbench run --plugin docs/examples/vlbench_plugin_example.py --models conv-stem-vilt

The embedder declares two stages (``substages``), so vlbench times ``visual.stem`` and
``visual.refine`` separately, as it does the built-in embedders' parts. ``REFINE_PASSES`` is the
knob the regression-gate trials turn: a copy of this file with one more pass makes exactly one
stage (``visual.refine``) do more real work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from architectures import PRESETS, Preset
from architectures.fusion import SingleStreamConfig
from feature_extractors import EMBEDDERS, BertTextConfig, EmbedderSpec, ImageBatch, Tokens

#: MLP passes of the refine stage (the trials' copy of this file changes this line only)
REFINE_PASSES = 2


@dataclass(frozen=True)
class ConvStemConfig:
    """Overlapping conv patches, then a token-wise MLP applied ``passes`` times."""

    width: int = 128
    patch_size: int = 8
    mlp_dim: int = 1024
    passes: int = REFINE_PASSES


class Refine(nn.Module):
    def __init__(self, width: int, mlp_dim: int, passes: int) -> None:
        super().__init__()
        self.passes = passes
        self.mlp = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, mlp_dim), nn.GELU(),
                                 nn.Linear(mlp_dim, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.passes):
            x = x + self.mlp(x)
        return x


class ConvStem(nn.Module):
    """Image -> one token per patch; stages: ``stem`` (conv) and ``refine`` (MLP passes)."""

    substages = {"stem": "patch", "refine": "single_modality"}

    def __init__(self, *, width: int, patch_size: int, mlp_dim: int, passes: int) -> None:
        super().__init__()
        self.out_dim = width
        self.patch_size = patch_size
        self.stem = nn.Conv2d(3, width, patch_size + patch_size // 2, stride=patch_size,
                              padding=patch_size // 4)
        self.refine = Refine(width, mlp_dim, passes)

    def num_tokens(self, image_size: tuple[int, int]) -> int:
        return (image_size[0] // self.patch_size) * (image_size[1] // self.patch_size)

    def forward(self, images: ImageBatch) -> Tokens:
        x = self.stem(images.tensor).flatten(2).transpose(1, 2)  # (B, N, D)
        x = self.refine(x)
        return Tokens(x, torch.ones(x.shape[:2], dtype=torch.bool, device=x.device))


def _canonical(width: int, tiny: bool) -> tuple[ConvStemConfig, tuple[int, int]]:
    """How ``conv-stem+FUSION`` pairs build this embedder: at the fusion's width."""
    if tiny:
        return ConvStemConfig(width=width, patch_size=16, mlp_dim=2 * width), (64, 64)
    return ConvStemConfig(width=width), (384, 384)


EMBEDDERS.register("conv-stem", EmbedderSpec(
    "conv-stem", "visual", "patch", ConvStemConfig, ConvStem,
    "example plugin: overlapping conv patches + token MLP", canonical=_canonical))

PRESETS.register("conv-stem-vilt", Preset(
    name="conv-stem-vilt",
    description="example plugin model: conv stem + 2-layer single-stream fusion, width 128",
    visual=ConvStemConfig(),
    text=BertTextConfig(vocab_size=1000, width=128, max_positions=16),
    fusion=SingleStreamConfig(width=128, depth=2, heads=4, mlp_dim=512),
    image_size=(128, 128),
    text_len=16,
    source="docs/examples/vlbench_plugin_example.py",
))
