"""The modality-experts fusion (VLMo): one set of weights run two ways, its stages and call counts,
its relative position bias and forward against the official code's (microsoft/unilm ``vlmo/``,
transcribed below from ``multiway_transformer.py`` and ``vlmo_module.py``), and its published
sizes against the arithmetic of the official constructors (VLMo has no installable
implementation)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from architectures import PRESETS, VLModel, build_model
from architectures.fusion import ModalityExperts, ModalityExpertsConfig
from architectures.fusion.modality_experts import MultiwayLayer
from feature_extractors import StageKind, Tokens
from vlbench.flops import count_flops, count_params
from vlbench.timing import StageHooks, check_fired

TINY = {"fusion": "vlmo-base-tiny", "dual": "vlmo-base-dual-tiny"}
SINGLE, JOINT = StageKind.SINGLE_MODALITY, StageKind.INTERACTION


def tiny(name: str, seed: int = 0) -> VLModel:
    torch.manual_seed(seed)
    model = build_model(name).eval()
    with torch.no_grad():  # the official table starts at zero: give the bias something to do
        model.fusion.position_bias.table.normal_()
    return model


def inputs(model: VLModel, name: str, batch: int = 2, seed: int = 0) -> tuple:
    p = PRESETS.get(name)
    return model.example_inputs(batch, p.image_size, p.text_len, seed=seed)


# --- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "message"), [
    ({"way": "sparse"}, "unknown way 'sparse'; valid: fusion, dual"),
    ({"vl_start": 13}, "vl_start 13 is outside the 12 layers"),
])
def test_bad_configs_are_one_line_errors(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModalityExpertsConfig(**change)


def test_relative_bias_refuses_a_larger_grid() -> None:
    model = tiny(TINY["fusion"])
    text = Tokens(torch.zeros(1, 3, 64), torch.ones(1, 3, dtype=torch.bool))
    vision = Tokens(torch.zeros(1, 26, 64), torch.ones(1, 26, dtype=torch.bool), grid=(5, 5))
    with pytest.raises(ValueError, match="built for at most a 4x4 patch grid; got 26 image"):
        model.fusion(text, vision)


# --- the two ways ---------------------------------------------------------------------------


def test_shapes_both_ways() -> None:
    for way, name in TINY.items():
        model = tiny(name)
        images, ids, mask = inputs(model, name)
        with torch.inference_mode():
            out = model(images, ids, mask)
        n_v = model.num_tokens(PRESETS.get(name).image_size, 0)["image"]
        assert out.pooled.shape == (2, 64)
        if way == "fusion":
            assert out.text.shape == (2, ids.shape[1], 64) and out.vision.shape == (2, n_v, 64)
            assert out.logits is None
        else:
            assert out.logits.shape == (2, 2) and out.text is None and out.vision is None


def test_one_set_of_weights_two_ways() -> None:
    """Both ways build the same parameters; loaded with the fusion model's weights, the dual way's
    logits are the scaled cosine similarities of the fusion model's own encode_image/encode_text."""
    fusion, dual = tiny(TINY["fusion"]), tiny(TINY["dual"], seed=1)
    shapes = {n: t.shape for n, t in fusion.state_dict().items()}
    assert shapes == {n: t.shape for n, t in dual.state_dict().items()}
    dual.load_state_dict(fusion.state_dict())
    images, ids, mask = inputs(fusion, TINY["fusion"])
    with torch.inference_mode():
        logits = dual(images, ids, mask).logits
        img = fusion.fusion.encode_image(fusion.visual(images))
        txt = fusion.fusion.encode_text(fusion.text(ids, mask))
        scale = fusion.fusion.interaction.logit_scale.exp()
        torch.testing.assert_close(logits, scale * img @ txt.t())


def test_fusion_way_mixes_modalities_and_ignores_text_padding() -> None:
    name = TINY["fusion"]
    model = tiny(name)
    images, ids, mask = inputs(model, name)
    mask[:, -3:] = 0
    other_pad, other_image = ids.clone(), inputs(model, name, seed=5)[0]
    other_pad[:, -3:] = (ids[:, -3:] + 7) % model.text.vocab_size
    with torch.inference_mode():
        base = model(images, ids, mask)
        same = model(images, other_pad, mask)
        seen = model(other_image, ids, mask)
    torch.testing.assert_close(same.pooled, base.pooled)
    assert not torch.allclose(seen.text, base.text, atol=1e-4)  # text tokens attend to the image


# --- stages ---------------------------------------------------------------------------------


def fired(model: VLModel, name: str) -> dict[str, int]:
    stages = model.stages()
    with StageHooks(model, stages, torch.device("cpu")) as hooks, torch.inference_mode():
        model(*inputs(model, name))
        per_stage = hooks.collect()
    check_fired(per_stage)
    return {k: calls for k, (_, calls) in per_stage.items()}


def test_fusion_way_stages_and_calls() -> None:
    model = tiny(TINY["fusion"])
    f = PRESETS.get(TINY["fusion"]).fusion
    experts, top = f.vl_start, f.depth - f.vl_start
    stages = {s.name: (s.kind, s.parent) for s in model.stages() if s.name.startswith("fusion.")}
    assert stages == {
        "fusion.position_bias": (JOINT, "fusion"),
        "fusion.attention": (JOINT, "fusion"),
        "fusion.v_ffn": (SINGLE, "fusion"),
        "fusion.l_ffn": (SINGLE, "fusion"),
        "fusion.fusion_layers": (JOINT, "fusion"),
        "fusion.fusion_layers.attention": (JOINT, "fusion.fusion_layers"),
        "fusion.fusion_layers.vl_ffn": (JOINT, "fusion.fusion_layers"),
    }
    calls = fired(model, TINY["fusion"])
    assert {k: v for k, v in calls.items() if k.startswith("fusion.")} == {
        "fusion.position_bias": 1, "fusion.attention": experts, "fusion.v_ffn": experts,
        "fusion.l_ffn": experts, "fusion.fusion_layers": 1,
        "fusion.fusion_layers.attention": top, "fusion.fusion_layers.vl_ffn": top}


def test_dual_way_stages_and_calls() -> None:
    """Each modality runs the whole stack alone: the shared attention twice per layer (one stage:
    the same modules serve both passes), each modality's expert once per layer, no VL-FFN."""
    model = tiny(TINY["dual"])
    depth = PRESETS.get(TINY["dual"]).fusion.depth
    stages = {s.name: (s.kind, s.parent) for s in model.stages() if s.name.startswith("fusion.")}
    assert stages == {"fusion.position_bias": (SINGLE, "fusion"),
                      "fusion.attention": (SINGLE, "fusion"), "fusion.v_ffn": (SINGLE, "fusion"),
                      "fusion.l_ffn": (SINGLE, "fusion"), "fusion.interaction": (JOINT, "fusion")}
    calls = fired(model, TINY["dual"])
    assert {k: v for k, v in calls.items() if k.startswith("fusion.")} == {
        "fusion.position_bias": 2, "fusion.attention": 2 * depth, "fusion.v_ffn": depth,
        "fusion.l_ffn": depth, "fusion.interaction": 1}


def test_shared_modules_count_once() -> None:
    """A stage whose modules run twice (dual attention) counts their parameters once; the
    fusion's direct stages and the parts no stage names partition its parameters."""
    model = tiny(TINY["dual"])
    fusion: ModalityExperts = model.fusion
    stages = model.stages()
    total, per_stage = count_params(model, stages)
    layers = fusion.stack()
    one = sum(p.numel() for p in layers[0].attention.parameters())
    assert per_stage["fusion.attention"] == len(layers) * one
    assert total == sum(p.numel() for p in model.parameters())
    unstaged = ["modality", "norm", "pooler"]
    vl = sum(p.numel() for layer in layers if layer.vl_ffn is not None
             for p in layer.vl_ffn.parameters())
    gammas = sum(layer.gamma.numel() for layer in layers)
    children = [s.name for s in stages if s.parent == "fusion"]
    assert per_stage["fusion"] == (sum(per_stage[c] for c in children) + vl + gammas
                                   + sum(count_params(fusion, unstaged)[1].values()))


# --- against the official code -----------------------------------------------------------


def official_indices(window: int, max_text_len: int, text_positions: int
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``VLMo.build_relative_position_embed``, transcribed: (image, text, text+image) index."""
    num_rel = (2 * window - 1) ** 2 + 3
    all_rel = num_rel + 2 * text_positions + 2
    coords = torch.stack(torch.meshgrid([torch.arange(window), torch.arange(window)],
                                        indexing="ij"))
    flat = torch.flatten(coords, 1)
    rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += window - 1
    rel[:, :, 1] += window - 1
    rel[:, :, 0] *= 2 * window - 1
    image = torch.zeros(size=(window * window + 1,) * 2, dtype=rel.dtype)
    image[1:, 1:] = rel.sum(-1)
    image[0, 0:], image[0:, 0], image[0, 0] = num_rel - 3, num_rel - 2, num_rel - 1
    ids = torch.arange(max_text_len - 1)
    text_rel = ids.unsqueeze(-2) - ids.unsqueeze(-1) - int(2 - text_positions) + num_rel + 2
    text = torch.zeros(size=(max_text_len,) * 2, dtype=rel.dtype)
    text[1:, 1:] = text_rel
    text[0, 0:], text[0:, 0], text[0, 0] = all_rel - 3, all_rel - 2, all_rel - 1
    n_img = window * window + 1
    t2i = torch.ones(max_text_len, n_img, dtype=rel.dtype) * num_rel
    i2t = torch.ones(n_img, max_text_len, dtype=rel.dtype) * (num_rel + 1)
    joint = torch.cat((torch.cat((text, t2i), 1), torch.cat((i2t, image), 1)), 0)
    return image, text, joint


def test_position_bias_index_is_the_official_one() -> None:
    model = tiny(TINY["fusion"])
    f, bias = PRESETS.get(TINY["fusion"]).fusion, model.fusion.position_bias
    n_t, n_v = 8, 1 + f.image_grid[0] * f.image_grid[1]
    image, text, joint = official_indices(f.image_grid[0], n_t, f.text_positions)
    assert torch.equal(bias.index(0, n_v), image)
    assert torch.equal(bias.index(n_t, 0), text)
    assert torch.equal(bias.index(n_t, n_v), joint)
    # a smaller (padded) image: patches at the same offset share an index, others do not
    small = bias.index(0, 7, (2, 3))[1:, 1:]
    pos = [(i, j) for i in range(2) for j in range(3)]
    for a, (ia, ja) in enumerate(pos):
        for b, (ib, jb) in enumerate(pos):
            same = [(c, d) for c, (ic, jc) in enumerate(pos) for d, (id_, jd) in enumerate(pos)
                    if (ic - id_, jc - jd) == (ia - ib, ja - jb)]
            assert all(small[c, d] == small[a, b] for c, d in same)
    assert len(set(small.flatten().tolist())) == 3 * 5  # (2*2-1) * (2*3-1) offsets


def official_attention(layer: MultiwayLayer, x: torch.Tensor, mask: torch.Tensor,
                       bias: torch.Tensor) -> torch.Tensor:
    """``Attention.forward`` (qkv without bias, then cat(q_bias, 0, v_bias)) on our weights."""
    attn = layer.attention.attn
    b, n, c = x.shape
    weight = torch.cat([attn.query.weight, attn.key.weight, attn.value.weight])
    qkv_bias = torch.cat((attn.query.bias, torch.zeros_like(attn.value.bias), attn.value.bias))
    qkv = F.linear(x, weight, qkv_bias).reshape(b, n, 3, attn.heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * (c // attn.heads) ** -0.5, qkv[1], qkv[2]
    scores = q @ k.transpose(-2, -1) + bias.unsqueeze(0)
    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf")).softmax(dim=-1)
    return attn.out((scores @ v).transpose(1, 2).reshape(b, n, c))


def official_block(layer: MultiwayLayer, x: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor,
                   modality: str, n_text: int) -> torch.Tensor:
    """``Block.forward`` with ``modality_type`` "image", "text" or "vl"."""
    x = x + layer.attention.gamma * official_attention(layer, layer.attention.norm(x), mask, bias)

    def ffn(expert: nn.Module, y: torch.Tensor) -> torch.Tensor:
        return y + layer.gamma * expert.mlp(expert.norm(y))

    if modality == "image":
        return ffn(layer.v_ffn, x)
    if modality == "text":
        return ffn(layer.l_ffn, x)
    if layer.vl_ffn is None:
        return torch.cat([ffn(layer.l_ffn, x[:, :n_text]), ffn(layer.v_ffn, x[:, n_text:])], 1)
    return ffn(layer.vl_ffn, x)


def official_run(fusion: ModalityExperts, x: torch.Tensor, mask: torch.Tensor,
                 index: torch.Tensor, modality: str, n_text: int) -> torch.Tensor:
    """``get_rel_pos_bias`` and the block loop of ``infer`` / ``infer_*_ft``, then the norm."""
    table = fusion.position_bias.table
    biases = torch.chunk(F.embedding(index, table).permute(2, 0, 1).contiguous(),
                         len(fusion.stack()), dim=0)
    for layer, bias in zip(fusion.stack(), biases, strict=True):
        x = official_block(layer, x, mask, bias, modality, n_text)
    return fusion.norm(x)


def test_both_ways_compute_the_official_forward() -> None:
    """``infer`` (fusion way: pooled, text and image features) and ``infer_image_ft`` /
    ``infer_text_ft`` (dual way: the [CLS] before the ITC projections) on our weights."""
    name = TINY["fusion"]
    model = tiny(name)
    f, fusion = PRESETS.get(name).fusion, model.fusion
    images, ids, mask = inputs(model, name)
    mask[1, -2:] = 0
    with torch.inference_mode():
        text, vision = model.text(ids, mask), model.visual(images)
        ours = fusion(text, vision)
        t = text.embeds + fusion.modality.weight[0]
        v = vision.embeds + fusion.modality.weight[1]
        n_t = t.shape[1]
        image_idx, text_idx, joint_idx = official_indices(f.image_grid[0], n_t, f.text_positions)
        both = torch.cat([text.mask, vision.mask], 1)
        x = official_run(fusion, torch.cat([t, v], 1), both, joint_idx, "vl", n_t)
        torch.testing.assert_close(ours.pooled, torch.tanh(fusion.pooler(x[:, 0])))
        torch.testing.assert_close(ours.text, x[:, :n_t])
        torch.testing.assert_close(ours.vision, x[:, n_t:])
        img = official_run(fusion, v, vision.mask, image_idx, "image", 0)[:, 0]
        txt = official_run(fusion, t, text.mask, text_idx, "text", n_t)[:, 0]
        torch.testing.assert_close(fusion.image_features(vision), img)
        torch.testing.assert_close(fusion.text_features(text), txt)


# --- published sizes ------------------------------------------------------------------------


def official_params(*, width: int, depth: int, heads: int, mlp: int, vl_start: int, image: int,
                    patch: int = 16, vocab: int = 30522, max_text_len: int = 40,
                    text_positions: int = 196) -> dict[str, int]:
    """Parameters of the official modules, from their shapes: ``MultiWayTransformer``
    (``PatchEmbed`` with bias, ``cls_token``, no ``pos_embed``; per ``Block``: ``norm1``, ``qkv``
    without bias plus ``q_bias`` and ``v_bias``, ``proj``, ``gamma_1``/``gamma_2``,
    ``norm2_text``/``norm2_imag``/``mlp_text``/``mlp_imag``, and ``norm2_vl``/``mlp_vl`` from
    ``vlffn_start_layer_index``; ``norm``), and ``VLMo``'s ``relative_position_bias_table``,
    ``text_embeddings`` (``BertEmbeddings``: word, position, token type, LayerNorm),
    ``token_type_embeddings``, ``pooler``, and the retrieval heads ``itc_text_proj``,
    ``itc_image_proj`` (no bias) and ``logit_scale``."""
    d = width

    def lin(a: int, b: int, bias: bool = True) -> int:
        return a * b + (b if bias else 0)

    ffn, norm = lin(d, mlp) + lin(mlp, d), 2 * d
    block = norm + lin(d, 3 * d, False) + 2 * d + lin(d, d) + 2 * d + 2 * (norm + ffn)
    w = image // patch
    return {
        "patch_embed": lin(3 * patch * patch, d), "cls_token": d,
        "blocks": depth * block + (depth - vl_start) * (norm + ffn), "norm": norm,
        "relative_position_bias_table": ((2 * w - 1) ** 2 + 3 + 2 * text_positions + 2)
        * heads * depth,
        "text_embeddings": (vocab + max_text_len + 2) * d + norm, "token_type_embeddings": 2 * d,
        "pooler": lin(d, d), "itc_projections": 2 * lin(d, d, False), "logit_scale": 1,
    }


SIZES = {"vlmo-base": {"width": 768, "depth": 12, "heads": 12, "mlp": 3072, "vl_start": 10},
         "vlmo-large": {"width": 1024, "depth": 24, "heads": 16, "mlp": 4096, "vl_start": 21}}
README_M = {"vlmo-base": 175, "vlmo-large": 562}  # microsoft/unilm vlmo/README.md "#parameters"


def expected_flops(name: str) -> int:
    """Closed form, 2 FLOPs per multiply-add: patch projection; per layer q, k, v, out (8 N D^2),
    QK^T and AV (4 N^2 D), one FFN per token (4 N D M); the pooler (fusion way) or the two ITC
    projections and the 1 x 1 similarity (dual way)."""
    p = PRESETS.get(name)
    f, grid = p.fusion, p.image_size[0] // 16
    d, m = f.width, f.mlp_dim
    patches = 2 * grid * grid * 3 * 16 * 16 * d

    def stack(n: int) -> int:
        return f.depth * (8 * n * d * d + 4 * n * n * d + 4 * n * d * m)

    n_v, n_t = 1 + grid * grid, p.text_len
    if f.way == "fusion":
        return patches + stack(n_t + n_v) + 2 * d * d
    return patches + stack(n_v) + stack(n_t) + 2 * 2 * d * d + 2 * d


@pytest.mark.parametrize("name", ["vlmo-base", "vlmo-large"])
def test_full_size_matches_the_official_constructors(name: str) -> None:
    """Ours at 384x384 is the official modules' arithmetic, part by part, both ways. At the 224
    pretraining size and without task heads the same arithmetic rounds to the README's figure
    (175.43 M -> 175 M, 561.54 M -> 562 M: the README counts the backbone, text embeddings and
    relative position table)."""
    official = official_params(**SIZES[name], image=384)
    for preset in (name, f"{name}-dual"):
        with torch.device("meta"):
            model = build_model(preset)
        n = sum(p.numel() for p in model.parameters())
        assert sum(p.numel() for p in model.visual.parameters()) == (
            official["patch_embed"] + official["cls_token"])
        assert sum(p.numel() for p in model.text.parameters()) == official["text_embeddings"]
        assert n == sum(official.values()), (preset, n, sum(official.values()))
    at224 = official_params(**SIZES[name], image=224)
    heads = at224["pooler"] + at224["itc_projections"] + at224["logit_scale"]
    assert round((sum(at224.values()) - heads) / 1e6) == README_M[name]
    print(f"\n{name}: ours {n / 1e6:.2f} M at 384; official arithmetic at 224: "
          f"{(sum(at224.values()) - heads) / 1e6:.2f} M without task heads, "
          f"{sum(at224.values()) / 1e6:.2f} M with pooler and ITC heads; README: "
          f"{README_M[name]} M")


@pytest.mark.parametrize("name", ["vlmo-base", "vlmo-base-dual", "vlmo-large",
                                  "vlmo-large-dual"])
def test_full_size_flops_on_meta(name: str) -> None:
    p = PRESETS.get(name)
    with torch.device("meta"):
        model = build_model(name).eval()
    images, ids, mask = model.example_inputs(1, p.image_size, p.text_len, device="meta")
    stages = model.stages()
    with torch.no_grad():
        total, per_stage = count_flops(model, lambda: model(images, ids, mask), stages)
    assert total == expected_flops(name)
    tops = [s.name for s in stages if s.parent == "fusion"]
    print(f"\n{name}: {total / 1e9:.2f} GFLOPs; "
          + ", ".join(f"{s.removeprefix('fusion.')} {per_stage[s] / 1e9:.2f}" for s in tops))
    assert math.isclose(sum(per_stage[s] for s in tops), per_stage["fusion"], rel_tol=1e-3)


@pytest.mark.parametrize("name", TINY.values())
def test_tiny_flops_the_way_the_harness_counts_them(name: str) -> None:
    """Under inference mode on CPU with every stage attributed, as ``vlbench profile`` counts
    (FlopCounterMode's module tracker hooks every stage module: no parameter may be a forward
    argument)."""
    model = tiny(name)
    images, ids, mask = inputs(model, name, batch=1)
    with torch.inference_mode():
        total, _ = count_flops(model, lambda: model(images, ids, mask), model.stages())
    assert total == expected_flops(name)
