"""transformers' own classes timed per stage (``architectures.hf``): every ``hf-`` preset at
tiny size reports every mapped stage, its top-level stages cover the forward's work, inputs are
the native twin's, and a map that names a missing module fails when the model is built.

Nothing is fetched: models are built from config classes, directories by ``save_pretrained``
into temporary directories."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from architectures import (  # noqa: E402 - after the skip
    HF_PRESETS,
    PRESETS,
    HFModel,
    build_loaded,
    build_model,
    resolve_preset,
)
from architectures.hf import STAGE_MAPS, StageMap, build_hf_model  # noqa: E402
from feature_extractors import StageDeclarationError, Substage  # noqa: E402
from vlbench.cli import main  # noqa: E402
from vlbench.measure import run_case  # noqa: E402
from vlbench.options import MeasureOptions, TimingOptions  # noqa: E402
from vlbench.profile import profile_model  # noqa: E402
from vlbench.results import CaseSpec  # noqa: E402
from vlbench.store import Store  # noqa: E402

TINY = [n for n in HF_PRESETS.names() if n.endswith("-tiny")]
PUBLISHED = [n for n in HF_PRESETS.names() if not n.endswith("-tiny")]
#: shared iterations: the end-to-end time is taken around the hooked forward, so each
#: iteration's stage sum and end-to-end time are comparable
SHARED = MeasureOptions(timing=TimingOptions(warmup=1, min_repeats=5, max_repeats=5,
                                             min_time_s=0.0, cpu_share_above_s=0.0))
SDPA = {"CLIPModel", "SiglipModel"}  # transformers' default; the others run eager


def spec(name: str, batch: int = 1) -> CaseSpec:
    p = resolve_preset(name)
    return CaseSpec(model=name, batch_size=batch, image_size=p.image_size, text_len=p.text_len,
                    precision="fp32", device="cpu")


@pytest.mark.parametrize("name", TINY)
def test_every_mapped_stage_is_timed_and_the_stages_cover_the_forward(name: str) -> None:
    r = run_case(spec(name, batch=8), SHARED)  # batch 8: work, not Python, dominates
    assert r.status == "ok", r.message
    p = HF_PRESETS.get(name)
    mapped = STAGE_MAPS.get(r.settings["hf_class"]).stages
    assert [s.name for s in r.stages] == [s.name for s in build_model(p).stages()]
    assert {s.name for s in r.stages} == set(mapped)
    for s in r.stages:
        assert s.timing is not None and s.timing.median_ms > 0, s.name
        assert s.calls >= len(mapped[s.name].modules), s.name  # every module fired
        assert s.params > 0, s.name
    top = [s for s in r.stages if s.parent is None]
    # the work: every FLOP is in a top-level stage (CLIP and SigLIP compute their similarity
    # matrix in the forward itself, outside any module: B x B dot products)
    assert sum(s.flops for s in top) >= 0.999 * r.flops_total
    # the time: per iteration, stages inside the forward never exceed it, and the best
    # iteration leaves little outside them
    ratios = [sum(xs) / e2e for *xs, e2e in zip(*(s.samples_ms for s in top),
                                                 r.end_to_end_samples_ms, strict=True)]
    assert max(ratios) <= 1.02 and max(ratios) > 0.7, ratios
    assert r.settings["attn_implementation"] == (
        "sdpa" if r.settings["hf_class"] in SDPA else "eager")
    assert r.fusion == f"transformers:{r.settings['hf_class']}" and r.embedder == name


@pytest.mark.parametrize("name", [n for n in HF_PRESETS.names() if HF_PRESETS.get(n).twin])
def test_inputs_are_the_native_twins(name: str) -> None:
    hf, twin = HF_PRESETS.get(name), PRESETS.get(HF_PRESETS.get(name).twin)
    assert (hf.image_size, hf.text_len) == (twin.image_size, twin.text_len)
    if name.endswith("-tiny"):  # tiny models are cheap to build: the token counts agree too
        ours, theirs = build_model(twin), build_model(hf)
        assert (theirs.num_tokens(hf.image_size, hf.text_len)
                == ours.num_tokens(hf.image_size, hf.text_len))


def test_published_presets_resolve_by_name_with_tiny_twins() -> None:
    assert {"hf-vilt", "hf-vilt-vqa", "hf-clip", "hf-siglip", "hf-blip", "hf-lxmert",
            "hf-visualbert", "hf-bridgetower"} <= set(PUBLISHED)
    for name in PUBLISHED:
        assert resolve_preset(name, "tiny").name == f"{name}-tiny"
    # the published config where the library's default is not the published model
    assert HF_PRESETS.get("hf-visualbert").library_config().visual_embedding_dim == 2048
    assert HF_PRESETS.get("hf-vilt").library_config().max_position_embeddings == 40


def test_vilt_visual_embedding_is_its_method_and_syncs_with_the_host() -> None:
    """ViltEmbeddings.visual_embed does the visual work (patch_embeddings is a bare conv):
    made a module in place, it changes no state dict and counts the visual parameters."""
    from transformers import ViltModel

    model = build_model("hf-vilt-tiny")
    visual = next(s for s in model.stages() if s.name == "visual")
    assert visual.host_sync and visual.modules == ("hf.embeddings.visual_embed",)
    fresh = ViltModel(model.hf.config)
    assert model.hf.state_dict().keys() == fresh.state_dict().keys()
    emb = model.hf.embeddings
    expected = (sum(p.numel() for p in emb.patch_embeddings.parameters())
                + emb.cls_token.numel() + emb.position_embeddings.numel())
    assert sum(p.numel() for p in emb.visual_embed.parameters()) == expected
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in fresh.parameters())


def test_a_stage_map_naming_a_missing_module_fails_at_build_naming_the_version() -> None:
    import transformers

    model = build_model("hf-clip-tiny")
    good = STAGE_MAPS.get("CLIPModel")
    bad = StageMap({**good.stages, "text": Substage("text", ("text_model.embedding",))},
                   good.inputs, good.image_tokens)
    with pytest.raises(StageDeclarationError, match=transformers.__version__) as err:
        HFModel(model.hf, bad, name="bad")
    assert "text_model.embedding" in str(err.value)
    shared = StageMap({**good.stages, "text": Substage("text", ("vision_model.encoder",))},
                      good.inputs, good.image_tokens)
    with pytest.raises(StageDeclarationError, match="counted twice|count them twice"):
        HFModel(model.hf, shared, name="shared")


def test_text_longer_than_the_config_allows_is_refused() -> None:
    model = build_model("hf-vilt-tiny")  # 8 positions
    with pytest.raises(ValueError, match="text length 9 exceeds"):
        model.example_inputs(1, (64, 96), 9)


def test_profile_runs_hf_models_on_the_cpu() -> None:
    out = profile_model("hf-lxmert-tiny")
    assert out["profiled_on"] == "cpu"
    assert list(out["stages"]) == [s.name for s in build_model("hf-lxmert-tiny").stages()]
    assert out["stages"]["fusion.co_attention"]["flops"] > 0


def save_tiny(path: Path, class_name: str, preset: str, *, weights: bool = True) -> torch.nn.Module:
    """A tiny transformers model saved with save_pretrained (config only without weights)."""
    import transformers

    torch.manual_seed(1)
    model = getattr(transformers, class_name)(HF_PRESETS.get(preset).library_config()).eval()
    if weights:
        model.save_pretrained(path)
    else:
        model.config.save_pretrained(path)
    return model


def test_hf_dir_builds_the_saved_model_and_records_it(tmp_path: Path) -> None:
    saved = save_tiny(tmp_path, "ViltForQuestionAnswering", "hf-vilt-vqa-tiny")
    model, record = build_loaded(HF_PRESETS.get("hf-vilt-vqa-tiny"), hf_dir=str(tmp_path))
    assert record["hf_dir"]["weights"]["sha256"] and record["hf_dir"]["weights"]["bytes"] > 0
    assert record["hf_class"] == "ViltForQuestionAnswering"
    inputs = model.example_inputs(2, (64, 96), 8)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, saved(**inputs).logits)
    # a ViltModel preset takes the base model out of the task checkpoint
    base, _ = build_loaded(HF_PRESETS.get("hf-vilt-tiny"), hf_dir=str(tmp_path))
    torch.testing.assert_close(base.hf.pooler.dense.weight, saved.vilt.pooler.dense.weight)


def test_hf_dir_refusals_and_random_initialisation(tmp_path: Path) -> None:
    base = tmp_path / "base"
    save_tiny(base, "ViltModel", "hf-vilt-tiny")
    with pytest.raises(ValueError, match="holds a 'vilt' model.*'clip'"):
        build_loaded(HF_PRESETS.get("hf-clip-tiny"), hf_dir=str(base))
    with pytest.raises(ValueError, match=r"lacks \d+ tensor\(s\) of ViltForQuestionAnswering"):
        build_loaded(HF_PRESETS.get("hf-vilt-vqa-tiny"), hf_dir=str(base))
    config_only = tmp_path / "config"
    save_tiny(config_only, "CLIPModel", "hf-clip-tiny", weights=False)
    _, record = build_loaded(HF_PRESETS.get("hf-clip-tiny"), hf_dir=str(config_only))
    assert record["hf_dir"]["weights"] == "none: random initialisation"
    with pytest.raises(ValueError, match="no config.json"):
        build_loaded(HF_PRESETS.get("hf-clip-tiny"), hf_dir=str(tmp_path / "nothing"))


def test_one_run_times_hf_and_native_side_by_side(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    hf_dir = tmp_path / "vilt"
    save_tiny(hf_dir, "ViltModel", "hf-vilt-tiny")
    db = tmp_path / "r.db"
    code = main(["run", "--models", "hf-vilt-tiny,vilt-b32-tiny", "--hf-dir", str(hf_dir),
                 "--db", str(db), "--repeats", "2", "--min-time", "0", "--warmup", "0",
                 "--no-progress", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0 and "hf-vilt-tiny" in out and "vilt-b32-tiny" in out
    with Store.open(db) as store:
        hf, native = store.cases(1)
    assert hf.settings["hf_dir"]["path"] == str(hf_dir.resolve())
    assert "hf_dir" not in native.settings  # --hf-dir applies to hf- models only
    assert [s.name for s in hf.stages] == [s.name for s in native.stages]
    assert [s.params for s in hf.stages] == [s.params for s in native.stages]


def test_hf_dir_without_an_hf_model_is_refused_before_the_store(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    db = tmp_path / "r.db"
    code = main(["run", "--models", "vilt-b32-tiny", "--hf-dir", str(tmp_path), "--db", str(db),
                 "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--hf-dir" in err
    assert not db.exists()


def test_head_builds_the_task_class() -> None:
    p = HF_PRESETS.get("hf-vilt-tiny")
    assert type(build_hf_model(p, head=True).hf).__name__ == "ViltForQuestionAnswering"
    with pytest.raises(ValueError, match="has no task head"):
        build_hf_model(HF_PRESETS.get("hf-clip-tiny"), head=True)


HF_PLUGIN = str(Path(__file__).resolve().parents[1] / "docs" / "examples"
                / "vlbench_hf_plugin_example.py")


def test_a_plugin_maps_a_class_vlbench_does_not_know(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's worked example: GitModel's stage map and a preset, from a plugin file."""
    import sys

    import vlbench.plugins as plugins

    saved = [(r, dict(r._items)) for r in (STAGE_MAPS, HF_PRESETS)]
    monkeypatch.setattr(plugins, "_loaded_files", {})
    try:
        assert main(["list", "hf", "--plugin", HF_PLUGIN]) == 0
        out = capsys.readouterr().out
        assert "hf-git " in out and "GitModel" in out
        r = run_case(spec("hf-git-tiny", batch=8), SHARED)
        assert r.status == "ok", r.message
        assert [s.name for s in r.stages] == ["visual", "text", "fusion", "fusion.vision_tower",
                                              "fusion.encoder"]
        assert sum(s.flops for s in r.stages if s.parent is None) == r.flops_total
    finally:
        for registry, items in saved:
            registry._items.clear()
            registry._items.update(items)
        for name in [m for m in sys.modules if m.startswith("vlbench_plugin_")]:
            del sys.modules[name]
