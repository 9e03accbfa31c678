"""Hostile exports (``vlbench compare FILE.json``): nothing in a file anyone can edit is trusted.
A NaN, infinite, negative or zero median, a string where a number belongs, a missing field or a
damaged shape is one line naming the file, the run and the case, exit status 2, never a verdict
computed from it; and no torch: every command line here runs in one fresh interpreter."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pytest
from hostile import assert_one_line, export, run_fresh, synthetic_store

BAD_MEDIAN = "runs.0.cases.0.end_to_end.median_ms"


def _set(path: str, value: Any) -> Callable[[dict], None]:
    """An edit of the export at a dotted path (list indices as numbers)."""
    def edit(data: dict) -> None:
        *parents, last = path.split(".")
        target: Any = data
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if value is _DELETE:
            del target[last]
        elif isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value
    return edit


_DELETE = object()
CASE = "runs.0.cases.0"
#: an edit of a valid export (or its raw text) -> what the one line must contain
EXPORTS: dict[str, tuple[Callable[[dict], None] | str | bytes, list[str]]] = {
    "median-nan": (_set(BAD_MEDIAN, math.nan), ["run 2 case", "median_ms", "nan"]),
    "median-negative": (_set(BAD_MEDIAN, -0.5), ["run 2 case", "median_ms", "-0.5"]),
    "median-infinite": (_set(BAD_MEDIAN, math.inf), ["run 2 case", "median_ms", "inf"]),
    "median-zero": (_set(BAD_MEDIAN, 0.0), ["run 2 case", "median_ms", "takes time"]),
    "median-string": (_set(BAD_MEDIAN, "fast"), ["run 2 case", "median_ms", "'fast'"]),
    "median-bool": (_set(BAD_MEDIAN, True), ["run 2 case", "median_ms"]),
    "end-to-end-string": (_set(f"{CASE}.end_to_end", "fast"), ["end_to_end", "'fast'"]),
    "stage-median-nan": (_set(f"{CASE}.stages.visual.median_ms", math.nan),
                         ["run 2 case", "median_ms"]),
    "stage-string": (_set(f"{CASE}.stages.visual", "fast"), ["stages.visual"]),
    "stages-list": (_set(f"{CASE}.stages", []), ["stages", "expected an object"]),
    "sample-negative": (_set(f"{CASE}.end_to_end.samples_ms.0", -1.0), ["samples_ms[0]"]),
    "sample-infinite": (_set(f"{CASE}.end_to_end.samples_ms.1", math.inf), ["samples_ms[1]"]),
    "stage-sum-nan": (_set(f"{CASE}.stage_sum_ms", math.nan), ["stage_sum_ms"]),
    "batch-size-string": (_set(f"{CASE}.batch_size", "1"), ["batch_size", "an integer"]),
    "image-size-scalar": (_set(f"{CASE}.image_size", 64), ["image_size"]),
    "flops-float": (_set(f"{CASE}.flops_total", 1.5), ["flops_total", "an integer"]),
    "status-unknown": (_set(f"{CASE}.status", "great"), ["status", "great"]),
    "model-missing": (_set(f"{CASE}.model", _DELETE), ["model", "missing"]),
    "case-not-object": (_set(CASE, 5), ["run 2 case #1", "case object"]),
    "runs-not-list": (_set("runs", {}), ["'runs' must be a list"]),
    "run-id-string": (_set("runs.0.id", "2"), ["run #1 is damaged"]),
    "cases-not-list": (_set("runs.0.cases", "x"), ["run #1 is damaged"]),
    "schema-other": (_set("schema", "other"), ["not a vlbench results export"]),
    "version-other": (_set("schema_version", 99), ["schema_version 99"]),
    "not-json": ("{", ["not valid JSON"]),
    "empty": ("", ["not valid JSON"]),
    "binary": (bytes(range(256)), ["not a text file"]),
    "deep": ("[" * 100_000 + "]" * 100_000, ["nested too deep"]),
}



@pytest.fixture(scope="module")
def refused(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``vlbench compare GOOD.json BAD.json`` for every bad export (and the unedited one first),
    in one fresh interpreter."""
    base = tmp_path_factory.mktemp("exports")
    db = synthetic_store(base / "results.sqlite")  # run 2 is twice as slow as run 1
    export(db, 1, base / "good.json")
    slower = export(db, 2, base / "slower.json")
    argvs = [["compare", str(base / "good.json"), str(base / "slower.json"), "--run-noise",
              "0.01"]]
    for name, (edit, _) in EXPORTS.items():
        path = base / f"{name}.json"
        if callable(edit):
            data = json.loads(json.dumps(slower))
            edit(data)
            path.write_text(json.dumps(data))  # NaN and Infinity as bare words, as Python does
        else:
            path.write_bytes(edit if isinstance(edit, bytes) else edit.encode())
        argvs.append(["compare", str(base / "good.json"), str(path), "--run-noise", "0.01"])
    results, torch_loaded = run_fresh(argvs, base)
    return {"valid": results[0], "results": dict(zip(EXPORTS, results[1:], strict=True)),
            "torch": torch_loaded}


@pytest.mark.parametrize("name", EXPORTS)
def test_bad_export_is_one_line_naming_file_run_and_case(refused: dict[str, Any],
                                                         name: str) -> None:
    code, out, err = refused["results"][name]
    assert_one_line(code, err, f"{name}.json", *EXPORTS[name][1])
    assert out == ""


def test_the_unedited_export_flags_the_real_slowdown_without_torch(
        refused: dict[str, Any]) -> None:
    code, out, _ = refused["valid"]
    assert code == 1 and "SLOWER" in out  # a real 2x slowdown, caught
    assert refused["torch"] is False
