"""Embedders: the ``Tokens`` contract for every registered embedder, the patch stem's geometry,
position embeddings and padding, input validation and the registry's error messages."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from feature_extractors import (
    EMBEDDERS,
    ImageBatch,
    PatchProjection,
    PatchProjectionConfig,
    Registry,
    Tokens,
    UnknownNameError,
    build_embedder,
    spec_for_config,
)

# Small sizes for any config field of these names, so big defaults (a 30k x 768 word table)
# build fast; fields an embedder does not have are left alone.
SHRINK = {"vocab_size": 101, "width": 24}
# A region detector at its defaults does seconds of work per image: a toy one, same stages.
TOY_DETECTOR = {"backbone": "tiny", "num_classes": 11, "pre_nms_top_n": 200,
                "post_nms_top_n": 20, "roi_size": 7, "num_boxes": 6}


def small(config):
    names = {f.name for f in dataclasses.fields(config)}
    shrink = {**SHRINK, **TOY_DETECTOR} if "post_nms_top_n" in names else SHRINK
    return dataclasses.replace(config, **{k: v for k, v in shrink.items() if k in names})


def embed(module, spec, batch: int = 2, image_size=(128, 160), text_len: int = 8):
    """Run an embedder on inputs of its modality; returns (Tokens, expected text mask or None)."""
    gen = torch.Generator().manual_seed(0)
    if spec.modality == "visual":
        make = getattr(module, "example_input", None)  # precomputed regions take no images
        if make is not None:
            return module(make(batch, image_size, gen)), None
        images = ImageBatch.from_tensor(torch.randn(batch, 3, *image_size, generator=gen))
        return module(images), None
    assert spec.modality == "text", f"unknown modality {spec.modality!r}"
    n = min(text_len, getattr(module, "max_positions", text_len))
    ids = torch.randint(0, module.vocab_size, (batch, n), generator=gen)
    attention_mask = torch.ones(batch, n, dtype=torch.long)
    attention_mask[0, n // 2:] = 0  # right padding in the first row
    return module(ids, attention_mask), attention_mask.bool()


# --- every registered embedder --------------------------------------------------------------


@pytest.mark.parametrize("name", EMBEDDERS.names())
def test_embedder_returns_tokens_of_its_out_dim(name: str) -> None:
    spec = EMBEDDERS.get(name)
    assert spec.name == name
    assert spec.modality in {"visual", "text"}
    config = small(spec.config())
    assert spec_for_config(config) is spec
    module = build_embedder(config).eval()
    assert isinstance(module, spec.module)
    with torch.inference_mode():
        tokens, text_mask = embed(module, spec)
    assert isinstance(tokens, Tokens)
    b, n, d = tokens.embeds.shape
    assert b == 2 and n > 0
    assert d == module.out_dim == tokens.width
    assert tokens.mask.dtype == torch.bool
    assert tokens.mask.shape == (b, n)
    assert torch.isfinite(tokens.embeds).all()
    if text_mask is not None:
        assert torch.equal(tokens.mask, text_mask)
    elif hasattr(module, "num_tokens"):
        assert n == module.num_tokens((128, 160))
        assert tokens.mask.all()  # full-size images: no padding


@pytest.mark.parametrize("name", [n for n in EMBEDDERS if EMBEDDERS.get(n).modality == "text"])
def test_text_longer_than_max_positions_is_rejected(name: str) -> None:
    spec = EMBEDDERS.get(name)
    module = build_embedder(dataclasses.replace(small(spec.config()), max_positions=8))
    ids = torch.zeros(1, 9, dtype=torch.long)
    with pytest.raises(ValueError, match=r"text length 9 exceeds the 8 positions"):
        module(ids, torch.ones_like(ids))
    assert module(ids[:, :8], torch.ones_like(ids[:, :8])).embeds.shape[1] == 8  # 8 is fine


# --- the patch stem --------------------------------------------------------------------------


def patch_stem(width: int = 8, patch: int = 32, pos_grid=(2, 2), bias: bool = True):
    torch.manual_seed(0)
    return build_embedder(
        PatchProjectionConfig(width=width, patch_size=patch, pos_grid=pos_grid, bias=bias)
    ).eval()


def zero_projection(stem: PatchProjection) -> PatchProjection:
    """Zero conv weights and bias: on a zero image the output is exactly cls + position table."""
    with torch.no_grad():
        stem.proj.weight.zero_()
        if stem.proj.bias is not None:
            stem.proj.bias.zero_()
    return stem


def test_patch_vilt_input_gives_241_tokens() -> None:
    # ViLT-B/32 at 384x640: a 12x20 grid of 32-pixel patches plus one [CLS] (ViLT paper).
    stem = build_embedder(dataclasses.replace(PatchProjectionConfig(), width=8))
    assert stem.grid((384, 640)) == (12, 20)
    assert stem.num_tokens((384, 640)) == 1 + 12 * 20 == 241
    with torch.inference_mode():
        tokens = stem(ImageBatch.from_tensor(torch.randn(1, 3, 384, 640)))
    assert tokens.embeds.shape == (1, 241, 8)
    assert tokens.mask.shape == (1, 241) and tokens.mask.all()


def test_patch_partial_patches_are_dropped() -> None:
    stem = patch_stem()
    assert stem.grid((100, 70)) == (3, 2)
    tokens = stem(ImageBatch.from_tensor(torch.randn(1, 3, 100, 70)))
    assert tokens.embeds.shape[1] == 1 + 3 * 2


def test_patch_position_table_used_as_is_at_pos_grid() -> None:
    stem = zero_projection(patch_stem(pos_grid=(2, 3)))
    with torch.no_grad():
        out = stem(ImageBatch.from_tensor(torch.zeros(2, 3, 64, 96))).embeds  # 2x3 grid
    table = stem.pos_embed[0].detach()  # (1 + 6, D)
    assert torch.equal(out[:, 0], (stem.cls_token[0, 0] + table[0]).detach().expand(2, -1))
    assert torch.equal(out[:, 1:], table[1:].expand(2, -1, -1))


def test_patch_position_table_interpolated_when_grid_differs() -> None:
    # A table linear in row and column: bilinear interpolation with aligned corners (ViLT's
    # choice) must reproduce the same linear function over the new grid, corners included.
    gh, gw, rows, cols = 3, 4, 5, 2
    stem = zero_projection(patch_stem(width=2, pos_grid=(gh, gw)))
    r = torch.arange(gh, dtype=torch.float32)[:, None].expand(gh, gw)
    c = torch.arange(gw, dtype=torch.float32)[None, :].expand(gh, gw)
    with torch.no_grad():
        stem.pos_embed[0, 1:] = torch.stack([r, c], dim=-1).reshape(gh * gw, 2)
        out = stem(ImageBatch.from_tensor(torch.zeros(1, 3, 32 * rows, 32 * cols))).embeds
    assert out.shape == (1, 1 + rows * cols, 2)
    want_r = torch.arange(rows)[:, None].expand(rows, cols) * (gh - 1) / (rows - 1)
    want_c = torch.arange(cols)[None, :].expand(rows, cols) * (gw - 1) / (cols - 1)
    want = torch.stack([want_r, want_c], dim=-1).reshape(rows * cols, 2).float()
    torch.testing.assert_close(out[0, 1:], want, rtol=0, atol=1e-6)
    # The [CLS] position is never interpolated.
    assert torch.equal(out[0, 0], (stem.cls_token + stem.pos_embed[:, 0])[0, 0].detach())


def test_patch_mixed_sizes_mask_padding_and_match_images_alone() -> None:
    stem = patch_stem(pos_grid=(2, 2))
    torch.manual_seed(1)
    big = torch.randn(3, 96, 128)  # 3x4 grid
    small_img = torch.randn(3, 70, 64)  # 2x2 grid (a partial row of 6 pixels dropped)
    padded = torch.zeros(2, 3, 96, 128)
    padded[0] = big
    padded[1, :, :70, :64] = small_img
    with torch.no_grad():
        mixed = stem(ImageBatch(padded, ((96, 128), (70, 64))))
        alone_big = stem(ImageBatch.from_tensor(big[None]))
        alone_small = stem(ImageBatch.from_tensor(small_img[None]))
    assert mixed.embeds.shape == (2, 1 + 3 * 4, 8)
    assert mixed.mask.sum(dim=1).tolist() == [1 + 3 * 4, 1 + 2 * 2]
    # The small image's real tokens: [CLS] and the top-left 2x2 of the padded 3x4 grid.
    grid_mask = mixed.mask[1, 1:].reshape(3, 4)
    assert grid_mask[:2, :2].all() and not grid_mask[2:].any() and not grid_mask[:, 2:].any()
    torch.testing.assert_close(mixed.embeds[0], alone_big.embeds[0])
    real = mixed.embeds[1][mixed.mask[1]]
    torch.testing.assert_close(real, alone_small.embeds[0])


@pytest.mark.parametrize("mixed", [False, True], ids=["uniform", "mixed-sizes"])
def test_patch_forward_never_reads_device_values(mixed: bool, no_host_reads) -> None:
    # Grids must come from ImageBatch.image_sizes (host ints), never from the device.
    stem = patch_stem(pos_grid=(2, 2))
    sizes = ((64, 96), (64, 64) if mixed else (64, 96))
    images = ImageBatch(torch.randn(2, 3, 64, 96), sizes)
    with no_host_reads():
        tokens = stem(images)
    assert tokens.mask.sum(dim=1).tolist() == [1 + 2 * 3, 1 + 2 * (2 if mixed else 3)]


# --- data types ------------------------------------------------------------------------------


def test_image_batch_needs_one_size_per_image() -> None:
    with pytest.raises(ValueError, match="one image size per image"):
        ImageBatch(torch.zeros(2, 3, 32, 32), ((32, 32),))


@pytest.mark.parametrize("size", [(33, 32), (32, 33)])
def test_image_batch_rejects_size_larger_than_tensor(size) -> None:
    with pytest.raises(ValueError, match=r"exceeds the padded tensor \(32, 32\)"):
        ImageBatch(torch.zeros(1, 3, 32, 32), (size,))


def test_image_batch_from_tensor_and_to_keep_sizes() -> None:
    images = ImageBatch.from_tensor(torch.zeros(3, 3, 40, 50))
    assert images.image_sizes == ((40, 50),) * 3 and len(images) == 3
    half = images.to("cpu", torch.float64)
    assert half.tensor.dtype == torch.float64 and half.image_sizes == images.image_sizes


@pytest.mark.parametrize("mask_shape", [(2, 4), (2, 5, 1), (1, 5), (5,)])
def test_tokens_reject_mask_of_wrong_shape(mask_shape) -> None:
    with pytest.raises(ValueError, match="does not match embeds"):
        Tokens(torch.zeros(2, 5, 8), torch.ones(mask_shape, dtype=torch.bool))
    assert Tokens(torch.zeros(2, 5, 8), torch.ones(2, 5, dtype=torch.bool)).width == 8


# --- registry --------------------------------------------------------------------------------


def test_unknown_name_is_a_one_line_key_error_listing_valid_names() -> None:
    with pytest.raises(KeyError) as info:
        EMBEDDERS.get("pach")
    assert isinstance(info.value, UnknownNameError)
    message = str(info.value)
    assert "\n" not in message
    assert "'pach'" in message
    for name in EMBEDDERS:
        assert name in message


def test_duplicate_registration_raises_and_keeps_the_first() -> None:
    registry: Registry[int] = Registry("thing")
    registry.register("a", 1)
    with pytest.raises(ValueError, match="'a' is already registered"):
        registry.register("a", 2)
    assert registry.get("a") == 1 and len(registry) == 1
    first = EMBEDDERS.get("patch")
    with pytest.raises(ValueError, match="already registered"):
        EMBEDDERS.register("patch", first)
    assert EMBEDDERS.get("patch") is first


def test_registry_lists_names_sorted() -> None:
    registry: Registry[int] = Registry("thing")
    for name in ("b", "c", "a"):
        registry.register(name, 0)
    assert registry.names() == list(registry) == ["a", "b", "c"]
    assert "a" in registry and "z" not in registry
