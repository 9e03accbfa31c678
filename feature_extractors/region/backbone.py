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


def _spec(name: str) -> tuple[list[int], int, int]:
    try:
        return RESNETS[name]
    except KeyError:
        valid = ", ".join(sorted(RESNETS))
        raise ValueError(f"unknown backbone {name!r}; valid: {valid}") from None


def _resnet(layers: list[int], groups: int, width: int, dilate_res5: bool) -> ResNet:
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
    return net


def build_resnet(name: str, *, dilate_res5: bool = False) -> ResNet:
    """A random-initialised torchvision ResNet/ResNeXt by name (``RESNETS``).

    ``dilate_res5`` runs res5 at stride 1 with every 3x3 conv at dilation 2 (the bottom-up
    attention box head) instead of stride 2.
    """
    layers, groups, width = _spec(name)
    return _resnet(layers, groups, width, dilate_res5)


def res5_from(name: str, *, dilated: bool) -> nn.Sequential:
    """The res5 stage (``layer4``) of a ResNet: the C4 detector's box head.

    (N, 1024, h, w) -> (N, 2048, h, w) when ``dilated`` (stride 1, dilation 2: bottom-up
    attention runs it on each 14x14 RoI), else (N, 2048, ceil(h/2), ceil(w/2)).
    res5 does not depend on the earlier stages' depths (it always takes 1024 channels), so only one
    block per earlier stage is built: half the construction time for the region extractor, which
    builds the trunk separately.
    """
    layers, groups, width = _spec(name)
    return _resnet([1, 1, 1, layers[3]], groups, width, dilated).layer4


class ResNetC4(nn.Module):
    """The trunk through res4 (stem + layer1..layer3): the C4 detector's RPN and RoI input.

    (B, 3, H, W) -> (B, 1024, H/16, W/16).
    """

    out_channels = 1024
    stride = 16

    def __init__(self, *, name: str) -> None:
        super().__init__()
        net = build_resnet(name)
        self.conv1 = net.conv1
        self.bn1 = net.bn1
        self.relu = net.relu
        self.maxpool = net.maxpool
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
        net = build_resnet(name)
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
