"""Models: every tiny preset runs and honours the harness's stage contract; every published preset
has a tiny twin and the published parameter counts; fusion and attention compute what they claim."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from architectures import PRESETS, FusionOutput, VLModel, build_model, list_models
from architectures.fusion import FUSIONS, DualEncoder, DualEncoderConfig, SingleStreamConfig
from architectures.layers import Attention, key_padding_mask
from feature_extractors import (
    EMBEDDERS,
    ImageBatch,
    PatchProjectionConfig,
    RegionFeaturesConfig,
    UnknownNameError,
    spec_for_config,
)

TINY = [name for name in PRESETS if name.endswith("-tiny")]
PUBLISHED = [name for name in PRESETS if not name.endswith("-tiny")]
WITH_HEAD = [name for name in TINY if PRESETS.get(name).head is not None]
WITHOUT_HEAD = [name for name in TINY if PRESETS.get(name).head is None]
DUAL = [name for name in TINY if isinstance(PRESETS.get(name).fusion, DualEncoderConfig)]
SINGLE = [name for name in TINY if isinstance(PRESETS.get(name).fusion, SingleStreamConfig)]
# a region detector's RPN and NMS synchronise by design (their stages say so)
NO_SYNC = [name for name in TINY if not isinstance(PRESETS.get(name).visual, RegionFeaturesConfig)]
PATCH = [name for name in TINY if isinstance(PRESETS.get(name).visual, PatchProjectionConfig)]


def tiny(name: str, *, head: bool = False, seed: int = 0) -> VLModel:
    torch.manual_seed(seed)
    return build_model(name, head=head).eval()


def canonical(model: VLModel, name: str, batch: int = 2):
    preset = PRESETS.get(name)
    return model.example_inputs(batch, preset.image_size, preset.text_len)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_registries_are_populated() -> None:
    assert list_models() == PRESETS.names()
    assert TINY and PUBLISHED and DUAL and SINGLE
    # Every registered fusion scheme is exercised by at least one tiny preset.
    used = {type(PRESETS.get(name).fusion) for name in TINY}
    assert {FUSIONS.get(name).config for name in FUSIONS} <= used


# --- every tiny preset -----------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY)
def test_tiny_forward_at_canonical_input(name: str) -> None:
    model = tiny(name)
    images, ids, mask = canonical(model, name)
    preset = PRESETS.get(name)
    if isinstance(images, ImageBatch):  # padded to the embedder's stride, real sizes kept
        assert images.image_sizes == (preset.image_size,) * 2
        step = getattr(model.visual, "size_divisibility", 1)
        padded = images.tensor.shape[-2:]
        assert images.tensor.shape[:2] == (2, 3)
        assert all(p % step == 0 and 0 <= p - s < step
                   for p, s in zip(padded, preset.image_size, strict=True))
    assert ids.shape == mask.shape == (2, preset.text_len)
    with torch.inference_mode():
        out = model(images, ids, mask)
    assert isinstance(out, FusionOutput)
    assert out.pooled.shape == (2, model.fusion.out_dim)
    assert torch.isfinite(out.pooled).all()
    for seq in (out.text, out.vision, out.logits):
        assert seq is None or torch.isfinite(seq).all()
    counts = model.num_tokens(preset.image_size, preset.text_len)
    assert counts["text"] == preset.text_len
    assert counts["image"] == model.visual(images).embeds.shape[1]
    if out.text is not None:
        assert out.text.shape[:2] == (2, preset.text_len)
    if out.vision is not None:
        assert out.vision.shape[:2] == (2, counts["image"])


@pytest.mark.parametrize("name", WITH_HEAD)
def test_tiny_head_output(name: str) -> None:
    model = tiny(name, head=True)
    with torch.inference_mode():
        logits = model(*canonical(model, name))
    assert isinstance(logits, torch.Tensor)
    assert logits.shape == (2, PRESETS.get(name).head.answers)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", WITHOUT_HEAD)
def test_head_requested_where_none_exists(name: str) -> None:
    with pytest.raises(ValueError, match="has no task head"):
        build_model(name, head=True)


@pytest.mark.parametrize(
    ("name", "head"), [(n, False) for n in TINY] + [(n, True) for n in WITH_HEAD]
)
def test_every_stage_resolves_and_fires(name: str, head: bool) -> None:
    model = tiny(name, head=head)
    stages = model.stages()
    names = [s.name for s in stages]
    assert len(names) == len(set(names)), "stage names must be unique"
    top = [s.name for s in stages if s.parent is None]
    assert top == ["visual", "text", "fusion"] + (["head"] if head else [])
    assert stages[0].kind == spec_for_config(PRESETS.get(name).visual).kind
    calls: Counter[str] = Counter()
    for stage in stages:
        if stage.parent is not None:
            assert stage.parent in names and stage.name.startswith(stage.parent + ".")
        for path in stage.modules:  # a named set of modules: each reports to its stage
            module = model.get_submodule(path)
            module.register_forward_hook(lambda *_, n=stage.name: calls.update([n]))
    with torch.inference_mode():
        model(*canonical(model, name))
    # every declared stage fires; top-level stages and single-module stages exactly once; a
    # two-stream model's layer groups run once per segment between co-attention blocks; a named
    # set once per call of its modules; a dual-way VLMo gathers its position bias per modality
    assert set(calls) == set(names)
    repeated = {s.name for s in stages if calls[s.name] > 1 and not s.is_set}
    assert all(n.startswith(("fusion.text_stream", "fusion.vision_stream", "fusion.co_attention",
                             "fusion.position_bias"))
               for n in repeated), repeated


@pytest.mark.parametrize("name", NO_SYNC)
def test_forward_reads_no_device_values_unless_declared(name: str, no_host_reads) -> None:
    model = tiny(name)
    assert not any(s.host_sync for s in model.stages())
    inputs = canonical(model, name)
    with no_host_reads():
        model(*inputs)


# --- published presets ------------------------------------------------------------------------


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_preset_has_tiny_twin_of_same_types(name: str) -> None:
    assert f"{name}-tiny" in PRESETS
    big, small = PRESETS.get(name), PRESETS.get(f"{name}-tiny")
    for part in ("visual", "text", "fusion", "head"):
        assert type(getattr(big, part)) is type(getattr(small, part)), part
    assert (big.head is None) == (small.head is None)


def test_unknown_model_lists_presets_in_one_line() -> None:
    with pytest.raises(KeyError) as info:
        build_model("vilt-b33")
    assert isinstance(info.value, UnknownNameError)
    message = str(info.value)
    assert "\n" not in message and "'vilt-b33'" in message
    assert all(name in message for name in PRESETS)
    with pytest.raises(KeyError, match="valid: align-fuse, dual-encoder, modality-experts, "
                                       "single-stream"):
        FUSIONS.get("co-attention")


def meta_model(name: str) -> VLModel:
    with torch.device("meta"):
        return build_model(name)


# ../shared/REFERENCE.md: open_clip model profile. Parameters (M): 151.28 total, 87.85 image,
# 63.43 text (ViT-B/32); 149.62 / 86.19 / 63.43 (ViT-B/16). The logit scale is 1 parameter.
@pytest.mark.parametrize(
    ("name", "total", "image_m", "text_m"),
    [("clip-vit-b32", 151_277_313, 87.85, 63.43), ("clip-vit-b16", 149_620_737, 86.19, 63.43)],
)
def test_clip_parameter_counts(name: str, total: int, image_m: float, text_m: float) -> None:
    model = meta_model(name)
    fusion = model.fusion
    image = n_params(model.visual) + n_params(fusion.vision_tower)
    image += n_params(fusion.interaction.vision_proj)
    text = n_params(model.text) + n_params(fusion.text_tower)
    text += n_params(fusion.interaction.text_proj)
    assert n_params(model) == total
    assert image / 1e6 == pytest.approx(image_m, abs=0.01)
    assert text / 1e6 == pytest.approx(text_m, abs=0.01)
    assert total - image - text == fusion.interaction.logit_scale.numel() == 1


def test_vilt_parameter_counts() -> None:
    model = meta_model("vilt-b32")
    # ViLT paper Table 6 / section 4: a 32x32 patch projection to 768 is "about 2.4 M"
    # (3 * 32 * 32 * 768 weights + 768 biases = 2,360,064).
    assert n_params(model.visual.proj) == 3 * 32 * 32 * 768 + 768
    assert n_params(model.visual.proj) / 1e6 == pytest.approx(2.36, abs=0.005)
    # ../shared/REFERENCE.md: transformers' ViltModel less its text embeddings is 88.1 M (the
    # paper's Table 6 says 87.4 M; the 0.8% gap is stated there, not asserted away).
    assert (n_params(model) - n_params(model.text)) / 1e6 == pytest.approx(88.1, abs=0.1)


# --- dual encoder -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", DUAL)
def test_text_tower_pools_at_last_real_token(name: str) -> None:
    model = tiny(name)
    fusion: DualEncoder = model.fusion
    n, real = PRESETS.get(name).text_len, 5
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, model.text.vocab_size, (2, n), generator=gen)
    mask = torch.zeros(2, n, dtype=torch.long)
    mask[:, :real] = 1
    with torch.inference_mode():
        base = fusion.encode_text(model.text(ids, mask))
        other_pad = ids.clone()
        other_pad[:, real:] = (ids[:, real:] + 7) % model.text.vocab_size
        same = fusion.encode_text(model.text(other_pad, mask))
        other_real = ids.clone()
        other_real[:, real - 1] = (ids[:, real - 1] + 7) % model.text.vocab_size
        changed = fusion.encode_text(model.text(other_real, mask))
        truncated = fusion.encode_text(model.text(ids[:, :real], mask[:, :real]))
    torch.testing.assert_close(same, base)
    torch.testing.assert_close(truncated, base)  # padding length is irrelevant too
    assert not torch.allclose(changed, base, atol=1e-4)


@pytest.mark.parametrize("name", DUAL)
def test_dual_encoder_logits_are_scaled_cosine_similarities(name: str) -> None:
    model = tiny(name)
    fusion: DualEncoder = model.fusion
    images, ids, mask = canonical(model, name, batch=3)
    with torch.inference_mode():
        out = model(images, ids, mask)
        img = fusion.encode_image(model.visual(images))
        txt = fusion.encode_text(model.text(ids, mask))
    assert out.logits.shape == (3, 3)
    assert img.shape == txt.shape == (3, fusion.out_dim)
    cos = torch.stack([torch.stack([F.cosine_similarity(i, t, dim=0) for t in txt]) for i in img])
    scale = fusion.interaction.logit_scale.exp()
    assert scale.item() == pytest.approx(1 / 0.07)  # CLIP's initial temperature
    torch.testing.assert_close(out.logits, scale * cos)
    torch.testing.assert_close(out.pooled.sum(dim=-1), torch.diagonal(cos))


# --- single stream ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", SINGLE)
def test_single_stream_ignores_text_padding(name: str) -> None:
    model = tiny(name)
    images, ids, mask = canonical(model, name)
    real = 3
    mask[:, real:] = 0
    other = ids.clone()
    other[:, real:] = (ids[:, real:] + 7) % model.text.vocab_size
    changed = ids.clone()
    changed[:, real - 1] = (ids[:, real - 1] + 7) % model.text.vocab_size
    with torch.inference_mode():
        base = model(images, ids, mask)
        same = model(images, other, mask)
        diff = model(images, changed, mask)
    torch.testing.assert_close(same.pooled, base.pooled)
    torch.testing.assert_close(same.vision, base.vision)
    torch.testing.assert_close(same.text[:, :real], base.text[:, :real])
    assert not torch.allclose(diff.pooled, base.pooled, atol=1e-4)


@pytest.mark.parametrize("name", PATCH)
def test_image_padding_is_ignored(name: str) -> None:
    # A small image padded into a batch with a larger one gives the same output as alone. Only
    # for patch embedders: a CNN's BatchNorm bias turns padding into non-zero values that reach
    # real positions near the border (torchvision's detectors behave the same way).
    model = tiny(name)
    h, w = PRESETS.get(name).image_size
    images, ids, mask = canonical(model, name)
    sh, sw = h - 32, w - 32
    padded = images.tensor.clone()
    padded[1, :, sh:] = 0
    padded[1, :, :, sw:] = 0
    mixed = ImageBatch(padded, ((h, w), (sh, sw)))
    alone = ImageBatch.from_tensor(padded[1:, :, :sh, :sw])
    assert model.visual(mixed).mask[1].sum() == model.num_tokens((sh, sw), 0)["image"]
    with torch.inference_mode():
        out_mixed = model(mixed, ids, mask)
        out_alone = model(alone, ids[1:], mask[1:])
    torch.testing.assert_close(out_mixed.pooled[1:], out_alone.pooled, rtol=1e-4, atol=1e-5)


# --- attention --------------------------------------------------------------------------------


def reference_attention(attn: Attention, x, context=None, mask=None) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V per head, written out by hand."""
    context = x if context is None else context
    b, n, width = x.shape
    h = attn.heads
    d = width // h
    q = (x @ attn.query.weight.T + attn.query.bias).reshape(b, n, h, d).permute(0, 2, 1, 3)
    k = (context @ attn.key.weight.T + attn.key.bias).reshape(b, -1, h, d).permute(0, 2, 1, 3)
    v = (context @ attn.value.weight.T + attn.value.bias).reshape(b, -1, h, d).permute(0, 2, 1, 3)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)  # (B, h, N, M)
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    y = torch.softmax(scores, dim=-1) @ v  # (B, h, N, d)
    y = y.permute(0, 2, 1, 3).reshape(b, n, width)
    return y @ attn.out.weight.T + attn.out.bias


@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "key-padding"])
@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
def test_attention_matches_reference(masked: bool, cross: bool) -> None:
    torch.manual_seed(0)
    width, heads, ctx_width = 16, 4, 12
    attn = Attention(width, heads, context_width=ctx_width if cross else None)
    x = torch.randn(3, 5, width)
    context = torch.randn(3, 7, ctx_width) if cross else None
    m = 7 if cross else 5
    mask = None
    if masked:
        mask = torch.ones(3, m, dtype=torch.bool)
        mask[0, 2:] = False
        mask[1, -1] = False
    with torch.no_grad():
        got = attn(x, context, attn_mask=key_padding_mask(mask))
        want = reference_attention(attn, x, context, mask)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    if masked:  # what sits behind a masked key never reaches the output
        if cross:
            context = context.clone()
            context[0, 2:] += 5.0
            keep = slice(None)  # every query of row 0
        else:
            x = x.clone()
            x[0, 2:] += 5.0
            keep = slice(0, 2)  # the queries left unchanged
        with torch.no_grad():
            again = attn(x, context, attn_mask=key_padding_mask(mask))
        torch.testing.assert_close(again[0, keep], got[0, keep], rtol=0, atol=1e-5)


def test_attention_rejects_indivisible_width() -> None:
    with pytest.raises(ValueError, match="not divisible by 3 heads"):
        Attention(16, 3)


def test_embedder_kinds_are_stage_kinds() -> None:
    # The visual stage's report category comes from the embedder registry.
    kinds = {"patch", "grid", "region", "precomputed", "text"}
    assert {EMBEDDERS.get(n).kind for n in EMBEDDERS} <= kinds
