"""The align-fuse fusion (ALBEF, BLIP): both layouts, the ITM forward and the ITC method, their
stages and call counts, shared layers counted once, and the published sizes against the
arithmetic of the official constructors (salesforce/ALBEF ``model_retrieval.py``, ``vit.py``,
``xbert.py``; salesforce/BLIP ``blip_retrieval.py``, ``med.py``). BLIP is also checked against
transformers in tests/test_parity_blip.py."""

from __future__ import annotations

from dataclasses import asdict, replace

import pytest
import torch

from architectures import PRESETS, VLModel, build_model
from architectures.fusion import AlignFuse, AlignFuseConfig
from architectures.presets_itc import ALBEF, BLIP
from feature_extractors import StageKind, Tokens, declared_stages
from vlbench.flops import count_flops, count_params
from vlbench.timing import StageHooks, check_fired

TINY = ("albef-base-tiny", "blip-base-tiny")
SINGLE, JOINT, HEAD = StageKind.SINGLE_MODALITY, StageKind.INTERACTION, StageKind.HEAD
TEXT_DIM, VISION_DIM = 24, 40  # embedder widths: the adapters map them


def tiny(name: str, seed: int = 0) -> VLModel:
    torch.manual_seed(seed)
    return build_model(name).eval()


def inputs(model: VLModel, name: str, batch: int = 2, seed: int = 0) -> tuple:
    p = PRESETS.get(name)
    return model.example_inputs(batch, p.image_size, p.text_len, seed=seed)


def narrow(config: AlignFuseConfig) -> AlignFuseConfig:
    """A published layout at test widths."""
    return replace(config, vision_width=32, vision_depth=2, vision_heads=2, vision_mlp_dim=48,
                   text_width=32, text_heads=2, text_mlp_dim=48, embed_dim=16)


def fusion_of(config: AlignFuseConfig) -> AlignFuse:
    torch.manual_seed(0)
    return AlignFuse(text_dim=TEXT_DIM, vision_dim=VISION_DIM, **asdict(config)).eval()


def tokens(n: int, dim: int, batch: int = 2) -> Tokens:
    gen = torch.Generator().manual_seed(n)
    return Tokens(torch.randn(batch, n, dim, generator=gen), torch.ones(batch, n, dtype=torch.bool))


@pytest.mark.parametrize(("change", "message"), [
    ({"layout": "interleaved"}, "unknown layout 'interleaved'; valid: disjoint, shared"),
    ({"layout": "shared", "fusion_depth": 7}, "7 cross-attending layers must be among its 6"),
    ({"fusion_depth": 0}, "need text_depth >= 0 and fusion_depth >= 1"),
])
def test_bad_configs_are_one_line_errors(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AlignFuseConfig(**change)


@pytest.mark.parametrize("name", TINY)
def test_itm_forward_and_itc_method(name: str) -> None:
    model = tiny(name)
    images, ids, mask = inputs(model, name, batch=3)
    fusion: AlignFuse = model.fusion
    with torch.inference_mode():
        out = model(images, ids, mask)
        text, vision = model.text(ids, mask), model.visual(images)
        itc = fusion.itc(text, vision)
        img, txt = fusion.encode_image(vision), fusion.encode_text(text)
        head = fusion.itm_head(out.pooled)
    d = fusion.out_dim
    assert out.match.shape == (3, 2) and out.pooled.shape == (3, d)
    torch.testing.assert_close(out.match, head)
    assert itc.logits.shape == (3, 3) and itc.match is None
    torch.testing.assert_close(itc.logits, img @ txt.t())  # cosine similarity, no temperature
    torch.testing.assert_close(itc.pooled.sum(-1), torch.diagonal(itc.logits))


@pytest.mark.parametrize("name", TINY)
def test_text_padding_is_ignored_on_both_paths(name: str) -> None:
    model = tiny(name)
    images, ids, mask = inputs(model, name)
    mask[:, -3:] = 0
    other = ids.clone()
    other[:, -3:] = (ids[:, -3:] + 7) % model.text.vocab_size
    with torch.inference_mode():
        a, b = model(images, ids, mask), model(images, other, mask)
        ta, tb = model.fusion.encode_text(model.text(ids, mask)), model.fusion.encode_text(
            model.text(other, mask))
    torch.testing.assert_close(a.match, b.match)
    torch.testing.assert_close(ta, tb)


# --- stages ---------------------------------------------------------------------------------


def calls_of(fusion: AlignFuse, declared: dict, run) -> dict[str, int]:
    stages = declared_stages(fusion, declared)
    with StageHooks(fusion, stages, torch.device("cpu")) as hooks, torch.inference_mode():
        run()
        per_stage = hooks.collect()
    check_fired(per_stage)
    return {k: c for k, (_, c) in per_stage.items()}


LAYOUTS = {"albef": narrow(ALBEF), "blip": narrow(BLIP),
           "blip-top-4": narrow(replace(BLIP, fusion_depth=4))}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_path_declares_its_own_stages(layout: str) -> None:
    """ITM (the forward) and ITC (``itc``): the text layers each path runs without
    cross-attention are its single-modality ``text_encoder``; the cross-attending layers the ITM
    path runs are ``fusion_layers``. BLIP's layers serve both paths: in ITC its set names their
    self-attention and FFN (two calls per layer)."""
    config = LAYOUTS[layout]
    fusion = fusion_of(config)
    shared = config.layout == "shared"
    alone = config.text_depth - config.fusion_depth if shared else config.text_depth
    kinds = {n: sub if isinstance(sub, StageKind) else sub.kind
             for n, sub in fusion.substages.items()}
    assert kinds == {"vision_tower": SINGLE, **({"text_encoder": SINGLE} if alone else {}),
                     "fusion_layers": JOINT, "itm_head": HEAD}
    assert {n: s.kind for n, s in ((s.name, s) for s in
                                   declared_stages(fusion, fusion.itc_substages))} == {
        "vision_tower": SINGLE, "text_encoder": SINGLE, "itc_head": JOINT}
    text, vision = tokens(5, TEXT_DIM), tokens(7, VISION_DIM)
    itm = calls_of(fusion, fusion.substages, lambda: fusion(text, vision))
    assert itm == {"vision_tower": 1, **({"text_encoder": alone} if alone else {}),
                   "fusion_layers": config.fusion_depth, "itm_head": 1}
    itc = calls_of(fusion, fusion.itc_substages, lambda: fusion.itc(text, vision))
    split = config.fusion_depth if shared else 0  # layers with a cross-attention: 2 calls
    assert itc == {"vision_tower": 1, "text_encoder": config.text_depth + split, "itc_head": 1}


def test_albef_itm_reads_the_itc_text_encoding() -> None:
    """ALBEF's fusion layers take the text encoder's output (``encoder_embeds=text_embeds``);
    BLIP's ITM path starts again from the embeddings."""
    for config, from_itc in ((narrow(ALBEF), True), (narrow(BLIP), False)):
        fusion = fusion_of(config)
        text, vision = tokens(5, TEXT_DIM), tokens(7, VISION_DIM)
        first = (fusion.cross_layers if from_itc else fusion.text_layers)[0]
        seen: list[torch.Tensor] = []
        handle = first.register_forward_pre_hook(lambda _, args, seen=seen: seen.append(args[0]))
        with torch.inference_mode():
            fusion(text, vision)
            itc_text = fusion.itc(text, vision).text
            expected = itc_text if from_itc else fusion.text_in(text.embeds)
        handle.remove()
        torch.testing.assert_close(seen[0], expected)


def test_blip_shared_layers_count_once() -> None:
    """BLIP's ITM and ITC stages share the text layers' self-attention and FFN: each stage counts
    what it runs, the model counts every parameter once."""
    model = tiny("blip-base-tiny")
    fusion: AlignFuse = model.fusion
    itm = declared_stages(fusion, fusion.substages)
    itc = declared_stages(fusion, fusion.itc_substages)
    total, per = count_params(fusion, itm + itc)
    cross = sum(p.numel() for layer in fusion.text_layers for p in layer.cross.parameters())
    assert per["text_encoder"] == per["fusion_layers"] - cross
    assert len(fusion.cross_layers) == 0
    assert total == per["vision_tower"] + per["fusion_layers"] + per["itc_head"] + per["itm_head"]
    assert sum(p.numel() for p in model.parameters()) == (
        total + sum(p.numel() for p in model.visual.parameters())
        + sum(p.numel() for p in model.text.parameters()))


# --- published sizes ------------------------------------------------------------------------


def official_params(*, cross_layers: int, vocab: int, token_types: int, image: int = 384,
                    d: int = 768, mlp: int = 3072, depth: int = 12, embed: int = 256,
                    patch: int = 16) -> dict[str, int]:
    """The official retrieval model's inference modules, from their shapes: ``VisionTransformer``
    (``patch_embed`` with bias, ``cls_token``, ``pos_embed``, 12 ``Block``s with a biased
    ``qkv``, ``norm``), ``BertModel(add_pooling_layer=False)`` (word, position and -- ALBEF only
    -- token-type embeddings, LayerNorm; 12 ``BertLayer``s, ``cross_layers`` of them with a
    ``crossattention`` from ``encoder_width`` 768), ``vision_proj``, ``text_proj``, ``temp`` and
    ``itm_head``. The momentum encoders and queues are training state, not counted."""
    def lin(a: int, b: int) -> int:
        return a * b + b

    grid = image // patch
    ffn, norm = lin(d, mlp) + lin(mlp, d), 2 * d
    vit_block = norm + lin(d, 3 * d) + lin(d, d) + norm + ffn
    attention = 4 * lin(d, d) + norm  # BertAttention: query, key, value, output dense, LN
    bert_layer = attention + ffn + norm
    return {
        "visual_encoder": lin(3 * patch * patch, d) + d + (1 + grid * grid) * d
        + depth * vit_block + norm,
        "text_encoder": (vocab + 512 + token_types) * d + norm + depth * bert_layer
        + cross_layers * attention,
        "projections": 2 * lin(d, embed), "temp": 1, "itm_head": lin(d, 2),
    }


OFFICIAL = {"albef-base": {"cross_layers": 6, "vocab": 30522, "token_types": 2},
            "blip-base": {"cross_layers": 12, "vocab": 30524, "token_types": 0}}


@pytest.mark.parametrize("name", OFFICIAL)
def test_full_size_matches_the_official_constructors(name: str) -> None:
    """Ours is the official arithmetic but for ``temp`` (1 parameter, training loss only)."""
    official = official_params(**OFFICIAL[name])
    with torch.device("meta"):
        model = build_model(name)
    fusion: AlignFuse = model.fusion
    n = sum(p.numel() for p in model.parameters())
    visual = sum(p.numel() for p in model.visual.parameters())
    assert visual + sum(p.numel() for p in fusion.vision_tower.parameters()) == (
        official["visual_encoder"])
    text_layers = sum(p.numel() for m in (model.text, fusion.text_layers, fusion.cross_layers)
                      for p in m.parameters())
    assert text_layers == official["text_encoder"]
    assert n == sum(official.values()) - official["temp"]
    print(f"\n{name}: {n / 1e6:.2f} M (official arithmetic {sum(official.values()) / 1e6:.2f} M "
          "with temp; REFERENCE.md: ALBEF about 210 M, ours; BLIP 223.74 M)")


def expected_flops(name: str, itm: bool) -> int:
    """Closed form, 2 FLOPs per multiply-add: patch projection; ViT layers (8 N D^2 + 4 N^2 D +
    4 N D M); BERT layers on the text; cross-attention (query and output on the text, key and
    value on the image tokens, QK^T and AV); the ITM head, or the ITC projections and the 1 x 1
    similarity."""
    p = PRESETS.get(name)
    f, grid, n_t = p.fusion, p.image_size[0] // 16, p.text_len
    n_v, d, dv = 1 + grid * grid, f.text_width, f.vision_width
    patches = 2 * grid * grid * 3 * 16 * 16 * dv
    vision = f.vision_depth * (8 * n_v * dv * dv + 4 * n_v * n_v * dv
                               + 4 * n_v * dv * f.vision_mlp_dim)
    layer = 8 * n_t * d * d + 4 * n_t * n_t * d + 4 * n_t * d * f.text_mlp_dim
    cross = 4 * n_t * d * d + 4 * n_v * dv * d + 4 * n_t * n_v * d
    if not itm:
        return patches + vision + f.text_depth * layer + 2 * (dv + d) * f.embed_dim \
            + 2 * f.embed_dim
    layers = f.text_depth if f.layout == "shared" else f.text_depth + f.fusion_depth
    return patches + vision + layers * layer + f.fusion_depth * cross + 2 * d * 2


@pytest.mark.parametrize("name", OFFICIAL)
def test_full_size_flops_on_meta(name: str) -> None:
    p = PRESETS.get(name)
    with torch.device("meta"):
        model = build_model(name).eval()
    images, ids, mask = model.example_inputs(1, p.image_size, p.text_len, device="meta")
    stages = model.stages()
    with torch.no_grad():
        itm, per_stage = count_flops(model, lambda: model(images, ids, mask), stages)
        itc, _ = count_flops(model, lambda: model.fusion.itc(model.text(ids, mask),
                                                            model.visual(images)), [])
    assert itm == expected_flops(name, itm=True)
    assert itc == expected_flops(name, itm=False)
    tops = [s.name for s in stages if s.parent == "fusion"]
    print(f"\n{name}: ITM {itm / 1e9:.2f} GFLOPs ("
          + ", ".join(f"{s.removeprefix('fusion.')} {per_stage[s] / 1e9:.2f}" for s in tops)
          + f"), ITC {itc / 1e9:.2f}")


def test_tiny_twins_keep_the_published_layouts() -> None:
    """Same layout, same share of cross-attending layers (ALBEF 6 of 6 + 6, BLIP 12 of 12)."""
    for name, config in (("albef-base", ALBEF), ("blip-base", BLIP)):
        twin: AlignFuseConfig = PRESETS.get(f"{name}-tiny").fusion
        assert twin.layout == config.layout
        assert twin.fusion_depth * config.text_depth == config.fusion_depth * twin.text_depth


@pytest.mark.parametrize("name", TINY)
def test_tiny_flops_the_way_the_harness_counts_them(name: str) -> None:
    """Under inference mode on CPU with every stage attributed, as ``vlbench profile`` counts."""
    model = tiny(name)
    images, ids, mask = inputs(model, name, batch=1)
    with torch.inference_mode():
        total, _ = count_flops(model, lambda: model(images, ids, mask), model.stages())
    assert total == expected_flops(name, itm=True)
