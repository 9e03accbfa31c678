"""The assembled region extractor and precomputed regions (tiny detector; full size on meta)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torchvision.models.detection.image_list import ImageList

from architectures import PRESETS, build_model
from feature_extractors import (
    ImageBatch,
    PrecomputedRegions,
    RegionFeatures,
    RegionFeaturesConfig,
    build_embedder,
)
from feature_extractors.region.rpn import build_rpn
from vlbench.measure import run_case
from vlbench.options import MeasureOptions
from vlbench.results import CaseSpec
from vlbench.timing import TimingOptions

TINY = PRESETS.get("uniter-base-tiny").visual


def _tiny(**changes) -> RegionFeatures:
    torch.manual_seed(0)
    return build_embedder(replace(TINY, **changes)).eval()


def _images(batch: int = 2, size: tuple[int, int] = (128, 160)) -> ImageBatch:
    pixels = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(1))
    return ImageBatch.from_images(list(pixels), size_divisibility=32)


@pytest.mark.parametrize("head", ["c4", "fpn"])
def test_configured_proposals_reach_the_box_head(head):
    extractor = _tiny(head=head)
    with torch.inference_mode():
        tokens = extractor(_images())
    work = extractor.last_workload
    # the DESIGN trap: a random detector that proposes nothing would make region stages free
    assert work["proposals_post_nms"] == 2 * TINY.post_nms_top_n
    assert work["box_head_proposals"] == 2 * TINY.post_nms_top_n
    assert work["boxes_in_nms"] == 2 * TINY.post_nms_top_n * (TINY.num_classes - 1)
    assert work["classes"] == TINY.num_classes - 1
    assert 0 < work["boxes_kept_nms"] <= work["boxes_in_nms"]
    assert tokens.embeds.shape == (2, TINY.num_boxes, TINY.width)
    assert tokens.mask.all()


def test_stage_names_and_kinds():
    c4 = build_model("uniter-base-tiny")
    kinds = {s.name: s.kind for s in c4.stages()}
    assert {n for n in kinds if n.startswith("visual.")} == {
        "visual.backbone", "visual.rpn", "visual.roi_pool", "visual.box_head",
        "visual.box_head.predictor", "visual.nms", "visual.select", "visual.embed"}
    assert kinds["visual.backbone"] == "backbone"
    assert {kinds[f"visual.{n}"] for n in ("rpn", "roi_pool", "box_head", "box_head.predictor",
                                            "nms", "select")} == {"region_ops"}
    parents = {s.name: s.parent for s in c4.stages()}
    assert parents["visual.box_head.predictor"] == "visual.box_head"
    with_attributes = _tiny(attributes=True)
    assert with_attributes.box_head.substages == {"predictor": "region_ops",
                                                  "attributes": "region_ops"}
    sync = {s.name for s in c4.stages() if s.host_sync}
    assert {"visual", "visual.rpn", "visual.nms"} <= sync
    assert "visual.select" not in sync  # fixed count: static shapes
    fpn = _tiny(head="fpn")
    assert "fpn" in fpn.substages and fpn.substages["fpn"] == "backbone"


def test_boxes_lie_inside_each_image_and_locations_are_normalised():
    extractor = _tiny()
    images = ImageBatch.from_images(
        [torch.randn(3, 128, 160), torch.randn(3, 96, 128)], size_divisibility=32)
    assert images.tensor.shape[-2:] == (128, 160)
    with torch.inference_mode():
        tokens = extractor(images)
    for boxes, (h, w) in zip(tokens.boxes, images.image_sizes, strict=True):
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w).all()
        assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= h).all()
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()


def test_fixed_count_larger_than_proposals_is_an_error():
    with pytest.raises(ValueError, match="fixed box count 30 exceeds the 20 proposals"):
        _tiny(num_boxes=30)


def test_image_smaller_than_an_anchor_is_an_error():
    with pytest.raises(ValueError, match="smaller than the smallest anchor"):
        _tiny()(ImageBatch.from_tensor(torch.randn(1, 3, 48, 48)))


@pytest.mark.parametrize(("field", "value", "match"), [
    ("backbone", "r34", "unknown backbone"),
    ("head", "dc5", "unknown RoI head"),
    ("nms", "soft", "unknown NMS kind"),
    ("roi", "warp", "align"),
    ("selection", "greedy", "selection mode"),
])
def test_unknown_part_names_are_clear_errors(field, value, match):
    with pytest.raises(ValueError, match=match):
        _tiny(**{field: value})


def test_class_agnostic_nms_does_one_pass():
    extractor = _tiny(nms="class-agnostic")
    with torch.inference_mode():
        extractor(_images(batch=1))
    assert extractor.last_workload["classes"] == 1
    assert extractor.last_workload["boxes_in_nms"] == TINY.post_nms_top_n


def test_full_size_parameter_counts_on_meta():
    with torch.device("meta"):
        region = build_embedder(RegionFeaturesConfig())
    conv = region.rpn.network.head.conv
    assert sum(p.numel() for p in conv.parameters()) == 4_719_104  # 1024*512*9 + 512
    predictor = region.box_head.predictor
    assert sum(p.numel() for p in predictor.cls_score.parameters()) == 3_280_449
    assert sum(p.numel() for p in predictor.bbox_pred.parameters()) == 13_121_796
    with torch.device("meta"):
        uniter = build_model("uniter-base")
    total = sum(p.numel() for p in uniter.parameters())
    word = uniter.text.word.weight.numel()
    # ViLT paper Table 6 lists UNITER-Base at 154.7 M without the shared text embedding: ours
    # decomposes as detector + region embedding + BERT-base; reported, not asserted.
    print(f"uniter-base: {total / 1e6:.2f} M, without word embeddings "
          f"{(total - word) / 1e6:.2f} M (paper 154.7 M)")
    assert 140e6 < total - word < 170e6


def test_precomputed_regions_embed_given_features():
    model = build_model("uniter-base-precomputed-tiny").eval()
    preset = PRESETS.get("uniter-base-precomputed-tiny")
    regions, ids, mask = model.example_inputs(2, preset.image_size, preset.text_len)
    h, w = preset.image_size
    assert regions.features.shape == (2, 6, 2048) and (regions.features >= 0).all()
    assert (regions.boxes[..., 2] >= regions.boxes[..., 0]).all()
    assert (regions.boxes[..., 2] <= w).all() and (regions.boxes[..., 3] <= h).all()
    with torch.inference_mode():
        out = model(regions, ids, mask)
    assert out.pooled.shape == (2, 64)
    assert [s.name for s in model.stages()][:2] == ["visual", "visual.embed"]
    bad = PrecomputedRegions(num_boxes=6, feature_dim=2048, location_dims=7, width=64)
    with pytest.raises(ValueError, match="2048-d region features"):
        bad(type(regions)(regions.features[..., :100], regions.boxes, regions.image_sizes))


def test_every_region_preset_has_a_precomputed_twin():
    region = [n for n in PRESETS.names()
              if isinstance(PRESETS.get(n).visual, RegionFeaturesConfig)]
    assert region
    for name in region:
        base = name.removesuffix("-tiny")
        twin = f"{base}-precomputed" + ("-tiny" if name.endswith("-tiny") else "")
        assert twin in PRESETS


def test_case_records_the_region_workload():
    spec = CaseSpec("uniter-base-tiny", 1, (128, 160), 8, "fp32", "cpu")
    r = run_case(spec, MeasureOptions(TimingOptions(warmup=0, min_repeats=2, min_time_s=0,
                                                 max_repeats=2)))
    assert r.status == "ok", r.message
    stages = {s.name: s for s in r.stages}
    assert stages["visual.nms"].workload["boxes_in_nms"] == 20 * 10
    assert stages["visual.rpn"].workload["proposals_post_nms"] == 20
    assert stages["visual"].workload["box_head_proposals"] == 20
    assert stages["visual.nms"].host_sync and stages["visual.box_head"].flops > 0
    assert r.settings["visual_input_shape"] == [1, 3, 128, 160]  # already a multiple of 32


def test_detector_input_is_padded_as_detectron2_pads():
    """C4: no padding (detectron2's ResNet has size_divisibility 0; the README's old "pads to
    32" was FPN's rule); FPN: to 32, so every pyramid level halves exactly."""
    model = build_model("uniter-base-tiny")
    images, _, _ = model.example_inputs(1, (100, 150), 8)
    assert images.image_sizes == ((100, 150),)
    assert tuple(images.tensor.shape[-2:]) == (100, 150)
    fpn = build_model("visualbert-tiny")
    images, _, _ = fpn.example_inputs(1, (100, 150), 8)
    assert images.image_sizes == ((100, 150),)
    assert tuple(images.tensor.shape[-2:]) == (128, 160)


def test_c4_anchors_lie_at_stride_16_on_an_unpadded_image():
    """torchvision would take 1333 // 84 = 15 as the stride of an unpadded 800x1333 image."""
    gen = build_rpn().anchor_generator
    feature = torch.empty(1, 1024, 50, 84)
    (anchors,) = gen(ImageList(torch.empty(1, 3, 800, 1333), [(800, 1333)]), [feature])
    centres = (anchors[:, 0] + anchors[:, 2]) / 2  # (50 * 84 * 12,)
    assert anchors.shape == (50 * 84 * 12, 4)
    assert centres.max().item() == pytest.approx(83 * 16, abs=0.5)
