"""Linear patch projection: ViLT's visual embedder and the CLIP vision tower's stem."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .tokens import ImageBatch, Tokens


@dataclass(frozen=True)
class PatchProjectionConfig:
    """A ViT-style patch stem. ``pos_grid`` is the (rows, cols) grid the position table is
    trained at; other grids are served by bilinear interpolation of that table."""

    width: int = 768
    patch_size: int = 32
    pos_grid: tuple[int, int] = (12, 12)
    bias: bool = True  # ViLT's projection has a bias, CLIP's has none
    in_channels: int = 3
    #: False: no position table at all (VLMo: its attention adds a relative position bias)
    absolute_positions: bool = True

    def check_input(self, image_size: tuple[int, int]) -> None:
        """Refuse an image smaller than one patch (it would give no patch at all)."""
        if min(image_size) < self.patch_size:
            raise ValueError(f"image {image_size[0]}x{image_size[1]} is smaller than one "
                             f"{self.patch_size}x{self.patch_size} patch")


def canonical_patch(width: int, tiny: bool) -> tuple[PatchProjectionConfig, tuple[int, int]]:
    """How ``patch+FUSION`` pairs build this embedder: ViLT's patch 32 at 384x640, its tokens at
    the fusion's visual width."""
    if tiny:
        return PatchProjectionConfig(width=width, patch_size=32, pos_grid=(2, 2)), (128, 160)
    return PatchProjectionConfig(width=width), (384, 640)


class PatchProjection(nn.Module):
    """Image -> [CLS] + one token per patch, with position embeddings (none with
    ``absolute_positions=False``: VLMo's patch embedding, whose fusion adds a relative position
    bias in attention instead).

    Position embeddings are interpolated to each image's own patch grid (ViLT); all patches are
    kept (inference). Grids come from ``ImageBatch.image_sizes`` on the host, so the stage never
    synchronises with the device. Images smaller than the padded batch get a padding mask.
    """

    def __init__(
        self,
        *,
        width: int,
        patch_size: int,
        pos_grid: tuple[int, int],
        bias: bool = True,
        in_channels: int = 3,
        absolute_positions: bool = True,
    ) -> None:
        super().__init__()
        self.out_dim = width
        self.patch_size = patch_size
        self.pos_grid = tuple(pos_grid)
        self.proj = nn.Conv2d(in_channels, width, patch_size, stride=patch_size, bias=bias)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.pos_embed: nn.Parameter | None = None
        if absolute_positions:
            self.pos_embed = nn.Parameter(torch.zeros(1, 1 + pos_grid[0] * pos_grid[1], width))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """Patch rows and columns for an image of ``(height, width)`` (partial patches dropped)."""
        return image_size[0] // self.patch_size, image_size[1] // self.patch_size

    def num_tokens(self, image_size: tuple[int, int]) -> int:
        rows, cols = self.grid(image_size)
        return 1 + rows * cols

    def _patch_pos(self, rows: int, cols: int) -> torch.Tensor:
        """Patch position embeddings for a ``rows x cols`` grid: (1, rows * cols, D)."""
        assert self.pos_embed is not None
        table = self.pos_embed[:, 1:]
        if (rows, cols) == self.pos_grid:
            return table
        gh, gw = self.pos_grid
        table = table.reshape(1, gh, gw, -1).permute(0, 3, 1, 2)  # (1, D, gh, gw)
        table = F.interpolate(table, size=(rows, cols), mode="bilinear", align_corners=True)
        return table.flatten(2).transpose(1, 2)

    def forward(self, images: ImageBatch) -> Tokens:
        x = self.proj(images.tensor)  # (B, D, H/p, W/p)
        b, d, rows, cols = x.shape
        x = x.flatten(2).transpose(1, 2)  # (B, rows*cols, D)
        grids = [self.grid(s) for s in images.image_sizes]
        if all(g == (rows, cols) for g in grids):
            if self.pos_embed is not None:
                x = x + self._patch_pos(rows, cols)
            mask = torch.ones(b, rows * cols, dtype=torch.bool, device=x.device)
        else:  # mixed sizes: each image gets its own interpolated grid, the rest is padding
            pos = torch.zeros(b, rows, cols, d, dtype=x.dtype, device=x.device)
            mask = torch.zeros(b, rows, cols, dtype=torch.bool, device=x.device)
            for i, (r, c) in enumerate(grids):
                if self.pos_embed is not None:
                    pos[i, :r, :c] = self._patch_pos(r, c).reshape(r, c, d)
                mask[i, :r, :c] = True
            x = x + pos.flatten(1, 2)
            mask = mask.flatten(1)
        cls = self.cls_token if self.pos_embed is None else self.cls_token + self.pos_embed[:, :1]
        cls = cls.expand(b, -1, -1)
        embeds = torch.cat([cls, x], dim=1)  # (B, 1 + rows*cols, D)
        mask = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=x.device), mask], dim=1)
        return Tokens(embeds, mask, grid=(rows, cols))
