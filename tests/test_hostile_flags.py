"""Hostile command lines: every numeric flag refuses NaN, infinities, empty strings and
non-integers where an integer is meant; every name or path flag refuses an empty value; flags
bounded by the machine are checked against it. Each is one line naming the flag, exit status 2,
the store unchanged, and -- the point of checking values where their option is defined -- all
of it before torch is imported (``BEFORE_TORCH`` runs in one fresh interpreter that must end
without torch loaded). What needs the model registries or torch (``AFTER_TORCH``) is refused
with nothing stored, too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hostile import assert_one_line, run_fresh, state, synthetic_store

from vlbench.cli import main
from vlbench.machine import usable_cores

RUN = ("run", "--models", "vilt-b32-tiny", "--no-progress", "--device", "cpu")
TOO_MANY_THREADS = str(usable_cores() + 1)

#: argv (``{db}``: the store) -> what the one line must contain; none of these loads torch
BEFORE_TORCH: dict[str, tuple[list[str], list[str]]] = {
    # names and paths: empty is an error, never "the default"
    "models-empty": (["run", "--models", ""], ["--models", "expected comma-separated"]),
    "models-commas": (["run", "--models", ",,"], ["--models", "',,'"]),
    "models-blank": (["run", "--models", " "], ["--models"]),
    "compose-empty": (["run", "--compose", ""], ["--compose"]),
    "suite-empty": (["run", "--suite", ""], ["--suite", "non-empty"]),
    "label-empty": ([*RUN, "--label", ""], ["--label", "non-empty"]),
    "device-empty": (["run", "--device", ""], ["--device", "unknown device"]),
    "device-unknown": (["run", "--device", "tpu"], ["--device", "unknown device 'tpu'"]),
    "device-bad-index": (["run", "--device", "cuda:x"], ["--device", "'cuda:x'"]),
    "plugin-empty": (["run", "--plugin", ""], ["--plugin", "non-empty"]),
    "baseline-plugin-empty": ([*RUN, "--baseline-plugin", ""], ["--baseline-plugin"]),
    "baseline-python-empty": ([*RUN, "--baseline-python", ""], ["--baseline-python"]),
    "baseline-python-missing": ([*RUN, "--baseline-python", "/nonexistent/python"],
                                ["--baseline-python", "not an executable"]),
    "compile-backend-empty": ([*RUN, "--compile-backend", ""], ["--compile-backend"]),
    "compile-backend-without-compile": ([*RUN, "--compile-backend", "inductor"],
                                        ["--compile-backend", "--modes compile"]),
    "trace-empty": ([*RUN, "--trace", ""], ["--trace", "non-empty"]),
    "address-empty": ([*RUN, "--address", ""], ["--address", "non-empty"]),
    "address-without-ray": ([*RUN, "--address", "127.0.0.1:1"], ["--address", "--executor ray"]),
    "allow-shared-without-ray": ([*RUN, "--allow-shared"], ["--allow-shared"]),
    "rounds-on-ray": ([*RUN, "--rounds", "2", "--executor", "ray"], ["--rounds"]),
    "executor-unknown": ([*RUN, "--executor", "slurm"], ["--executor", "'slurm'"]),
    "size-unknown": ([*RUN, "--size", "huge"], ["--size", "'huge'"]),
    "precisions-empty": ([*RUN, "--precisions", ""], ["--precisions"]),
    "precisions-commas": ([*RUN, "--precisions", ","], ["--precisions"]),
    "modes-empty": ([*RUN, "--modes", ""], ["--modes"]),
    "db-empty": ([*RUN, "--db", ""], ["--db", "non-empty"]),
    "resume-with-fresh-flags": (["run", "--resume", "--models", "x"], ["drop --models"]),
    "resume-without-store": (["run", "--resume", "--db", "{db}.absent"], ["nothing to resume"]),
    # integers: NaN, infinities, fractions, empty strings, out of range
    **{f"{flag}-{label}": ([*RUN, flag, value], [flag])
       for flag in ("--warmup", "--repeats", "--max-repeats", "--seed", "--threads",
                    "--text-len", "--rounds")
       for label, value in (("nan", "nan"), ("inf", "inf"), ("fraction", "2.5"), ("empty", ""),
                            ("negative", "-1"), ("word", "ten"))},
    "repeats-zero": ([*RUN, "--repeats", "0"], ["--repeats", "positive"]),
    "threads-zero": ([*RUN, "--threads", "0"], ["--threads", "positive"]),
    "rounds-zero": ([*RUN, "--rounds", "0"], ["--rounds", "positive"]),
    "text-len-zero": ([*RUN, "--text-len", "0"], ["--text-len", "positive"]),
    "batch-sizes-empty": ([*RUN, "--batch-sizes", ""], ["--batch-sizes"]),
    "batch-sizes-gap": ([*RUN, "--batch-sizes", "1,,2"], ["--batch-sizes"]),
    "batch-sizes-nan": ([*RUN, "--batch-sizes", "nan"], ["--batch-sizes", "'nan'"]),
    "batch-sizes-inf": ([*RUN, "--batch-sizes", "inf"], ["--batch-sizes"]),
    "batch-sizes-fraction": ([*RUN, "--batch-sizes", "1.5"], ["--batch-sizes"]),
    "batch-sizes-negative": ([*RUN, "--batch-sizes", "-1"], ["--batch-sizes"]),
    "image-size-empty": ([*RUN, "--image-size", ""], ["--image-size", "HEIGHTxWIDTH"]),
    "image-size-nan": ([*RUN, "--image-size", "nanxnan"], ["--image-size"]),
    "image-size-fraction": ([*RUN, "--image-size", "64.5x96"], ["--image-size"]),
    "image-size-zero": ([*RUN, "--image-size", "0x96"], ["--image-size"]),
    "image-size-negative": ([*RUN, "--image-size", "-64x96"], ["--image-size"]),
    "image-size-three": ([*RUN, "--image-size", "64x96x3"], ["--image-size"]),
    # real numbers: NaN, infinities, empty, out of range
    **{f"{flag}-{label}": ([*RUN, flag, value], [flag])
       for flag in ("--min-time", "--max-time", "--memory-budget")
       for label, value in (("nan", "nan"), ("inf", "inf"), ("minus-inf", "-inf"),
                            ("empty", ""), ("negative", "-1"), ("word", "fast"))},
    "max-time-zero": ([*RUN, "--max-time", "0"], ["--max-time", "positive"]),
    "memory-budget-zero": ([*RUN, "--memory-budget", "0"], ["--memory-budget", "positive"]),
    # bounded by the machine that runs the cases (here: the local executor)
    "threads-beyond-cores": ([*RUN, "--threads", TOO_MANY_THREADS],
                             ["--threads", "usable core"]),
    "memory-budget-beyond-memory": ([*RUN, "--memory-budget", "1000000"],
                                    ["--memory-budget", "GiB of memory"]),
    # the gate's numbers
    **{f"compare-{flag}-{label}": (["compare", "1", "2", flag, value, "--db", "{db}"], [flag])
       for flag in ("--threshold", "--alpha", "--run-noise")
       for label, value in (("nan", "nan"), ("inf", "inf"), ("empty", ""), ("negative", "-0.1"),
                            ("word", "big"))},
    "compare-alpha-one": (["compare", "1", "2", "--alpha", "1", "--db", "{db}"], ["--alpha"]),
    "compare-alpha-zero": (["compare", "1", "2", "--alpha", "0", "--db", "{db}"], ["--alpha"]),
    "compare-ref-empty": (["compare", "", "2", "--db", "{db}"], ["non-empty"]),
    "compare-markdown-empty": (["compare", "1", "2", "--markdown", "", "--db", "{db}"],
                               ["--markdown"]),
    "compare-db-empty": (["compare", "1", "2", "--db", ""], ["--db", "non-empty"]),
    "export-db-empty": (["export", "--db", ""], ["--db", "non-empty"]),
    "export-run-empty": (["export", "--run", "", "--db", "{db}"], ["--run", "non-empty"]),
    "export-out-empty": (["export", "--out", "", "--db", "{db}"], ["--out", "non-empty"]),
    "report-db-empty": (["report", "--db", ""], ["--db", "non-empty"]),
    "report-run-empty": (["report", "--run", "", "--db", "{db}"], ["--run", "non-empty"]),
    "report-baseline-empty": (["report", "--baseline", "", "--db", "{db}"], ["--baseline"]),
    "report-out-empty": (["report", "--out", "", "--db", "{db}"], ["--out", "non-empty"]),
    "profile-model-empty": (["profile", ""], ["non-empty"]),
    "profile-batch-nan": (["profile", "vilt-b32", "--batch-size", "nan"], ["--batch-size"]),
    "profile-batch-fraction": (["profile", "vilt-b32", "--batch-size", "1.5"], ["--batch-size"]),
    "profile-text-len-inf": (["profile", "vilt-b32", "--text-len", "inf"], ["--text-len"]),
    "profile-image-size-empty": (["profile", "vilt-b32", "--image-size", ""], ["--image-size"]),
}

@pytest.fixture(scope="module")
def refused(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every BEFORE_TORCH command line, run in one fresh interpreter with worker isolation on
    (as a user runs vlbench), against a store of two synthetic runs."""
    base = tmp_path_factory.mktemp("flags")
    db = synthetic_store(base / "results.sqlite")
    before = state(db)
    argvs = [[a.format(db=db) for a in argv]
             + (["--db", str(db)] if "--db" not in argv and argv[0] != "profile" else [])
             for argv, _ in BEFORE_TORCH.values()]
    results, torch_loaded = run_fresh(argvs, base)
    return {"results": dict(zip(BEFORE_TORCH, results, strict=True)), "torch": torch_loaded,
            "unchanged": state(db) == before, "created": sorted(p.name for p in base.iterdir())}


@pytest.mark.parametrize("name", BEFORE_TORCH)
def test_bad_flag_is_one_line_naming_it(refused: dict[str, Any], name: str) -> None:
    code, out, err = refused["results"][name]
    assert_one_line(code, err, *BEFORE_TORCH[name][1])
    assert out == ""


def test_bad_flags_are_refused_before_torch_and_change_nothing(refused: dict[str, Any]) -> None:
    assert refused["torch"] is False
    assert refused["unchanged"]
    assert refused["created"] == ["results.sqlite"]  # no default store, no file named '-'


#: refused once the registries (or torch) are loaded, still before anything is stored
AFTER_TORCH: dict[str, tuple[list[str], list[str]]] = {
    "unknown-model": ([*RUN[:2], "nope", *RUN[3:]], ["unknown model 'nope'"]),
    "image-below-smallest-anchor": (
        ["run", "--models", "uniter-base-tiny", "--image-size", "32x48", "--no-progress",
         "--device", "cpu"], ["uniter-base-tiny", "32x48", "smallest anchor (64 px)"]),
    "unknown-compile-backend": ([*RUN, "--modes", "compile", "--compile-backend", "detectron2"],
                                ["--compile-backend", "'detectron2'"]),
    "image-below-one-patch": ([*RUN, "--image-size", "16x96"],
                              ["vilt-b32-tiny", "16x96", "smaller than one 32x32 patch"]),
    "image-leaves-no-grid-cell": (["run", "--models", "pixelbert-r50-tiny", "--image-size",
                                   "32x32", "--device", "cpu"], ["pixelbert-r50-tiny", "no grid"]),
    "suite-image-below-anchor": (["run", "--suite", "{suite}", "--device", "cpu"],
                                 ["uniter-base-tiny", "smallest anchor"]),
}


@pytest.mark.parametrize("name", AFTER_TORCH)
def test_a_plan_no_model_can_run_stores_nothing(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str) -> None:
    db = synthetic_store(tmp_path / "results.sqlite")
    suite = tmp_path / "anchor.yaml"
    suite.write_text("models: [{model: uniter-base-tiny, image_size: 48x640}]\n")
    argv = [a.format(suite=suite) for a in AFTER_TORCH[name][0]]
    before = state(db)
    capsys.readouterr()
    code = main([*argv, "--db", str(db)])
    out, err = capsys.readouterr()
    assert_one_line(code, err, *AFTER_TORCH[name][1])
    assert out == "" and state(db) == before
