"""``blip-base`` against transformers' ``BlipForImageTextRetrieval`` (its default ``BlipConfig()``
is BLIP-base for retrieval at 384x384): submodule by submodule in parameters, in FLOPs of the
ITM path (our forward) and of the ITC path, and, with the reference's weights copied in, in ITM
and ITC scores. The mapping lives in ``benchmarks.parity.blip``, shared with
``python -m benchmarks.parity --models blip-base``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from architectures import build_model
from benchmarks.parity import (
    BLIP_CONFIG_DIFFERENCES,
    as_preset,
    blip_config,
    blip_param_name,
    count_flops,
    count_params,
    load_blip_weights,
    matched_params,
    parity_preset,
    reference_family,
    reference_inputs,
    reference_itc_unmasked,
    reference_itm_unmasked,
    reference_model,
    sdpa_flops,
    submodule_pairs,
    unmapped_by_side,
)

transformers = pytest.importorskip("transformers")

TINY, FULL = "blip-base-tiny", "blip-base"
# REFERENCE.md: BlipForImageTextRetrieval(BlipConfig()) has 223.74 M parameters: vision 86.09,
# text encoder with cross-attention 137.26, projections 0.39, ITM head 0.002 (M, rounded)
PUBLISHED_M = {"total": 223.74, "vision_model": 86.09, "text_encoder": 137.26,
               "projections": 0.39, "itm_head": 0.002}
# Buffers enter no count; listed so that new state is noticed (position-id tables).
EXPECTED_BUFFERS = {"ours": {"text.position_ids"},
                    "theirs": {"text_encoder.embeddings.position_ids"}}


def check_param_parity(ours: nn.Module, theirs: nn.Module, preset: str) -> None:
    """The pairs partition both sides (nothing unmapped) and agree tensor for tensor."""
    pairs = submodule_pairs(preset)
    for side, model, prefixes in (("ours", ours, lambda pr: pr.ours),
                                  ("theirs", theirs, lambda pr: pr.theirs)):
        seen: dict[str, str] = {}
        for pr in pairs:
            matched = matched_params(model, prefixes(pr))
            assert matched, f"{side}: pair {pr.label} matches no parameter"
            for name in matched:
                assert name not in seen, f"{side}: {name} in both {seen[name]} and {pr.label}"
                seen[name] = pr.label
    assert unmapped_by_side(ours, theirs, pairs) == ({}, {})
    for pr in pairs:
        a, b = matched_params(ours, pr.ours), matched_params(theirs, pr.theirs)
        assert sum(a.values()) == sum(b.values()), pr.label
        if not pr.label.startswith("fusion.vision_tower.encoder.blocks"):  # qkv: fused in theirs
            assert sorted(a.values()) == sorted(b.values()), pr.label
    assert count_params(ours) == count_params(theirs)


def check_name_mapping(ours: nn.Module, theirs: nn.Module) -> None:
    """Name for name, shape for shape (a fused qkv is three of our tensors): what a weight
    loader uses, checked without copying anything (works on meta)."""
    theirs_shapes = {n: tuple(t.shape) for n, t in theirs.named_parameters()}
    rows: dict[str, int] = {}
    for name, param in ours.named_parameters():
        target, chunk = blip_param_name(name)
        shape = list(theirs_shapes[target])
        if chunk is not None:
            rows[target] = rows.get(target, 0) + param.shape[0]
            shape[0] //= 3
        else:
            rows[target] = shape[0] if shape else 1
        assert param.numel() == torch.Size(shape).numel(), (name, target)
    assert set(rows) == set(theirs_shapes)
    assert all(rows[n] == (s[0] if s else 1) for n, s in theirs_shapes.items())


def test_family_alias_and_refusals() -> None:
    assert reference_family(FULL) == reference_family(TINY) == "blip"
    assert parity_preset(FULL) == FULL
    assert blip_config(FULL)._attn_implementation == "eager"
    with pytest.raises(ValueError, match="ALBEF has no installable implementation"):
        reference_model("albef-base")


def test_mapped_config_is_the_default_but_for_the_listed_fields() -> None:
    """Our blip-base is transformers' default BlipConfig() but for two fields that change no
    parameter and no FLOP (transformers' text heads, its ViT LayerNorm eps)."""
    def flat(d: dict, prefix: str = "") -> dict[str, object]:
        out: dict[str, object] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    ours = flat(blip_config(FULL).to_dict())
    default = flat(transformers.BlipConfig().to_dict())
    differ = {k: (default.get(k), ours.get(k)) for k in set(ours) | set(default)
              if ours.get(k) != default.get(k)}
    assert differ == {f"{a}.{b}": v for (a, b), v in BLIP_CONFIG_DIFFERENCES.items()}


@pytest.fixture(scope="module")
def tiny_pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    return build_model(TINY).eval(), reference_model(TINY).eval()


def test_tiny_parameters_names_and_buffers(tiny_pair: tuple[nn.Module, nn.Module]) -> None:
    ours, theirs = tiny_pair
    check_param_parity(ours, theirs, TINY)
    check_name_mapping(ours, theirs)
    assert {n for n, _ in ours.named_buffers()} == EXPECTED_BUFFERS["ours"]
    assert {n for n, _ in theirs.named_buffers()} == EXPECTED_BUFFERS["theirs"]


def attention_flops(preset: str, *, itm: bool) -> int:
    """QK^T and AV, 2 * N * M * D each: the image tower's self-attention, the text layers'
    self-attention and (ITM) their cross-attention to every image token."""
    p = as_preset(preset)
    f = p.fusion
    n_v = build_model(p).num_tokens(p.image_size, p.text_len)["image"]
    n_t = p.text_len
    vision = 4 * n_v * n_v * f.vision_width * f.vision_depth
    text = 4 * n_t * n_t * f.text_width * f.text_depth
    cross = 4 * n_t * n_v * f.text_width * f.fusion_depth if itm else 0
    return vision + text + cross


def test_tiny_flops_match(tiny_pair: tuple[nn.Module, nn.Module]) -> None:
    ours, theirs = tiny_pair
    p = as_preset(TINY)
    images, ids, mask = ours.example_inputs(1, p.image_size, p.text_len)
    kwargs = reference_inputs(p, images, ids, mask)
    with torch.no_grad():
        f_ours, per_op = count_flops(lambda: ours(images, ids, mask))
        f_theirs, their_ops = count_flops(lambda: theirs(**kwargs))
        f_unmasked, _ = count_flops(lambda: reference_itm_unmasked(theirs, images.tensor, ids))
    assert f_ours == f_theirs == f_unmasked  # measured: equal to the FLOP
    assert sdpa_flops(per_op) == attention_flops(TINY, itm=True)
    # theirs: the hand-written attention is the only batched matmul (linears are addmm)
    assert sum(v for op, v in their_ops.items() if "bmm" in str(op)) == attention_flops(
        TINY, itm=True)


def test_tiny_scores_match_with_shared_weights(tiny_pair: tuple[nn.Module, nn.Module]) -> None:
    """Same weights, same pair: the same ITM logits (our forward) and ITC similarities (our
    ``itc``), with padding in one text; the unmasked reference paths used on meta agree too."""
    _, theirs = tiny_pair
    p = as_preset(TINY)
    ours = build_model(TINY).eval()
    load_blip_weights(ours, theirs)
    images, ids, mask = ours.example_inputs(2, p.image_size, p.text_len, seed=1)
    padded = mask.clone()
    padded[1, -3:] = 0
    tol = {"atol": 1e-5, "rtol": 1e-4}
    with torch.no_grad():
        for m in (mask, padded):
            kwargs = reference_inputs(p, images, ids, m)
            text, vision = ours.text(ids, m), ours.visual(images)
            torch.testing.assert_close(ours(images, ids, m).match, theirs(**kwargs).itm_score,
                                       **tol)
            torch.testing.assert_close(ours.fusion.itc(text, vision).logits,
                                       theirs(**kwargs, use_itm_head=False).itm_score, **tol)
        torch.testing.assert_close(reference_itm_unmasked(theirs, images.tensor, ids),
                                   theirs(**reference_inputs(p, images, ids, mask)).itm_score)
        torch.testing.assert_close(
            reference_itc_unmasked(theirs, images.tensor, ids),
            theirs(**reference_inputs(p, images, ids, mask), use_itm_head=False).itm_score)


@pytest.fixture(scope="module")
def full_pair() -> tuple[nn.Module, nn.Module]:
    with torch.device("meta"):
        ours, theirs = build_model(FULL).eval(), reference_model(FULL).eval()
    if not all(prm.is_meta for prm in theirs.parameters()):
        pytest.skip("transformers did not construct on the meta device; full size would allocate")
    return ours, theirs


def test_full_size_parameters_on_meta(full_pair: tuple[nn.Module, nn.Module]) -> None:
    ours, theirs = full_pair
    check_param_parity(ours, theirs, FULL)
    check_name_mapping(ours, theirs)
    with torch.device("meta"):
        default = transformers.BlipForImageTextRetrieval(transformers.BlipConfig())
    assert count_params(default) == count_params(theirs) == count_params(ours)
    parts = {"total": count_params(theirs),
             "vision_model": count_params(theirs, ["vision_model"]),
             "text_encoder": count_params(theirs, ["text_encoder"]),
             "projections": count_params(theirs, ["vision_proj", "text_proj"]),
             "itm_head": count_params(theirs, ["itm_head"])}
    for part, published in PUBLISHED_M.items():
        digits = 3 if published < 0.01 else 2
        assert round(parts[part] / 1e6, digits) == published, (part, parts[part])


def test_full_size_flops_on_meta(full_pair: tuple[nn.Module, nn.Module]) -> None:
    """ITM path (the forward) and ITC path within 1% at 384x384 + 35 tokens (measured: equal to
    the FLOP). REFERENCE.md's figures (135.0 ITM, 117.0 ITC, 111.0 image tower, GFLOPs) are
    printed beside."""
    ours, theirs = full_pair
    p = as_preset(FULL)
    images, ids, mask = ours.example_inputs(1, p.image_size, p.text_len, device="meta")
    with torch.no_grad():
        itm_ours, _ = count_flops(lambda: ours(images, ids, mask))
        itm_theirs, _ = count_flops(lambda: reference_itm_unmasked(theirs, images.tensor, ids))

        def itc_ours() -> object:
            return ours.fusion.itc(ours.text(ids, mask), ours.visual(images))

        itc_o, _ = count_flops(itc_ours)
        itc_t, _ = count_flops(lambda: reference_itc_unmasked(theirs, images.tensor, ids))
        image_t, _ = count_flops(lambda: theirs.vision_model(pixel_values=images.tensor))
    for a, b in ((itm_ours, itm_theirs), (itc_o, itc_t)):
        assert abs(a - b) / b < 0.01, (a, b)
    print(f"\nblip-base GFLOPs: ITM {itm_ours / 1e9:.2f} vs {itm_theirs / 1e9:.2f}, ITC "
          f"{itc_o / 1e9:.2f} vs {itc_t / 1e9:.2f}, their image tower {image_t / 1e9:.2f} "
          "(REFERENCE.md: 135.0, 117.0, 111.0)")
