"""Two-stream fusion against its references: transformers' LxmertModel (parameter for parameter,
and output for output on a tiny config) and ViLBERT's BertEncoder loop and bi-attention
(re-derived here from vilbert-multi-task's vilbert.py)."""

from __future__ import annotations

import math
import re
from dataclasses import asdict

import pytest
import torch
from torch import nn
from two_stream_configs import (
    LAYOUTS,
    LXMERT,
    LXMERT_TINY,
    VILBERT,
    build,
    n_params,
    tokens,
)

from architectures.fusion.two_stream import TwoStream, TwoStreamConfig
from feature_extractors import Tokens

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
