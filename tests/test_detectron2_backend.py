"""The detectron2 region backend: the same stages, kinds and workload as ours on detectron2's
modules, the preset swap, a user's own config and weights, and the error without detectron2.

The tests that build a detector skip locally when detectron2 is missing and fail when ``CI`` is
set, since CI installs the vendored wheels (``.ci/run``); the ones about its absence run
everywhere (a subprocess hides detectron2).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import asdict, fields, replace
from pathlib import Path

import pytest
import torch

from architectures import PRESETS, build_model
from architectures.backends import region_backend, with_region_backend
from feature_extractors import (
    TINY_REGIONS,
    Detectron2RegionsConfig,
    ImageBatch,
    RegionFeaturesConfig,
    build_embedder,
    declared_stages,
    detectron2_available,
)
from feature_extractors.region.detectron2 import DETECTRON2_COMMIT
from vlbench.case_keys import case_key, spec_from_key
from vlbench.cli import NO_ISOLATION_ENV, main
from vlbench.flops import count_flops, count_params
from vlbench.report import collect
from vlbench.report.backends import backends_section
from vlbench.store import Store
from vlbench.suites import SuiteError, load_suite
from vlbench.table import case_how


@pytest.fixture()
def d2() -> None:
    """Skip (locally) or fail (under CI) without detectron2."""
    if not detectron2_available():
        if os.environ.get("CI"):
            pytest.fail("detectron2 is not installed under CI (.ci/run installs the wheels)")
        pytest.skip("detectron2 is not installed (see the README's install command)")


def _images(batch: int = 2, size: tuple[int, int] = (128, 160)) -> ImageBatch:
    pixels = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(1))
    return ImageBatch.from_images(list(pixels))


# --- without detectron2 ----------------------------------------------------------------------

def _python(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True,
                          text=True, cwd=Path(__file__).parent.parent, timeout=300)


def test_without_detectron2_imports_work_and_choosing_it_is_one_line():
    out = _python("""
        import sys
        sys.modules["detectron2"] = None  # as if not installed: import fails, find_spec None
        import feature_extractors, architectures
        from architectures.backends import with_region_backend
        assert "region-d2" not in feature_extractors.EMBEDDERS
        preset = architectures.PRESETS.get("uniter-base-tiny")
        assert with_region_backend(preset, "vlbench") is preset
        try:
            with_region_backend(preset, "detectron2")
        except ImportError as err:
            print(err)
    """)
    assert out.returncode == 0, out.stderr
    message = out.stdout.strip()
    assert "\n" not in message
    assert message.startswith("the detectron2 region backend needs detectron2 (not on PyPI)")
    assert message.endswith("pip install --no-build-isolation 'git+https://github.com/"
                            f"facebookresearch/detectron2.git@{DETECTRON2_COMMIT}'")


def test_importing_the_packages_never_imports_detectron2():
    out = _python("""
        import sys
        import feature_extractors, architectures, benchmarks.parity.detectron2
        assert "detectron2" not in sys.modules, "detectron2 must stay an optional import"
    """)
    assert out.returncode == 0, out.stderr


def test_config_mirrors_ours_field_for_field():
    ours = {f.name: f.default for f in fields(RegionFeaturesConfig)}
    theirs = {f.name: f.default for f in fields(Detectron2RegionsConfig)}
    assert theirs == {**ours, "d2_config": None, "d2_weights": None}
    region = replace(TINY_REGIONS, attributes=True, width=96)
    d2 = Detectron2RegionsConfig.from_regions(region, d2_config="a.yaml")
    assert d2.to_regions() == region and d2.d2_config == "a.yaml"


def test_unknown_backend_and_stray_files_are_one_line_errors():
    preset = PRESETS.get("uniter-base-tiny")
    with pytest.raises(ValueError, match="^unknown region backend 'caffe'; valid: vlbench, "
                                         "detectron2$"):
        with_region_backend(preset, "caffe")
    with pytest.raises(ValueError, match="^--d2-config and --d2-weights need --region-backend "
                                         "detectron2$"):
        with_region_backend(preset, "vlbench", d2_config="x.yaml", d2_weights="m.pth")


# --- the preset swap -------------------------------------------------------------------------


def test_every_region_preset_swaps_and_others_stay(d2):
    for name in PRESETS.names():
        preset = PRESETS.get(name)
        swapped = with_region_backend(preset, "detectron2")
        if isinstance(preset.visual, RegionFeaturesConfig):
            assert isinstance(swapped.visual, Detectron2RegionsConfig), name
            assert swapped.visual.to_regions() == preset.visual  # boxes, classes, width, style
            assert swapped.name == preset.name  # the same case: compare pairs the two runs
            assert region_backend(swapped) == "detectron2"
            assert with_region_backend(swapped, "vlbench") == preset  # and back
        else:
            assert swapped is preset, name  # patch, grid, precomputed: no detector
            assert region_backend(preset) is None
    with pytest.raises(FileNotFoundError,
                       match="^detectron2 config file 'missing.yaml' does not exist$"):
        with_region_backend(PRESETS.get("lxmert"), "detectron2", d2_config="missing.yaml")


@pytest.mark.parametrize("name", ["uniter-base-tiny", "visualbert-tiny"])
def test_same_stages_kinds_and_workload_as_ours(d2, name):
    """C4 and FPN: stage names, kinds and host synchronisation as ours; the configured
    proposals reach the box head; every deterministic workload count equal."""
    preset = PRESETS.get(name)
    torch.manual_seed(0)
    ours = build_model(preset).eval()
    theirs = build_model(with_region_backend(preset, "detectron2")).eval()
    key = [(s.name, s.kind, s.parent, s.host_sync) for s in ours.stages()]
    assert [(s.name, s.kind, s.parent, s.host_sync) for s in theirs.stages()] == key
    assert theirs.embedder_name == "region-d2" and theirs.visual_kind == "region"
    images = _images()
    with torch.inference_mode():
        got = theirs.visual(images)
        ours.visual(images)
    work, want = theirs.visual.last_workload, ours.visual.last_workload
    assert set(work) == set(want)
    assert work["box_head_proposals"] == 2 * TINY_REGIONS.post_nms_top_n
    assert work["boxes_in_nms"] == 2 * TINY_REGIONS.post_nms_top_n * (TINY_REGIONS.num_classes - 1)
    assert {k: v for k, v in work.items() if k != "boxes_kept_nms"} == {
        k: v for k, v in want.items() if k != "boxes_kept_nms"}
    assert got.embeds.shape == (2, theirs.visual.num_tokens((128, 160)), preset.visual.width)
    for boxes in got.boxes:
        assert (boxes[:, 2] <= 160).all() and (boxes[:, 3] <= 128).all()


def test_the_harness_counts_both_alike(d2):
    """What the harness reads (FLOPs and parameters per stage) agrees stage for stage; only the
    predictor differs, by detectron2's 4 x (C-1) box outputs against the prototxt's 4 x C."""
    config = replace(TINY_REGIONS, attributes=True)
    torch.manual_seed(0)
    ours = build_embedder(config).eval()
    theirs = build_embedder(Detectron2RegionsConfig.from_regions(config)).eval()
    images = _images(batch=1)
    stages = declared_stages(ours)
    assert [s.name for s in declared_stages(theirs)] == [s.name for s in stages]
    with torch.inference_mode():
        _, f_ours = count_flops(ours, lambda: ours(images), stages)
        _, f_theirs = count_flops(theirs, lambda: theirs(images), stages)
    _, p_ours = count_params(ours, stages)
    _, p_theirs = count_params(theirs, stages)
    box_rows = 2048 * 4 + 4  # one class's box regression: weights and biases
    for name in f_ours:
        extra_flops = 2 * 2048 * 4 * 20 if name in ("box_head", "box_head.predictor") else 0
        assert f_ours[name] - f_theirs[name] == extra_flops, name
        extra = box_rows if name in ("box_head", "box_head.predictor") else 0
        assert p_ours[name] - p_theirs[name] == extra, name
    assert p_ours["box_head.attributes"] == 11 * 256 + 2304 * 512 + 512 + 512 * 401 + 401


def test_attribute_head_and_res5_edits(d2):
    with torch.device("meta"):
        full = build_embedder(Detectron2RegionsConfig(attributes=True))
    head = full.box_head
    three = [m for m in head.head.modules() if isinstance(m, torch.nn.Conv2d)
             and m.kernel_size == (3, 3)]
    assert len(three) == 3 and all(c.dilation == (2, 2) and c.padding == (2, 2) for c in three)
    assert all(c.stride == (1, 1) for c in head.head.modules() if isinstance(c, torch.nn.Conv2d))
    assert head.predictor.cls_score.out_features == 1601
    assert head.predictor.bbox_pred.out_features == 4 * 1600  # detectron2: foreground only
    assert head.attributes.attr_score.out_features == 401
    assert full.rpn.network.rpn_head.conv.out_channels == 512
    assert full.rpn.network.anchor_generator.num_anchors == [12]
    assert type(full.backbone.stem).__name__ == "CaffeMaxPoolStem"
    assert full.size_divisibility == 1  # C4: no padding
    # the counting rule: FrozenBN scale and shift are (frozen) parameters
    norm = full.backbone.stem.conv1.norm
    assert {n for n, _ in norm.named_parameters()} == {"weight", "bias"}
    assert not norm.weight.requires_grad
    assert {n for n, _ in norm.named_buffers()} == {"running_mean", "running_var"}


# --- a user's own config and weights ---------------------------------------------------------

_BASE = """\
MODEL:
  META_ARCHITECTURE: "GeneralizedRCNN"
  RPN:
    PRE_NMS_TOPK_TEST: 6000
    POST_NMS_TOPK_TEST: 1000
  ROI_HEADS:
    NAME: "Res5ROIHeads"
"""
# py-bottom-up-attention's VG config, at R-50 with a 4x4 pooler so a test forward is cheap
_VG = """\
_BASE_: "base.yaml"
MODEL:
  CAFFE_MAXPOOL: True
  MASK_ON: False
  RESNETS:
    DEPTH: 50
  PROPOSAL_GENERATOR:
    HID_CHANNELS: 512
  ANCHOR_GENERATOR:
    SIZES: [[64, 128, 256, 512]]
  ROI_HEADS:
    NUM_CLASSES: 30
  ROI_BOX_HEAD:
    RES5HALVE: False
    POOLER_TYPE: "ROIPool"
    POOLER_RESOLUTION: 4
    ATTR: True
    NUM_ATTRS: 20
"""


def test_users_config_and_weights(d2, tmp_path):
    """A fork-style config (with _BASE_) builds the network it describes; the workload stays
    vlbench's; weights in detectron2's layout load (the attribute head by the fork's names) and
    are not re-initialised."""
    from feature_extractors.region import d2_build

    (tmp_path / "base.yaml").write_text(_BASE)
    (tmp_path / "vg.yaml").write_text(_VG)
    config = str(tmp_path / "vg.yaml")
    net, attributes = d2_build.build_detector(d2_build.user_config(config))
    state = dict(net.state_dict())
    state.update({f"roi_heads.box_predictor.{k}": v for k, v in attributes.state_dict().items()})
    state["roi_heads.box_predictor.cls_score.weight"] = torch.full_like(
        state["roi_heads.box_predictor.cls_score.weight"], 0.5)
    state["roi_heads.box_predictor.fc_attr.bias"] = torch.full((512,), 0.25)
    state["backbone.res4.0.conv3.norm.weight"] = torch.full((1024,), 0.125)
    weights = tmp_path / "model_final.pth"
    torch.save({"model": state}, weights)

    preset = replace(PRESETS.get("uniter-base-tiny"),
                     visual=replace(TINY_REGIONS, post_nms_top_n=10, num_boxes=4))
    swapped = with_region_backend(preset, "detectron2", d2_config=config,
                                  d2_weights=str(weights))
    region = build_model(swapped).visual.eval()
    head = region.box_head
    assert head.predictor.cls_score.out_features == 31  # the file's classes, not ours
    assert torch.all(head.predictor.cls_score.weight == 0.5)
    assert torch.all(head.attributes.fc_attr.bias == 0.25)
    assert head.attributes.attr_score.out_features == 21
    assert torch.all(region.backbone.res4[0].conv3.norm.weight == 0.125)  # loaded, kept
    assert type(region.backbone.stem).__name__ == "CaffeMaxPoolStem"
    with torch.inference_mode():
        tokens = region(_images(batch=1, size=(96, 128)))
    assert region.last_workload["box_head_proposals"] == 10  # vlbench's setting, not 1000
    assert region.last_workload["classes"] == 30
    assert tokens.embeds.shape == (1, 4, TINY_REGIONS.width)
    with pytest.raises(FileNotFoundError,
                       match="^detectron2 weights file 'nowhere.pth' does not exist$"):
        with_region_backend(preset, "detectron2", d2_weights="nowhere.pth")
    assert asdict(swapped.visual)["d2_weights"] == str(weights)


# --- through the command line ----------------------------------------------------------------

_QUICK = ("--size", "tiny", "--image-size", "128x128", "--repeats", "2", "--min-time", "0",
          "--warmup", "0", "--no-progress")


def test_run_on_detectron2_records_the_backend_per_case(d2, tmp_path, monkeypatch):
    """--region-backend reaches the cases with a detector only: their key and table say so, the
    stages are ours by name and kind, and a mixed run's other model is untouched."""
    monkeypatch.setenv(NO_ISOLATION_ENV, "1")
    db = tmp_path / "d2.sqlite"
    assert main(["run", "--models", "uniter-base,vilt-b32", "--region-backend", "detectron2",
                 *_QUICK, "--db", str(db)]) == 0
    assert main(["run", "--models", "uniter-base", *_QUICK, "--db", str(db)]) == 0
    with Store.open(db) as store:
        d2_run = {c.spec.model: c for c in store.cases(1)}
        ours = store.cases(2)[0]
    region, vilt = d2_run["uniter-base-tiny"], d2_run["vilt-b32-tiny"]
    assert region.status == ours.status == "ok", region.message
    assert region.spec.region_backend == "detectron2" and vilt.spec.region_backend is None
    assert case_key(region.spec).endswith("|detectron2") and case_key(ours.spec) == case_key(
        replace(region.spec, region_backend=None))
    assert spec_from_key(case_key(region.spec)) == replace(region.spec, gpu_only=None)
    assert [(s.name, s.kind) for s in region.stages] == [(s.name, s.kind) for s in ours.stages]
    assert case_how(region.spec) == "fp32 d2"
    with Store.open(db) as store:  # the report pairs the two backends' runs stage by stage
        (pair,) = backends_section(collect(store, [1, 2]).cases).pairs
    stages = {s.stage: s for s in pair.stages}
    # the predictor regresses one box more on our side (background included, as the prototxt)
    assert pair.run_ids == (2, 1) and set(pair.flops_differ) <= {"visual.box_head.predictor"}
    assert stages["visual.backbone"].ours.params == stages["visual.backbone"].theirs.params > 0
    assert stages["visual.rpn"].ratio is not None and stages["forward"].ratio is not None


def test_profile_on_detectron2(d2, capsys):
    assert main(["profile", "uniter-base", "--size", "tiny", "--region-backend", "detectron2",
                 "--format", "json"]) == 0
    profile = json.loads(capsys.readouterr().out)
    assert profile["region_backend"] == "detectron2"
    assert {"visual.backbone", "visual.rpn", "visual.nms", "visual.box_head"} <= set(
        profile["stages"])


def test_d2_files_without_the_backend_are_refused_before_the_store(tmp_path, capsys):
    db = tmp_path / "never.sqlite"
    code = main(["run", "--models", "uniter-base", "--size", "tiny", "--d2-config",
                 str(tmp_path / "vg.yaml"), "--db", str(db)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and not db.exists()
    assert err == ("vlbench: error: --d2-config and --d2-weights need --region-backend "
                   "detectron2 and a model with a region detector")
    assert main(["profile", "uniter-base", "--size", "tiny", "--d2-weights", "w.pth"]) == 2
    assert "need --region-backend detectron2" in capsys.readouterr().err


def test_suite_entries_choose_their_backend(tmp_path):
    suite = tmp_path / "both.yaml"
    suite.write_text("name: both\ndescription: d\nmodels:\n  - uniter-base-tiny\n"
                     "  - {model: uniter-base-tiny, region_backend: detectron2}\n"
                     "  - {model: vilt-b32-tiny, region_backend: detectron2}\n")
    cases = load_suite(str(suite)).cases("cpu")
    assert [c.region_backend for c in cases] == [None, "detectron2", None]  # vilt: no detector
    assert len({case_key(c) for c in cases}) == 3  # both backends of one model, one run
    suite.write_text("name: bad\ndescription: d\nmodels:\n"
                     "  - {model: uniter-base-tiny, region_backend: caffe}\n")
    with pytest.raises(SuiteError, match="region_backend is vlbench or detectron2, got 'caffe'"):
        load_suite(str(suite))
