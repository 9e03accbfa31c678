"""ResNet / ResNeXt trunks for the grid and region embedders, randomly initialised.

Built from torchvision's ``ResNet`` (no weights are ever downloaded), keeping torchvision's module
names (``conv1``, ``bn1``, ``layer1`` ...) so a researcher can load a torchvision checkpoint.

Initialisation matters for a benchmark of random weights: with torchvision's default init a
ResNet-101 trunk's activations reach ~1e5 by res4, a random RPN then pushes every box off the
image and the region stages do no work (DESIGN.md, "Traps"). ``zero_init_residual=True`` sets the
last BatchNorm gamma of every bottleneck to zero, so in eval mode each residual branch adds
exactly zero and the signal only passes the stem and the projection shortcuts: measured at
128x128, res4 of r101 peaks at ~0.7 (std ~0.09) instead of ~6e4. The convolutions still run in
full, so latency and FLOPs are those of the real network.

Faithful to the detectors' own trunks, not torchvision's: the MSRA ResNets (``MSRA``: the Caffe
R-50/R-101 that bottom-up attention and detectron's R-50/R-101 models start from) put a stage's
stride in the first 1x1 conv (detectron2's ``STRIDE_IN_1X1``), where torchvision puts it in the
3x3 (R101 to res4 at 800x1344: 293.0 against 299.6 GFLOPs); the ResNeXts put it in the 3x3 as
torchvision does. The C4 trunk of an MSRA model pools its stem as Caffe does (kernel 3, stride 2,
no padding, rounding up: 333 columns at 1333 wide, where torchvision's padded pool gives 334).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import Bottleneck, ResNet
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

# name -> (blocks per stage, groups, width per group). Parameter counts (REFERENCE.md, Table 7:
# R50 25 M, R101 44 M, X152 60 M incl. the ImageNet fc) are asserted in tests/test_backbone_grid.py.
RESNETS: dict[str, tuple[list[int], int, int]] = {
    "r50": ([3, 4, 6, 3], 1, 64),
    "r101": ([3, 4, 23, 3], 1, 64),
    "x152-32x8d": ([3, 8, 36, 3], 32, 8),  # detectron X-152 (MMF / VinVL-era extractors)
    "x152-32x4d": ([3, 8, 36, 3], 32, 4),  # the width the ViLT paper's Table 6 fits
    "tiny": ([1, 1, 1, 1], 1, 8),  # for tests: same channel plan (256..2048), narrow 3x3 convs
}


#: Caffe-trained MSRA ResNets: stride in the 1x1 conv, Caffe's stem pooling in a C4 detector
MSRA = frozenset({"r50", "r101", "tiny"})


def stride_in_1x1(name: str) -> bool:
    """Whether trunk ``name`` strides in its first 1x1 conv (MSRA) rather than the 3x3."""
    return name in MSRA


def caffe_max_pool() -> nn.MaxPool2d:
    """Caffe's stem pooling: no padding, output size rounded up (BUTD's ``pool1``)."""
    return nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)


def _spec(name: str) -> tuple[list[int], int, int]:
    try:
        return RESNETS[name]
    except KeyError:
        valid = ", ".join(sorted(RESNETS))
        raise ValueError(f"unknown backbone {name!r}; valid: {valid}") from None


def _resnet(layers: list[int], groups: int, width: int, dilate_res5: bool,
            stride_1x1: bool = False) -> ResNet:
    net = ResNet(
        Bottleneck,
        layers,
        groups=groups,
        width_per_group=width,
        zero_init_residual=True,  # bounded activations, see the module docstring
        replace_stride_with_dilation=[False, False, dilate_res5],
    )
    if dilate_res5:
        # torchvision keeps the first res5 block's 3x3 conv at the previous dilation (1);
        # bottom-up attention's res5 head dilates every 3x3 conv (REFERENCE.md).
        first = net.layer4[0]
        first.conv2.dilation = (2, 2)
        first.conv2.padding = (2, 2)
        assert first.downsample is not None and first.downsample[0].stride == (1, 1)
    if stride_1x1:
        for stage in (net.layer2, net.layer3, net.layer4):
            first = stage[0]
            if first.conv2.stride != (1, 1):  # move the stride to the 1x1 (MSRA, Caffe)
                first.conv1.stride, first.conv2.stride = first.conv2.stride, (1, 1)
    return net


def build_resnet(name: str, *, dilate_res5: bool = False, stride_1x1: bool = False) -> ResNet:
    """A random-initialised torchvision ResNet/ResNeXt by name (``RESNETS``).

    ``dilate_res5`` runs res5 at stride 1 with every 3x3 conv at dilation 2 (the bottom-up
    attention box head) instead of stride 2. ``stride_1x1`` strides in each stage's first 1x1
    conv, as the MSRA Caffe models do (torchvision: in the 3x3; the grid embedder keeps that).
    """
    layers, groups, width = _spec(name)
    return _resnet(layers, groups, width, dilate_res5, stride_1x1)


def res5_from(name: str, *, dilated: bool) -> nn.Sequential:
    """The res5 stage (``layer4``) of a ResNet: the C4 detector's box head.

    (N, 1024, h, w) -> (N, 2048, h, w) when ``dilated`` (stride 1, dilation 2: bottom-up
    attention runs it on each 14x14 RoI), else (N, 2048, ceil(h/2), ceil(w/2)).
    res5 does not depend on the earlier stages' depths (it always takes 1024 channels), so only one
    block per earlier stage is built: half the construction time for the region extractor, which
    builds the trunk separately.
    """
    layers, groups, width = _spec(name)
    return _resnet([1, 1, 1, layers[3]], groups, width, dilated, stride_in_1x1(name)).layer4


class ResNetC4(nn.Module):
    """The trunk through res4 (stem + layer1..layer3): the C4 detector's RPN and RoI input.

    (B, 3, H, W) -> (B, 1024, ~H/16, ~W/16), each stride-2 step rounding up: 800x1333 -> 50x84
    (the MSRA trunk's Caffe pool gives 333 columns where torchvision's gives 334; both 84 at res4).
    """

    out_channels = 1024
    stride = 16

    def __init__(self, *, name: str) -> None:
        super().__init__()
        net = build_resnet(name, stride_1x1=stride_in_1x1(name))
        self.conv1 = net.conv1
        self.bn1 = net.bn1
        self.relu = net.relu
        self.maxpool = caffe_max_pool() if name in MSRA else net.maxpool
        self.layer1 = net.layer1
        self.layer2 = net.layer2
        self.layer3 = net.layer3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)
        x = self.layer1(x)  # (B, 256, H/4, W/4)
        x = self.layer2(x)  # (B, 512, H/8, W/8)
        return self.layer3(x)  # (B, 1024, H/16, W/16)


class ResNetFPN(nn.Module):
    """Trunk through res5 plus a feature pyramid: the FPN RoI-head variant (VisualBERT's X152-FPN).

    ``body`` (the trunk, returning res2..res5) and ``fpn`` are separate submodules, so the FPN can
    be timed as a stage of its own. Output keys "0".."3" and "pool" at ``strides``, 256 channels
    each.
    """

    out_channels = 256
    strides = {"0": 4, "1": 8, "2": 16, "3": 32, "pool": 64}

    def __init__(self, *, name: str) -> None:
        super().__init__()
        net = build_resnet(name, stride_1x1=stride_in_1x1(name))  # stem pooling: padded
        self.body = IntermediateLayerGetter(
            net, return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}
        )
        self.fpn = FeaturePyramidNetwork(
            in_channels_list=[256, 512, 1024, 2048],
            out_channels=self.out_channels,
            extra_blocks=LastLevelMaxPool(),
        )

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = self.body(x)  # "0".."3": (B, 256/512/1024/2048, H/4 .. H/32, ...)
        return self.fpn(feats)  # "0".."3", "pool": (B, 256, H/4 .. H/64, ...)
