"""Box heads: per-proposal features, class probabilities, box deltas and (optionally) attributes.

``Res5BoxHead`` is bottom-up attention's C4 head (the res5 stage run on every proposal);
``MLPBoxHead`` is the FPN head (two fully connected layers) of VisualBERT-style extractors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..stages import StageKind
from .backbone import res5_from


@dataclass(frozen=True)
class BoxHeadOutput:
    """Per-proposal outputs, N = all proposals of the batch in image order.

    ``features`` (N, D): what region VLP models consume; ``class_probs`` (N, C) softmax with
    background at column 0; ``box_deltas`` (N, 4C) class-specific; ``attribute_probs`` (N, A)
    softmax, or None without an attribute head.
    """

    features: Tensor
    class_probs: Tensor
    box_deltas: Tensor
    attribute_probs: Tensor | None = None


class BoxPredictor(nn.Module):
    """Class scores and class-specific box regression: (N, D) -> softmax (N, C), deltas (N, 4C).

    4 x C box outputs, background included, as the original Caffe model has (``bbox_pred``: 6404
    = 4 x 1601 in BUTD's test.prototxt); detectron2's predictor regresses the 1600 foreground
    classes only (4 x 1600), 8,196 parameters fewer.
    """

    def __init__(self, *, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes)
        self.bbox_pred = nn.Linear(in_features, 4 * num_classes)
        nn.init.normal_(self.cls_score.weight, std=0.01)  # detectron's predictor init
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        return F.softmax(self.cls_score(features), dim=-1), self.bbox_pred(features)


class AttributeHead(nn.Module):
    """BUTD's attribute head: each box's best class embedded (256), joined to its feature,
    fc 512 + ReLU, then softmax over the attributes (400 + "no attribute"). Names as in BUTD's
    test.prototxt (``cls_embedding``, ``fc_attr``, ``attr_score``), which detectron2 ports keep."""

    def __init__(self, *, in_features: int, num_classes: int, num_attributes: int = 401,
                 embed_dim: int = 256, hidden: int = 512) -> None:
        super().__init__()
        self.cls_embedding = nn.Embedding(num_classes, embed_dim)
        self.fc_attr = nn.Linear(in_features + embed_dim, hidden)
        self.attr_score = nn.Linear(hidden, num_attributes)

    def forward(self, features: Tensor, classes: Tensor) -> Tensor:
        """``features`` (N, D), ``classes`` (N,) each box's best class -> (N, A) softmax."""
        embed = self.cls_embedding(classes)  # (N, 256)
        x = F.relu(self.fc_attr(torch.cat([features, embed], dim=-1)))  # (N, 512)
        return F.softmax(self.attr_score(x), dim=-1)  # (N, A)


class _Predicts(nn.Module):
    """What both box heads end in: ``predictor`` and, optionally, ``attributes``, each a stage
    of its own (``visual.box_head.predictor``, ``visual.box_head.attributes``)."""

    def _add_predictors(self, *, in_features: int, num_classes: int, attributes: bool,
                        num_attributes: int) -> None:
        self.predictor = BoxPredictor(in_features=in_features, num_classes=num_classes)
        self.attributes = (AttributeHead(in_features=in_features, num_classes=num_classes,
                                         num_attributes=num_attributes) if attributes else None)
        ops = StageKind.REGION_OPS
        self.substages = {"predictor": ops, **({"attributes": ops} if attributes else {})}

    def _predict(self, features: Tensor) -> BoxHeadOutput:
        class_probs, box_deltas = self.predictor(features)  # (N, C), (N, 4C)
        attribute_probs = None
        if self.attributes is not None:
            attribute_probs = self.attributes(features, class_probs.argmax(dim=-1))
        return BoxHeadOutput(features, class_probs, box_deltas, attribute_probs)


class Res5BoxHead(_Predicts):
    """Bottom-up attention's C4 box head: res5 on every proposal's 14x14 map, then average pool.

    res5 runs at stride 1 with every 3x3 conv at dilation 2 (BUTD's test.prototxt), so it works
    on the full 14x14 map, not 7x7. By our arithmetic that is 2.93 G MACs, ~5.9 GFLOPs per
    proposal for R101 (2 FLOPs per MAC; 5,857,345,536 exactly), so 300 proposals (~1.76 TFLOPs)
    outweigh the trunk several times over (R101 up to res4 at 800x1344: ~300 GFLOPs): the number
    of proposals is the main lever on region cost. The predictors add 2048 x (1601 + 4 x 1601)
    MACs per proposal, 0.6% more. ``backbone`` names a trunk of ``backbone.RESNETS``.
    """

    def __init__(
        self,
        *,
        backbone: str = "r101",
        num_classes: int = 1601,
        attributes: bool = False,
        num_attributes: int = 401,
    ) -> None:
        super().__init__()
        self.res5 = res5_from(backbone, dilated=True)  # (N, 1024, S, S) -> (N, 2048, S, S)
        self._add_predictors(in_features=2048, num_classes=num_classes, attributes=attributes,
                             num_attributes=num_attributes)

    def forward(self, pooled: Tensor) -> BoxHeadOutput:
        """``pooled`` (N, 1024, 14, 14) -> one 2048-d feature and predictions per proposal."""
        x = self.res5(pooled)  # (N, 2048, 14, 14)
        features = x.mean(dim=(2, 3))  # (N, 2048)
        return self._predict(features)


class MLPBoxHead(_Predicts):
    """FPN box head: flatten 256x7x7 -> fc6 -> ReLU -> fc7 -> ReLU (torchvision's TwoMLPHead).

    torchvision's width is 1024, but region VLP models consume 2048-d features and VisualBERT's
    X152-FPN detector (detectron) outputs 2048-d fc7, so ``representation`` defaults to 2048.
    ``features`` are the fc7 outputs.
    """

    def __init__(
        self,
        *,
        in_channels: int = 256,
        resolution: int = 7,
        representation: int = 2048,
        num_classes: int = 1601,
        attributes: bool = False,
        num_attributes: int = 401,
    ) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_channels * resolution * resolution, representation)
        self.fc7 = nn.Linear(representation, representation)
        self._add_predictors(in_features=representation, num_classes=num_classes,
                             attributes=attributes, num_attributes=num_attributes)

    def forward(self, pooled: Tensor) -> BoxHeadOutput:
        """``pooled`` (N, 256, 7, 7) -> (N, representation) features and predictions."""
        x = F.relu(self.fc6(pooled.flatten(start_dim=1)))  # (N, representation)
        features = F.relu(self.fc7(x))  # (N, representation)
        return self._predict(features)
