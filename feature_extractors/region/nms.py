"""Detection post-processing that turns per-proposal class scores into one confidence per box.

Bottom-up attention (Anderson et al. 2018) keeps, for each proposal, the best class score among
the classes for which the proposal survived per-class NMS; box selection then ranks proposals by
that confidence. Both modules here return ``(max_conf, max_class)`` of shape ``(B, R)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import nms


def _check_inputs(boxes: Tensor, class_probs: Tensor) -> None:
    if boxes.dim() != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be (B, R, 4), got {tuple(boxes.shape)}")
    if class_probs.dim() != 3 or class_probs.shape[:2] != boxes.shape[:2]:
        raise ValueError(
            f"class_probs must be (B, R, C) with (B, R) = {tuple(boxes.shape[:2])}, "
            f"got {tuple(class_probs.shape)}"
        )
    if class_probs.shape[-1] < 2:
        raise ValueError("class_probs needs a background column and at least one class")


def _best_kept_class(scores: Tensor, kept: Tensor) -> tuple[Tensor, Tensor]:
    """Max over the kept (box, class) pairs, as BUTD's loop computes it.

    BUTD starts every box at 0 and walks classes in ascending order, replacing only on a strictly
    greater score; ``max`` over a dim returns the first maximal index, so among equal scores the
    lowest class wins here too, and a box with no kept positive score stays at (0, class 0).
    """
    masked = torch.where(kept, scores, torch.zeros_like(scores))  # (B, R, C-1)
    best, arg = masked.max(dim=-1)  # (B, R)
    max_conf = best.clamp_min(0)
    max_class = torch.where(max_conf > 0, arg + 1, torch.zeros_like(arg))  # background = 0
    return max_conf, max_class


class PerClassNMS(nn.Module):
    """BUTD's feature-extraction NMS: NMS at ``iou_threshold`` for every foreground class.

    Every one of the C-1 classes is run over all R proposal boxes (the same boxes for every
    class) whatever the scores, exactly as ``generate_tsv.py`` does, so the work done does not
    depend on trained weights. With random weights every class scores about 1/C (1/1601); a
    trained detector's score threshold such as 0.05 would then skip almost every class and make
    this stage look free. ``last_workload`` records how many (box, class) pairs entered NMS.

    The loop calls ``torchvision.ops.nms`` once per class, as BUTD does. ``batched_nms`` gives
    the same result but, above 1,000 pairs on CPU, loops over classes with an ``==`` and a
    ``nonzero`` over all R*(C-1) pairs per class: at R=300, C=1601 that bookkeeping made it about
    4x slower than this loop on CPU (1.5 s against 0.4 s, one thread), work BUTD never did.
    """

    host_sync = True  # NMS output sizes are data-dependent

    def __init__(self, *, iou_threshold: float = 0.3) -> None:
        super().__init__()
        self.iou_threshold = float(iou_threshold)
        self.last_workload: dict[str, int] = {}

    def forward(self, boxes: Tensor, class_probs: Tensor) -> tuple[Tensor, Tensor]:
        """``boxes`` (B, R, 4) xyxy pixels, ``class_probs`` (B, R, C) softmax with background at
        column 0 -> ``max_conf`` (B, R) and ``max_class`` (B, R) long (0 where max_conf is 0)."""
        _check_inputs(boxes, class_probs)
        batch, num_boxes, num_classes = class_probs.shape
        fg = num_classes - 1
        scores = class_probs[..., 1:]  # (B, R, C-1)
        by_class = scores.transpose(1, 2).contiguous()  # (B, C-1, R): one row per NMS call
        kept = torch.zeros(by_class.shape, dtype=torch.bool, device=scores.device)  # (B, C-1, R)
        total_kept = 0
        for b in range(batch):
            keeps = [nms(boxes[b], by_class[b, c], self.iou_threshold) for c in range(fg)]
            counts = [k.numel() for k in keeps]  # host ints: nms already synchronised
            rows = torch.repeat_interleave(
                torch.arange(fg, device=scores.device) * num_boxes,
                torch.tensor(counts, device=scores.device),
                output_size=sum(counts),
            )  # (kept,): row offset of each kept pair's class
            kept[b].view(-1)[rows + torch.cat(keeps)] = True
            total_kept += sum(counts)
        self.last_workload = {
            "classes": fg,
            "boxes_in_nms": batch * num_boxes * fg,
            "boxes_kept_nms": total_kept,
        }
        return _best_kept_class(scores, kept.transpose(1, 2))


class ClassAgnosticNMS(nn.Module):
    """VinVL-style cheap variant: one NMS per image over each box's best foreground score.

    Each proposal takes its best foreground class and score, one NMS at ``iou_threshold`` runs
    over the R boxes with those scores, and suppressed boxes get confidence 0 (class 0).
    ``last_workload["classes"]`` is 1: NMS runs once per image, not once per class.
    """

    host_sync = True  # NMS output sizes are data-dependent

    def __init__(self, *, iou_threshold: float = 0.3) -> None:
        super().__init__()
        self.iou_threshold = float(iou_threshold)
        self.last_workload: dict[str, int] = {}

    def forward(self, boxes: Tensor, class_probs: Tensor) -> tuple[Tensor, Tensor]:
        """Same contract as ``PerClassNMS.forward``."""
        _check_inputs(boxes, class_probs)
        batch, num_boxes, _ = class_probs.shape
        scores = class_probs[..., 1:]  # (B, R, C-1)
        best, arg = scores.max(dim=-1)  # (B, R): first max, so the lowest class wins ties
        kept = torch.zeros(best.shape, dtype=torch.bool, device=best.device)
        total_kept = 0
        for b in range(batch):
            keep = nms(boxes[b], best[b], self.iou_threshold)
            kept[b, keep] = True
            total_kept += keep.numel()
        self.last_workload = {
            "classes": 1,
            "boxes_in_nms": batch * num_boxes,
            "boxes_kept_nms": total_kept,
        }
        max_conf = torch.where(kept, best, torch.zeros_like(best)).clamp_min(0)  # (B, R)
        max_class = torch.where(max_conf > 0, arg + 1, torch.zeros_like(arg))  # (B, R)
        return max_conf, max_class
