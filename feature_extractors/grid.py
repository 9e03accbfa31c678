"""Grid features: Pixel-BERT's visual embedder (a ResNet trunk's last feature map as tokens)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from .region.backbone import build_resnet
from .stages import StageKind
from .tokens import ImageBatch, Tokens


@dataclass(frozen=True)
class ResNetGridConfig:
    """Pixel-BERT: ResNet-50 at 800x1333 or ResNeXt-152 at 600x1000, a 2x2 max pool after res5.

    ``sample_tokens`` keeps k random grid tokens per image, Pixel-BERT's pretraining behaviour
    (k = 100); the default None keeps every token, which is what inference runs.
    """

    backbone: str = "r50"
    pool: int = 2
    sample_tokens: int | None = None

    def check_input(self, image_size: tuple[int, int]) -> None:
        """Refuse an image too small to leave one grid cell after the trunk and the pool."""
        if min(grid_size(image_size, self.pool)) < 1:
            raise ValueError(f"image {image_size[0]}x{image_size[1]} leaves no grid cell after "
                             f"the ResNet trunk (stride 32) and the {self.pool}x{self.pool} pool")


def canonical_grid(width: int, tiny: bool) -> tuple[ResNetGridConfig, tuple[int, int]]:
    """How ``grid+FUSION`` pairs build this embedder: Pixel-BERT-R50 at 800x1333. Grid tokens
    keep the trunk's 2048 channels (``width`` unused): the fusion's input adapter projects them."""
    return ResNetGridConfig(backbone="tiny" if tiny else "r50"), (
        (128, 160) if tiny else (800, 1333))


def _conv_out(n: int, kernel: int, stride: int, padding: int) -> int:
    return (n + 2 * padding - kernel) // stride + 1


def grid_size(image_size: tuple[int, int], pool: int) -> tuple[int, int]:
    """Token rows and columns for an image of ``(height, width)``: the conv arithmetic of the
    stem (7x7/2 pad 3, max pool 3x3/2 pad 1), three stride-2 stages (3x3/2 pad 1) and the final
    ``pool`` x ``pool`` max pool (no padding, remainder dropped)."""

    def side(n: int) -> int:
        n = _conv_out(n, 7, 2, 3)  # conv1
        n = _conv_out(n, 3, 2, 1)  # maxpool
        for _ in range(3):  # layer2..layer4
            n = _conv_out(n, 3, 2, 1)
        return _conv_out(n, pool, pool, 0)

    return side(image_size[0]), side(image_size[1])


class ResNetGrid(nn.Module):
    """Image -> one 2048-d token per cell of the pooled res5 map (stride 32 * ``pool``).

    Grid sizes come from ``ImageBatch.image_sizes`` on the host: tokens outside an image's own grid
    (zero padding of a mixed-size batch) are masked without a device synchronisation.
    """

    substages = {"backbone": StageKind.BACKBONE, "pool": StageKind.GRID}
    out_dim = 2048

    def __init__(self, *, backbone: str, pool: int, sample_tokens: int | None = None) -> None:
        super().__init__()
        if pool < 1:
            raise ValueError(f"pool must be >= 1, got {pool}")
        if sample_tokens is not None and sample_tokens < 1:
            raise ValueError(f"sample_tokens must be >= 1 or None, got {sample_tokens}")
        net = build_resnet(backbone)
        names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
        self.backbone = nn.Sequential(OrderedDict((n, getattr(net, n)) for n in names))
        self.pool = nn.MaxPool2d(pool) if pool > 1 else nn.Identity()
        self.pool_size = pool
        self.sample_tokens = sample_tokens

    def grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """Token rows and columns for an image of ``(height, width)`` (``grid_size``)."""
        return grid_size(image_size, self.pool_size)

    def num_tokens(self, image_size: tuple[int, int]) -> int:
        rows, cols = self.grid(image_size)
        return rows * cols

    def forward(self, images: ImageBatch) -> Tokens:
        x = self.pool(self.backbone(images.tensor))  # (B, 2048, rows, cols)
        b, _, rows, cols = x.shape
        embeds = x.flatten(2).transpose(1, 2)  # (B, rows*cols, 2048)
        grids = [self.grid(s) for s in images.image_sizes]
        if all(g == (rows, cols) for g in grids):
            mask = torch.ones(b, rows * cols, dtype=torch.bool, device=x.device)
        else:  # mixed sizes: cells outside an image's own grid saw only padding
            mask = torch.zeros(b, rows, cols, dtype=torch.bool, device=x.device)
            for i, (r, c) in enumerate(grids):
                mask[i, :r, :c] = True
            mask = mask.flatten(1)  # (B, rows*cols)
        k = self.sample_tokens
        if k is not None and k < rows * cols:
            # k distinct real tokens per image, uniformly at random, drawn on the device; padding
            # sorts last, so an image with fewer than k real tokens gets masked padding.
            scores = torch.rand(b, rows * cols, device=x.device).masked_fill(~mask, 2.0)
            idx = scores.argsort(dim=1)[:, :k].sort(dim=1).values  # (B, k), raster order
            embeds = embeds.gather(1, idx.unsqueeze(-1).expand(-1, -1, embeds.shape[-1]))
            mask = mask.gather(1, idx)
        return Tokens(embeds, mask)
