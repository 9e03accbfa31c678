"""``RegionFeatures``: the Faster R-CNN feature extractor region VLP models ran, from named parts.

backbone -> (fpn) -> rpn -> roi_pool -> box_head -> nms -> select -> embed. Each part is a
submodule, so the harness times, counts and reports it under its own name (``visual.rpn``,
``visual.nms``, ...). Defaults are bottom-up attention's (Anderson et al. 2018): ResNet-101 C4,
12 anchors, 6000 -> NMS 0.7 -> 300 proposals, 14x14 RoIPool, res5 head at stride 1, 1601
classes, per-class NMS at 0.3 over all 1600 classes, 36 boxes. The trunk is the Caffe model's
(stride in the 1x1 convs, Caffe's stem pooling: ``backbone.py``) and a C4 detector pads nothing,
as detectron2's C4 models (``size_divisibility`` 0; FPN pads to 32): an 800x1333 image is timed
at 800x1333, not 800x1344.

Faithful by construction with random weights: the trunk is initialised so activations stay
bounded (the RPN then proposes the configured 300 boxes rather than none), RoIAlign (when chosen)
uses a pinned sampling ratio, and NMS runs for every class whatever the scores, so the work done
is what a trained model does, not what random scores happen to allow. ``last_workload`` records
it. ``detectron2.py`` builds the same detector from detectron2's modules.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from ..stages import StageKind
from ..tokens import ImageBatch, Tokens
from .backbone import ResNetC4, ResNetFPN
from .box_head import MLPBoxHead, Res5BoxHead
from .nms import ClassAgnosticNMS, PerClassNMS
from .roi import MultiScaleRoIPooler, RoIPooler
from .rpn import RPN, build_rpn
from .select import BoxSelection, location_features

HEADS = ("c4", "fpn")
NMS_KINDS = ("per-class", "class-agnostic")


@dataclass(frozen=True)
class RegionFeaturesConfig:
    """The factors of the ViLT paper's Table 7 (backbone, RoI head, NMS kind) and the rest of
    bottom-up attention's test-time settings."""

    backbone: str = "r101"  # r50 | r101 | x152-32x8d | x152-32x4d
    head: str = "c4"  # c4: res5 box head on 14x14 RoIs; fpn: multi-scale 7x7 RoIs + MLP head
    roi: str = "pool"  # pool (BUTD's Caffe RoIPool) | align (RoIAlign v1, the later ports)
    nms: str = "per-class"  # per-class (BUTD) | class-agnostic (VinVL)
    num_classes: int = 1601  # 1600 Visual Genome classes + background
    attributes: bool = False
    pre_nms_top_n: int = 6000
    post_nms_top_n: int = 300
    rpn_nms_threshold: float = 0.7
    min_box_size: float = 16.0
    nms_threshold: float = 0.3
    roi_size: int = 14
    selection: str = "fixed"  # fixed | adaptive
    num_boxes: int = 36
    min_boxes: int = 10
    max_boxes: int = 100
    conf_threshold: float = 0.2
    location_dims: int = 7  # UNITER 7, ViLBERT 5, LXMERT 4, VisualBERT 0 (none)
    width: int = 768  # the width of the region tokens (the fusion's hidden size)
    embedding: str = "uniter"  # uniter | vilbert | lxmert | visualbert (see RegionEmbedding)
    global_token: bool = False  # ViLBERT: a whole-image token (mean feature) first

    def check_input(self, image_size: tuple[int, int]) -> None:
        """Refuse what this detector cannot run, before it is built: an image smaller than its
        smallest anchor (no proposal fits), a fixed box count above the proposals kept."""
        h, w = image_size
        side = smallest_anchor(self.head)
        if min(h, w) < side:
            raise ValueError(f"image {h}x{w} is smaller than the detector's smallest anchor "
                             f"({side} px)")
        if self.selection == "fixed" and self.num_boxes > self.post_nms_top_n:
            raise ValueError(f"fixed box count {self.num_boxes} exceeds the "
                             f"{self.post_nms_top_n} proposals the RPN keeps")


def smallest_anchor(head: str) -> int:
    """The side in pixels of a detector's smallest anchor: C4's RPN 64 (sizes 64..512), the
    FPN's 32 (one size per level, 32..512)."""
    return 64 if head == "c4" else 32


EMBEDDINGS = ("uniter", "vilbert", "lxmert", "visualbert")

# A region detector for tests: the same stages at toy sizes (a narrow trunk, 11 classes,
# 20 proposals, 7x7 RoIs, 6 boxes) so a forward takes well under a second.
TINY_REGIONS = RegionFeaturesConfig(
    backbone="tiny", num_classes=11, pre_nms_top_n=200, post_nms_top_n=20, roi_size=7,
    num_boxes=6, width=64,
)


def canonical_region(width: int, tiny: bool) -> tuple[RegionFeaturesConfig, tuple[int, int]]:
    """How ``region+FUSION`` pairs build this embedder: bottom-up attention's R101-C4 at
    800x1333, its tokens at the fusion's visual width."""
    base = TINY_REGIONS if tiny else RegionFeaturesConfig()
    return replace(base, width=width), (128, 160) if tiny else (800, 1333)


class RegionEmbedding(nn.Module):
    """Region features and box locations -> tokens, in each model's own way (shared by the
    detector and by precomputed features):

    - uniter: LN(Linear(feature)) + LN(Linear(location)), then LN;
    - vilbert: LN(Linear(feature) + Linear(location));
    - lxmert: (LN(Linear(feature)) + LN(Linear(box))) / 2;
    - visualbert: Linear(feature) (no location), then LN.
    """

    def __init__(self, *, feature_dim: int, location_dims: int, width: int,
                 style: str = "uniter") -> None:
        super().__init__()
        if style not in EMBEDDINGS:
            raise ValueError(f"unknown region embedding {style!r}; valid: {', '.join(EMBEDDINGS)}")
        if (style == "visualbert") != (location_dims == 0):
            raise ValueError(f"the {style} region embedding "
                             f"{'takes no' if style == 'visualbert' else 'needs a'} location")
        self.style = style
        self.feature = nn.Linear(feature_dim, width)
        self.location = nn.Linear(location_dims, width) if location_dims else None
        per_branch = style in ("uniter", "lxmert")
        self.feature_norm = nn.LayerNorm(width, eps=1e-12) if per_branch else None
        self.location_norm = nn.LayerNorm(width, eps=1e-12) if per_branch else None
        self.norm = nn.LayerNorm(width, eps=1e-12) if style != "lxmert" else None

    def forward(self, features: Tensor, locations: Tensor | None) -> Tensor:
        x = self.feature(features)  # (B, K, W)
        if self.feature_norm is not None:
            x = self.feature_norm(x)
        if self.location is not None:
            y = self.location(locations)
            if self.location_norm is not None:
                y = self.location_norm(y)
            x = (x + y) / 2 if self.style == "lxmert" else x + y
        return x if self.norm is None else self.norm(x)


def region_tokens(embed: RegionEmbedding, features: Tensor, boxes: Tensor, mask: Tensor,
                  image_sizes: tuple[tuple[int, int], ...], location_dims: int,
                  global_token: bool) -> Tokens:
    """Selected features (B, K, F) and boxes -> tokens, with ViLBERT's whole-image token (the
    mean of the real features, its box the whole image) first when ``global_token``."""
    if global_token:
        weights = mask.unsqueeze(-1).to(features.dtype)  # (B, K, 1)
        mean = (features * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True)
        whole = torch.tensor([[0.0, 0.0, w, h] for h, w in image_sizes], dtype=boxes.dtype,
                             device=boxes.device).unsqueeze(1)  # (B, 1, 4)
        features = torch.cat([mean, features], dim=1)
        boxes = torch.cat([whole, boxes], dim=1)
        mask = torch.cat([mask[:, :1], mask], dim=1)
    locations = location_features(boxes, image_sizes, location_dims) if location_dims else None
    return Tokens(embed(features, locations), mask, boxes)


class RegionDetector(nn.Module):
    """What every region-feature detector shares once its parts are built: the stages after the
    box head (NMS, box selection, region embedding), the stage declaration and the forward.

    A subclass builds ``backbone`` (tensor -> features), ``fpn`` (or None), ``rpn`` ((images,
    features) -> one (R_i, 4) per image), ``roi_pool`` ((features, proposals[, image sizes]) ->
    (sum R_i, C, S, S)) and ``box_head`` (pooled -> ``BoxHeadOutput``, background at class 0),
    then calls ``_finish``. ``RegionFeatures`` builds them from torchvision parts,
    ``Detectron2Regions`` from detectron2's.
    """

    def _finish(self, *, head: str, nms: str, nms_threshold: float, selection: str,
                num_boxes: int, min_boxes: int, max_boxes: int, conf_threshold: float,
                post_nms_top_n: int, location_dims: int, width: int, embedding: str,
                global_token: bool, feature_dim: int, size_divisibility: int) -> None:
        if nms not in NMS_KINDS:
            raise ValueError(f"unknown NMS kind {nms!r}; valid: {', '.join(NMS_KINDS)}")
        if selection == "fixed" and num_boxes > post_nms_top_n:
            raise ValueError(f"fixed box count {num_boxes} exceeds the {post_nms_top_n} "
                             "proposals the RPN keeps")
        self.out_dim = width
        self.size_divisibility = size_divisibility
        self.min_image_side = smallest_anchor(head)
        self.location_dims = location_dims
        self.global_token = global_token
        self.fixed = selection == "fixed"
        self.num_boxes = num_boxes
        self.max_boxes = max_boxes
        self.nms = (PerClassNMS if nms == "per-class" else ClassAgnosticNMS)(
            iou_threshold=nms_threshold)
        self.select = BoxSelection(mode=selection, num_boxes=num_boxes, min_boxes=min_boxes,
                                   max_boxes=max_boxes, conf_threshold=conf_threshold)
        self.embed = RegionEmbedding(feature_dim=feature_dim, location_dims=location_dims,
                                     width=width, style=embedding)
        ops = StageKind.REGION_OPS
        self.substages = {"backbone": StageKind.BACKBONE,
                          **({"fpn": StageKind.BACKBONE} if self.fpn is not None else {}),
                          "rpn": ops, "roi_pool": ops, "box_head": ops, "nms": ops, "select": ops,
                          "embed": StageKind.VISUAL_EMBEDDING}
        self.last_workload: dict[str, int] = {}

    def num_tokens(self, image_size: tuple[int, int]) -> int:
        """Fixed mode: exactly ``num_boxes``; adaptive: at most ``max_boxes`` (random weights
        give the minimum, see ``BoxSelection``); plus the whole-image token if any."""
        return (self.num_boxes if self.fixed else self.max_boxes) + int(self.global_token)

    def forward(self, images: ImageBatch) -> Tokens:
        for h, w in images.image_sizes:
            if min(h, w) < self.min_image_side:
                raise ValueError(f"image {h}x{w} is smaller than the smallest anchor "
                                 f"({self.min_image_side} px)")
        feats = self.backbone(images.tensor)  # C4: (B, 1024, H/16, W/16); FPN: res2..res5
        if self.fpn is not None:
            feats = self.fpn(feats)  # "0".."3", "pool": (B, 256, ...)
        proposals = self.rpn(images, feats)  # B x (R_i, 4)
        counts = [len(p) for p in proposals]  # host-known: the RPN already synchronised
        if self.fixed and min(counts) < self.num_boxes:
            raise ValueError(f"fixed box count {self.num_boxes} exceeds the {min(counts)} "
                             "proposals kept for an image")
        if self.fpn is None:
            pooled = self.roi_pool(feats, proposals)  # (sum R_i, 1024, 14, 14)
        else:
            pooled = self.roi_pool(feats, proposals, list(images.image_sizes))  # (sum R_i, ...)
        head = self.box_head(pooled)  # features (sum R_i, 2048), class_probs (sum R_i, C)
        boxes = _per_image(proposals, counts)  # (B, R, 4)
        features = _per_image(head.features.split(counts), counts)  # (B, R, 2048)
        probs = _per_image(head.class_probs.split(counts), counts)  # (B, R, C); padding 0
        conf, _ = self.nms(boxes, probs)  # (B, R) each box's best kept class score
        kept, kept_boxes, mask = self.select(features, boxes, conf)  # (B, K, 2048), (B, K, 4)
        self.last_workload = {
            **self.rpn.last_workload,
            "box_head_proposals": int(pooled.shape[0]),
            **self.nms.last_workload,
            **self.select.last_workload,
        }
        return region_tokens(self.embed, kept, kept_boxes, mask, images.image_sizes,
                             self.location_dims, self.global_token)


class RegionFeatures(RegionDetector):
    """Images -> region tokens (B, K, width) with their boxes, through a random Faster R-CNN
    built from torchvision parts."""

    def __init__(
        self, *, backbone: str, head: str, roi: str, nms: str, num_classes: int,
        attributes: bool, pre_nms_top_n: int, post_nms_top_n: int, rpn_nms_threshold: float,
        min_box_size: float, nms_threshold: float, roi_size: int, selection: str,
        num_boxes: int, min_boxes: int, max_boxes: int, conf_threshold: float,
        location_dims: int, width: int, embedding: str, global_token: bool,
    ) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"unknown RoI head {head!r}; valid: {', '.join(HEADS)}")
        self.fpn: nn.Module | None = None
        rpn_settings = dict(pre_nms_top_n=pre_nms_top_n, post_nms_top_n=post_nms_top_n,
                            nms_thresh=rpn_nms_threshold, min_size=min_box_size)
        if head == "c4":
            self.backbone: nn.Module = ResNetC4(name=backbone)
            self.rpn = RPN(network=build_rpn(in_channels=1024, **rpn_settings))
            self.roi_pool: nn.Module = RoIPooler(output_size=roi_size, spatial_scale=1 / 16,
                                                 kind=roi)
            self.box_head: nn.Module = Res5BoxHead(backbone=backbone, num_classes=num_classes,
                                                   attributes=attributes)
        else:
            trunk = ResNetFPN(name=backbone)
            self.backbone, self.fpn = trunk.body, trunk.fpn
            self.rpn = RPN(network=build_rpn(in_channels=256, mid_channels=256, fpn_levels=5,
                                             **rpn_settings))
            self.roi_pool = MultiScaleRoIPooler()
            self.box_head = MLPBoxHead(num_classes=num_classes, attributes=attributes)
        # detectron2's padding: none for C4 (a ResNet's size_divisibility is 0; here 1), 32
        # for an FPN, whose top-down sums need every level to halve exactly
        self._finish(head=head, nms=nms, nms_threshold=nms_threshold, selection=selection,
                     num_boxes=num_boxes, min_boxes=min_boxes, max_boxes=max_boxes,
                     conf_threshold=conf_threshold, post_nms_top_n=post_nms_top_n,
                     location_dims=location_dims, width=width, embedding=embedding,
                     global_token=global_token, feature_dim=2048,
                     size_divisibility=1 if head == "c4" else 32)


def _per_image(rows: list[Tensor] | tuple[Tensor, ...], counts: list[int]) -> Tensor:
    """Stack per-image rows to (B, R, ...), zero padding images with fewer rows."""
    if len(set(counts)) == 1:
        return torch.stack(list(rows))
    return pad_sequence(list(rows), batch_first=True)


@dataclass(frozen=True)
class PrecomputedRegionsConfig:
    """Region features cached offline (how UNITER and LXMERT are usually deployed)."""

    num_boxes: int = 36
    feature_dim: int = 2048
    location_dims: int = 7
    width: int = 768
    embedding: str = "uniter"
    global_token: bool = False


@dataclass(frozen=True)
class RegionBatch:
    """Given region features (B, N, F) and their boxes (B, N, 4) in pixels, with each image's
    size on the host for normalising the boxes."""

    features: Tensor
    boxes: Tensor
    image_sizes: tuple[tuple[int, int], ...]

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> RegionBatch:
        return RegionBatch(self.features.to(device=device, dtype=dtype),
                           self.boxes.to(device=device, dtype=dtype), self.image_sizes)

    def __len__(self) -> int:
        return len(self.image_sizes)


def canonical_precomputed(width: int, tiny: bool
                          ) -> tuple[PrecomputedRegionsConfig, tuple[int, int]]:
    """How ``precomputed+FUSION`` pairs build this embedder: 36 regions of an 800x1333 image."""
    boxes = TINY_REGIONS.num_boxes if tiny else 36
    return PrecomputedRegionsConfig(num_boxes=boxes, width=width), (
        (128, 160) if tiny else (800, 1333))


class PrecomputedRegions(nn.Module):
    """Precomputed region features -> tokens: only the region embedding runs, so a user sees the
    fusion cost without the detector."""

    def __init__(self, *, num_boxes: int, feature_dim: int, location_dims: int, width: int,
                 embedding: str = "uniter", global_token: bool = False) -> None:
        super().__init__()
        self.out_dim = width
        self.num_boxes = num_boxes
        self.feature_dim = feature_dim
        self.location_dims = location_dims
        self.global_token = global_token
        self.embed = RegionEmbedding(feature_dim=feature_dim, location_dims=location_dims,
                                     width=width, style=embedding)
        self.substages = {"embed": StageKind.VISUAL_EMBEDDING}

    def num_tokens(self, image_size: tuple[int, int]) -> int:
        return self.num_boxes + int(self.global_token)

    def example_input(self, batch_size: int, image_size: tuple[int, int],
                      generator: torch.Generator) -> RegionBatch:
        """Random non-negative features (post-ReLU, as a detector gives) and valid boxes."""
        h, w = image_size
        features = torch.rand(batch_size, self.num_boxes, self.feature_dim, generator=generator)
        corners = torch.rand(batch_size, self.num_boxes, 2, 2, generator=generator)
        corners = corners.sort(dim=2).values * torch.tensor([w, h], dtype=torch.float32)
        boxes = corners.flatten(2)  # (B, N, 4): x1, y1, x2, y2
        return RegionBatch(features, boxes, tuple((h, w) for _ in range(batch_size)))

    def forward(self, regions: RegionBatch) -> Tokens:
        if regions.features.shape[-1] != self.feature_dim:
            raise ValueError(f"expected {self.feature_dim}-d region features, got "
                             f"{regions.features.shape[-1]}")
        mask = torch.ones(regions.features.shape[:2], dtype=torch.bool,
                          device=regions.features.device)
        return region_tokens(self.embed, regions.features, regions.boxes, mask,
                             regions.image_sizes, self.location_dims, self.global_token)
