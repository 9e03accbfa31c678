"""A run's options (``vlbench.options``): recorded from their fields, read back from a stored
run of any vlbench version, and the command line's run flags derived from the same fields."""

from __future__ import annotations

import dataclasses

import pytest

from vlbench.cli import main
from vlbench.cli.parsers import build_parser
from vlbench.cli.run_options import RUN_FLAG_CLASSES, fresh_flags_given
from vlbench.options import (
    FLAG,
    LaunchOptions,
    MeasureOptions,
    RunOptions,
    TimingOptions,
    flagged_fields,
)


def test_settings_round_trip_through_json_shaped_values() -> None:
    options = RunOptions(
        MeasureOptions(TimingOptions(warmup=0, min_repeats=3), head=True, seed=4,
                       compile_backend="aot_eager", trace_dir="/tmp/t"),
        LaunchOptions(threads=2, isolation="process", memory_budget_bytes=2**30,
                      plugins=("/a.py",), baseline_plugins=("/b.py",)))
    settings = options.settings()
    assert settings["plugins"] == ["/a.py"] and settings["timing"]["min_repeats"] == 3
    assert RunOptions.from_settings(settings) == options


def test_a_run_stored_by_the_previous_release_reads_back() -> None:
    """The keys ``CaseOptions.settings()`` wrote before the split, and a run from before
    isolation, plugins and Ray existed."""
    old = {"timing": dict(TimingOptions().__dict__), "head": False, "seed": 0, "threads": 2,
           "isolation": "process", "memory_budget_bytes": 123, "compile_backend": None,
           "trace_dir": None, "executor": "local", "ray_address": None, "allow_shared": False,
           "plugins": [], "python": None, "baseline_plugins": None, "baseline_python": None,
           "suite": "latency", "device": "cpu", "cases": []}
    options = RunOptions.from_settings(old)
    assert options.launch.isolated and options.launch.memory_budget_bytes == 123
    assert options.launch.plugins == () and not options.launch.interleaved
    oldest = RunOptions.from_settings({"timing": dict(TimingOptions().__dict__), "head": True,
                                       "seed": 1})
    assert oldest.measure.head and oldest.launch == LaunchOptions()


def test_every_flagged_field_is_a_run_flag_refused_by_resume(
        capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    run = next(a for a in parser._subparsers._group_actions[0].choices.items()
               if a[0] == "run")[1]
    flags = {s for action in run._actions for s in action.option_strings}
    fields = flagged_fields(*RUN_FLAG_CLASSES)
    for f in fields:
        assert f.metadata[FLAG][0][0] in flags, f.name
    assert {"--warmup", "--repeats", "--seed", "--threads", "--rounds", "--baseline-python"
            } <= {f.metadata[FLAG][0][0] for f in fields}
    args = parser.parse_args(["run", "--repeats", "3", "--no-isolation", "--plugin", "x.py"])
    assert fresh_flags_given(args) == ["--repeats", "--no-isolation", "--plugin"]
    assert main(["run", "--resume", "--allow-shared"]) == 2
    assert "drop --allow-shared" in capsys.readouterr().err


@pytest.mark.parametrize(("flag", "value", "expected"), [
    ("--repeats", "0", "must be a positive integer"),
    ("--min-time", "nan", "expected a finite number"),
    ("--max-time", "inf", "expected a finite number"),
    ("--threads", "2.5", "expected an integer"),
    ("--seed", "-1", "must be a non-negative integer"),
    ("--models", "", "expected comma-separated names"),
    ("--precisions", "fp32,fp8", "unknown precision 'fp8'"),
    ("--modes", "eager,eager", "lists a mode twice"),
])
def test_flag_values_are_checked_where_the_option_is_defined(
        capsys: pytest.CaptureFixture[str], flag: str, value: str, expected: str) -> None:
    assert main(["run", flag, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vlbench: error: argument " + flag) and expected in err
    assert len(err.splitlines()) == 1


def test_launch_options_for_a_side() -> None:
    launch = LaunchOptions(plugins=("/new.py",), baseline_plugins=("/old.py",),
                           baseline_python="/env/bin/python")
    assert launch.interleaved
    side_a = launch.for_side("A")
    assert side_a.plugins == ("/old.py",) and side_a.python == "/env/bin/python"
    assert launch.for_side("B") is launch
    assert dataclasses.replace(launch, isolation="process").isolated
