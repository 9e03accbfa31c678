"""ResNet trunks (feature_extractors/region/backbone.py) and the grid embedder (grid.py).

Real forwards run on tiny images with r50; full-size shapes, parameters and FLOPs on the meta
device, where shapes propagate without computing anything.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from feature_extractors.grid import ResNetGrid, ResNetGridConfig
from feature_extractors.region.backbone import (
    RESNETS,
    ResNetC4,
    ResNetFPN,
    build_resnet,
    res5_from,
)
from feature_extractors.tokens import ImageBatch, Tokens

FC = 2048 * 1000 + 1000  # torchvision's ImageNet classifier, part of the published sizes

# Exact trunk parameters (conv + BN, no fc). The rounded published sizes include the fc:
# REFERENCE.md, Table 7: "R50 25 M, R101 44 M, X152 60 M"; ResNeXt-152 32x4d = 59.95 M,
# detectron X-152-32x8d = 122.4 M; torchvision's ResNet-50 = 25.56 M.
TRUNK_PARAMS = {
    "r50": 23_508_032,
    "r101": 42_500_160,
    "x152-32x4d": 57_902_400,
    "x152-32x8d": 120_323_392,
}
PUBLISHED_WITH_FC_M = {"r50": 25.56, "r101": 44.55, "x152-32x4d": 59.95, "x152-32x8d": 122.4}


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def grid_r50() -> ResNetGrid:
    torch.manual_seed(0)
    return ResNetGrid(backbone="r50", pool=2).eval()


@pytest.mark.parametrize("name", sorted(TRUNK_PARAMS))
def test_parameter_counts(name: str) -> None:
    with torch.device("meta"):
        net = build_resnet(name)
    assert _count(net) - _count(net.fc) == TRUNK_PARAMS[name]
    assert _count(net.fc) == FC
    assert abs((TRUNK_PARAMS[name] + FC) / 1e6 - PUBLISHED_WITH_FC_M[name]) < 0.1


def test_c4_and_grid_parameters_partition_the_trunk() -> None:
    with torch.device("meta"):
        c4 = ResNetC4(name="r101")
        res5 = res5_from("r101", dilated=True)
        grid = ResNetGrid(backbone="r101", pool=2)
    assert _count(c4) + _count(res5) == TRUNK_PARAMS["r101"]
    assert _count(grid) == TRUNK_PARAMS["r101"]


def test_unknown_backbone_is_one_line_listing_names() -> None:
    with pytest.raises(ValueError) as err:
        build_resnet("x")
    msg = str(err.value)
    assert msg == "unknown backbone 'x'; valid: r101, r50, tiny, x152-32x4d, x152-32x8d"
    assert "\n" not in msg
    with pytest.raises(ValueError, match="valid: r101"):
        ResNetGrid(backbone="r152", pool=2)


def test_res4_activations_bounded() -> None:
    """DESIGN.md trap: default init gives ~1e5 at res4 of r101 and a random RPN proposes nothing."""
    torch.manual_seed(0)
    c4 = ResNetC4(name="r101").eval()
    with torch.inference_mode():
        out = c4(torch.randn(1, 3, 128, 128))
    assert out.shape == (1, c4.out_channels, 8, 8)
    peak = out.abs().max().item()
    assert 1e-3 < peak < 1e3, peak  # measured ~0.7 (std ~0.09)
    assert out.std().item() > 1e-4  # not all zero / constant


def test_c4_shape_and_stride() -> None:
    with torch.device("meta"):
        c4 = ResNetC4(name="r50")
        out = c4(torch.empty(2, 3, 800, 1344))
    assert c4.stride == 16
    assert out.shape == (2, 1024, 800 // 16, 1344 // 16)


def test_res5_dilated_head() -> None:
    res5 = res5_from("r50", dilated=True).eval()
    with torch.inference_mode():
        out = res5(torch.randn(2, 1024, 14, 14))
    assert out.shape == (2, 2048, 14, 14)
    convs3 = [m for m in res5.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs3) == 3
    for conv in convs3:
        assert conv.dilation == (2, 2) and conv.padding == (2, 2) and conv.stride == (1, 1)
    for conv in (m for m in res5.modules() if isinstance(m, nn.Conv2d)):
        assert conv.stride == (1, 1)  # downsample 1x1 included


def test_res5_undilated_halves() -> None:
    with torch.device("meta"):
        out = res5_from("x152-32x8d", dilated=False)(torch.empty(3, 1024, 7, 7))
    assert out.shape == (3, 2048, 4, 4)


def test_fpn_levels() -> None:
    torch.manual_seed(0)
    fpn = ResNetFPN(name="r50").eval()
    with torch.inference_mode():
        out = fpn(torch.randn(1, 3, 128, 192))
    assert list(out) == ["0", "1", "2", "3", "pool"]
    for key, feat in out.items():
        stride = fpn.strides[key]
        assert feat.shape == (1, fpn.out_channels, 128 // stride, 192 // stride)
        assert torch.isfinite(feat).all()


def test_grid_forward_shapes(grid_r50: ResNetGrid) -> None:
    images = ImageBatch.from_tensor(torch.randn(2, 3, 64, 96))
    with torch.inference_mode():
        tokens = grid_r50(images)
    assert isinstance(tokens, Tokens)
    n = grid_r50.num_tokens((64, 96))
    assert n == 1 * 1  # 64x96 -> res5 2x3 -> 2x2 pool 1x1
    assert tokens.embeds.shape == (2, n, grid_r50.out_dim)
    assert tokens.mask.all()
    assert tokens.boxes is None


@pytest.mark.parametrize("pool", [1, 2, 3])
@pytest.mark.parametrize("size", [(65, 97), (127, 129), (201, 333), (255, 190), (800, 1333)])
def test_num_tokens_matches_forward(size: tuple[int, int], pool: int) -> None:
    with torch.device("meta"):
        grid = ResNetGrid(backbone="r50", pool=pool)
        tokens = grid(ImageBatch.from_tensor(torch.empty(1, 3, *size)))
    assert tokens.embeds.shape == (1, grid.num_tokens(size), 2048)


def test_num_tokens_real_forward_odd_size(grid_r50: ResNetGrid) -> None:
    with torch.inference_mode():
        tokens = grid_r50(ImageBatch.from_tensor(torch.randn(1, 3, 65, 97)))
    assert tokens.embeds.shape[1] == grid_r50.num_tokens((65, 97)) == 1 * 2


def test_pixelbert_r50_tokens_at_800x1333() -> None:
    # 800 -> 400 -> 200 -> 100 -> 50 -> 25 -> 12; 1333 -> 667 -> 334 -> 167 -> 84 -> 42 -> 21.
    # The ViLT paper's Table 6 lists 260 grid tokens for Pixel-BERT-R50 (REFERENCE.md).
    cfg = ResNetGridConfig()
    with torch.device("meta"):
        grid = ResNetGrid(backbone=cfg.backbone, pool=cfg.pool, sample_tokens=cfg.sample_tokens)
        tokens = grid(ImageBatch.from_tensor(torch.empty(1, 3, 800, 1333)))
    assert grid.num_tokens((800, 1333)) == 12 * 21 == 252
    assert tokens.embeds.shape == (1, 252, 2048)


def test_mixed_size_mask(grid_r50: ResNetGrid) -> None:
    tensor = torch.zeros(3, 3, 128, 192)
    tensor[0] = torch.randn(3, 128, 192)
    tensor[1, :, :64, :128] = torch.randn(3, 64, 128)
    tensor[2, :, :128, :64] = torch.randn(3, 128, 64)
    images = ImageBatch(tensor, ((128, 192), (64, 128), (128, 64)))
    with torch.inference_mode():
        tokens = grid_r50(images)
    # padded grid 2x3; image 1: 1x2; image 2: 2x1
    assert tokens.embeds.shape == (3, 6, 2048)
    expected = torch.tensor(
        [
            [1, 1, 1, 1, 1, 1],
            [1, 1, 0, 0, 0, 0],
            [1, 0, 0, 1, 0, 0],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(tokens.mask, expected)


def test_sampling_returns_k_real_tokens() -> None:
    torch.manual_seed(0)
    grid = ResNetGrid(backbone="r50", pool=1, sample_tokens=3).eval()
    tensor = torch.zeros(2, 3, 96, 128)
    tensor[0] = torch.randn(3, 96, 128)
    tensor[1, :, :64, :64] = torch.randn(3, 64, 64)
    images = ImageBatch(tensor, ((96, 128), (64, 64)))  # 3x4 = 12 tokens and 2x2 = 4 tokens
    with torch.inference_mode():
        grid.sample_tokens = None
        all_tokens = grid(images)
        grid.sample_tokens = 3
        sampled = grid(images)
    assert sampled.embeds.shape == (2, 3, 2048)
    assert sampled.mask.all()  # both images have >= 3 real tokens: no padding sampled
    for i in range(2):
        real = all_tokens.embeds[i][all_tokens.mask[i]]
        picked = sampled.embeds[i]
        # every sampled token is one of the image's real tokens, and they are distinct
        match = (picked[:, None, :] == real[None, :, :]).all(-1)  # (3, n_real)
        assert match.any(1).all()
        assert len(set(match.float().argmax(1).tolist())) == 3


def test_sampling_more_than_real_masks_padding() -> None:
    with torch.device("meta"):
        grid = ResNetGrid(backbone="r50", pool=1, sample_tokens=5)
    grid.backbone = nn.Conv2d(3, 2048, 32, stride=32)  # a cheap CPU stand-in of stride 32
    images = ImageBatch(torch.randn(1, 3, 96, 128), ((64, 64),))  # 2x2 real of 3x4 tokens
    with torch.inference_mode():
        tokens = grid(images)
    assert tokens.embeds.shape == (1, 5, 2048)
    assert tokens.mask.sum().item() == 4


def test_sampling_off_by_default() -> None:
    assert ResNetGridConfig().sample_tokens is None


def test_forward_has_no_host_sync(grid_r50: ResNetGrid, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("device-to-host synchronisation in forward")

    tensor = torch.zeros(2, 3, 96, 128)
    images = ImageBatch(tensor, ((96, 128), (64, 64)))  # 1x2 tokens padded, image 1: 1x1
    grid_r50.sample_tokens = 1
    try:
        monkeypatch.setattr(torch.Tensor, "item", boom)
        monkeypatch.setattr(torch.Tensor, "tolist", boom)
        with torch.inference_mode():
            tokens = grid_r50(images)
    finally:
        grid_r50.sample_tokens = None
        monkeypatch.undo()
    assert tokens.embeds.shape == (2, 1, 2048)


def test_substages_name_children() -> None:
    with torch.device("meta"):
        grid = ResNetGrid(backbone="r50", pool=1)
    assert ResNetGrid.substages == {"backbone": "backbone", "pool": "grid"}
    for child in ResNetGrid.substages:
        grid.get_submodule(child)
    assert isinstance(grid.pool, nn.Identity)
    assert not hasattr(ResNetC4, "substages")


def test_grid_flops_at_800x1333() -> None:
    """Printed, not asserted: the ViLT paper lists Pixel-BERT-R50 at 136.8 GFLOPs including a
    BERT-base transformer (REFERENCE.md, Table 6); its FLOP convention is unstated."""
    with torch.device("meta"):
        grid = ResNetGrid(backbone="r50", pool=2).eval()
        images = ImageBatch.from_tensor(torch.empty(1, 3, 800, 1333))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        grid(images)
    backbone = sum(counter.get_flop_counts()["ResNetGrid.backbone"].values())
    print(f"pixelbert-r50 grid backbone at 800x1333: {backbone / 1e9:.1f} GFLOPs (2 per MAC)")
    assert backbone > 0


def test_every_published_backbone_has_its_parameter_count_checked() -> None:
    assert set(RESNETS) - {"tiny"} == set(TRUNK_PARAMS)
