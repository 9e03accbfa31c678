"""VLMo's relative position bias: one learned table shared by every layer and head, read through
fixed index maps into an additive attention bias per layer (microsoft/unilm
``vlmo/modules/vlmo_module.py``, ``build_relative_position_embed`` and ``get_rel_pos_bias``).

Index layout, as in the official code (``w`` = the patch grid, ``T`` = ``text_positions``, the
``max_text_len_of_initckpt`` of its configs, 196):

- image tokens: BEiT's 2-D relative offsets between patches, ``(2 w_h - 1) (2 w_w - 1)`` rows, plus
  three rows for [CLS] to patch, patch to [CLS] and [CLS] to itself;
- text tokens: 1-D offsets (``2 T`` rows) plus the same three [CLS] rows at the table's end;
- across modalities: one row for text to image, one for image to text.

The table has ``heads * layers`` columns; one gather gives every layer's bias at once, as the
official code does (a ``(layers * heads, N, N)`` tensor: the memory VLMo's attention bias costs
is part of what is timed). The table is sized for the image grid given at construction: a
smaller (or padded) image reads its offsets from the table's corner; a larger one is another
model (the official code rebuilds and interpolates the table for it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def image_index(grid: tuple[int, int], num_distance: int) -> torch.Tensor:
    """(1 + gh*gw, 1 + gh*gw) long: BEiT's relative index over [CLS] + patches."""
    gh, gw = grid
    coords = torch.stack(torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij"))
    flat = coords.flatten(1)  # (2, gh*gw)
    rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0)  # (gh*gw, gh*gw, 2)
    rel[:, :, 0] += gh - 1  # shift to start from 0
    rel[:, :, 1] += gw - 1
    rel[:, :, 0] *= 2 * gw - 1
    index = torch.zeros(1 + gh * gw, 1 + gh * gw, dtype=torch.long)
    index[1:, 1:] = rel.sum(-1)
    index[0, 0:] = num_distance - 3
    index[0:, 0] = num_distance - 2
    index[0, 0] = num_distance - 1
    return index


def text_index(length: int, *, text_positions: int, offset: int, total: int) -> torch.Tensor:
    """(length, length) long: 1-D relative index over [CLS] + text, rows from ``offset``."""
    ids = torch.arange(length - 1)
    rel = ids[None, :] - ids[:, None] - (2 - text_positions) + offset  # (L-1, L-1)
    index = torch.zeros(length, length, dtype=torch.long)
    index[1:, 1:] = rel
    index[0, 0:] = total - 3
    index[0:, 0] = total - 2
    index[0, 0] = total - 1
    return index


class RelativePositionBias(nn.Module):
    """``forward(text_len, image_len, grid)`` -> (layers, heads, N, N) additive attention bias
    for the sequence [text; image] (either length may be 0: a dual encoder's single-modality
    pass); ``grid`` is the image tokens' patch grid where the embedder says (``Tokens.grid``)."""

    def __init__(self, *, grid: tuple[int, int], text_positions: int, heads: int,
                 layers: int) -> None:
        super().__init__()
        gh, gw = grid
        self.grid = (gh, gw)
        self.heads, self.layers = heads, layers
        self.image_distance = (2 * gh - 1) * (2 * gw - 1) + 3  # num_relative_distance
        rows = self.image_distance + 2 * text_positions + 2  # all_num_relative_distance
        self.table = nn.Parameter(torch.zeros(rows, heads * layers))  # zeros, as the original
        self.register_buffer("image_index", image_index(self.grid, self.image_distance),
                             persistent=False)
        self.register_buffer("text_index", text_index(
            text_positions, text_positions=text_positions, offset=self.image_distance + 2,
            total=rows), persistent=False)

    def image(self, image_len: int, grid: tuple[int, int] | None) -> torch.Tensor:
        """The image tokens' index: the table's own grid, or a smaller ``grid`` (a smaller or
        padded image) read from its top-left corner -- relative offsets do not depend on where
        the patches sit."""
        gh, gw = self.grid
        if grid is None or tuple(grid) == self.grid:
            if image_len != 1 + gh * gw:
                raise ValueError(
                    f"the relative position bias is built for a {gh}x{gw} patch grid "
                    f"({1 + gh * gw} image tokens with [CLS]); got {image_len} image tokens")
            return self.image_index
        rows, cols = grid
        if rows > gh or cols > gw or image_len != 1 + rows * cols:
            raise ValueError(
                f"the relative position bias is built for at most a {gh}x{gw} patch grid; got "
                f"{image_len} image tokens on a {rows}x{cols} grid")
        keep = [0] + [1 + i * gw + j for i in range(rows) for j in range(cols)]
        keep_t = torch.tensor(keep, device=self.image_index.device)
        return self.image_index[keep_t][:, keep_t]

    def index(self, text_len: int, image_len: int, grid: tuple[int, int] | None = None
              ) -> torch.Tensor:
        """(N, N) long for [text; image], N = text_len + image_len."""
        if text_len > self.text_index.shape[0]:
            raise ValueError(f"text length {text_len} exceeds the bias table's "
                             f"{self.text_index.shape[0]} text positions")
        if not image_len:
            return self.text_index[:text_len, :text_len]
        image = self.image(image_len, grid)
        if not text_len:
            return image
        text = self.text_index[:text_len, :text_len]
        to_image = text.new_full((text_len, image_len), self.image_distance)
        to_text = text.new_full((image_len, text_len), self.image_distance + 1)
        return torch.cat([torch.cat([text, to_image], 1),
                          torch.cat([to_text, image], 1)], 0)  # (N, N)

    def forward(self, text_len: int, image_len: int, grid: tuple[int, int] | None = None
                ) -> torch.Tensor:
        index = self.index(text_len, image_len, grid)  # (N, N)
        n = index.shape[0]
        bias = F.embedding(index, self.table)  # (N, N, layers * heads)
        return bias.permute(2, 0, 1).reshape(self.layers, self.heads, n, n)
