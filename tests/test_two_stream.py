"""Two-stream fusion (ViLBERT, LXMERT): layout, stages, masking, shared cross-attention, and
parity with the references -- transformers' LxmertModel (parameter for parameter, and output for
output on a tiny config) and ViLBERT's BertEncoder loop and bi-attention (re-derived here from
vilbert-multi-task's vilbert.py)."""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import asdict, replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from architectures.fusion.two_stream import TwoStream, TwoStreamConfig, check_layout
from architectures.layers import AttentionSublayer
from feature_extractors import Tokens
from vlbench.timing import StageHooks, check_fired

VILBERT = TwoStreamConfig()  # the defaults are ViLBERT-base
LXMERT = TwoStreamConfig(
    text_width=768, text_depth=9, text_heads=12, text_mlp_dim=3072,
    vision_width=768, vision_depth=5, vision_heads=12, vision_mlp_dim=3072,
    cross_width=768, cross_heads=12,
    text_layers_before_cross=(9,) * 5, vision_layers_before_cross=(5,) * 5,
    shared_cross_weights=True, cross_self_attention=True, pooled="text",
)
# Tiny widths. The ViLBERT-like layout has text layers before the first block, a block before any
# visual layer, and layers left over after the last block in both streams.
VILBERT_TINY = TwoStreamConfig(
    text_width=32, text_depth=4, text_heads=4, text_mlp_dim=64,
    vision_width=48, vision_depth=3, vision_heads=4, vision_mlp_dim=40,
    cross_width=64, cross_heads=4,
    text_layers_before_cross=(2, 3), vision_layers_before_cross=(0, 1), pooled="product",
)
LXMERT_TINY = TwoStreamConfig(
    text_width=32, text_depth=3, text_heads=4, text_mlp_dim=64,
    vision_width=32, vision_depth=2, vision_heads=4, vision_mlp_dim=64,
    cross_width=32, cross_heads=4,
    text_layers_before_cross=(3, 3), vision_layers_before_cross=(2, 2),
    shared_cross_weights=True, cross_self_attention=True, pooled="text",
)
TINY = {"vilbert": VILBERT_TINY, "lxmert": LXMERT_TINY}
TEXT_DIM, VISION_DIM = 24, 40  # the embedders' widths: adapters map them to the streams


def build(config: TwoStreamConfig, *, text_dim: int = TEXT_DIM, vision_dim: int = VISION_DIM,
          seed: int = 0) -> TwoStream:
    torch.manual_seed(seed)
    return TwoStream(text_dim=text_dim, vision_dim=vision_dim, **asdict(config)).eval()


def tokens(batch: int, n: int, dim: int, *, pad: int = 0, seed: int = 1) -> Tokens:
    """``n`` real tokens, then ``pad`` padding tokens of random content."""
    gen = torch.Generator().manual_seed(seed)
    embeds = torch.randn(batch, n + pad, dim, generator=gen)
    mask = torch.zeros(batch, n + pad, dtype=torch.bool)
    mask[:, :n] = True
    return Tokens(embeds, mask)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


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


def tiny_widths(config: TwoStreamConfig) -> TwoStreamConfig:
    """A published layout at tiny widths (fast to run)."""
    shared = config.shared_cross_weights
    return replace(config, text_width=32, text_heads=4, text_mlp_dim=48,
                   vision_width=32 if shared else 40, vision_heads=4, vision_mlp_dim=48,
                   cross_width=32 if shared else 48, cross_heads=4)


LAYOUTS = {
    "vilbert-tiny": VILBERT_TINY,
    "lxmert-tiny": LXMERT_TINY,
    "vilbert-layout": tiny_widths(VILBERT),
    "lxmert-layout": tiny_widths(LXMERT),
    "no-text-layers": replace(tiny_widths(LXMERT), text_depth=0,
                              text_layers_before_cross=(0,) * 5),
}


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


# --- LXMERT parity (transformers' LxmertModel) ---------------------------------------------------

# ours (fusion state dict) -> transformers' LxmertModel; LxmertModel.embeddings is the text
# embedder's and encoder.visn_fc (visual feature and box encoders) the region embedder's.
_SUBLAYER = [  # our attention sublayer -> theirs, given their attention and output prefixes
    (r"attention\.(?P<p>query|key|value)\.", r"{att}.\g<p>."),
    (r"attention\.out\.", r"{out}.dense."),
    (r"norm\.", r"{out}.LayerNorm."),
]
_FFN = [(r"mlp\.fc1\.", r"{inter}.dense."), (r"mlp\.fc2\.", r"{out}.dense."),
        (r"norm\.", r"{out}.LayerNorm.")]


def lxmert_name(ours: str) -> str:
    """Our parameter name -> LxmertModel's (the mapping a weight loader would use)."""
    rules: list[tuple[str, str]] = []

    def sub(prefix: str, table: list[tuple[str, str]], **names: str) -> None:
        rules.extend((prefix + a, b.format(**names)) for a, b in table)

    for stream, theirs in (("text_stream", "encoder.layer"), ("vision_stream", "encoder.r_layers")):
        p = rf"^{stream}\.layers\.(?P<i>\d+)\."
        sub(p + r"attn\.", _SUBLAYER, att=theirs + r".\g<i>.attention.self",
            out=theirs + r".\g<i>.attention.output")
        sub(p + r"ffn\.", _FFN, inter=theirs + r".\g<i>.intermediate",
            out=theirs + r".\g<i>.output")
    x = r"encoder.x_layers.\g<i>"
    p = r"^co_attention\.blocks\.(?P<i>\d+)\."
    sub(p + r"cross\.shared\.", _SUBLAYER, att=x + ".visual_attention.att",
        out=x + ".visual_attention.output")
    sub(p + r"text_self\.", _SUBLAYER, att=x + ".lang_self_att.self",
        out=x + ".lang_self_att.output")
    sub(p + r"vision_self\.", _SUBLAYER, att=x + ".visn_self_att.self",
        out=x + ".visn_self_att.output")
    sub(p + r"text_ffn\.", _FFN, inter=x + ".lang_inter", out=x + ".lang_output")
    sub(p + r"vision_ffn\.", _FFN, inter=x + ".visn_inter", out=x + ".visn_output")
    rules.append((r"^pooler\.text\.", "pooler.dense."))
    for pattern, replacement in rules:
        name, n = re.subn(pattern, replacement, ours)
        if n:
            return name
    raise KeyError(ours)


def lxmert_reference(config_kwargs: dict):
    from transformers import LxmertConfig, LxmertModel

    return LxmertModel(LxmertConfig(**config_kwargs)).eval()


def fusion_part(reference: nn.Module) -> dict[str, torch.Tensor]:
    """LxmertModel's parameters that are fusion's: all but the text and region embedders."""
    return {k: v for k, v in reference.state_dict().items()
            if not k.startswith(("embeddings.", "encoder.visn_fc."))}


def test_lxmert_full_size_parameters_match_transformers() -> None:
    with torch.device("meta"):
        ours = TwoStream(text_dim=768, vision_dim=768, **asdict(LXMERT))
        ref = lxmert_reference({})
    enc = ref.encoder
    assert n_params(ours.text_stream) == n_params(enc.layer) == 63_790_848  # 9 LxmertLayer
    assert n_params(ours.vision_stream) == n_params(enc.r_layers) == 35_439_360  # 5 LxmertLayer
    assert n_params(ours.co_attention) == n_params(enc.x_layers) == 82_698_240  # 5 LxmertXLayer
    assert n_params(ours.pooler) == n_params(ref.pooler) == 590_592
    assert n_params(ours) == 182_519_040
    assert n_params(ours) == n_params(ref) - n_params(ref.embeddings) - n_params(enc.visn_fc)
    # name for name, shape for shape
    theirs = fusion_part(ref)
    mapped = {lxmert_name(k): tuple(v.shape) for k, v in ours.state_dict().items()}
    assert mapped == {k: tuple(v.shape) for k, v in theirs.items()}


LXMERT_TINY_REF = dict(hidden_size=32, num_attention_heads=4, intermediate_size=64, l_layers=3,
                       r_layers=2, x_layers=2, vocab_size=100, max_position_embeddings=64,
                       visual_feat_dim=16, visual_pos_dim=4)


def test_lxmert_outputs_match_transformers() -> None:
    """Weights copied from a random tiny LxmertModel by the name mapping; same outputs, with
    padding in both streams."""
    torch.manual_seed(0)
    ref = lxmert_reference(LXMERT_TINY_REF)
    ours = build(LXMERT_TINY, text_dim=32, vision_dim=32)
    theirs = ref.state_dict()
    ours.load_state_dict({k: theirs[lxmert_name(k)] for k in ours.state_dict()})

    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 100, (2, 6), generator=gen)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    feats = torch.randn(2, 5, 16, generator=gen)
    pos = torch.rand(2, 5, 4, generator=gen)
    vmask = torch.tensor([[1] * 5, [1] * 3 + [0] * 2])
    with torch.inference_mode():
        want = ref(input_ids=ids, visual_feats=feats, visual_pos=pos, attention_mask=mask,
                   visual_attention_mask=vmask)
        text = Tokens(ref.embeddings(ids, torch.zeros_like(ids)), mask.bool())
        vision = Tokens(ref.encoder.visn_fc(feats, pos), vmask.bool())
        got = ours(text, vision)
    torch.testing.assert_close(got.text, want.language_output, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.vision, want.vision_output, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.pooled, want.pooled_output, atol=1e-5, rtol=1e-4)


# --- ViLBERT (vilbert-multi-task's vilbert.py, re-derived) ---------------------------------------


def vilbert_reference_params(*, hidden: int = 768, layers: int = 12, inter: int = 3072,
                             v_hidden: int = 1024, v_layers: int = 6, v_inter: int = 1024,
                             bi_hidden: int = 1024, blocks: int = 6) -> tuple[int, int]:
    """Parameters of ViLBERT's BertEncoder + text and image poolers, from its layer shapes;
    and the part of them that no forward uses (BertBiOutput.q_dense1 / q_dense2)."""
    def lin(a: int, b: int) -> int:
        return a * b + b

    def bert_layer(d: int, m: int) -> int:  # BertLayer / BertImageLayer
        return 4 * lin(d, d) + 2 * d + lin(d, m) + lin(m, d) + 2 * d

    bi_attention = 3 * lin(v_hidden, bi_hidden) + 3 * lin(hidden, bi_hidden)
    bi_output = lin(bi_hidden, v_hidden) + 2 * v_hidden + lin(bi_hidden, hidden) + 2 * hidden
    q_dense = lin(bi_hidden, v_hidden) + lin(bi_hidden, hidden)
    connection = (bi_attention + bi_output + q_dense
                  + lin(v_hidden, v_inter) + lin(v_inter, v_hidden) + 2 * v_hidden
                  + lin(hidden, inter) + lin(inter, hidden) + 2 * hidden)
    poolers = lin(hidden, bi_hidden) + lin(v_hidden, bi_hidden)
    total = layers * bert_layer(hidden, inter) + v_layers * bert_layer(v_hidden, v_inter)
    return total + blocks * connection + poolers, blocks * q_dense


def test_vilbert_base_parameters() -> None:
    with torch.device("meta"):
        ours = TwoStream(text_dim=768, vision_dim=1024, **asdict(VILBERT))
    reference, unused = vilbert_reference_params()
    print(f"\nViLBERT-base fusion: {n_params(ours):,} parameters (reference checkpoint "
          f"{reference:,}, of which q_dense {unused:,} never run); per stage: "
          + ", ".join(f"{k} {n_params(ours.get_submodule(k)):,}" for k in ours.substages))
    assert n_params(ours) == reference - unused == 209_762_304
    assert n_params(ours.text_stream) == 85_054_464
    assert n_params(ours.vision_stream) == 37_810_176
    assert n_params(ours.co_attention) == 85_060_608
    assert n_params(ours.pooler) == 1_837_056


def vilbert_connection(block: nn.Module, v: torch.Tensor, v_mask: torch.Tensor,
                       t: torch.Tensor, t_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """BertConnectionLayer.forward as vilbert.py writes it, on our parameters: query1/key1/
    value1 from the image, query2/key2/value2 from the text; scores1 = query2 . key1 (text over
    image), scores2 = query1 . key2; BertBiOutput: dense1 + LayerNorm1 on context 2 with the image
    residual, dense2 + LayerNorm2 on context 1 with the text residual; then each stream's FFN."""
    text, image = block.cross.text, block.cross.vision  # text: query2, key1, value1, dense2
    heads = text.attention.heads

    def split(x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, heads, d // heads).permute(0, 2, 1, 3)

    def attend(q, k, val, mask):
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        scores = scores + (1.0 - mask[:, None, None, :].float()) * -10000.0
        ctx = scores.softmax(-1) @ val
        return ctx.permute(0, 2, 1, 3).flatten(2)

    query1, key1, value1 = image.attention.query(v), text.attention.key(v), text.attention.value(v)
    query2, key2, value2 = text.attention.query(t), image.attention.key(t), image.attention.value(t)
    context1 = attend(split(query2), split(key1), split(value1), v_mask)  # (B, Nt, bi)
    context2 = attend(split(query1), split(key2), split(value2), t_mask)  # (B, Nv, bi)
    attention1 = image.norm(image.attention.out(context2) + v)  # dense1, LayerNorm1
    attention2 = text.norm(text.attention.out(context1) + t)  # dense2, LayerNorm2
    return block.vision_ffn(attention1), block.text_ffn(attention2)


def vilbert_encoder(fusion: TwoStream, config: TwoStreamConfig, t: torch.Tensor,
                    t_mask: torch.Tensor, v: torch.Tensor, v_mask: torch.Tensor):
    """BertEncoder.forward's loop (t_biattention_id, v_biattention_id as our layout)."""
    layer, v_layer = fusion.text_stream.layers, fusion.vision_stream.layers
    tm, vm = t_mask[:, None, None, :], v_mask[:, None, None, :]
    v_start = t_start = 0
    for count, (v_end, t_end) in enumerate(
            zip(config.vision_layers_before_cross, config.text_layers_before_cross, strict=True)):
        for idx in range(t_start, t_end):
            t = layer[idx](t, tm)
        for idx in range(v_start, v_end):
            v = v_layer[idx](v, vm)
        v, t = vilbert_connection(fusion.co_attention.blocks[count], v, v_mask, t, t_mask)
        v_start, t_start = v_end, t_end
    for idx in range(v_start, len(v_layer)):
        v = v_layer[idx](v, vm)
    for idx in range(t_start, len(layer)):
        t = layer[idx](t, tm)
    return t, v


@pytest.mark.parametrize("name", ["vilbert-tiny", "vilbert-layout"])
def test_vilbert_matches_its_encoder_loop_and_bi_attention(name: str) -> None:
    config = LAYOUTS[name]
    fusion = build(config, text_dim=config.text_width, vision_dim=config.vision_width)
    text = tokens(2, 5, config.text_width, pad=2, seed=5)
    vision = tokens(2, 7, config.vision_width, pad=1, seed=6)
    with torch.inference_mode():
        got = fusion(text, vision)
        t, v = vilbert_encoder(fusion, config, text.embeds, text.mask, vision.embeds, vision.mask)
    torch.testing.assert_close(got.text[:, :5], t[:, :5], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.vision[:, :7], v[:, :7], atol=1e-5, rtol=1e-4)
