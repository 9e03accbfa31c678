"""Any timm model as the visual embedder (feature_extractors/timm_backbone.py): ``timm:<name>``.

timm's tiny ``test_*`` models run for real (small images, or the composed 384x640 with a tiny
fusion); full-size models (ViT-B/16, Swin-B, EVA-02-B) are built on the meta device at a
non-square input, where shapes, parameters and FLOPs propagate without computing anything.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
import timm
import torch
from torch import nn

from architectures import FUSIONS, Preset, build_model, compose, resolve_preset
from feature_extractors import (
    EMBEDDERS,
    ImageBatch,
    Registry,
    StageKind,
    TimmBackbone,
    TimmBackboneConfig,
    UnknownNameError,
    build_embedder,
    spec_for_config,
)
from vlbench.cli import main
from vlbench.profile import profile_model
from vlbench.suites import SuiteError, parse_suite

SMALL = (64, 96)
#: name: (the layout it declares, prefix tokens, the embedder's stage kind, tokens at SMALL)
TINY_MODELS = {
    "test_vit": ("NLC", 1, StageKind.PATCH, 1 + 4 * 6),  # patch 16, a class token
    "test_vit_relpos": ("NLC", 0, StageKind.PATCH, 4 * 6),  # no prefix token at all
    "test_resnet": ("NCHW", 0, StageKind.GRID, 2 * 3),  # stride 32
    "test_convnext": ("NCHW", 0, StageKind.GRID, 2 * 3),
    "test_mambaout": ("NHWC", 0, StageKind.GRID, 2 * 3),  # output_fmt NHWC, like Swin
}


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _reference(name: str, **kwargs: object) -> nn.Module:
    """timm's own model, no classifier, on the meta device: the parameter count to match."""
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, num_classes=0, global_pool="", **kwargs)


def _as_tokens(features: torch.Tensor, fmt: str) -> torch.Tensor:
    """(B, N, C) from a feature tensor of a known layout: the reference for the embedder."""
    if fmt == "NCHW":
        return features.flatten(2).transpose(1, 2)
    if fmt == "NHWC":
        return features.flatten(1, 2)
    return features


# --- the module ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY_MODELS)
def test_layout_comes_from_the_model_and_tokens_follow_it(name: str) -> None:
    fmt, prefix, kind, tokens = TINY_MODELS[name]
    torch.manual_seed(0)
    module = build_embedder(TimmBackboneConfig(name, image_size=SMALL, width=48)).eval()
    assert isinstance(module, TimmBackbone)
    assert (module.layout.fmt, module.layout.prefix, module.kind) == (fmt, prefix, kind)
    assert module.num_tokens(SMALL) == tokens
    assert module.substages == {"backbone": StageKind.BACKBONE,
                                "proj": StageKind.VISUAL_EMBEDDING}
    images = torch.randn(2, 3, *SMALL)
    with torch.inference_mode():
        out = module(ImageBatch.from_tensor(images))
        expected = module.proj(_as_tokens(module.backbone.model.forward_features(images), fmt))
    assert out.embeds.shape == (2, tokens, 48) and out.mask.all()
    torch.testing.assert_close(out.embeds, expected)  # NHWC read as NCHW would scramble these
    features = module.layout.features
    size = {"img_size": SMALL} if "vit" in name else {}
    assert _count(module.backbone) == _count(_reference(name, **size))
    assert _count(module.proj) == features * 48 + 48


def test_width_none_keeps_the_models_width_and_pool_shrinks_a_grid() -> None:
    plain = TimmBackbone(name="test_resnet", image_size=(128, 192))
    assert plain.out_dim == plain.layout.features == 96 and plain.proj is None
    assert set(plain.substages) == {"backbone"}
    pooled = TimmBackbone(name="test_resnet", image_size=(128, 192), width=32, pool=2)
    assert pooled.substages == {"backbone": StageKind.BACKBONE, "pool": StageKind.GRID,
                                "proj": StageKind.VISUAL_EMBEDDING}
    assert plain.grid((128, 192)) == (4, 6) and pooled.grid((128, 192)) == (2, 3)
    with torch.inference_mode():
        out = pooled.eval()(ImageBatch.from_tensor(torch.randn(1, 3, 128, 192)))
    assert out.embeds.shape == (1, 6, 32)
    with pytest.raises(ValueError, match="applies to a feature map"):
        TimmBackbone(name="test_vit", image_size=SMALL, pool=2)


@pytest.mark.parametrize(("name", "real"), [("test_vit", [25, 1 + 2 * 4]),
                                             ("test_convnext", [6, 1 * 2])])
def test_mixed_sizes_mask_each_images_own_grid(name: str, real: list[int]) -> None:
    module = TimmBackbone(name=name, image_size=SMALL).eval()
    batch = ImageBatch.from_images([torch.randn(3, *SMALL), torch.randn(3, 32, 64)])
    with torch.inference_mode():
        out = module(batch)
    assert out.mask.sum(dim=1).tolist() == real
    if module.layout.prefix:
        assert out.mask[:, 0].all()  # the class token is always real


@pytest.mark.parametrize("name", ["test_vit", "test_mambaout"])
def test_forward_reads_no_device_value(name: str, no_host_reads) -> None:
    module = TimmBackbone(name=name, image_size=SMALL, width=32).eval()
    batch = ImageBatch.from_tensor(torch.randn(2, 3, *SMALL))
    with no_host_reads():
        out = module(batch)
    assert out.embeds.shape[-1] == 32


def test_a_family_without_dynamic_size_says_so_where_it_cannot_run() -> None:
    module = TimmBackbone(name="test_vit_relpos", image_size=SMALL)
    assert module.static_size == SMALL
    with pytest.raises(ValueError, match="built for 64x96 .* and does not run at 64x128: Input"):
        module.num_tokens((64, 128))  # what the harness asks before it times a case
    assert TimmBackbone(name="test_vit", image_size=SMALL).static_size is None  # dynamic
    byob = TimmBackbone(name="test_byobnet", image_size=SMALL)  # takes img_size, runs at any
    assert byob.static_size == SMALL and byob.num_tokens((128, 192)) == 4 * 6


# --- names -----------------------------------------------------------------------------------


def test_timm_names_resolve_through_the_one_registry() -> None:
    spec = EMBEDDERS.get("timm:test_convnext")
    assert spec is EMBEDDERS.get("timm:test_convnext")  # built once
    assert (spec.name, spec.modality, spec.kind) == ("timm:test_convnext", "visual",
                                                     StageKind.GRID)
    assert spec.module is TimmBackbone and spec.config is TimmBackboneConfig
    assert spec_for_config(TimmBackboneConfig("test_convnext")) is spec
    assert "timm:test_vit" in EMBEDDERS and "timm:no_such_model" not in EMBEDDERS
    assert not any(n.startswith("timm") for n in EMBEDDERS.names())  # names() stays fixed
    assert "timm" in EMBEDDERS.families()


@pytest.mark.parametrize(("name", "kind", "tokens"), [
    ("rexnet_100", StageKind.GRID, "240 tokens at 384x640"),  # BatchNorm in squeeze-excite
    ("deit_small_distilled_patch16_224", StageKind.PATCH, "2 prefix; 962 tokens"),  # no ""-pool
    ("vit_small_patch14_reg4_dinov2", StageKind.PATCH, "5 prefix; 1220 tokens at 378x630"),
])
def test_full_size_families_declare_their_kind_and_tokens(name: str, kind: StageKind,
                                                          tokens: str) -> None:
    spec = EMBEDDERS.get(f"timm:{name}")  # a meta build and a shape-only forward
    assert spec.kind == kind and tokens in spec.description


@pytest.mark.parametrize(("name", "expected"), [
    ("timm:convnext_bse", "unknown timm model 'convnext_bse'; close matches: convnext_base"),
    ("timm:mixer_b16_224", "timm model 'mixer_b16_224' cannot be an embedder (probed at"),
    ("timmy", "or timm:<name> (any timm model"),
])
def test_bad_names_are_one_line_errors(name: str, expected: str) -> None:
    with pytest.raises(UnknownNameError) as err:
        EMBEDDERS.get(name)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_a_registry_family_is_built_on_demand() -> None:
    def resolve(rest: str) -> int:
        if not rest.isdigit():
            raise UnknownNameError(f"not a number: {rest!r}")
        return int(rest)

    registry: Registry[int] = Registry("thing")
    registry.register("one", 1)
    registry.register_prefix("n", resolve, help="any number")
    assert registry.get("n:42") == 42 and "n:7" in registry and "n:x" not in registry
    assert registry.names() == ["one"] and registry.families() == {"n": "any number"}
    with pytest.raises(UnknownNameError, match=r"valid: one, or n:<name> \(any number\)"):
        registry.get("two")
    with pytest.raises(ValueError, match="already registered"):
        registry.register_prefix("n", resolve, help="again")


# --- composed with every fusion --------------------------------------------------------------


@pytest.mark.parametrize("fusion", sorted(FUSIONS))
@pytest.mark.parametrize("name", ["test_vit", "test_resnet", "test_convnext", "test_mambaout"])
def test_every_fusion_takes_a_timm_backbone(name: str, fusion: str) -> None:
    preset = resolve_preset(f"timm:{name}+{fusion}", "tiny")
    width = preset.fusion.vision_width
    assert preset.name == f"timm:{name}+{fusion}-tiny" and preset.image_size == (384, 640)
    assert preset.visual == TimmBackboneConfig(name, image_size=(384, 640), width=width)
    torch.manual_seed(0)
    model = build_model(preset).eval()
    assert model.embedder_name == f"timm:{name}"
    visual = model.visual
    stages = {s.name: s.kind for s in model.stages() if s.name.startswith("visual")}
    assert stages == {"visual": TINY_MODELS[name][2], "visual.backbone": StageKind.BACKBONE,
                      **({"visual.proj": StageKind.VISUAL_EMBEDDING}
                         if visual.layout.features != width else {})}
    size = {"img_size": (384, 640)} if name == "test_vit" else {}
    assert _count(model.visual.backbone) == _count(_reference(name, **size))
    calls: Counter[str] = Counter()
    seen: dict[str, tuple[int, ...]] = {}
    for stage in model.stages():  # a named set's modules all count for their stage
        for path in dict.fromkeys(stage.modules):
            model.get_submodule(path).register_forward_hook(
                lambda *_, n=stage.name: calls.update([n]))
    model.visual.register_forward_hook(lambda m, i, out: seen.update(v=tuple(out.embeds.shape)))
    with torch.inference_mode():
        out = model(*model.example_inputs(1, preset.image_size, preset.text_len))
    assert set(calls) == {s.name for s in model.stages()}
    tokens = 961 if name == "test_vit" else 12 * 20
    assert seen["v"] == (1, tokens, width) == (1, visual.num_tokens((384, 640)), visual.out_dim)
    assert out.pooled.shape == (1, model.fusion.out_dim) and torch.isfinite(out.pooled).all()


def test_size_tiny_keeps_the_named_timm_model_and_says_so() -> None:
    base = compose("timm:convnext_base", "single-stream")
    tiny = resolve_preset("timm:convnext_base+single-stream", "tiny")
    assert tiny.visual.name == base.visual.name == "convnext_base"
    assert tiny.image_size == base.image_size == (384, 640)
    assert tiny.fusion != base.fusion and tiny.visual.width == tiny.fusion.vision_width
    assert "kept as named at --size tiny (only the fusion shrinks)" in tiny.description


def test_suite_files_and_plugin_presets_name_timm_models() -> None:
    suite = parse_suite("models:\n  - timm:test_resnet+single-stream-tiny\n"
                        "  - {model: timm:test_vit+dual-encoder-tiny, image_size: 320x480}\n")
    assert [(c.model, c.image_size) for c in suite.cases("cpu")] == [
        ("timm:test_resnet+single-stream-tiny", (384, 640)),
        ("timm:test_vit+dual-encoder-tiny", (320, 480))]
    with pytest.raises(SuiteError, match="close matches: test_resnet"):
        parse_suite("models: [timm:test_resnt+single-stream]")
    # a plugin's own preset: a config is enough, the registry finds its spec
    tiny = FUSIONS.get("single-stream").defaults[1]
    text = EMBEDDERS.get("bert-text").canonical(tiny.text_width, True)[0]
    preset = Preset(name="my-convnext", description="a plugin's preset", text=text, fusion=tiny,
                    visual=TimmBackboneConfig("test_convnext", image_size=SMALL, width=64),
                    image_size=SMALL, text_len=8)
    model = build_model(preset)
    assert model.embedder_name == "timm:test_convnext" and model.visual.out_dim == 64


# --- full size, on the meta device, at a non-square input -------------------------------------


def test_full_size_vit_is_built_for_384x640() -> None:
    name = "timm:vit_base_patch16_224+single-stream"
    with torch.device("meta"):
        model = build_model(name)
    backbone = model.visual.backbone
    # built for the case's input: the position table holds 24x40 patches, not 14x14
    grown = (24 * 40 - 14 * 14) * 768
    assert _count(backbone) == _count(_reference("vit_base_patch16_224")) + grown == 86_385_408
    assert model.visual.proj is None  # 768 = BERT-base's width: no projection stage
    assert model.num_tokens((384, 640), 40) == {"image": 1 + 24 * 40, "text": 40}
    profile = profile_model(name, image_size=(384, 640))
    assert profile["profiled_on"] == "meta" and profile["tokens"]["image"] == 961
    assert profile["stages"]["visual.backbone"]["flops"] > 190e9  # ~4.9x its 224 cost


def test_full_size_swin_reads_nhwc_and_projects_to_the_fusion() -> None:
    name = "timm:swin_base_patch4_window7_224+dual-encoder"
    profile = profile_model(name, image_size=(384, 640))
    stages = profile["stages"]
    assert stages["visual"]["kind"] == "grid" and profile["tokens"]["image"] == 12 * 20
    assert stages["visual.backbone"]["params"] == _count(
        _reference("swin_base_patch4_window7_224")) == 86_743_224
    assert stages["visual.proj"]["params"] == 1024 * 768 + 768
    assert stages["visual.proj"]["flops"] == 2 * 240 * 1024 * 768
    with torch.device("meta"):
        model = build_model(name)
    assert model.visual.layout.fmt == "NHWC"  # Swin's output_fmt
    assert model.visual.static_size is None  # dynamic size: other inputs work too
    assert model.visual.num_tokens((512, 512)) == 16 * 16


def test_a_patch_14_model_rounds_the_canonical_input_and_says_so() -> None:
    preset = compose("timm:eva02_base_patch14_224", "single-stream")
    assert preset.image_size == (378, 630) == preset.visual.image_size  # 27x45 patches of 14
    assert "378x630, 384x640 rounded down to its stride" in preset.description
    with torch.device("meta"):
        model = build_model(preset)
        out = model(*model.example_inputs(1, (384, 640), 40, device="meta"))  # padded to 14
    assert model.num_tokens((378, 630), 40)["image"] == 1 + 27 * 45
    assert model.num_tokens((384, 640), 40)["image"] == 1 + 28 * 46
    assert out.pooled.shape == (1, 768)


# --- the command line ------------------------------------------------------------------------


def test_cli_lists_runs_and_rejects_timm_names(tmp_path, capsys) -> None:
    assert main(["list", "embedders"]) == 0
    assert "timm:<name>" in capsys.readouterr().out
    db = tmp_path / "r.sqlite"
    assert main(["run", "--compose", "timm:convnext_bse+single-stream", "--db", str(db)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "close matches: convnext_base" in err[0]
    assert main(["run", "--compose", "timm:test_resnet+single-stream", "--size", "tiny",
                 "--repeats", "2", "--min-time", "0", "--warmup", "1", "--no-progress",
                 "--db", str(db)]) == 0
    assert "timm:test_resnet+single-stream-tiny" in capsys.readouterr().out
    assert main(["export", "--db", str(db), "--format", "json"]) == 0
    (case,) = json.loads(capsys.readouterr().out)["runs"][0]["cases"]
    assert case["status"] == "ok" and case["embedder"] == "timm:test_resnet"
    backbone, proj = case["stages"]["visual.backbone"], case["stages"]["visual.proj"]
    assert backbone["params"] == _count(_reference("test_resnet")) and backbone["flops"] > 0
    assert proj["params"] == 96 * 64 + 64 and proj["flops"] == 2 * 240 * 96 * 64
