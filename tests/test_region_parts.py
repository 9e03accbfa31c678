"""Region detector parts: the BUTD RPN (and that it really proposes), RoI pooling and box heads.

Full-size parameter and FLOP counts run on the meta device; forward checks use tiny shapes, except
the 300-proposal check, which needs the realistic 50x84 res4 map of an 800x1333 image.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.ops import RoIAlign, RoIPool

from feature_extractors.region.backbone import ResNetC4
from feature_extractors.region.box_head import BoxHeadOutput, MLPBoxHead, Res5BoxHead
from feature_extractors.region.roi import MultiScaleRoIPooler, RoIPooler
from feature_extractors.region.rpn import RPN, BUTDRPNHead, build_rpn
from feature_extractors.tokens import ImageBatch

RES5_FLOPS_PER_PROPOSAL = 5_857_345_536  # R101 res5 at 14x14, dilation 2, 2 FLOPs per MAC


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def blank_images(batch: int, padded: tuple[int, int], sizes) -> ImageBatch:
    """An ImageBatch whose pixels are never read (the RPN only needs its shape and sizes)."""
    return ImageBatch(torch.zeros(1, 3, 1, 1).expand(batch, 3, *padded), tuple(sizes))


# --- parameter counts at full size -------------------------------------------------------------


def test_rpn_parameter_counts_are_butds():
    with torch.device("meta"):
        rpn = build_rpn().eval()  # test-time top-n (training would keep 2000 / 2000)
    head = rpn.head
    assert isinstance(head, BUTDRPNHead)
    assert rpn.anchor_generator.num_anchors_per_location() == [12]
    assert n_params(head.conv) == 1024 * 512 * 9 + 512 == 4_719_104
    # sigmoid objectness: 12 outputs where Caffe's softmax has 24 (512 * 12 + 12 fewer)
    assert n_params(head.cls_logits) == 512 * 12 + 12
    assert n_params(head.bbox_pred) == 512 * 48 + 48
    assert rpn.min_size == 16.0
    assert (rpn.pre_nms_top_n(), rpn.post_nms_top_n(), rpn.nms_thresh) == (6000, 300, 0.7)


def test_fpn_rpn_has_one_anchor_size_per_level_and_torchvision_head():
    with torch.device("meta"):
        rpn = build_rpn(fpn_levels=5)
    assert rpn.anchor_generator.sizes == ((32,), (64,), (128,), (256,), (512,))
    assert rpn.anchor_generator.num_anchors_per_location() == [3] * 5
    assert n_params(rpn.head.conv) == 256 * 256 * 9 + 256  # in -> in, as torchvision's RPNHead


def test_res5_head_parameter_counts():
    with torch.device("meta"):
        head = Res5BoxHead()
        with_attrs = Res5BoxHead(attributes=True)
    p = head.predictor
    # background boxes too: BUTD's test.prototxt has bbox_pred 6404 = 4 x 1601
    assert n_params(p.cls_score) == 2048 * 1601 + 1601 == 3_280_449
    assert n_params(p.bbox_pred) == 2048 * 6404 + 6404 == 13_121_796
    assert n_params(head.res5) == 14_964_736  # R101 res5 incl. BatchNorm affine
    assert n_params(head) == 31_366_981
    assert head.attributes is None
    assert head.substages == {"predictor": "region_ops"}
    a = with_attrs.attributes
    attr_params = n_params(a.cls_embedding) + n_params(a.fc_attr) + n_params(a.attr_score)
    assert attr_params == 1601 * 256 + (2304 * 512 + 512) + (512 * 401 + 401) == 1_795_729
    assert n_params(with_attrs) == 31_366_981 + 1_795_729


# --- the RPN really proposes ---------------------------------------------------------------------


@pytest.mark.parametrize("post_nms_top_n", [300, 100])
def test_rpn_delivers_the_configured_proposals_on_a_realistic_map(post_nms_top_n):
    """An 800x1333 image (a C4 detector pads nothing) gives a 50x84 res4 map; random weights
    must not starve the box head (DESIGN.md, Traps)."""
    torch.manual_seed(0)
    rpn = RPN(network=build_rpn(post_nms_top_n=post_nms_top_n)).eval()
    images = blank_images(1, (800, 1333), [(800, 1333)])
    features = torch.randn(1, 1024, 50, 84, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        (boxes,) = rpn(images, features)
    assert boxes.shape == (post_nms_top_n, 4)
    assert rpn.last_workload == {
        "anchors": 50 * 84 * 12,
        "proposals_pre_nms": 6000,
        "proposals_post_nms": post_nms_top_n,
    }
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert bool((w >= 16).all() and (h >= 16).all())
    assert bool((boxes[:, 2] <= 1333).all() and (boxes[:, 3] <= 800).all())


def test_rpn_default_is_butd_c4_and_declares_host_sync():
    assert RPN.host_sync is True
    with torch.device("meta"):
        rpn = RPN()
    assert isinstance(rpn.network.head, BUTDRPNHead)


@pytest.mark.parametrize("min_size", [16.0, 1e-3])
def test_rpn_min_size_is_honoured(min_size):
    """8 px and 32 px anchors: at min_size 16 only the 32 px ones survive."""
    torch.manual_seed(0)
    net = build_rpn(
        in_channels=8,
        mid_channels=8,
        anchor_sizes=(8, 32),
        aspect_ratios=(1.0,),
        pre_nms_top_n=1000,
        post_nms_top_n=1000,
        min_size=min_size,
    )
    rpn = RPN(network=net).eval()
    with torch.no_grad():
        (boxes,) = rpn(blank_images(1, (128, 128), [(128, 128)]), torch.randn(1, 8, 8, 8))
    side = torch.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    assert boxes.shape[0] > 0
    if min_size == 16.0:
        assert bool((side >= 16).all())
    else:
        assert bool((side < 16).any())


def test_fpn_rpn_takes_a_feature_dict_and_clips_to_each_image():
    torch.manual_seed(0)
    rpn = RPN(network=build_rpn(fpn_levels=5)).eval()
    images = blank_images(2, (64, 64), [(64, 64), (48, 40)])
    features = OrderedDict(
        (name, torch.randn(2, 256, 64 // s, 64 // s))
        for name, s in zip(["0", "1", "2", "3", "pool"], [4, 8, 16, 32, 64], strict=True)
    )
    with torch.no_grad():
        boxes = rpn(images, features)
    assert len(boxes) == 2
    anchors = 3 * (16 * 16 + 8 * 8 + 4 * 4 + 2 * 2 + 1)
    assert rpn.last_workload["anchors"] == 2 * anchors
    assert rpn.last_workload["proposals_pre_nms"] == 2 * anchors  # every level under 6000
    assert rpn.last_workload["proposals_post_nms"] == boxes[0].shape[0] + boxes[1].shape[0]
    assert bool((boxes[1][:, 2] <= 40).all() and (boxes[1][:, 3] <= 48).all())


# --- RoI pooling ---------------------------------------------------------------------------------


def test_roi_align_pooler_shape_and_pinned_sampling():
    pooler = RoIPooler(kind="align")
    assert isinstance(pooler.op, RoIAlign)
    assert pooler.op.sampling_ratio == 2
    assert pooler.op.aligned is False
    assert pooler.op.spatial_scale == 1 / 16
    features = torch.randn(2, 4, 10, 12)
    proposals = [
        torch.tensor([[0.0, 0.0, 64.0, 64.0], [16.0, 8.0, 100.0, 150.0]]),
        torch.tensor([[10.0, 20.0, 30.0, 60.0]]),
    ]
    assert pooler(features, proposals).shape == (3, 4, 14, 14)


def test_roi_pool_variant_is_the_default():
    assert isinstance(RoIPooler().op, RoIPool)  # BUTD's Caffe RoIPool
    pooler = RoIPooler(kind="pool", output_size=7)
    assert isinstance(pooler.op, RoIPool)
    out = pooler(torch.randn(1, 4, 10, 12), [torch.tensor([[0.0, 0.0, 64.0, 64.0]])])
    assert out.shape == (1, 4, 7, 7)


def test_unknown_pooling_kind_lists_the_valid_ones():
    with pytest.raises(ValueError, match="'bilinear'.*'align'.*'pool'"):
        RoIPooler(kind="bilinear")


def test_multiscale_pooler_shape():
    features = OrderedDict(
        (name, torch.randn(1, 256, 64 // s, 64 // s))
        for name, s in zip(["0", "1", "2", "3", "pool"], [4, 8, 16, 32, 64], strict=True)
    )
    proposals = [torch.tensor([[0.0, 0.0, 8.0, 8.0], [0.0, 0.0, 60.0, 60.0], [4, 4, 30, 20.0]])]
    assert MultiScaleRoIPooler()(features, proposals, [(64, 64)]).shape == (3, 256, 7, 7)
    assert MultiScaleRoIPooler.host_sync is True


# --- box heads -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def res5_head() -> Res5BoxHead:
    torch.manual_seed(0)
    return Res5BoxHead(num_classes=11, attributes=True).eval()


def test_res5_head_runs_at_stride_1_with_dilation_2(res5_head):
    convs = [m for m in res5_head.res5.modules() if isinstance(m, nn.Conv2d)]
    three = [c for c in convs if c.kernel_size == (3, 3)]
    assert len(three) == 3
    assert all(c.dilation == (2, 2) and c.padding == (2, 2) for c in three)
    assert all(c.stride == (1, 1) for c in convs)


def test_res5_head_outputs(res5_head):
    pooled = torch.randn(3, 1024, 4, 4)  # res5 is fully convolutional: 4x4 keeps the test fast
    with torch.no_grad():
        assert res5_head.res5(pooled).shape == (3, 2048, 4, 4)
        out = res5_head(pooled)
    assert isinstance(out, BoxHeadOutput)
    assert out.features.shape == (3, 2048)
    assert out.class_probs.shape == (3, 11)
    assert out.box_deltas.shape == (3, 44)
    torch.testing.assert_close(out.class_probs.sum(-1), torch.ones(3))
    assert out.attribute_probs is not None and out.attribute_probs.shape == (3, 401)
    torch.testing.assert_close(out.attribute_probs.sum(-1), torch.ones(3))


def test_attribute_head_is_fed_each_boxs_argmax_class(res5_head):
    a = res5_head.attributes
    features = torch.randn(3, 2048)
    with torch.no_grad():
        out = res5_head._predict(features)
        embed = a.cls_embedding(out.class_probs.argmax(-1))
        x = torch.relu(a.fc_attr(torch.cat([features, embed], -1)))
        expected = torch.softmax(a.attr_score(x), -1)
    torch.testing.assert_close(out.attribute_probs, expected)


def test_res5_head_without_attributes_returns_none():
    with torch.device("meta"):
        out = Res5BoxHead(num_classes=5)(torch.empty(2, 1024, 14, 14))
    assert out.attribute_probs is None and out.class_probs.shape == (2, 5)


def test_res5_flops_per_proposal_at_14x14():
    with torch.device("meta"):
        head = Res5BoxHead()
        pooled = torch.empty(2, 1024, 14, 14)
        with FlopCounterMode(display=False) as counter:
            head.res5(pooled)
    per_proposal = counter.get_total_flops() / 2
    assert per_proposal == RES5_FLOPS_PER_PROPOSAL
    assert abs(per_proposal - 5.9e9) / 5.9e9 < 0.10


def test_mlp_head_outputs():
    torch.manual_seed(0)
    head = MLPBoxHead(in_channels=8, num_classes=7).eval()
    assert head.fc7.out_features == 2048  # region VLP models consume 2048-d features
    with torch.no_grad():
        out = head(torch.randn(3, 8, 7, 7))
    assert out.features.shape == (3, 2048)
    assert out.class_probs.shape == (3, 7)
    assert out.box_deltas.shape == (3, 28)
    assert out.attribute_probs is None
    torch.testing.assert_close(out.class_probs.sum(-1), torch.ones(3))


def test_mlp_head_full_size_is_torchvision_two_mlp_at_width_2048():
    with torch.device("meta"):
        head = MLPBoxHead()
        narrow = MLPBoxHead(representation=1024)
    assert head.fc6.in_features == 256 * 7 * 7
    assert n_params(head.fc6) + n_params(head.fc7) == 12544 * 2048 + 2048 + 2048 * 2048 + 2048
    assert narrow.predictor.cls_score.in_features == 1024


# --- the trunk is the Caffe model's ---------------------------------------------------------------


def test_msra_c4_trunk_strides_in_the_1x1_and_pools_as_caffe():
    """BUTD's test.prototxt: res3a_branch2a (1x1) has stride 2, pool1 has no padding and Caffe
    rounds up; torchvision strides in the 3x3 and pads the pool (334 columns at 1333 wide)."""
    with torch.device("meta"):
        c4 = ResNetC4(name="r101")
        x152 = ResNetC4(name="x152-32x8d")
        stem = c4.maxpool(c4.conv1(torch.empty(1, 3, 800, 1333)))
        with FlopCounterMode(display=False) as counter:
            out = c4(torch.empty(1, 3, 800, 1333))
    assert stem.shape[-2:] == (200, 333)
    assert c4.maxpool.ceil_mode and c4.maxpool.padding == 0
    for stage in (c4.layer2, c4.layer3):
        assert stage[0].conv1.stride == (2, 2) and stage[0].conv2.stride == (1, 1)
    for stage in (x152.layer2, x152.layer3):  # FB's ResNeXt: in the 3x3, as torchvision
        assert stage[0].conv1.stride == (1, 1) and stage[0].conv2.stride == (2, 2)
    assert x152.maxpool.padding == 1 and not x152.maxpool.ceil_mode
    assert out.shape == (1, 1024, 50, 84)
    # torchvision's placement costs 299,576,524,800 at 800x1344 (the old padded input)
    assert counter.get_total_flops() == 292_434_790_400
