"""Our region-feature presets against transformers' ``LxmertModel`` and ``VisualBertModel``,
submodule by submodule in parameters and in forward FLOPs, on precomputed regions (neither
reference has a detector).

LXMERT maps exactly: every parameter has a counterpart, and with the reference's weights copied in
our model computes the same outputs. VisualBERT maps pair by pair but not as a whole: it is a
post-LN BERT whose one embedding LayerNorm normalises [text; regions] after adding a visual
position and type embedding, while our single stream is pre-LN (ViLT-style) over separately
normalised text and region tokens. We do not bend our model to it; the parameters that differ are
listed below with their counts, and the FLOPs agree anyway (LayerNorms and adds are not counted;
every matmul has its twin). Both references are eager-only in transformers (asking for SDPA
raises), so they run ``attn_implementation="eager"``; ours run SDPA, counted by the registered
CPU SDPA formula (on meta, SDPA decomposes into counted matmuls).

The config mapping, the pairing and LXMERT's name mapping live in ``benchmarks.parity``, one copy
shared with ``python -m benchmarks.parity --models lxmert,visualbert``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from architectures import build_model
from architectures.weight_maps import NAMINGS
from benchmarks.parity import (
    as_preset,
    count_flops,
    count_params,
    lxmert_config,
    lxmert_param_name,
    matched_params,
    parity_preset,
    reference_family,
    reference_inputs,
    reference_model,
    sdpa_flops,
    submodule_pairs,
    unmapped_by_side,
    visualbert_config,
)
from feature_extractors import RegionBatch

pytest.importorskip("transformers")

TINY = ("lxmert-precomputed-tiny", "visualbert-precomputed-tiny")
FULL = ("lxmert-precomputed", "visualbert-precomputed")


def deliberate_unmapped(preset: str) -> dict[str, dict[str, int]]:
    """{side: {parameter name: numel}} that no pair maps, by design. LXMERT: none."""
    p = as_preset(preset)
    if reference_family(p) == "lxmert":
        return {"ours": {}, "theirs": {}}
    d = p.fusion.width
    return {
        "ours": {
            # Our region embedding normalises its projected features itself (Linear, then LN);
            # VisualBERT's single embeddings.LayerNorm normalises text and regions together, and
            # is paired with our text.norm. 2 x width.
            "visual.embed.norm.weight": d,
            "visual.embed.norm.bias": d,
            # Our single stream is pre-LN, so it ends in a LayerNorm; BERT's post-LN layers end
            # normalised already and have none. 2 x width.
            "fusion.norm.weight": d,
            "fusion.norm.bias": d,
        },
        "theirs": {
            # A visual position table (max_positions x width). Without image_text_alignment (VQA,
            # the setting ViLT's paper times) only row 0 is read: one constant vector added to
            # every region, which we do not have.
            "embeddings.visual_position_embeddings.weight": p.text.max_positions * d,
        },
    }


# Buffers are not parameters and enter no count; listed so that new state is noticed.
EXPECTED_BUFFERS = {
    "lxmert": {"ours": {"text.position_ids"}, "theirs": set()},  # LXMERT builds its ids per call
    "visualbert": {"ours": {"text.position_ids"}, "theirs": {"embeddings.position_ids"}},
}


def check_param_parity(ours: nn.Module, theirs: nn.Module, preset: str) -> None:
    """Pairs partition both sides up to the deliberate list (names and counts), and each pair
    agrees tensor for tensor."""
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
    rest_ours, rest_theirs = unmapped_by_side(ours, theirs, pairs)
    expected = deliberate_unmapped(preset)
    assert rest_ours == expected["ours"]
    assert rest_theirs == expected["theirs"]
    for pr in pairs:
        a, b = matched_params(ours, pr.ours), matched_params(theirs, pr.theirs)
        assert sum(a.values()) == sum(b.values()), pr.label
        assert sorted(a.values()) == sorted(b.values()), pr.label
    assert (count_params(ours) - sum(rest_ours.values())
            == count_params(theirs) - sum(rest_theirs.values()))


TinyPair = tuple[str, nn.Module, nn.Module]  # preset name, ours, theirs


@pytest.fixture(scope="module", params=TINY)
def tiny_pair(request: pytest.FixtureRequest) -> TinyPair:
    torch.manual_seed(0)
    name = request.param
    return name, build_model(name).eval(), reference_model(name).eval()


def test_families_aliases_and_eager_attention() -> None:
    assert [reference_family(n) for n in TINY + FULL] == ["lxmert", "visualbert"] * 2
    # the script's --models lxmert,visualbert means the precomputed presets
    assert parity_preset("lxmert") == "lxmert-precomputed"
    assert parity_preset("visualbert") == "visualbert-precomputed"
    assert parity_preset("lxmert-tiny") == "lxmert-precomputed-tiny"
    assert parity_preset("vilt-b32") == "vilt-b32"
    assert lxmert_config("lxmert-precomputed")._attn_implementation == "eager"
    assert visualbert_config("visualbert-precomputed")._attn_implementation == "eager"


@pytest.mark.parametrize(("name", "match"), [
    ("lxmert", "runs a detector"),  # the detector preset itself: no reference
    ("uniter-base-precomputed", "VisualBERT embeds the region feature only"),
    ("vilbert-base-precomputed", "LXMERT embeds a feature and a 4-d box"),
])
def test_other_presets_are_refused_not_approximated(name: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        reference_model(name)


def test_tiny_parameters_match(tiny_pair: TinyPair) -> None:
    name, ours, theirs = tiny_pair
    check_param_parity(ours, theirs, name)


def test_tiny_buffers_are_the_listed_ones(tiny_pair: TinyPair) -> None:
    name, ours, theirs = tiny_pair
    expected = EXPECTED_BUFFERS[reference_family(name)]
    assert {n for n, _ in ours.named_buffers()} == expected["ours"]
    assert {n for n, _ in theirs.named_buffers()} == expected["theirs"]


def expected_attention_flops(preset: str) -> int:
    """QK^T and AV, 2 * N * M * D each, summed over every attention call."""
    p = as_preset(preset)
    n_t = p.text_len
    n_v = build_model(p).num_tokens(p.image_size, p.text_len)["image"]
    f = p.fusion
    if reference_family(p) == "visualbert":
        return 4 * (n_t + n_v) ** 2 * f.width * f.depth
    cross = len(f.text_layers_before_cross)
    # per cross layer: text over regions, regions over text, then each stream's self-attention
    per_cross = 2 * n_t * n_v + n_t**2 + n_v**2
    return 4 * f.text_width * (f.text_depth * n_t**2 + f.vision_depth * n_v**2 + cross * per_cross)


def test_tiny_flops_match(tiny_pair: TinyPair) -> None:
    name, ours, theirs = tiny_pair
    p = as_preset(name)
    regions, ids, mask = ours.example_inputs(1, p.image_size, p.text_len)
    kwargs = reference_inputs(p, regions, ids, mask)
    with torch.no_grad():
        f_ours, per_op = count_flops(lambda: ours(regions, ids, mask))
        f_theirs, their_ops = count_flops(lambda: theirs(**kwargs))
    # measured: equal to the FLOP (ratio 1.0000) for both families
    assert abs(f_ours - f_theirs) / f_theirs < 0.01, (f_ours, f_theirs)
    expected = expected_attention_flops(name)
    assert sdpa_flops(per_op) == expected  # ours: the fused SDPA kernel
    # theirs: eager attention is the only batched matmul (linears are addmm)
    assert sum(v for op, v in their_ops.items() if "bmm" in str(op)) == expected


@pytest.mark.parametrize("name", FULL)
def test_full_size_parameters_and_flops_on_meta(name: str) -> None:
    p = as_preset(name)
    with torch.device("meta"):
        ours = build_model(name).eval()
        theirs = reference_model(name).eval()
    if not all(prm.is_meta for prm in theirs.parameters()):
        pytest.skip("transformers did not construct on the meta device; full size would allocate")
    check_param_parity(ours, theirs, name)
    if reference_family(name) == "lxmert":
        assert count_params(ours) == count_params(theirs) == 207_936_768
        # name for name, shape for shape: the mapping a weight loader would use is a bijection
        mapped = {lxmert_param_name(n): tuple(t.shape) for n, t in ours.named_parameters()}
        assert mapped == {n: tuple(t.shape) for n, t in theirs.named_parameters()}
    else:
        assert count_params(ours) == 111_060_480
        assert count_params(theirs) == 111_450_624
        # 512 x 768 visual positions on their side, 4 x 768 LayerNorm parameters on ours
        assert count_params(theirs) - count_params(ours) == 393_216 - 3_072
    regions, ids, mask = ours.example_inputs(1, p.image_size, p.text_len, device="meta")
    kwargs = reference_inputs(p, regions, ids, mask)
    with torch.no_grad():
        f_ours, _ = count_flops(lambda: ours(regions, ids, mask))
        f_theirs, _ = count_flops(lambda: theirs(**kwargs))
    print(f"\n{name}: {f_ours / 1e9:.3f} vs {f_theirs / 1e9:.3f} GFLOPs")
    assert abs(f_ours - f_theirs) / f_theirs < 0.01, (f_ours, f_theirs)


def _text_mask_with_padding(mask: torch.Tensor) -> torch.Tensor:
    mask = mask.clone()
    mask[1, -3:] = 0  # the second pair's last three text tokens are padding
    return mask


def test_lxmert_outputs_match_with_shared_weights() -> None:
    """Same weights (through ``lxmert_param_name``), same regions and text: same outputs. Also
    checks that our pixel boxes + image sizes give LXMERT's normalised ``visual_pos``."""
    name = "lxmert-precomputed-tiny"
    p = as_preset(name)
    torch.manual_seed(0)
    theirs = reference_model(name).eval()
    ours = build_model(name).eval()
    src = theirs.state_dict()
    ours.load_state_dict({n: src[lxmert_param_name(n)] for n in ours.state_dict()})
    regions, ids, mask = ours.example_inputs(2, p.image_size, p.text_len, seed=1)
    mask = _text_mask_with_padding(mask)
    with torch.no_grad():
        got = ours(regions, ids, mask)
        want = theirs(**reference_inputs(p, regions, ids, mask))
    tol = {"atol": 1e-5, "rtol": 1e-4}
    torch.testing.assert_close(got.text, want.language_output, **tol)
    torch.testing.assert_close(got.vision, want.vision_output, **tol)
    torch.testing.assert_close(got.pooled, want.pooled_output, **tol)


# ours -> VisualBertModel, for the embedding check below: the mapping --weights uses
# (architectures.weight_maps), restricted to the embeddings
_VISUALBERT_EMBEDDINGS = {
    n: NAMINGS["visualbert"].source(n).name
    for n in ("text.word.weight", "text.position.weight", "text.token_type.weight",
              "text.norm.weight", "text.norm.bias", "visual.embed.feature.weight",
              "visual.embed.feature.bias", "visual.embed.norm.weight", "visual.embed.norm.bias")
}


def test_visualbert_embeddings_match_up_to_the_listed_differences() -> None:
    """The whole model cannot match (post-LN vs pre-LN), but the embeddings do, up to where
    VisualBERT adds its visual position and type rows: text tokens are LN(word + position +
    type 0) on both sides, and with those two rows zeroed their region tokens are our
    LN(Linear(feature))."""
    name = "visualbert-precomputed-tiny"
    p = as_preset(name)
    torch.manual_seed(0)
    theirs = reference_model(name).eval()
    ours = build_model(name).eval()
    src = theirs.state_dict()
    with torch.no_grad():
        for n, t in ours.named_parameters():
            if n in _VISUALBERT_EMBEDDINGS:
                t.copy_(src[_VISUALBERT_EMBEDDINGS[n]])
        theirs.embeddings.visual_position_embeddings.weight[0].zero_()
        theirs.embeddings.visual_token_type_embeddings.weight[1].zero_()
        regions, ids, mask = ours.example_inputs(2, p.image_size, p.text_len, seed=1)
        assert isinstance(regions, RegionBatch)
        kwargs = reference_inputs(p, regions, ids, mask)
        want = theirs.embeddings(input_ids=ids, visual_embeds=kwargs["visual_embeds"],
                                 visual_token_type_ids=kwargs["visual_token_type_ids"])
        text = ours.text(ids, mask).embeds
        vision = ours.visual(regions).embeds
    n_t = p.text_len
    torch.testing.assert_close(text, want[:, :n_t], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(vision, want[:, n_t:], atol=1e-5, rtol=1e-4)
