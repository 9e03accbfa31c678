"""Bottom-up attention's Visual Genome detector built with detectron2 (``detectron2.py``'s half
that imports it; detectron2 is optional, so only ``Detectron2Regions`` imports this module).

The detector is ``detectron2.modeling.build_model`` on a config, plus the edits the upstream
config cannot express, which py-bottom-up-attention (airsplay's detectron2 port of the Caffe
model, ``VG-Detection/faster_rcnn_R_101_C4_attr_caffemaxpool.yaml``) makes with config keys of
its fork. The same keys are added here, so a user's config written for that fork loads too:

- ``MODEL.CAFFE_MAXPOOL``: the stem pools as Caffe does (kernel 3, stride 2, no padding, ceil);
- ``MODEL.PROPOSAL_GENERATOR.HID_CHANNELS``: the RPN conv's width (512; upstream: RPN.CONV_DIMS);
- ``MODEL.ROI_BOX_HEAD.RES5HALVE: False``: the res5 head at stride 1, every 3x3 at dilation 2;
- ``MODEL.ROI_BOX_HEAD.ATTR`` / ``NUM_ATTRS``: the attribute head (``box_head.AttributeHead``).

The rest is upstream configuration: anchors 64-512, ROIPool 14x14, 1600 classes. A depth
detectron2's config cannot build (our ``tiny`` test trunk) is built by hand from
``ResNet.make_stage``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.modeling.backbone.resnet import BasicStem, BottleneckBlock, ResNet
from torch import nn

from .backbone import RESNETS, stride_in_1x1
from .box_head import AttributeHead

DEPTHS = {"r50": 50, "r101": 101, "x152-32x8d": 152, "x152-32x4d": 152, "tiny": 50}
FPN_LEVELS = ["p2", "p3", "p4", "p5"]


class CaffeMaxPoolStem(BasicStem):
    """detectron2's stem with Caffe's pooling (BUTD's ``pool1``): no padding, rounding up."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu_(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=0, ceil_mode=True)


def base_config() -> CfgNode:
    """detectron2's defaults plus the bottom-up-attention fork's keys (at upstream behaviour)."""
    cfg = get_cfg()
    cfg.MODEL.CAFFE_MAXPOOL = False
    cfg.MODEL.PROPOSAL_GENERATOR.HID_CHANNELS = -1
    cfg.MODEL.ROI_BOX_HEAD.RES5HALVE = True
    cfg.MODEL.ROI_BOX_HEAD.ATTR = False
    cfg.MODEL.ROI_BOX_HEAD.NUM_ATTRS = 400
    return cfg


def user_config(path: str) -> CfgNode:
    """A user's own config file (its ``_BASE_`` resolved by detectron2)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"detectron2 config file {path!r} does not exist")
    cfg = base_config()
    cfg.merge_from_file(path)
    return cfg


def vg_config(*, backbone: str, head: str, roi: str, num_classes: int, attributes: bool,
              roi_size: int) -> CfgNode:
    """The config of ``RegionFeatures``' detector: bottom-up attention's R101-C4 by default."""
    if backbone not in DEPTHS:
        raise ValueError(f"unknown backbone {backbone!r}; valid: {', '.join(sorted(DEPTHS))}")
    cfg = base_config()
    m = cfg.MODEL
    m.MASK_ON = False
    _, groups, width = RESNETS[backbone]
    m.RESNETS.DEPTH = DEPTHS[backbone]
    m.RESNETS.NUM_GROUPS, m.RESNETS.WIDTH_PER_GROUP = groups, width
    m.RESNETS.STRIDE_IN_1X1 = stride_in_1x1(backbone)
    m.ROI_HEADS.NUM_CLASSES = num_classes - 1  # detectron2 counts foreground classes
    m.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = 2  # pinned, as ours (RoIAlign only)
    m.ROI_BOX_HEAD.ATTR = attributes
    m.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
    if head == "c4":
        m.RESNETS.OUT_FEATURES = ["res4"]
        m.CAFFE_MAXPOOL = stride_in_1x1(backbone)  # the MSRA Caffe trunks (backbone.py)
        m.PROPOSAL_GENERATOR.HID_CHANNELS = 512
        m.ANCHOR_GENERATOR.SIZES = [[64, 128, 256, 512]]
        m.ROI_HEADS.NAME = "Res5ROIHeads"
        m.ROI_BOX_HEAD.RES5HALVE = False
        m.ROI_BOX_HEAD.POOLER_TYPE = {"pool": "ROIPool", "align": "ROIAlign"}[roi]
        m.ROI_BOX_HEAD.POOLER_RESOLUTION = roi_size
        return cfg
    m.BACKBONE.NAME = "build_resnet_fpn_backbone"
    m.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    m.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    m.ANCHOR_GENERATOR.SIZES = [[32], [64], [128], [256], [512]]
    m.RPN.IN_FEATURES = [*FPN_LEVELS, "p6"]
    m.ROI_HEADS.NAME = "StandardROIHeads"
    m.ROI_HEADS.IN_FEATURES = FPN_LEVELS
    m.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    m.ROI_BOX_HEAD.NUM_FC, m.ROI_BOX_HEAD.FC_DIM = 2, 2048  # ours: 2048-d, what VLP models use
    m.ROI_BOX_HEAD.POOLER_TYPE, m.ROI_BOX_HEAD.POOLER_RESOLUTION = "ROIAlign", 7
    return cfg


def set_test_proposals(cfg: CfgNode, *, pre_nms_top_n: int, post_nms_top_n: int,
                       nms_threshold: float, min_box_size: float) -> None:
    """The RPN's test-time workload: vlbench's settings, whatever config file built the net."""
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = pre_nms_top_n
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = post_nms_top_n
    cfg.MODEL.RPN.NMS_THRESH = nms_threshold
    cfg.MODEL.PROPOSAL_GENERATOR.MIN_SIZE = min_box_size


def build_detector(cfg: CfgNode, *, tiny: bool = False, weights: str | None = None
                   ) -> tuple[nn.Module, AttributeHead | None]:
    """detectron2's ``GeneralizedRCNN`` for ``cfg`` with the fork's edits, in eval mode, and its
    attribute head (None without ``ATTR``). Random weights unless ``weights`` (a local file):
    then the last norm scale of every bottleneck is zeroed, so activations stay bounded and the
    configured proposals reach the box head (upstream ``FrozenBN`` is the identity: without it
    every RPN box leaves the image)."""
    if weights is not None and not Path(weights).is_file():
        raise FileNotFoundError(f"detectron2 weights file {weights!r} does not exist")
    m = cfg.MODEL
    m.DEVICE = str(torch.empty(0).device)  # build_model moves the net there: meta works too
    if m.PROPOSAL_GENERATOR.HID_CHANNELS > 0:
        m.RPN.CONV_DIMS = [m.PROPOSAL_GENERATOR.HID_CHANNELS]
    net = build_model(cfg)
    c4 = m.ROI_HEADS.NAME == "Res5ROIHeads"
    trunk = net.backbone if c4 else net.backbone.bottom_up
    if tiny:
        trunk = _tiny_trunk(trunk.stem, c4=c4)
        if c4:
            net.backbone = trunk
            net.roi_heads.res5 = _tiny_res5()
        else:
            net.backbone.bottom_up = trunk
    if m.CAFFE_MAXPOOL:
        stem = CaffeMaxPoolStem(in_channels=3, out_channels=trunk.stem.out_channels,
                                norm=m.RESNETS.NORM)
        stem.conv1 = trunk.stem.conv1
        trunk.stem = stem
    if c4 and not m.ROI_BOX_HEAD.RES5HALVE:
        _dilate(net.roi_heads.res5)
    attributes = None
    if m.ROI_BOX_HEAD.ATTR:
        scores = net.roi_heads.box_predictor.cls_score
        attributes = AttributeHead(in_features=scores.in_features,
                                   num_classes=scores.out_features,
                                   num_attributes=m.ROI_BOX_HEAD.NUM_ATTRS + 1)
    if weights is None:
        _zero_last_norms(net)
    else:
        _load(net, attributes, weights)
    _affine_as_parameters(net)
    return net.eval(), attributes


def _tiny_trunk(stem: nn.Module, *, c4: bool) -> ResNet:
    """Our ``tiny`` trunk (one bottleneck per stage, 3x3 width 8..64, 256..2048 channels)."""
    blocks, groups, width = RESNETS["tiny"]
    stages, in_ch, out_ch, mid = [], 64, 256, groups * width
    for i, n in enumerate(blocks[:3] if c4 else blocks):
        stages.append(ResNet.make_stage(
            BottleneckBlock, n, stride_per_block=[1 if i == 0 else 2] + [1] * (n - 1),
            in_channels=in_ch, out_channels=out_ch, bottleneck_channels=mid,
            num_groups=groups, norm="FrozenBN", stride_in_1x1=True))
        in_ch, out_ch, mid = out_ch, out_ch * 2, mid * 2
    names = ["res4"] if c4 else ["res2", "res3", "res4", "res5"]
    return ResNet(stem, stages, out_features=names)


def _tiny_res5() -> nn.Sequential:
    blocks, groups, width = RESNETS["tiny"]
    n = blocks[3]
    return nn.Sequential(*ResNet.make_stage(
        BottleneckBlock, n, stride_per_block=[2] + [1] * (n - 1), in_channels=1024,
        out_channels=2048, bottleneck_channels=groups * width * 8, num_groups=groups,
        norm="FrozenBN", stride_in_1x1=True))


def _dilate(res5: nn.Sequential) -> None:
    """BUTD's res5 head: stride 1 everywhere, every 3x3 conv at dilation 2 (padding 2)."""
    for block in res5:
        for conv in (block.conv1, block.conv2, block.conv3, block.shortcut):
            if conv is not None:
                conv.stride = (1, 1)
        block.conv2.dilation, block.conv2.padding = (2, 2), (2, 2)


def _zero_last_norms(net: nn.Module) -> None:
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, BottleneckBlock):
                module.conv3.norm.weight.zero_()


def _load(net: nn.Module, attributes: AttributeHead | None, weights: str) -> None:
    """Load a checkpoint with detectron2's checkpointer; the attribute head sits, for the load
    only, where the fork keeps it (``roi_heads.box_predictor.cls_embedding`` ...)."""
    predictor = net.roi_heads.box_predictor
    children = dict(attributes.named_children()) if attributes is not None else {}
    for name, module in children.items():
        predictor.add_module(name, module)
    try:
        DetectionCheckpointer(net).load(weights)
    finally:
        for name in children:
            delattr(predictor, name)


def _affine_as_parameters(net: nn.Module) -> None:
    """The counting rule, applied to detectron2's side: a norm layer's scale and shift are
    parameters (frozen, ``requires_grad=False``), as in torch's BatchNorm and Caffe's Scale
    layers, not buffers as ``FrozenBatchNorm2d`` stores them. Names and state dict unchanged."""
    for module in net.modules():
        if isinstance(module, FrozenBatchNorm2d):
            for name in ("weight", "bias"):
                tensor = module._buffers.pop(name)
                module.register_parameter(name, nn.Parameter(tensor, requires_grad=False))
