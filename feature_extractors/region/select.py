"""Box selection and box-location features: the last steps before region tokens.

``BoxSelection`` ranks proposals by their NMS confidence (``PerClassNMS``) as bottom-up
attention's ``generate_tsv.py`` does; ``location_features`` turns the kept boxes into the
normalised geometry each region model feeds beside the 2048-d features.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

MODES = ("fixed", "adaptive")
LOCATION_DIMS = (4, 5, 7)


def _gather_boxes(values: Tensor, index: Tensor) -> Tensor:
    """``values`` (B, R, D), ``index`` (B, K) -> (B, K, D)."""
    return values.gather(1, index.unsqueeze(-1).expand(-1, -1, values.shape[-1]))


class BoxSelection(nn.Module):
    """Keep the proposals that become region tokens.

    ``fixed``: exactly ``num_boxes`` per image, the top by confidence in descending order (ties:
    lower proposal index first); shapes are static, so it never synchronises with the host.
    ``adaptive``: BUTD's rule per image -- keep boxes with confidence >= ``conf_threshold`` in
    proposal order; if fewer than ``min_boxes``, the top ``min_boxes`` by confidence; if more
    than ``max_boxes``, the top ``max_boxes`` -- padded to the batch's largest count with mask
    False. The count depends on the scores, so adaptive mode syncs. With random weights every
    class scores about 1/1601, far below 0.2, so adaptive mode returns the minimum (10); the
    latency suite therefore uses fixed 36.
    """

    def __init__(
        self,
        *,
        mode: str = "fixed",
        num_boxes: int = 36,
        min_boxes: int = 10,
        max_boxes: int = 100,
        conf_threshold: float = 0.2,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown box selection mode {mode!r}; expected one of {MODES}")
        for name, value in (
            ("num_boxes", num_boxes),
            ("min_boxes", min_boxes),
            ("max_boxes", max_boxes),
        ):
            if value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        if min_boxes > max_boxes:
            raise ValueError(f"min_boxes ({min_boxes}) exceeds max_boxes ({max_boxes})")
        self.mode = mode
        self.num_boxes = num_boxes
        self.min_boxes = min_boxes
        self.max_boxes = max_boxes
        self.conf_threshold = float(conf_threshold)
        self.host_sync = mode == "adaptive"  # adaptive counts depend on the scores
        self.last_workload: dict[str, int] = {}

    def forward(
        self, features: Tensor, boxes: Tensor, max_conf: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``features`` (B, R, D), ``boxes`` (B, R, 4), ``max_conf`` (B, R) -> features (B, K, D),
        boxes (B, K, 4) and mask (B, K) bool (False on padding)."""
        batch, num_props = max_conf.shape
        if features.shape[:2] != max_conf.shape or boxes.shape[:2] != max_conf.shape:
            raise ValueError(
                f"features {tuple(features.shape)}, boxes {tuple(boxes.shape)} and max_conf "
                f"{tuple(max_conf.shape)} disagree on (B, R)"
            )
        if self.mode == "fixed":
            return self._fixed(features, boxes, max_conf, batch, num_props)
        return self._adaptive(features, boxes, max_conf, batch)

    def _fixed(
        self, features: Tensor, boxes: Tensor, max_conf: Tensor, batch: int, num_props: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        k = self.num_boxes
        if k > num_props:
            raise ValueError(f"fixed box count {k} exceeds the {num_props} proposals kept")
        order = torch.sort(max_conf, dim=1, descending=True, stable=True).indices[:, :k]  # (B, K)
        mask = torch.ones(batch, k, dtype=torch.bool, device=max_conf.device)  # (B, K)
        self.last_workload = {"boxes_selected": batch * k}
        return _gather_boxes(features, order), _gather_boxes(boxes, order), mask

    def _adaptive(
        self, features: Tensor, boxes: Tensor, max_conf: Tensor, batch: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        picks: list[Tensor] = []
        for b in range(batch):
            conf = max_conf[b]  # (R,)
            keep = torch.nonzero(conf >= self.conf_threshold).flatten()  # proposal order; syncs
            count = keep.numel()
            if count < self.min_boxes or count > self.max_boxes:
                limit = self.min_boxes if count < self.min_boxes else self.max_boxes
                ranked = torch.sort(conf, descending=True, stable=True).indices
                keep = ranked[:limit]  # BUTD: argsort(max_conf)[::-1][:limit]
            picks.append(keep)
        k = max(p.numel() for p in picks)
        index = torch.zeros(batch, k, dtype=torch.long, device=max_conf.device)  # (B, K)
        mask = torch.zeros(batch, k, dtype=torch.bool, device=max_conf.device)  # (B, K)
        for b, keep in enumerate(picks):
            index[b, : keep.numel()] = keep
            mask[b, : keep.numel()] = True
        feats = _gather_boxes(features, index) * mask.unsqueeze(-1)  # zeros on padding
        kept_boxes = _gather_boxes(boxes, index) * mask.unsqueeze(-1)
        self.last_workload = {"boxes_selected": sum(p.numel() for p in picks)}
        return feats, kept_boxes, mask


def location_features(boxes: Tensor, image_sizes: Sequence[tuple[int, int]], dims: int) -> Tensor:
    """Normalised box geometry, (B, K, 4) xyxy pixels -> (B, K, dims).

    ``image_sizes`` holds each image's (height, width) as host ints, so no sync is needed.
    4: [x1/W, y1/H, x2/W, y2/H] (LXMERT); 5: those + area fraction (ViLBERT); 7: those +
    [w/W, h/H, w*h/(W*H)] (UNITER). Values lie in [0, 1] for boxes inside the image; nothing is
    clipped, since BUTD's boxes are already clipped to the image.
    """
    if dims not in LOCATION_DIMS:
        raise ValueError(f"location feature dims must be one of {LOCATION_DIMS}, got {dims}")
    if len(image_sizes) != boxes.shape[0]:
        raise ValueError(f"{len(image_sizes)} image sizes for a batch of {boxes.shape[0]}")
    scale = torch.tensor(
        [[w, h, w, h] for h, w in image_sizes], dtype=boxes.dtype, device=boxes.device
    ).unsqueeze(1)  # (B, 1, 4)
    xyxy = boxes / scale  # (B, K, 4)
    if dims == 4:
        return xyxy
    width = xyxy[..., 2:3] - xyxy[..., 0:1]  # (B, K, 1)
    height = xyxy[..., 3:4] - xyxy[..., 1:2]
    area = width * height
    if dims == 5:
        return torch.cat([xyxy, area], dim=-1)
    return torch.cat([xyxy, width, height, area], dim=-1)
