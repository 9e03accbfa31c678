"""Our region detector against the same detector built on detectron2 (``benchmarks/
parity/detectron2.py``): parameters per part, FLOPs per stage, workload, interleaved latency,
and, with our weights copied into detectron2's trunk, the same activations.

Tiny size runs forwards (seconds); full size counts on the meta device. Skips locally without
detectron2, fails under ``CI`` (which installs it).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.parity.detectron2 import (
    OUTCOMES,
    build_pair,
    copy_trunk,
    d2_trunk_name,
    example_images,
    interleaved_stage_ms,
    main,
    param_rows,
    parity_config,
    stage_flops,
)
from feature_extractors import declared_stages, detectron2_available

if not detectron2_available():
    if os.environ.get("CI"):
        pytest.fail("detectron2 is not installed under CI (.ci/run installs the wheels)",
                    pytrace=False)
    pytest.skip("detectron2 is not installed (see the README's install command)",
                allow_module_level=True)

BOX_ROWS = 2048 * 4 + 4  # bbox_pred's background rows: ours (Caffe) 4 x C, detectron2 4 x (C-1)
Pair = tuple[nn.Module, nn.Module]


@pytest.fixture(scope="module", params=["c4", "fpn"])
def tiny(request: pytest.FixtureRequest) -> tuple[str, nn.Module, nn.Module]:
    config, _ = parity_config("tiny", request.param)
    ours, theirs = build_pair(config)
    return request.param, ours, theirs


def test_parameters_per_part_equal_but_the_background_boxes(tiny):
    head, ours, theirs = tiny
    rows = {label: (a, b) for label, a, b in param_rows(ours, theirs, head)}
    for label, (a, b) in rows.items():
        extra = BOX_ROWS if label in ("box head: bbox_pred", "total") else 0
        assert a - b == extra, label
    assert rows["box head: attributes"][0] > 0  # the VG detector's attribute head, both sides


def test_flops_per_stage_and_workload_equal(tiny):
    head, ours, theirs = tiny
    config, size = parity_config("tiny", head)
    images = example_images(ours, size, "cpu")
    with torch.inference_mode():
        fo = stage_flops(ours, lambda: ours(images))
        ft = stage_flops(theirs, lambda: theirs(images))
    assert set(fo) == set(ft)
    proposals = config.post_nms_top_n
    for name in fo:
        # the predictor alone differs: 4 box outputs x 2048 x 2 FLOPs per proposal
        extra = 2 * 2048 * 4 * proposals if name in ("box_head", "box_head.predictor",
                                                       "total") else 0
        assert fo[name] - ft[name] == extra, name
    assert abs(fo["total"] / ft["total"] - 1) < 0.01
    wo, wt = ours.last_workload, theirs.last_workload
    assert wo["box_head_proposals"] == wt["box_head_proposals"] == proposals
    assert {k: v for k, v in wo.items() if k not in OUTCOMES} == {
        k: v for k, v in wt.items() if k not in OUTCOMES}


def test_interleaved_latency_times_every_stage_on_both_sides(tiny):
    head, ours, theirs = tiny
    _, size = parity_config("tiny", head)
    images = example_images(ours, size, "cpu")
    with torch.inference_mode():
        to, tt = interleaved_stage_ms(ours, theirs, images, torch.device("cpu"), repeats=2,
                                      warmup=0)
    names = {s.name for s in declared_stages(ours)} | {"forward"}
    assert set(to) == set(tt) == names
    assert to["backbone"] > 0 and tt["backbone"] > 0
    assert 0.33 < to["forward"] / tt["forward"] < 3  # the same work: a generous bound


def test_trunks_compute_the_same_with_the_same_weights():
    """Stride in the 1x1, Caffe's stem pooling, no padding, the dilated res5 head: with our
    weights (residual scales made non-zero, so every conv counts) copied into detectron2's
    twin, res4 and the box head's res5 features agree."""
    config, size = parity_config("tiny", "c4")
    ours, theirs = build_pair(config)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for module in ours.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(0.5 + torch.rand(module.weight.shape, generator=gen))
                module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape,
                                                            generator=gen))
    copy_trunk(ours.backbone, theirs.backbone)
    copy_trunk(ours.box_head.res5, theirs.box_head.head)
    images = example_images(ours, (100, 150), "cpu")  # odd sizes: rounding must agree
    pooled = torch.randn(3, 1024, 14, 14, generator=gen)
    with torch.inference_mode():
        a, b = ours.backbone(images.tensor), theirs.backbone(images.tensor)["res4"]
        assert a.shape == b.shape == (1, 1024, 7, 10)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ours.box_head.res5(pooled), theirs.box_head.head(pooled),
                                   rtol=1e-4, atol=1e-4)
        assert a.abs().max() > 1e-2  # not a trivially zero map


def test_trunk_names_map_one_to_one():
    assert d2_trunk_name("conv1.weight") == "stem.conv1.weight"
    assert d2_trunk_name("bn1.running_var") == "stem.conv1.norm.running_var"
    assert d2_trunk_name("layer3.0.bn2.weight") == "res4.0.conv2.norm.weight"
    assert d2_trunk_name("layer1.0.downsample.1.bias") == "res2.0.shortcut.norm.bias"
    assert d2_trunk_name("0.downsample.0.weight") == "0.shortcut.weight"
    assert d2_trunk_name("layer2.0.bn1.num_batches_tracked") is None


@pytest.mark.parametrize("head", ["c4", "fpn"])
def test_full_size_parameters_and_flops_on_meta(head):
    """800x1333, 1600 classes, 300 proposals: every part's parameters equal but bbox_pred;
    backbone (with the FPN), box head and attribute head FLOPs within 1% (the RoI ops and NMS
    count none; the RPN head's equal FLOPs are checked at tiny size, its NMS needs values)."""
    config, (h, w) = parity_config("full", head)
    with torch.device("meta"):
        ours, theirs = build_pair(config, "meta")
    rows = {label: (a, b) for label, a, b in param_rows(ours, theirs, head)}
    for label, (a, b) in rows.items():
        assert a - b == (BOX_ROWS if label in ("box head: bbox_pred", "total") else 0), label
    if head == "c4":
        assert rows["backbone (to res4)"][0] == 27_535_424  # incl. norm scale and shift
        assert rows["box head: res5"][0] == 14_964_736
        assert rows["rpn"][0] == 4_719_104 + 512 * 12 + 12 + 512 * 48 + 48
        # detectron2's detector with the attribute head, norm scale and shift included: 65.44 M
        # (65.33 M if FrozenBN's 105,344 scale and shift entries are left out as buffers)
        assert rows["total"][1] - rows["embed"][1] == 65_439_822
    size = (800, 1344) if head == "fpn" else (h, w)  # FPN pads to 32; C4 pads nothing
    roi = (1024, config.roi_size) if head == "c4" else (256, 7)
    x = torch.empty(1, 3, *size, device="meta")
    pooled = torch.empty(300, roi[0], roi[1], roi[1], device="meta")
    fo, ft = ({"backbone": _flops(lambda n=net: _trunk(n, x)),
               "box_head": _flops(lambda n=net: n.box_head(pooled)),
               "attributes": _flops(lambda n=net: n.box_head.attributes(
                   torch.empty(300, 2048, device="meta"),
                   torch.zeros(300, dtype=torch.long, device="meta")))}
              for net in (ours, theirs))
    for name in fo:
        assert abs(fo[name] / ft[name] - 1) < 0.01, (name, fo[name], ft[name])
    # the predictor's background boxes: 2 x 2048 x 4 FLOPs per proposal, 300 proposals
    assert fo["box_head"] - ft["box_head"] == 2 * 2048 * 4 * 300
    assert fo["attributes"] == ft["attributes"]
    if head == "c4":
        assert fo["backbone"] == ft["backbone"] == 292_434_790_400
        assert fo["box_head"] // 300 > 5.85e9  # res5 at 14x14: ~5.9 GFLOPs per proposal


def _flops(run: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        run()
    return int(counter.get_total_flops())


def _trunk(net: nn.Module, x: torch.Tensor) -> object:
    """The backbone (and FPN) on a meta tensor: no data-dependent step, so meta works."""
    feats = net.backbone(x)
    return feats if net.fpn is None else net.fpn(feats)


def test_script_prints_the_tables(capsys):
    assert main(["--size", "tiny", "--repeats", "1", "--warmup", "0", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for title in ("parameters", "GFLOPs per stage", "workload", "median ms per stage"):
        assert title in out
    assert "box head: bbox_pred" in out and "boxes_in_nms" in out
