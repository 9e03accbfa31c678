"""RoI pooling: one fixed-size feature map per proposal, cut from the trunk's feature map(s)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn
from torchvision.ops import MultiScaleRoIAlign, RoIAlign, RoIPool

_KINDS = ("align", "pool")


class RoIPooler(nn.Module):
    """Single-level RoI pooling for C4 heads: BUTD's 14x14 RoIPool at scale 1/16 by default.

    ``kind="pool"`` is RoIPool, what the original Caffe model ran (and the detectron2 port of
    it, ``POOLER_TYPE: ROIPool``); ``kind="align"`` is RoIAlign with ``aligned=False``, the
    ROIAlign (v1) of detectron and of later bottom-up-attention ports.
    ``sampling_ratio`` is pinned (2, not 0 = adaptive), so every bin takes 2x2 samples whatever
    the box size: the cost depends on the number of proposals only, not on where random weights
    happen to put them.
    """

    def __init__(
        self,
        *,
        output_size: int = 14,
        spatial_scale: float = 1 / 16,
        sampling_ratio: int = 2,
        kind: str = "pool",
    ) -> None:
        super().__init__()
        if kind == "align":
            self.op: nn.Module = RoIAlign(
                output_size, spatial_scale, sampling_ratio=sampling_ratio, aligned=False
            )
        elif kind == "pool":
            self.op = RoIPool(output_size, spatial_scale)
        else:
            raise ValueError(f"unknown RoI pooling kind {kind!r}; expected one of {_KINDS}")
        self.kind = kind

    def forward(self, features: Tensor, proposals: list[Tensor]) -> Tensor:
        """``features`` (B, C, H, W), ``proposals`` one (R_i, 4) xyxy in pixels per image
        -> (sum R_i, C, S, S), in image order."""
        return self.op(features, proposals)


class MultiScaleRoIPooler(nn.Module):
    """FPN RoI pooling: each box is pooled 7x7 from the level its size maps to (FPN eq. 1).

    torchvision's ``MultiScaleRoIAlign`` (``aligned=False``, 2x2 samples per bin) over P2-P5.
    Boxes are grouped by level with ``torch.where``, so output sizes per level are data-dependent.
    """

    host_sync = True  # per-level box selection synchronises with the host on GPU

    def __init__(
        self,
        *,
        featmap_names: Sequence[str] = ("0", "1", "2", "3"),
        output_size: int = 7,
        sampling_ratio: int = 2,
    ) -> None:
        super().__init__()
        self.op = MultiScaleRoIAlign(list(featmap_names), output_size, sampling_ratio)

    def forward(
        self,
        features: OrderedDict[str, Tensor],
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
    ) -> Tensor:
        """FPN levels {name: (B, 256, H_l, W_l)}, one (R_i, 4) per image -> (sum R_i, 256, 7, 7)."""
        return self.op(features, proposals, image_sizes)
