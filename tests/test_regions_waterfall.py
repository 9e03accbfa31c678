"""The regions waterfall (issue 22): model variants by name, the suite's per-entry precision,
mode and GPU-only skips, compile of the fusion alone, and the view -- cumulative and alone, ratios
against the same run's patch model, skipped steps with their reason -- rendered from a store
without model code."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from architectures import build_model, resolve_preset
from feature_extractors import TINY_REGIONS
from vlbench import parse
from vlbench.cli import main
from vlbench.measure import run_case
from vlbench.options import MeasureOptions, TimingOptions
from vlbench.report.data import collect
from vlbench.report.markdown import markdown_from_data
from vlbench.results import CaseResult, CaseSpec, is_skipped
from vlbench.stats import summarize
from vlbench.store import Store
from vlbench.suites import SuiteError, load_suite, parse_suite
from vlbench.waterfall import CHANGES, Config, find_waterfalls, table_rows, waterfall_summary

ROOT = Path(__file__).resolve().parents[1]
FAST = MeasureOptions(timing=TimingOptions(warmup=0, min_repeats=1, min_time_s=0.0),
                      compile_backend="eager")


# --- variants by name -------------------------------------------------------------------------

def test_a_variant_is_the_preset_with_its_visual_fields_replaced_and_named_canonically() -> None:
    base = resolve_preset("uniter-base")
    variant = resolve_preset("uniter-base[post_nms_top_n=100,nms=class-agnostic]")
    assert variant.name == "uniter-base[nms=class-agnostic,post_nms_top_n=100]"
    assert resolve_preset(variant.name).name == variant.name  # the name rebuilds it
    assert (variant.visual.nms, variant.visual.post_nms_top_n) == ("class-agnostic", 100)
    assert variant.visual.head == base.visual.head and variant.fusion == base.fusion
    assert (variant.image_size, variant.text_len) == (base.image_size, base.text_len)
    assert resolve_preset("uniter-base[nms=per-class]") == base  # no change: the preset itself
    assert resolve_preset("uniter-base[nms_threshold=0.5]").name == (
        "uniter-base[nms_threshold=0.5]")


def test_a_variant_takes_the_tiny_size_and_builds_what_it_names() -> None:
    tiny = resolve_preset("uniter-base[head=fpn,nms=class-agnostic]", "tiny")
    assert tiny.name == "uniter-base-tiny[head=fpn,nms=class-agnostic]"
    assert tiny.visual.backbone == TINY_REGIONS.backbone
    model = build_model(tiny.name)
    assert type(model.visual.nms).__name__ == "ClassAgnosticNMS"
    assert model.visual.fpn is not None and type(model.visual.box_head).__name__ == "MLPBoxHead"


@pytest.mark.parametrize("name, message", [
    ("uniter-base-tiny[foo=1]", "has no field 'foo'; valid: backbone, head"),
    ("uniter-base-tiny[post_nms_top_n=many]", "post_nms_top_n=many is not an integer"),
    ("uniter-base-tiny[attributes=yes]", "attributes=yes is not true or false"),
    ("uniter-base-tiny[nms=foo]", "unknown NMS kind 'foo'; valid: per-class, class-agnostic"),
    ("uniter-base-tiny[num_boxes=50]", "fixed box count 50 exceeds the 20 proposals"),
    ("uniter-base-tiny[nms]", "malformed override 'nms'"),
    ("uniter-base-tiny[nms=a|b]", "malformed override"),
    ("uniter-base-tiny[nms=a,nms=b]", "sets 'nms' twice"),
    ("uniter-base-tiny[nms=a", "expected NAME[field=value,...]"),
    ("nope[nms=a]", "unknown model 'nope'"),
])
def test_a_bad_variant_is_one_line_naming_the_problem(name: str, message: str) -> None:
    with pytest.raises((KeyError, ValueError)) as caught:
        resolve_preset(name)
    text = str(caught.value)
    assert message in text and "\n" not in text


def test_model_lists_keep_a_variants_commas() -> None:
    assert parse.names("vilt-b32,uniter-base[nms=class-agnostic,post_nms_top_n=100],lxmert",
                       "--models") == [
        "vilt-b32", "uniter-base[nms=class-agnostic,post_nms_top_n=100]", "lxmert"]


def test_the_views_spelling_of_every_step_is_the_canonical_one() -> None:
    """vlbench.waterfall spells step names without model code; resolve_preset must agree."""
    for base in ("uniter-base", "uniter-base-tiny"):
        config = Config()
        for change in CHANGES:
            config = config.plus(change)
            for step in (config, Config().plus(change)):
                assert resolve_preset(step.model(base)).name == step.model(base)


# --- the suite --------------------------------------------------------------------------------

def _all_steps(base: str) -> set[tuple[str, str, str]]:
    cumulative, config = set(), Config()
    for change in CHANGES:
        config = config.plus(change)
        cumulative.add((config.model(base), config.precision, config.mode))
    alone = {(c.model(base), c.precision, c.mode) for c in (Config().plus(ch) for ch in CHANGES)}
    return {(base, "fp32", "eager"), *cumulative, *alone}


def test_the_regions_suite_asks_for_every_step_and_marks_bf16_and_compile_gpu_only() -> None:
    suite = load_suite("regions")
    for device in ("cpu", "cuda"):
        cases = suite.cases(device)
        asked = {(c.model, c.precision, c.mode) for c in cases}
        assert _all_steps("uniter-base") <= asked
        assert ("vilt-b32", "fp32", "eager") in asked
        assert ("uniter-base-precomputed", "fp32", "eager") in asked  # CPU's last step
        for c in cases:
            assert bool(c.gpu_only) == ((c.precision, c.mode) != ("fp32", "eager"))


def test_a_suite_entry_sets_its_own_precision_and_mode_and_they_are_checked() -> None:
    suite = parse_suite(textwrap.dedent("""
        models:
          - vilt-b32-tiny
          - {model: vilt-b32-tiny, precision: bf16, mode: compile-fusion, gpu_only: needs one}
        precisions: [fp32, tf32]
    """))
    got = [(c.precision, c.mode, c.gpu_only) for c in suite.cases("cpu")]
    assert got == [("fp32", "eager", None), ("tf32", "eager", None),
                   ("bf16", "compile-fusion", "needs one")]
    for bad, message in (("precision: fp64", "unknown precision 'fp64'"),
                         ("mode: fast", "unknown mode 'fast'"),
                         ("gpu_only: true", "gpu_only is the reason")):
        with pytest.raises(SuiteError, match=message):
            parse_suite(f"models:\n  - {{model: vilt-b32-tiny, {bad}}}\n")


# --- skipping and compiling the fusion ----------------------------------------------------------

def test_a_gpu_only_case_off_a_gpu_is_recorded_as_skipped_with_its_reason() -> None:
    spec = CaseSpec("vilt-b32-tiny", 1, (64, 96), 8, "bf16", "cpu", gpu_only="GPU practice")
    result = run_case(spec, FAST)
    assert (result.status, result.message) == ("error", "skipped on cpu: GPU practice")
    assert is_skipped(result) and result.end_to_end is None


def test_compile_fusion_compiles_the_fusion_only_and_times_end_to_end() -> None:
    spec = CaseSpec("vilt-b32-tiny", 1, (64, 96), 8, "fp32", "cpu", mode="compile-fusion")
    result = run_case(spec, FAST)
    assert result.status == "ok", result.message
    assert result.settings["compiled"] == "fusion"
    assert result.settings["compile_backend"] == "eager"
    assert result.end_to_end is not None and result.stage_sum_ms is None
    assert all(s.timing is None for s in result.stages)  # never hooked
    assert next(s for s in result.stages if s.name == "fusion").flops > 0


# --- the view, from hand-made results ------------------------------------------------------------

def _case(model: str, ms: float | None, *, precision: str = "fp32", mode: str = "eager",
          embedder: str = "region", fusion: str = "single-stream",
          message: str = "") -> CaseResult:
    spec = CaseSpec(model, 1, (800, 1333), 60, precision, "cpu", mode=mode)
    if ms is None:
        return CaseResult(spec=spec, status="error", message=message)
    return CaseResult(spec=spec, status="ok", embedder=embedder, fusion=fusion,
                      end_to_end=summarize([ms, ms, ms]))


SKIP = "skipped on cpu: bf16 and compile need a GPU"
FPN = "uniter-base[head=fpn,nms=class-agnostic,post_nms_top_n=100]"


def _cpu_run(vilt_ms: float = 100.0) -> list[CaseResult]:
    """What the regions suite stores on a CPU: bf16 and compile steps skipped."""
    return [
        _case("vilt-b32", vilt_ms, embedder="patch"),
        _case("uniter-base", 5000.0),
        _case("uniter-base[nms=class-agnostic]", 4000.0),
        _case("uniter-base[nms=class-agnostic,post_nms_top_n=100]", 2000.0),
        _case(FPN, 1000.0),
        _case(FPN, None, precision="bf16", message=SKIP),
        _case(FPN, None, precision="bf16", mode="compile-fusion", message=SKIP),
        _case("uniter-base-precomputed", None, precision="bf16", mode="compile-fusion",
              message=SKIP),
        _case("uniter-base-precomputed", 50.0, embedder="precomputed"),
        _case("uniter-base[post_nms_top_n=100]", 3000.0),
        _case("uniter-base[head=fpn]", 2500.0),
        _case("uniter-base", None, precision="bf16", message=SKIP),
        _case("uniter-base", None, mode="compile-fusion", message=SKIP),
        _case("lxmert", 9000.0),  # a region model without steps: no waterfall
    ]


def test_the_cumulative_chain_goes_in_order_and_past_skipped_steps() -> None:
    (wf,) = find_waterfalls(_cpu_run())
    assert wf.base == "uniter-base" and wf.reference.spec.model == "vilt-b32"
    assert [s.label for s in wf.cumulative] == [
        "faithful", "+ class-agnostic NMS", "+ 100 proposals", "+ FPN + light head", "+ bf16",
        "+ compile fusion", "+ precomputed"]
    assert [s.status for s in wf.cumulative] == ["ok"] * 4 + ["skipped"] * 2 + ["ok"]
    assert [wf.ratio(s) for s in wf.cumulative] == [50.0, 40.0, 20.0, 10.0, None, None, 0.5]
    skipped = wf.cumulative[4]
    assert skipped.reason == SKIP and skipped.model == FPN and skipped.config.how == "bf16 eager"
    last = wf.cumulative[-1]  # measured without the skipped changes, and says so
    assert (last.model, last.config.how) == ("uniter-base-precomputed", "fp32 eager")
    assert last.note == "without bf16, compile fusion (not measured)"
    rows = table_rows(wf, wf.cumulative, cumulative=True)
    assert [r.change for r in rows] == ["", "-20%", "-50%", "-50%", "", "", "-95%"]
    assert rows[4].note == SKIP and rows[4].ms == "-"


def test_each_change_alone_starts_from_the_faithful_pipeline() -> None:
    (wf,) = find_waterfalls(_cpu_run())
    assert [s.model for s in wf.alone] == [
        "uniter-base[nms=class-agnostic]", "uniter-base[post_nms_top_n=100]",
        "uniter-base[head=fpn]", "uniter-base", "uniter-base", "uniter-base-precomputed"]
    assert [s.config.how for s in wf.alone][3:5] == ["bf16 eager", "fp32 compile-fusion"]
    assert [wf.ratio(s) for s in wf.alone] == [40.0, 30.0, 25.0, None, None, 0.5]
    rows = table_rows(wf, wf.alone, cumulative=False)
    assert [r.change for r in rows] == ["-20%", "-40%", "-50%", "", "", "-99%"]
    assert rows[3].note == SKIP


def test_on_a_gpu_every_step_is_measured_and_compared_like_for_like() -> None:
    results = [r for r in _cpu_run() if r.status == "ok"] + [
        _case(FPN, 400.0, precision="bf16"),
        _case(FPN, 300.0, precision="bf16", mode="compile-fusion"),
        _case("uniter-base-precomputed", 20.0, precision="bf16", mode="compile-fusion",
              embedder="precomputed"),
        _case("vilt-b32", 40.0, precision="bf16", mode="compile-fusion", embedder="patch"),
    ]
    (wf,) = find_waterfalls(results)
    assert [s.ms for s in wf.cumulative] == [5000.0, 4000.0, 2000.0, 1000.0, 400.0, 300.0, 20.0]
    assert wf.cumulative[-1].note == ""
    assert wf.like_for_like(wf.cumulative[-1]) == 0.5  # 20 ms against ViLT's 40 at that setting
    assert wf.like_for_like(wf.cumulative[4]) is None  # no ViLT at bf16 eager in this run
    assert [s.status for s in wf.alone][3:5] == ["missing", "missing"]
    assert "not in this run" in wf.alone[3].reason


def _store(path: Path, runs: list[list[CaseResult]]) -> list[int]:
    ids = []
    with Store(path) as store:
        for results in runs:
            run_id = store.start_run(label=None, suite="regions", command="vlbench run",
                                     env={}, settings={})
            for result in results:
                store.add_case(run_id, result)
            store.finish_run(run_id)
            ids.append(run_id)
    return ids


def test_ratios_divide_by_the_same_runs_patch_model(tmp_path: Path) -> None:
    db = tmp_path / "two.sqlite"
    ids = _store(db, [_cpu_run(100.0), _cpu_run(200.0)])
    with Store(db) as store:
        data = collect(store, ids)
        markdown = markdown_from_data(data)
    (section,) = [s.data for s in data.sections if s.section.name == "regions"]
    assert [v.cumulative[0].ratio for v in section.waterfalls] == ["50.0x", "25.0x"]
    assert [v.title for v in section.waterfalls] == ["uniter-base, batch 1, run 1",
                                                     "uniter-base, batch 1, run 2"]
    assert "### Region pipeline: design or practice?" in markdown
    bf16 = [line for line in markdown.splitlines() if line.startswith("| + bf16 |")]
    assert len(bf16) == 2 and all(line.endswith(f"| - | - |  | {SKIP} |") for line in bf16)


def test_no_waterfall_without_steps() -> None:
    results = [_case("vilt-b32", 100.0, embedder="patch"), _case("uniter-base", 5000.0)]
    assert find_waterfalls(results) == [] and waterfall_summary(results) == ""


# --- the suite at tiny size, and the view without model code -----------------------------------

READ_WITHOUT_MODELS = textwrap.dedent('''
    import json, sys
    from importlib.abc import MetaPathFinder

    BLOCKED = ("torch", "torchvision", "timm", "transformers", "architectures",
               "feature_extractors")

    class Refuse(MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, Refuse())
    from vlbench.report import write_report
    from vlbench.rounds import pool_rounds
    from vlbench.store import Store
    from vlbench.waterfall import waterfall_summary

    with Store.open(sys.argv[1]) as store:
        html = write_report(store, [1], out=sys.argv[2]).read_text()
        summary = waterfall_summary(pool_rounds(store.cases(1)))
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print(json.dumps({"html": html, "summary": summary, "loaded": loaded}))
''')


def test_the_tiny_regions_suite_runs_every_step_and_the_view_needs_no_model_code(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "regions.sqlite"
    status = main(["run", "--suite", "regions", "--size", "tiny", "--db", str(db),
                   "--no-progress", "--warmup", "0", "--repeats", "1", "--min-time", "0",
                   "--threads", "1"])
    printed = capsys.readouterr().out
    assert status == 0
    with Store(db) as store:
        cases = store.cases(1)
    assert len(cases) == 16
    assert {c.spec.model for c in cases if c.status == "ok"} >= {
        "vilt-b32-tiny", "uniter-base-tiny", "uniter-base-tiny[nms=class-agnostic]",
        "uniter-base-tiny[head=fpn,nms=class-agnostic,post_nms_top_n=100]",
        "uniter-base-precomputed-tiny"}
    skipped = [c for c in cases if is_skipped(c)]
    assert len(skipped) == 8 and all(c.spec.precision == "bf16" or c.spec.mode != "eager"
                                     for c in skipped)
    assert "Region pipeline, one change at a time" in printed
    done = subprocess.run([sys.executable, "-c", READ_WITHOUT_MODELS, str(db),
                           str(tmp_path / "r.html")], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    assert out["loaded"] == []
    assert 'id="regions"' in out["html"] and out["html"].count('class="regions-step"') == 13
    assert "skipped on cpu: bf16 and torch.compile steps" in out["html"]
    assert out["summary"] in printed  # the run printed what the store gives back
