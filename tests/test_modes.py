"""Execution modes (eager, torch.compile, CUDA graphs), per-case thread counts, achieved share
of the matmul peak and profiler traces, on tiny presets."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from vlbench.cli import main
from vlbench.launchers import run_cases
from vlbench.measure import run_case
from vlbench.options import LaunchOptions, MeasureOptions, RunOptions
from vlbench.results import CaseSpec
from vlbench.store import Store
from vlbench.suites import SuiteError, parse_suite, usable_cores
from vlbench.table import results_table
from vlbench.timing import TimingOptions
from vlbench.trace import trace_path

FAST = MeasureOptions(TimingOptions(warmup=1, min_repeats=3, min_time_s=0.0, max_repeats=3))


def tiny(**changes: object) -> CaseSpec:
    fields = {"model": "vilt-b32-tiny", "batch_size": 1, "image_size": (64, 96), "text_len": 8,
              "precision": "fp32", "device": "cpu", **changes}
    return CaseSpec(**fields)


def test_compile_is_timed_end_to_end_only() -> None:
    options = MeasureOptions(FAST.timing, compile_backend="aot_eager")
    r = run_case(tiny(mode="compile"), options)
    assert r.status == "ok", r.message
    assert r.end_to_end is not None and r.end_to_end.n == 3
    assert r.stages and all(s.timing is None and s.samples_ms == () for s in r.stages)
    assert all(s.achieved_flops_per_s is None and s.peak_share is None for s in r.stages)
    assert any(s.flops > 0 for s in r.stages) and all(s.params >= 0 for s in r.stages)
    assert sum(s.flops for s in r.stages if s.parent is None) == r.flops_total > 0
    assert r.stage_sum_ms is None
    assert r.settings["mode"] == "compile"
    assert r.settings["compile_s"] > 0
    assert r.settings["stages_timed"] is False
    assert r.settings["compile_backend"] == "aot_eager"
    assert r.settings["graph_breaks"] >= 0
    assert "compile" in results_table([r])


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour")
def test_cudagraphs_on_cpu_is_a_recorded_failure() -> None:
    r = run_case(tiny(mode="cudagraphs"), FAST)
    assert (r.status, r.message) == ("error", "CUDA graphs need a GPU")
    assert "CUDA graphs need a GPU" in results_table([r])


def test_unknown_mode_is_a_recorded_failure() -> None:
    r = run_case(tiny(mode="jit"), FAST)
    assert r.status == "error" and "unknown mode 'jit'" in r.message


def test_case_threads_apply_and_the_run_setting_comes_back() -> None:
    before = torch.get_num_threads()
    try:
        results = run_cases([tiny(threads=1), tiny()],
                            RunOptions(FAST, LaunchOptions(threads=2)), on_result=lambda r: None)
        assert [r.status for r in results] == ["ok", "ok"]
        assert results[0].settings["threads"] == 1
        assert results[1].settings["threads"] == 2
        assert torch.get_num_threads() == 2
        assert isinstance(results[0].settings["flush_denormal"], bool)
    finally:
        torch.set_num_threads(before)


def test_achieved_share_of_the_peak_for_every_stage_with_flops() -> None:
    r = run_case(tiny(), FAST)
    assert r.status == "ok", r.message
    peak = r.settings["peak_flops"]
    assert peak > 0
    counted = [s for s in r.stages if s.flops > 0]
    assert counted
    for s in counted:
        assert s.achieved_flops_per_s == pytest.approx(s.flops / (s.timing.median_ms / 1e3))
        assert 0 < s.peak_share < 5  # a stage can beat a 1024 matmul's best only modestly
        assert s.peak_share == pytest.approx(s.achieved_flops_per_s / peak)
    for s in r.stages:
        if s.flops == 0:
            assert s.achieved_flops_per_s is None and s.peak_share is None


def test_suite_modes_and_threads_forms() -> None:
    base = "models: [vilt-b32-tiny]\n"
    suite = parse_suite(base + "modes: [eager, compile]\nthreads: [1, 2]\n")
    assert suite.modes == ("eager", "compile") and suite.threads == (1, 2)
    cases = suite.cases("cpu")
    assert [(c.mode, c.threads) for c in cases] == [
        ("eager", 1), ("eager", 2), ("compile", 1), ("compile", 2)]
    assert parse_suite(base + "threads: all\n").threads == tuple(range(1, usable_cores() + 1))
    default = parse_suite(base)
    assert (default.modes, default.threads) == (("eager",), (None,))
    assert default.cases("cpu")[0] == tiny(image_size=default.cases("cpu")[0].image_size,
                                           text_len=default.cases("cpu")[0].text_len)
    for bad, expected in (("modes: [eager, jit]", "unknown mode 'jit'"),
                          ("modes: compile", "'modes' must be a list"),
                          ("modes: [eager, eager]", "twice"),
                          ("threads: [0, 2]", "'threads' must be"),
                          ("threads: some", "'threads' must be"),
                          ("threads: []", "'threads' must be")):
        with pytest.raises(SuiteError) as info:
            parse_suite(base + bad + "\n", "s.yaml")
        message = str(info.value)
        assert "\n" not in message and message.startswith("suite s.yaml: ")
        assert expected in message


def test_trace_writes_one_chrome_trace_per_case(tmp_path: Path) -> None:
    options = MeasureOptions(FAST.timing, trace_dir=str(tmp_path))
    specs = [tiny(), tiny(threads=1)]
    results = [run_case(spec, options) for spec in specs]
    paths = [trace_path(spec, tmp_path) for spec in specs]
    assert len(set(paths)) == 2
    for result, path in zip(results, paths, strict=True):
        assert result.status == "ok", result.message
        assert result.settings["trace"] == str(path)
        data = json.loads(path.read_text())
        assert data["traceEvents"]
    assert sorted(tmp_path.iterdir()) == sorted(paths)


def test_cli_modes_compile_backend_and_trace(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    db, traces = tmp_path / "r.sqlite", tmp_path / "traces"
    code = main(["run", "--models", "vilt-b32-tiny", "--modes", "eager,compile",
                 "--compile-backend", "aot_eager", "--trace", str(traces), "--warmup", "1",
                 "--repeats", "2", "--min-time", "0", "--no-progress", "--device", "cpu",
                 "--no-isolation", "--db", str(db)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "fus GF/s %pk" in out
    with Store.open(db) as store:
        cases = store.cases(1)
        settings = store.get_run(1).settings
    assert [c["mode"] for c in settings["cases"]] == ["eager", "compile"]
    assert settings["compile_backend"] == "aot_eager"
    assert len(list(traces.glob("*.json"))) == 2
    # (the store's case key tells the two apart once it includes the mode)
    compiled = [c for c in cases if c.spec.mode == "compile"]
    assert compiled and compiled[-1].status == "ok" and compiled[-1].settings["compile_s"] > 0


def test_cli_bad_mode_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main(["run", "--models", "vilt-b32-tiny", "--modes", "eager,fast", "--device", "cpu",
                 "--db", str(tmp_path / "r.sqlite")])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "unknown mode 'fast'" in err


def test_mode_and_threads_give_distinct_case_keys():
    from vlbench.store import case_key

    base = CaseSpec("vilt-b32-tiny", 1, (64, 96), 8, "fp32", "cpu")
    keys = {case_key(base), case_key(replace(base, mode="compile")),
            case_key(replace(base, threads=1)), case_key(replace(base, threads=2))}
    assert len(keys) == 4
    assert case_key(base) == "vilt-b32-tiny|1|64x96|8|fp32|cpu"  # eager keys did not change
