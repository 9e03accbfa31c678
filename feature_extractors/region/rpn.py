"""Region proposal network: bottom-up attention's C4 RPN (and an FPN variant) on torchvision.

Bottom-up attention (Anderson et al. 2018) runs its RPN on res4 (stride 16) with 12 anchors per
location (scales 4, 8, 16, 32 x stride 16 = 64..512 px, aspect ratios 0.5, 1, 2) and, at test
time, keeps the top 6000 boxes, runs NMS at 0.7, keeps 300 and drops boxes under 16 px.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork

from ..tokens import ImageBatch


class StridedAnchorGenerator(AnchorGenerator):
    """torchvision's anchors, laid out at each level's own stride.

    torchvision derives a level's stride from the padded tensor (``H // h``): exact when the
    input is padded to a multiple of the stride (FPN: 32), but 15 instead of 16 across an
    unpadded 1333-wide image (1333 // 84) in a C4 detector, which pads nothing (detectron2's
    ``size_divisibility`` 0). The stride is the network's, so it is given here.
    """

    def __init__(self, sizes: tuple[tuple[int, ...], ...],
                 aspect_ratios: tuple[tuple[float, ...], ...], *, strides: Sequence[int]) -> None:
        super().__init__(sizes, aspect_ratios)
        if len(strides) != len(sizes):
            raise ValueError(f"{len(strides)} strides for {len(sizes)} anchor levels")
        self.strides = tuple(int(s) for s in strides)

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        """One (sum_l H_l * W_l * A, 4) anchor tensor per image (xyxy pixels)."""
        grid_sizes = [list(f.shape[-2:]) for f in feature_maps]
        self.set_cell_anchors(feature_maps[0].dtype, feature_maps[0].device)
        strides = [[s, s] for s in self.strides]  # ints: no tensor, no copy to the device
        levels = self.grid_anchors(grid_sizes, strides)  # type: ignore[arg-type]
        return [torch.cat(levels) for _ in image_list.image_sizes]


class BUTDRPNHead(nn.Module):
    """Bottom-up attention's RPN head: 3x3 conv ``in -> mid`` + ReLU, then 1x1 convs to one
    objectness logit and four box deltas per anchor.

    BUTD narrows 1024 -> 512 (its ``rpn_conv/3x3``); torchvision's default ``RPNHead`` keeps
    ``in -> in`` (1024 -> 1024, about 4x the conv cost). With ``mid_channels == in_channels``
    this is torchvision's head (used for FPN). The interface is ``RPNHead``'s, so it plugs into
    ``RegionProposalNetwork``.

    The original Caffe head scores each anchor with a 2-way softmax (2 x 12 = 24 outputs);
    torchvision's sigmoid form has 12, i.e. ``512 * 12 + 12`` = 6,156 fewer parameters (and as
    many fewer MACs per location) than Caffe: a 0.13% difference in the head, kept as is.

    Init is torchvision's (normal std 0.01, zero bias). On a res4 map of magnitude ~1 this gives
    box deltas of std ~0.16, so decoded boxes stay near their anchors and the configured 300
    proposals survive clipping, the 16 px minimum and NMS (tested). The deltas scale linearly
    with the input: 300 still survive at std 30, but at std ~50 boxes blow up or shrink and only
    150-250 survive (measured at 50x84), so the trunk must keep res4 bounded (ours: std ~0.1).
    """

    def __init__(self, *, in_channels: int, num_anchors: int, mid_channels: int = 512) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1)
        self.cls_logits = nn.Conv2d(mid_channels, num_anchors, kernel_size=1)
        self.bbox_pred = nn.Conv2d(mid_channels, 4 * num_anchors, kernel_size=1)
        for conv in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """One (B, C, H, W) map per level -> objectness (B, A, H, W), deltas (B, 4A, H, W)."""
        logits: list[Tensor] = []
        deltas: list[Tensor] = []
        for feature in x:
            t = F.relu(self.conv(feature))  # (B, mid, H, W)
            logits.append(self.cls_logits(t))  # (B, A, H, W)
            deltas.append(self.bbox_pred(t))  # (B, 4A, H, W)
        return logits, deltas


def build_rpn(
    *,
    in_channels: int = 1024,
    mid_channels: int = 512,
    anchor_sizes: Sequence[int] = (64, 128, 256, 512),
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    pre_nms_top_n: int = 6000,
    post_nms_top_n: int = 300,
    nms_thresh: float = 0.7,
    min_size: float = 16.0,
    fpn_levels: int | None = None,
) -> RegionProposalNetwork:
    """BUTD's test-time C4 RPN as a torchvision ``RegionProposalNetwork``.

    ``fpn_levels=5`` builds the FPN variant instead: one anchor size per level (32..512) at
    strides 4..64, 3 ratios, 256 input channels and torchvision's ``in -> in`` head;
    ``in_channels``, ``mid_channels`` and ``anchor_sizes`` are then ignored. C4 anchors lie at
    stride 16. In eval mode the module returns
    ``(boxes: list[Tensor (R_i, 4)], {})``. Training arguments are torchvision's defaults and
    unused here (inference only).
    """
    if fpn_levels is None:
        sizes: tuple[tuple[int, ...], ...] = (tuple(anchor_sizes),)
        ratios: tuple[tuple[float, ...], ...] = (tuple(aspect_ratios),)
        strides: tuple[int, ...] = (16,)
    else:
        sizes = tuple((32 * 2**i,) for i in range(fpn_levels))  # (32,), (64,), ... (512,)
        ratios = (tuple(aspect_ratios),) * fpn_levels
        strides = tuple(4 * 2**i for i in range(fpn_levels))  # 4, 8, ... 64
        in_channels = mid_channels = 256
    anchors = StridedAnchorGenerator(sizes, ratios, strides=strides)
    head = BUTDRPNHead(
        in_channels=in_channels,
        mid_channels=mid_channels,
        num_anchors=anchors.num_anchors_per_location()[0],
    )
    rpn = RegionProposalNetwork(
        anchors,
        head,
        fg_iou_thresh=0.7,
        bg_iou_thresh=0.3,
        batch_size_per_image=256,
        positive_fraction=0.5,
        pre_nms_top_n={"training": 2000, "testing": pre_nms_top_n},
        post_nms_top_n={"training": 2000, "testing": post_nms_top_n},
        nms_thresh=nms_thresh,
    )
    rpn.min_size = float(min_size)  # not a constructor argument in torchvision (default 1e-3)
    return rpn


class RPN(nn.Module):
    """The RPN stage with a plain signature: ``(ImageBatch, features) -> proposals``.

    Wraps a torchvision ``RegionProposalNetwork`` (BUTD's C4 RPN by default). Image sizes come
    from ``ImageBatch.image_sizes`` on the host; anchors lie at the network's strides whatever
    the padding (``StridedAnchorGenerator``). Eval mode only:
    torchvision's RPN asks for targets in training mode.

    ``last_workload`` is read from tensor shapes only; the kept-box counts are host-known because
    torchvision's NMS and small-box removal already synchronised to produce them.
    """

    host_sync = True  # NMS and small-box removal give data-dependent output sizes

    def __init__(self, *, network: RegionProposalNetwork | None = None) -> None:
        super().__init__()
        self.network = network if network is not None else build_rpn()
        self.last_workload: dict[str, int] = {}

    def forward(
        self, images: ImageBatch, features: Tensor | OrderedDict[str, Tensor]
    ) -> list[Tensor]:
        """``features`` (B, C, H, W) for C4 or an FPN's levels -> one (R_i, 4) xyxy per image."""
        if isinstance(features, Tensor):
            features = OrderedDict([("0", features)])
        image_list = ImageList(images.tensor, list(images.image_sizes))
        boxes, _ = self.network(image_list, features)

        batch = len(images)
        per_level = [
            f.shape[-2] * f.shape[-1] * a
            for f, a in zip(
                features.values(),
                self.network.anchor_generator.num_anchors_per_location(),
                strict=True,
            )
        ]
        top_n = self.network.pre_nms_top_n()
        self.last_workload = {
            "anchors": batch * sum(per_level),
            "proposals_pre_nms": batch * sum(min(top_n, n) for n in per_level),
            "proposals_post_nms": sum(b.shape[0] for b in boxes),
        }
        return boxes
