"""Reading an export back: the layout ``vlbench.export`` documents, checked, and each case as a
``CaseResult`` (what ``vlbench compare FILE.json`` reads).

An export written by an older release lacks the fields added since (stage categories, the
paper's figures, the canonical input). They are derived exactly as the store's migration derives
them (``vlbench.upgrade.upgrade_case``), so an old export and an old store read alike.

An export is a file anyone can edit, so nothing in it is trusted: its runs and cases are checked
as they are read (``vlbench.records``: types, and finite non-negative medians and samples), and
anything else is a one-line ``ValueError`` naming the file, the run and the case.
"""

from __future__ import annotations

import json
import os
from typing import Any

from vlbench.export import SCHEMA_NAME
from vlbench.records import DamagedRecord, read_case
from vlbench.results import SCHEMA_VERSION, CaseResult
from vlbench.upgrade import upgrade_case

_NAN = float("nan")
#: the timing fields a case record keeps and an export may not (per stage: mean, interval)
_SUMMARY_DEFAULTS: dict[str, Any] = {
    "iqr_ms": _NAN, "p90_ms": _NAN, "mean_ms": _NAN, "cv": _NAN, "n": 0, "ci_low_ms": _NAN,
    "ci_high_ms": _NAN, "ci_coverage": _NAN, "unstable": False,
}
_STAGE_FIELDS = ("kind", "parent", "calls", "flops", "params")
_STAGE_OPTIONAL = {"peak_mem_bytes": None, "host_sync": False, "achieved_flops_per_s": None,
                   "peak_share": None}


def load_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read an export back, refusing files of another layout rather than misreading them."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a text file (byte {exc.start} is not UTF-8)") from None
    except RecursionError:
        raise ValueError(f"{path}: not a results export (nested too deep)") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA_NAME:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: not a vlbench results export (schema {found!r})")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise ValueError(
            f"{path}: schema_version {version!r} is not supported; this vlbench reads "
            f"{SCHEMA_VERSION}"
        )
    _check_runs(path, data.get("runs"))
    return data


def _check_runs(path: str | os.PathLike[str], runs: object) -> None:
    """The runs' own fields, which ``vlbench compare FILE.json`` reads before any case."""
    if not isinstance(runs, list):
        raise ValueError(f"{path}: 'runs' must be a list of runs")
    for index, run in enumerate(runs):
        ok = (isinstance(run, dict) and isinstance(run.get("id"), int)
              and isinstance(run.get("status"), str) and isinstance(run.get("cases"), list)
              and isinstance(run.get("host"), str | None))
        if not ok:
            raise ValueError(f"{path}: run #{index + 1} is damaged (a run needs an integer id, "
                             "a status, a host and a list of cases)")


def run_cases(path: str | os.PathLike[str], run: dict[str, Any]) -> tuple[CaseResult, ...]:
    """Every case of an exported run, a damaged one a ValueError naming file, run and case."""
    out = []
    for index, row in enumerate(run["cases"]):
        try:
            out.append(case_from_row(row))
        except DamagedRecord as exc:
            key = row.get("case_key") if isinstance(row, dict) else None
            case = key if isinstance(key, str) else f"#{index + 1}"
            raise ValueError(f"{path}: run {run['id']} case {case}: {exc}") from None
    return tuple(out)


def case_from_row(row: dict[str, Any]) -> CaseResult:
    """A case of an export back as a ``CaseResult``, checked (``DamagedRecord`` naming the
    field). Timing fields an export does not carry per stage (mean, confidence interval) read
    NaN; fields an older export lacks are derived."""
    _check_shape(row)
    try:
        record = upgrade_case(case_record(row))
    except KeyError as exc:
        raise DamagedRecord(f"{exc.args[0]}: missing") from None
    except (TypeError, ValueError, AttributeError) as exc:  # a field of the wrong kind
        raise DamagedRecord(f"a field of the wrong type ({exc})") from None
    return read_case(record)


#: an export case's fields that hold objects (what ``case_record`` looks inside), and their types
_SHAPES: dict[str, tuple[type, ...]] = {
    "end_to_end": (dict, type(None)), "stages": (dict,), "image_size": (list,), "tokens": (dict,),
    "settings": (dict,), "canonical_input": (dict, type(None)), "paper": (dict, type(None))}


def _check_shape(row: object) -> None:
    if not isinstance(row, dict):
        raise DamagedRecord(f"expected a case object, got {type(row).__name__}")
    for key, kinds in _SHAPES.items():
        if key in row and not isinstance(row[key], kinds):
            want = "an object" if dict in kinds else "a list"
            raise DamagedRecord(f"{key}: expected {want}{' or null' if len(kinds) > 1 else ''}, "
                                f"got {row[key]!r:.40}")
    for name, stage in (row.get("stages") or {}).items():
        if not isinstance(stage, dict):
            raise DamagedRecord(f"stages.{name}: expected an object, got {stage!r:.40}")


def case_record(row: dict[str, Any]) -> dict[str, Any]:
    """The ``CaseResult.to_dict()`` record of an export's case, without the fields it lacks."""
    e2e = row.get("end_to_end") or {}
    record: dict[str, Any] = {
        "spec": {"model": row["model"], "batch_size": row["batch_size"],
                 "image_size": list(row["image_size"][:2]), "text_len": row["text_len"],
                 "precision": row["precision"], "device": row["device"],
                 "mode": row.get("mode", "eager"), "threads": row.get("threads"),
                 "round": row.get("round", 0), "side": row.get("side"), "task": row.get("task"),
                 "rerank_k": row.get("rerank_k"), "region_backend": row.get("region_backend")},
        "status": row["status"], "message": row.get("message", ""),
        "embedder": row.get("embedder", ""), "fusion": row.get("fusion", ""),
        "tokens": dict(row.get("tokens", {})), "end_to_end": _summary(e2e),
        "end_to_end_samples_ms": list(e2e.get("samples_ms", ())),
        "stage_sum_ms": row.get("stage_sum_ms"),
        "stages": [_stage(name, stage) for name, stage in row["stages"].items()],
        "flops_total": row.get("flops_total", 0), "params_total": row.get("params_total", 0),
        "peak_mem_bytes": row.get("peak_mem_bytes"), "settings": dict(row.get("settings", {})),
        "wall_s": row.get("wall_s", 0.0),
    }
    if "canonical_input" in row:
        canonical = row["canonical_input"] or {}
        record["canonical_image_size"] = canonical.get("image_size")
        record["canonical_text_len"] = canonical.get("text_len")
    if "paper" in row:
        figures = row["paper"] or {}
        record["paper_row"] = figures.get("table6_row")
        record["paper_bar"] = figures.get("figure1_bar")
    if "contention" in row:
        record["contention"] = row["contention"]
    return record


def _summary(timing: dict[str, Any]) -> dict[str, Any] | None:
    if timing is not None and not isinstance(timing, dict):
        raise DamagedRecord(f"timing: expected an object or null, got {timing!r:.40}")
    if not timing or timing.get("median_ms") is None:
        return None
    return {"median_ms": timing["median_ms"],
            **{key: timing.get(key, default) for key, default in _SUMMARY_DEFAULTS.items()}}


def _stage(name: str, stage: dict[str, Any]) -> dict[str, Any]:
    record = {"name": name, **{key: stage[key] for key in _STAGE_FIELDS},
              **{key: stage.get(key, default) for key, default in _STAGE_OPTIONAL.items()},
              "timing": _summary(stage), "samples_ms": list(stage.get("samples_ms", ())),
              "workload": dict(stage.get("workload", {}))}
    if "category" in stage:
        record["category"] = stage["category"]
    return record
