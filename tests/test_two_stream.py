"""Two-stream fusion (ViLBERT, LXMERT): layout, stages, masking and shared cross-attention
(parity with the references: ``test_two_stream_parity.py``)."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from two_stream_configs import (
    LAYOUTS,
    LXMERT,
    LXMERT_TINY,
    TEXT_DIM,
    TINY,
    VILBERT,
    VILBERT_TINY,
    VISION_DIM,
    build,
    n_params,
    tiny_widths,
    tokens,
)

from architectures.fusion.two_stream import TwoStreamConfig, check_layout
from architectures.layers import AttentionSublayer
from vlbench.timing import StageHooks, check_fired

# --- forward ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY)
def test_forward_shapes(name: str) -> None:
    config = TINY[name]
    fusion = build(config)
    with torch.inference_mode():
        out = fusion(tokens(2, 5, TEXT_DIM), tokens(2, 7, VISION_DIM))
    pooled_dim = config.cross_width if config.pooled == "product" else config.text_width
    assert fusion.out_dim == pooled_dim
    assert out.pooled.shape == (2, pooled_dim)
    assert out.text.shape == (2, 5, config.text_width)
    assert out.vision.shape == (2, 7, config.vision_width)
    assert torch.isfinite(out.pooled).all()


def test_product_pooling_is_vilberts() -> None:
    """ReLU(Linear(text [CLS])) * ReLU(Linear(first visual token)), both at cross_width."""
    fusion = build(VILBERT_TINY)
    with torch.inference_mode():
        out = fusion(tokens(2, 5, TEXT_DIM), tokens(2, 7, VISION_DIM))
        p = fusion.pooler
        want = F.relu(p.text(out.text[:, 0])) * F.relu(p.vision(out.vision[:, 0]))
    torch.testing.assert_close(out.pooled, want)


# --- stages ------------------------------------------------------------------------------------


def expected_calls(config: TwoStreamConfig) -> dict[str, int]:
    """Calls per stage, counted the way ViLBERT's BertEncoder.forward runs its layers: a stream
    stage once per non-empty run of its layers between blocks, co-attention once per block."""
    calls: Counter[str] = Counter()
    t0 = v0 = 0
    layout = zip(config.text_layers_before_cross, config.vision_layers_before_cross, strict=True)
    for t1, v1 in layout:
        calls["text_stream"] += t1 > t0
        calls["vision_stream"] += v1 > v0
        calls["co_attention"] += 1
        t0, v0 = t1, v1
    calls["text_stream"] += config.text_depth > t0
    calls["vision_stream"] += config.vision_depth > v0
    calls["pooler"] = 1
    return {k: v for k, v in calls.items() if v}


def test_published_layouts_call_counts() -> None:
    """ViLBERT-base: text layers 0-5 | block | 6 | block | ... | 10 | block | 11, visual layers
    | block | 0 | block | ... | 4 | block | 5: 7 text runs, 6 visual runs, 6 blocks. LXMERT: one
    run of each stream, then 5 cross-modality layers."""
    assert expected_calls(VILBERT) == {
        "text_stream": 7, "vision_stream": 6, "co_attention": 6, "pooler": 1}
    assert expected_calls(LXMERT) == {
        "text_stream": 1, "vision_stream": 1, "co_attention": 5, "pooler": 1}
    vilbert = build(tiny_widths(VILBERT))
    assert vilbert.schedule[:4] == (
        ("text_stream", 0, 6), ("co_attention", 0, 1), ("text_stream", 6, 7),
        ("vision_stream", 0, 1))
    assert vilbert.schedule[-2:] == (("text_stream", 11, 12), ("vision_stream", 5, 6))


@pytest.mark.parametrize("name", LAYOUTS)
def test_every_declared_stage_fires_as_the_layout_says(name: str) -> None:
    config = LAYOUTS[name]
    fusion = build(config)
    calls = expected_calls(config)
    assert fusion.substages == {
        k: ("interaction" if k in ("co_attention", "pooler") else "single_modality")
        for k in calls
    }
    names = list(fusion.substages)
    with StageHooks(fusion, names, torch.device("cpu")) as hooks, torch.inference_mode():
        fusion(tokens(2, 5, TEXT_DIM), tokens(2, 7, VISION_DIM))
        per_stage = hooks.collect()
    check_fired(per_stage)
    assert {k: c for k, (_, c) in per_stage.items()} == calls


def test_no_text_layers_declares_no_text_stage() -> None:
    fusion = build(LAYOUTS["no-text-layers"])
    assert "text_stream" not in fusion.substages
    assert len(fusion.text_stream.layers) == 0


@pytest.mark.parametrize("name", ["lxmert-tiny", "lxmert-layout"])
def test_shared_cross_attention_fires_twice_per_block(name: str) -> None:
    config = LAYOUTS[name]
    fusion = build(config)
    seen: list[tuple[int, int]] = []  # (block, query length) per call
    for i, block in enumerate(fusion.co_attention.blocks):
        assert block.cross.text is None and block.cross.vision is None
        block.cross.shared.register_forward_hook(
            lambda m, args, out, i=i: seen.append((i, args[0].shape[1])))
    with torch.inference_mode():
        fusion(tokens(2, 5, TEXT_DIM), tokens(2, 7, VISION_DIM))
    blocks = len(config.text_layers_before_cross)
    # each block: text queries over vision (5 tokens), then vision queries over text (7 tokens)
    assert seen == [(i, n) for i in range(blocks) for n in (5, 7)]


# --- masking -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("padded", ["text", "vision"])
def test_padding_changes_nothing_real(name: str, padded: str) -> None:
    fusion = build(TINY[name])
    text, vision = tokens(2, 5, TEXT_DIM, seed=1), tokens(2, 7, VISION_DIM, seed=2)
    pad_text = tokens(2, 5, TEXT_DIM, pad=3 if padded == "text" else 0, seed=3)
    pad_vision = tokens(2, 7, VISION_DIM, pad=4 if padded == "vision" else 0, seed=4)
    # the same real tokens, different padding content after them
    pad_text.embeds[:, :5] = text.embeds
    pad_vision.embeds[:, :7] = vision.embeds
    with torch.inference_mode():
        a = fusion(text, vision)
        b = fusion(pad_text, pad_vision)
    torch.testing.assert_close(b.text[:, :5], a.text, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.vision[:, :7], a.vision, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.pooled, a.pooled, atol=1e-5, rtol=1e-5)


# --- shared weights ------------------------------------------------------------------------------


def test_shared_mode_really_shares() -> None:
    shared = build(LXMERT_TINY)
    unshared = build(replace(LXMERT_TINY, shared_cross_weights=False))
    blocks = len(LXMERT_TINY.text_layers_before_cross)
    one = n_params(AttentionSublayer(LXMERT_TINY.cross_width, LXMERT_TINY.cross_heads, eps=1e-12))
    # one cross-attention sublayer (query, key, value, output dense, LayerNorm) less per block
    assert n_params(unshared) - n_params(shared) == blocks * one
    assert n_params(shared.co_attention.blocks[0].cross) == one

    co = shared.co_attention.blocks[0].cross
    t, v = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
    with torch.inference_mode():
        t0, v0 = co(t, v, None, None)
        co.shared.attention.value.weight.add_(0.5)  # one parameter set...
        t1, v1 = co(t, v, None, None)
    assert not torch.allclose(t0, t1) and not torch.allclose(v0, v1)  # ...moves both directions


def test_shared_needs_one_width() -> None:
    with pytest.raises(ValueError, match="shared cross-attention weights need") as err:
        build(replace(VILBERT_TINY, shared_cross_weights=True))
    assert "\n" not in str(err.value)


# --- layout validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "vision", "message"),
    [
        ((6, 7), (0,), "the text stream places 2 co-attention blocks and the vision stream 1; they "
                             "must agree"),
        ((6, 13), (0, 1), "co-attention block 1 comes after 13 text layers but the text stream "
                          "has 12"),
        ((6, 7), (0, 7), "co-attention block 1 comes after 7 vision layers but the vision stream "
                         "has 6"),
        ((7, 6), (0, 1), "co-attention block 1 comes after 6 text layers, before block 0 (after "
                         "7): positions must not decrease"),
        ((6, 7), (-1, 1), "co-attention block 0 comes after -1 vision layers: negative"),
    ],
)
def test_layout_errors_are_one_line(text: tuple, vision: tuple, message: str) -> None:
    with pytest.raises(ValueError) as err:
        check_layout(text_depth=12, vision_depth=6, text_layers_before_cross=text,
                     vision_layers_before_cross=vision)
    assert str(err.value) == message
    with pytest.raises(ValueError, match=re.escape(message)):
        build(replace(tiny_widths(VILBERT), text_layers_before_cross=text,
                      vision_layers_before_cross=vision))


def test_unknown_pooling() -> None:
    with pytest.raises(ValueError, match="unknown pooling 'mean'; expected one of product, text"):
        build(replace(VILBERT_TINY, pooled="mean"))
