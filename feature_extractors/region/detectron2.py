"""``Detectron2Regions``: the same region-feature detector as ``RegionFeatures``, built on
detectron2's own modules, or a user's own detectron2 config and weights.

Why: vlbench rebuilt bottom-up attention's detector from torchvision parts because detectron2 is
not on PyPI; this backend runs detectron2's backbone, RPN, RoI pooler, res5 head and predictor
(``d2_build.py``) under the same stage names and kinds (``visual.backbone``, ``visual.rpn``,
``visual.roi_pool``, ``visual.box_head`` with ``predictor`` and ``attributes``, ``visual.nms``,
``visual.select``, ``visual.embed``), so reports, ``compare`` and the gate treat both alike, and
``benchmarks/parity/detectron2.py`` can hold one against the other. After the box head the work
is ours by construction: ``PerClassNMS`` loops over every class as bottom-up attention's feature
extraction does (not detectron2's stock inference, which drops scores under 0.05 and keeps 100
boxes), then ``BoxSelection`` and ``RegionEmbedding``; ``last_workload`` has our keys.

A user's own config (``d2_config``) and weights (``d2_weights``), both local files, define the
network; vlbench's settings define the test-time workload (proposals kept before and after the
RPN's NMS, its threshold and minimum box size), NMS, box selection and the region embedding.
Nothing is downloaded.

detectron2 is optional: this module imports it only when a detector is built.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..stages import StageKind
from ..tokens import ImageBatch
from .box_head import AttributeHead, BoxHeadOutput
from .extractor import HEADS, RegionDetector, RegionFeaturesConfig, canonical_region

#: the detectron2 commit the vendored wheels were built from (their README)
DETECTRON2_COMMIT = "02b5c4e295e990042a714712c21dc79b731e8833"
# --no-build-isolation: detectron2's setup.py imports torch (facebookresearch/detectron2#4472)
INSTALL = ("the detectron2 region backend needs detectron2 (not on PyPI): pip install "
           "--no-build-isolation "
           f"'git+https://github.com/facebookresearch/detectron2.git@{DETECTRON2_COMMIT}'")


def detectron2_available() -> bool:
    """Whether detectron2 and the pycocotools that ``detectron2.modeling`` imports are there."""
    return all(importlib.util.find_spec(name) is not None
               for name in ("detectron2", "pycocotools"))


def require_detectron2() -> None:
    """A one-line ImportError saying how to install detectron2, if it is missing."""
    if not detectron2_available():
        raise ImportError(INSTALL)


@dataclass(frozen=True)
class Detectron2RegionsConfig:
    """``RegionFeaturesConfig``'s fields (same defaults, same meaning), plus a user's own
    detectron2 config file and weights. With ``d2_config`` the file decides the network
    (backbone, heads, classes, RoI op); the fields decide the workload after it."""

    backbone: str = "r101"
    head: str = "c4"
    roi: str = "pool"
    nms: str = "per-class"
    num_classes: int = 1601
    attributes: bool = False
    pre_nms_top_n: int = 6000
    post_nms_top_n: int = 300
    rpn_nms_threshold: float = 0.7
    min_box_size: float = 16.0
    nms_threshold: float = 0.3
    roi_size: int = 14
    selection: str = "fixed"
    num_boxes: int = 36
    min_boxes: int = 10
    max_boxes: int = 100
    conf_threshold: float = 0.2
    location_dims: int = 7
    width: int = 768
    embedding: str = "uniter"
    global_token: bool = False
    d2_config: str | None = None  # a local detectron2 .yaml
    d2_weights: str | None = None  # a local checkpoint (model_final.pth / .pkl)

    @classmethod
    def from_regions(cls, region: RegionFeaturesConfig, *, d2_config: str | None = None,
                     d2_weights: str | None = None) -> Detectron2RegionsConfig:
        return cls(**asdict(region), d2_config=d2_config, d2_weights=d2_weights)

    def to_regions(self) -> RegionFeaturesConfig:
        """The same detector on vlbench's torchvision parts."""
        keep = {f.name for f in fields(RegionFeaturesConfig)}
        return RegionFeaturesConfig(**{k: v for k, v in asdict(self).items() if k in keep})


def canonical_region_d2(width: int, tiny: bool
                        ) -> tuple[Detectron2RegionsConfig, tuple[int, int]]:
    """How ``region-d2+FUSION`` pairs build this embedder: as ``region+FUSION``."""
    region, size = canonical_region(width, tiny)
    return Detectron2RegionsConfig.from_regions(region), size


class D2RPN(nn.Module):
    """detectron2's RPN with our RPN stage's plain signature: ``(ImageBatch, features) ->
    proposals``, one (R_i, 4) xyxy tensor per image, and our workload keys."""

    host_sync = True  # NMS and small-box removal give data-dependent output sizes

    def __init__(self, *, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.last_workload: dict[str, int] = {}

    def forward(self, images: ImageBatch, features: Mapping[str, Tensor]) -> list[Tensor]:
        from detectron2.structures import ImageList  # optional dependency, see the docstring

        proposals, _ = self.network(ImageList(images.tensor, list(images.image_sizes)),
                                    dict(features))
        boxes = [p.proposal_boxes.tensor for p in proposals]
        levels = [features[name] for name in self.network.in_features]
        per_level = [f.shape[-2] * f.shape[-1] * a for f, a in
                     zip(levels, self.network.anchor_generator.num_anchors, strict=True)]
        top_n = self.network.pre_nms_topk[False]
        batch = len(images)
        self.last_workload = {
            "anchors": batch * sum(per_level),
            "proposals_pre_nms": batch * sum(min(top_n, n) for n in per_level),
            "proposals_post_nms": sum(b.shape[0] for b in boxes),
        }
        return boxes


class D2RoIPool(nn.Module):
    """detectron2's ``ROIPooler`` on its input levels: (features, proposals) -> (sum R_i, C, S, S).
    With several levels it assigns boxes to levels with ``nonzero``: a host synchronisation."""

    def __init__(self, *, pooler: nn.Module, in_features: list[str]) -> None:
        super().__init__()
        self.pooler = pooler
        self.in_features = list(in_features)
        self.host_sync = len(self.in_features) > 1

    def forward(self, features: Mapping[str, Tensor], proposals: list[Tensor],
                image_sizes: list[tuple[int, int]] | None = None) -> Tensor:
        from detectron2.structures import Boxes  # optional dependency, see the docstring

        return self.pooler([features[f] for f in self.in_features], [Boxes(p) for p in proposals])


class D2BoxHead(nn.Module):
    """detectron2's per-proposal head (C4: the res5 stage, then the mean over the map; FPN: the
    fc head), its ``FastRCNNOutputLayers`` as the ``predictor`` stage and the attribute head.

    detectron2 puts the background class last; the output puts it first (our convention, which
    ``PerClassNMS`` reads): the attribute head still embeds detectron2's argmax, so a fork's
    weights mean what they meant.
    """

    def __init__(self, *, head: nn.Module, pool: bool, predictor: nn.Module,
                 attributes: AttributeHead | None) -> None:
        super().__init__()
        self.head = head
        self.pool = pool
        self.predictor = predictor
        self.attributes = attributes
        ops = StageKind.REGION_OPS
        self.substages = {"predictor": ops, **({"attributes": ops} if attributes else {})}

    def forward(self, pooled: Tensor) -> BoxHeadOutput:
        x = self.head(pooled)  # C4: (N, 2048, S, S); FPN: (N, 2048)
        features = x.mean(dim=(2, 3)) if self.pool else x  # (N, D)
        logits, deltas = self.predictor(features)  # (N, C) background last, (N, 4(C-1))
        attribute_probs = None
        if self.attributes is not None:
            attribute_probs = self.attributes(features, logits.argmax(dim=-1))
        probs = F.softmax(logits, dim=-1)
        probs = torch.cat([probs[:, -1:], probs[:, :-1]], dim=1)  # background first
        return BoxHeadOutput(features, probs, deltas, attribute_probs)


class _PassThrough(nn.Module):
    """Stands in for an FPN's bottom-up trunk, which runs as a stage of its own."""

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        return features


class Detectron2Regions(RegionDetector):
    """Images -> region tokens through detectron2's Faster R-CNN (random weights unless
    ``d2_weights``): ``RegionFeatures``' stages, names, kinds and workload."""

    def __init__(
        self, *, backbone: str, head: str, roi: str, nms: str, num_classes: int,
        attributes: bool, pre_nms_top_n: int, post_nms_top_n: int, rpn_nms_threshold: float,
        min_box_size: float, nms_threshold: float, roi_size: int, selection: str,
        num_boxes: int, min_boxes: int, max_boxes: int, conf_threshold: float,
        location_dims: int, width: int, embedding: str, global_token: bool,
        d2_config: str | None = None, d2_weights: str | None = None,
    ) -> None:
        super().__init__()
        require_detectron2()
        from . import d2_build  # imports detectron2: optional, so only here

        if d2_config is None:
            if head not in HEADS:
                raise ValueError(f"unknown RoI head {head!r}; valid: {', '.join(HEADS)}")
            cfg = d2_build.vg_config(backbone=backbone, head=head, roi=roi,
                                     num_classes=num_classes, attributes=attributes,
                                     roi_size=roi_size)
        else:
            cfg = d2_build.user_config(d2_config)
        d2_build.set_test_proposals(cfg, pre_nms_top_n=pre_nms_top_n,
                                    post_nms_top_n=post_nms_top_n,
                                    nms_threshold=rpn_nms_threshold, min_box_size=min_box_size)
        net, attribute_head = d2_build.build_detector(
            cfg, tiny=d2_config is None and backbone == "tiny", weights=d2_weights)
        self._adopt(net, attribute_head)
        c4 = self.fpn is None
        self._finish(head="c4" if c4 else "fpn", nms=nms, nms_threshold=nms_threshold,
                     selection=selection, num_boxes=num_boxes, min_boxes=min_boxes,
                     max_boxes=max_boxes, conf_threshold=conf_threshold,
                     post_nms_top_n=post_nms_top_n, location_dims=location_dims, width=width,
                     embedding=embedding, global_token=global_token,
                     feature_dim=net.roi_heads.box_predictor.cls_score.in_features,
                     size_divisibility=max(1, net.backbone.size_divisibility))

    def _adopt(self, net: nn.Module, attributes: AttributeHead | None) -> None:
        """Take the parts of detectron2's ``GeneralizedRCNN`` as our named stages."""
        roi_heads = net.roi_heads
        c4 = hasattr(roi_heads, "res5")
        if c4:
            self.backbone: nn.Module = net.backbone
            self.fpn: nn.Module | None = None
            pooler, head = roi_heads.pooler, roi_heads.res5
        else:
            self.backbone, self.fpn = net.backbone.bottom_up, net.backbone
            self.fpn.bottom_up = _PassThrough()
            pooler, head = roi_heads.box_pooler, roi_heads.box_head
        self.rpn = D2RPN(network=net.proposal_generator)
        self.roi_pool = D2RoIPool(pooler=pooler, in_features=roi_heads.in_features)
        self.box_head = D2BoxHead(head=head, pool=c4, predictor=roi_heads.box_predictor,
                                  attributes=attributes)
