"""Region post-processing: per-class and class-agnostic NMS against an independent NumPy port of
bottom-up attention's ``generate_tsv.py`` loop, box selection (fixed and adaptive), location
features, workload records and the fixed path's freedom from host synchronisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import HostSyncDetector

from feature_extractors.region.nms import ClassAgnosticNMS, PerClassNMS
from feature_extractors.region.select import BoxSelection, location_features

# --- an independent NumPy port of BUTD ----------------------------------------------------------


def py_cpu_nms(boxes: np.ndarray, scores: np.ndarray, thresh: float) -> np.ndarray:
    """py-faster-rcnn's greedy NMS with torchvision's conventions: no ``+1`` in widths, and a box
    is suppressed when IoU > thresh. Arithmetic stays in the inputs' float32, in the same order as
    torchvision's CPU kernel; the comparison is done in float64 as C++ does (float vs double)."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size > 0:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(np.float32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(np.float32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[iou.astype(np.float64) <= thresh]
    return np.array(keep, dtype=np.int64)


def butd_max_conf(
    rois: np.ndarray, scores: np.ndarray, thresh: float = 0.3
) -> tuple[np.ndarray, np.ndarray, int]:
    """generate_tsv.py's loop for one image, plus the class that set each box's max_conf and the
    number of (box, class) pairs that NMS kept."""
    max_conf = np.zeros(rois.shape[0], dtype=scores.dtype)
    max_class = np.zeros(rois.shape[0], dtype=np.int64)
    kept = 0
    for cls_ind in range(1, scores.shape[1]):
        cls_scores = scores[:, cls_ind]
        keep = py_cpu_nms(rois, cls_scores, thresh)
        kept += keep.size
        better = keep[cls_scores[keep] > max_conf[keep]]
        max_conf[better] = cls_scores[better]
        max_class[better] = cls_ind
    return max_conf, max_class, kept


def agnostic_max_conf(
    rois: np.ndarray, scores: np.ndarray, thresh: float = 0.3
) -> tuple[np.ndarray, np.ndarray]:
    best = scores[:, 1:].max(axis=1)
    cls = scores[:, 1:].argmax(axis=1) + 1  # first max: lowest class
    keep = py_cpu_nms(rois, best, thresh)
    max_conf = np.zeros_like(best)
    max_class = np.zeros(rois.shape[0], dtype=np.int64)
    max_conf[keep] = best[keep]
    max_class[keep] = np.where(best[keep] > 0, cls[keep], 0)
    return max_conf, max_class


def random_inputs(seed: int, batch: int, num_boxes: int, num_classes: int, extent: float = 64.0):
    """Boxes crowded into a small image (so NMS suppresses) and softmax scores, float32."""
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(batch, num_boxes, 2, generator=gen) * extent
    wh = torch.rand(batch, num_boxes, 2, generator=gen) * extent / 2 + 1
    boxes = torch.cat([xy, xy + wh], dim=-1)  # (B, R, 4)
    logits = torch.randn(batch, num_boxes, num_classes, generator=gen) * 2
    return boxes, logits.softmax(dim=-1)  # (B, R, C)


# --- PerClassNMS -------------------------------------------------------------------------------


@pytest.mark.parametrize("num_boxes", [5, 30, 100])
@pytest.mark.parametrize("num_classes", [3, 11, 51])
def test_per_class_nms_matches_butd_loop(num_boxes: int, num_classes: int) -> None:
    module = PerClassNMS()
    suppressed_somewhere = False
    seeds = 15 if num_boxes * num_classes >= 1000 else 50  # 2 images each; keeps the file fast
    for seed in range(seeds):
        boxes, probs = random_inputs(seed, 2, num_boxes, num_classes)
        max_conf, max_class = module(boxes, probs)
        assert max_conf.shape == max_class.shape == (2, num_boxes)
        assert max_conf.dtype == probs.dtype and max_class.dtype == torch.long
        total_kept = 0
        for b in range(2):
            ref_conf, ref_class, kept = butd_max_conf(boxes[b].numpy(), probs[b].numpy())
            total_kept += kept
            np.testing.assert_array_equal(max_conf[b].numpy(), ref_conf)
            np.testing.assert_array_equal(max_class[b].numpy(), ref_class)
            np.testing.assert_array_equal(max_conf[b].numpy() > 0, ref_conf > 0)
        assert module.last_workload == {
            "classes": num_classes - 1,
            "boxes_in_nms": 2 * num_boxes * (num_classes - 1),
            "boxes_kept_nms": total_kept,
        }
        suppressed_somewhere |= total_kept < 2 * num_boxes * (num_classes - 1)
    if num_boxes > 5:
        assert suppressed_somewhere, "crowded boxes should suppress some (box, class) pairs"


def test_per_class_nms_duplicate_boxes() -> None:
    # Three identical boxes and one far away. Class 1: box 1 wins, boxes 0 and 2 suppressed;
    # class 2: box 0 wins. So box 0 keeps its *second* best score, box 2 loses every class.
    box = [10.0, 10.0, 50.0, 50.0]
    boxes = torch.tensor([[box, box, box, [100.0, 100.0, 140.0, 140.0]]])  # (1, 4, 4)
    probs = torch.tensor(
        [
            [
                [0.2, 0.5, 0.3],
                [0.3, 0.6, 0.1],
                [0.75, 0.2, 0.05],
                [0.6, 0.1, 0.3],
            ]
        ]
    )  # (1, 4, 3)
    module = PerClassNMS()
    max_conf, max_class = module(boxes, probs)
    torch.testing.assert_close(max_conf, torch.tensor([[0.3, 0.6, 0.0, 0.3]]), rtol=0, atol=0)
    assert max_class.tolist() == [[2, 1, 0, 2]]
    assert module.last_workload["boxes_kept_nms"] == 4  # 2 per class
    ref_conf, ref_class, _ = butd_max_conf(boxes[0].numpy(), probs[0].numpy())
    np.testing.assert_array_equal(max_conf[0].numpy(), ref_conf)
    np.testing.assert_array_equal(max_class[0].numpy(), ref_class)


def test_per_class_nms_ties_pick_the_lowest_class() -> None:
    # BUTD replaces only on a strictly greater score, walking classes upwards.
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]])
    probs = torch.tensor([[[0.1, 0.2, 0.35, 0.35], [0.1, 0.3, 0.3, 0.3]]])
    max_conf, max_class = PerClassNMS()(boxes, probs)
    assert max_class.tolist() == [[2, 1]]
    torch.testing.assert_close(max_conf, torch.tensor([[0.35, 0.3]]), rtol=0, atol=0)
    _, ref_class, _ = butd_max_conf(boxes[0].numpy(), probs[0].numpy())
    assert ref_class.tolist() == [2, 1]


def test_per_class_nms_work_does_not_depend_on_scores() -> None:
    # BUTD's size: 300 proposals x 1600 classes all enter NMS, even when (as with random weights)
    # every class scores about 1/1601 and a trained detector's 0.05 threshold would keep none.
    boxes, _ = random_inputs(0, 1, 300, 2, extent=800.0)
    flat = torch.full((1, 300, 1601), 1 / 1601)
    peaked = torch.randn(1, 300, 1601, generator=torch.Generator().manual_seed(1)).softmax(-1)
    module = PerClassNMS()
    for probs in (flat, peaked):
        max_conf, _ = module(boxes, probs)
        assert module.last_workload["classes"] == 1600
        assert module.last_workload["boxes_in_nms"] == 300 * 1600
        assert module.last_workload["boxes_kept_nms"] > 0
        assert (max_conf > 0).any()


def test_per_class_nms_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(B, R, 4\)"):
        PerClassNMS()(torch.zeros(1, 3, 5), torch.zeros(1, 3, 4))
    with pytest.raises(ValueError, match="class_probs"):
        PerClassNMS()(torch.zeros(1, 3, 4), torch.zeros(1, 2, 4))


# --- ClassAgnosticNMS --------------------------------------------------------------------------


@pytest.mark.parametrize("num_boxes", [5, 30, 100])
@pytest.mark.parametrize("num_classes", [3, 51])
def test_class_agnostic_nms_matches_numpy_port(num_boxes: int, num_classes: int) -> None:
    module = ClassAgnosticNMS()
    for seed in range(50):
        boxes, probs = random_inputs(seed, 2, num_boxes, num_classes)
        max_conf, max_class = module(boxes, probs)
        for b in range(2):
            ref_conf, ref_class = agnostic_max_conf(boxes[b].numpy(), probs[b].numpy())
            np.testing.assert_array_equal(max_conf[b].numpy(), ref_conf)
            np.testing.assert_array_equal(max_class[b].numpy(), ref_class)
        assert module.last_workload["classes"] == 1
        assert module.last_workload["boxes_in_nms"] == 2 * num_boxes
        assert module.last_workload["boxes_kept_nms"] == int((max_conf > 0).sum())


def test_class_agnostic_nms_suppresses_duplicates() -> None:
    box = [10.0, 10.0, 50.0, 50.0]
    boxes = torch.tensor([[box, box]])
    probs = torch.tensor([[[0.2, 0.5, 0.3], [0.3, 0.1, 0.6]]])
    max_conf, max_class = ClassAgnosticNMS()(boxes, probs)
    torch.testing.assert_close(max_conf, torch.tensor([[0.0, 0.6]]), rtol=0, atol=0)
    assert max_class.tolist() == [[0, 2]]


def test_nms_modules_declare_host_sync() -> None:
    assert PerClassNMS.host_sync and ClassAgnosticNMS.host_sync


# --- BoxSelection ------------------------------------------------------------------------------


def selection_inputs(conf: torch.Tensor, dim: int = 3):
    """Features and boxes that encode their proposal index, so selections can be read back."""
    batch, num_props = conf.shape
    index = torch.arange(num_props, dtype=torch.float32).expand(batch, num_props)
    features = index.unsqueeze(-1).expand(batch, num_props, dim) + 1  # (B, R, D), never 0
    boxes = torch.stack([index, index, index + 1, index + 1], dim=-1)  # (B, R, 4)
    return features.contiguous(), boxes


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("kind", ["uniform", "ties", "zeros"])
def test_fixed_selection_is_top_k_descending(seed: int, kind: str) -> None:
    gen = torch.Generator().manual_seed(seed)
    conf = {
        "uniform": lambda: torch.rand(2, 50, generator=gen),
        "ties": lambda: torch.randint(0, 3, (2, 50), generator=gen).float() / 4,
        "zeros": lambda: torch.zeros(2, 50),
    }[kind]()
    features, boxes = selection_inputs(conf)
    select = BoxSelection(mode="fixed", num_boxes=36)
    out_feats, out_boxes, mask = select(features, boxes, conf)
    assert out_feats.shape == (2, 36, 3) and out_boxes.shape == (2, 36, 4)
    assert mask.all() and mask.shape == (2, 36)
    picked = out_feats[..., 0].long() - 1  # (B, K) proposal indices
    for b in range(2):
        ref = sorted(range(50), key=lambda i: (-conf[b, i].item(), i))[:36]  # stable, descending
        assert picked[b].tolist() == ref
        assert out_boxes[b, :, 0].long().tolist() == ref
    assert select.last_workload == {"boxes_selected": 72}
    assert not select.host_sync


def test_fixed_selection_needs_enough_proposals() -> None:
    conf = torch.rand(1, 20)
    with pytest.raises(ValueError, match="fixed box count 36 exceeds the 20 proposals kept"):
        BoxSelection()(*selection_inputs(conf), conf)


def adaptive(conf: torch.Tensor):
    select = BoxSelection(mode="adaptive", min_boxes=10, max_boxes=100, conf_threshold=0.2)
    features, boxes = selection_inputs(conf)
    out = select(features, boxes, conf)
    return select, *out


def test_adaptive_returns_the_minimum_when_nothing_is_confident() -> None:
    conf = torch.full((1, 300), 1 / 1601)  # what random weights give
    conf[0, 7] = 0.01
    conf[0, 200] = 0.05
    select, feats, _, mask = adaptive(conf)
    assert mask.shape == (1, 10) and mask.all()
    picked = (feats[0, :, 0].long() - 1).tolist()
    assert picked[:2] == [200, 7]  # descending confidence
    assert picked[2:] == [0, 1, 2, 3, 4, 5, 6, 8]  # then ties by lower index
    assert select.last_workload == {"boxes_selected": 10}
    assert select.host_sync


def test_adaptive_caps_at_the_maximum() -> None:
    conf = torch.linspace(0.3, 0.9, 300).unsqueeze(0)  # all 300 pass
    _, feats, _, mask = adaptive(conf)
    assert mask.shape == (1, 100) and mask.all()
    assert (feats[0, :, 0].long() - 1).tolist() == list(range(299, 199, -1))


def test_adaptive_keeps_exactly_the_confident_boxes_in_index_order() -> None:
    gen = torch.Generator().manual_seed(0)
    conf = torch.rand(1, 300, generator=gen) * 0.19
    chosen = torch.randperm(300, generator=gen)[:40].sort().values
    conf[0, chosen] = 0.2 + torch.rand(40, generator=gen) * 0.8
    conf[0, chosen[0]] = 0.2  # >= threshold keeps it
    _, feats, boxes, mask = adaptive(conf)
    assert mask.shape == (1, 40) and mask.all()
    assert (feats[0, :, 0].long() - 1).tolist() == chosen.tolist()
    assert boxes[0, :, 0].long().tolist() == chosen.tolist()


def test_adaptive_pads_a_batch_with_a_mask() -> None:
    conf = torch.zeros(2, 300)
    conf[0, :25] = 0.5  # 25 confident boxes
    conf[1, :3] = 0.5  # 3 confident -> the minimum, 10
    select, feats, boxes, mask = adaptive(conf)
    assert feats.shape == (2, 25, 3) and boxes.shape == (2, 25, 4)
    assert mask.sum(dim=1).tolist() == [25, 10]
    assert mask[1, :10].all() and not mask[1, 10:].any()
    assert (feats[1, 10:] == 0).all() and (boxes[1, 10:] == 0).all()
    assert (feats[1, :10, 0].long() - 1).tolist() == list(range(10))
    assert select.last_workload == {"boxes_selected": 35}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "dynamic"}, "fixed.*adaptive"),
        ({"num_boxes": 0}, "num_boxes must be positive"),
        ({"min_boxes": 0}, "min_boxes must be positive"),
        ({"min_boxes": 50, "max_boxes": 20}, r"min_boxes \(50\) exceeds max_boxes \(20\)"),
    ],
)
def test_box_selection_validates(kwargs, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BoxSelection(**kwargs)


def test_fixed_selection_and_locations_never_read_device_values(no_host_reads) -> None:
    conf = torch.rand(2, 50)
    features, boxes = selection_inputs(conf)
    select = BoxSelection(mode="fixed", num_boxes=36)
    with no_host_reads():
        _, kept, _ = select(features, boxes, conf)
        location_features(kept, [(480, 640), (600, 800)], 7)


def test_adaptive_selection_is_seen_to_sync() -> None:
    # The detector's positive control: adaptive counts come from the scores.
    conf = torch.rand(1, 50)
    with torch.no_grad(), HostSyncDetector() as detector:
        BoxSelection(mode="adaptive")(*selection_inputs(conf), conf)
    assert "aten::nonzero" in detector.seen


# --- location features -------------------------------------------------------------------------


def test_location_features_for_a_known_box() -> None:
    boxes = torch.tensor([[[100.0, 50.0, 300.0, 250.0]], [[100.0, 50.0, 300.0, 250.0]]])
    sizes = [(500, 400), (250, 1000)]  # (height, width), different per image
    four = location_features(boxes, sizes, 4)
    torch.testing.assert_close(four[0, 0], torch.tensor([0.25, 0.1, 0.75, 0.5]))
    torch.testing.assert_close(four[1, 0], torch.tensor([0.1, 0.2, 0.3, 1.0]))
    five = location_features(boxes, sizes, 5)
    torch.testing.assert_close(five[0, 0], torch.tensor([0.25, 0.1, 0.75, 0.5, 0.2]))
    torch.testing.assert_close(five[1, 0], torch.tensor([0.1, 0.2, 0.3, 1.0, 0.16]))
    seven = location_features(boxes, sizes, 7)
    torch.testing.assert_close(seven[0, 0], torch.tensor([0.25, 0.1, 0.75, 0.5, 0.5, 0.4, 0.2]))
    torch.testing.assert_close(seven[1, 0], torch.tensor([0.1, 0.2, 0.3, 1.0, 0.2, 0.8, 0.16]))


def test_location_features_lie_in_the_unit_interval() -> None:
    boxes, _ = random_inputs(0, 2, 30, 3, extent=40.0)  # inside a 64 x 64 image
    for dims in (4, 5, 7):
        loc = location_features(boxes, [(64, 64), (80, 96)], dims)
        assert loc.shape == (2, 30, dims)
        assert (loc >= 0).all() and (loc <= 1).all()


def test_location_features_reject_bad_dims() -> None:
    with pytest.raises(ValueError, match=r"\(4, 5, 7\).*got 6"):
        location_features(torch.zeros(1, 2, 4), [(10, 10)], 6)
