"""Exports follow the documented layout and can be read back by JSON, CSV and pandas readers."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import shutil
from pathlib import Path

import pytest

from vlbench import paper
from vlbench.export import (
    CSV_COLUMNS,
    SCHEMA_NAME,
    case_row,
    export_csv,
    export_json,
    to_dataframe,
)
from vlbench.read_export import case_from_row, load_json
from vlbench.results import SCHEMA_VERSION, CaseResult, CaseSpec, StageResult, Summary
from vlbench.store import Store

DATA = Path(__file__).parent / "data"

E2E_KEYS = {
    "median_ms",
    "iqr_ms",
    "p90_ms",
    "cv",
    "n",
    "ci_low_ms",
    "ci_high_ms",
    "ci_coverage",
    "unstable",
    "samples_ms",
}
STAGE_KEYS = {
    "kind",
    "parent",
    "median_ms",
    "iqr_ms",
    "p90_ms",
    "cv",
    "n",
    "calls",
    "flops",
    "params",
    "peak_mem_bytes",
    "host_sync",
    "samples_ms",
}
CASE_KEYS = {
    "model",
    "embedder",
    "fusion",
    "batch_size",
    "image_size",
    "text_len",
    "tokens",
    "precision",
    "device",
    "status",
    "message",
    "end_to_end",
    "stage_sum_ms",
    "stages",
    "flops_total",
    "params_total",
    "peak_mem_bytes",
    "settings",
    "wall_s",
}


def summary(median: float) -> Summary:
    return Summary(
        median_ms=median,
        iqr_ms=0.5,
        p90_ms=median + 1.0,
        mean_ms=median + 0.1,
        cv=0.02,
        n=15,
        ci_low_ms=median - 0.3,
        ci_high_ms=median + 0.4,
        ci_coverage=0.96,
        unstable=False,
    )


OK = CaseResult(
    spec=CaseSpec("visualbert", 2, (384, 640), 32, "fp16", "cuda"),
    status="ok",
    embedder="region",
    fusion="single-stream",
    tokens={"text": 32, "image": 36},
    end_to_end=summary(20.0),
    end_to_end_samples_ms=(19.5, 20.0, 20.5),
    stage_sum_ms=19.0,
    stages=(
        StageResult(
            name="backbone",
            kind="backbone",
            parent=None,
            timing=summary(12.0),
            calls=1,
            flops=9_000_000_000,
            params=25_000_000,
            peak_mem_bytes=512 << 20,
            samples_ms=(11.9, 12.0, 12.1),
        ),
        StageResult(
            name="transformer",
            kind="fusion",
            parent=None,
            timing=summary(7.0),
            calls=1,
            flops=4_000_000_000,
            params=110_000_000,
            host_sync=False,
            samples_ms=(6.9, 7.0, 7.1),
        ),
    ),
    flops_total=13_000_000_000,
    params_total=135_000_000,
    peak_mem_bytes=1 << 30,
    settings={"tf32": False},
    wall_s=12.5,
)

OOM = CaseResult(
    spec=CaseSpec("lxmert", 64, (800, 1333), 32, "fp32", "cuda"),
    status="oom",
    message="CUDA out of memory. Tried to allocate 3.50 GiB",
    embedder="region",
    fusion="dual-stream",
    wall_s=4.0,
)


@pytest.fixture
def store(tmp_path: Path):
    with Store.open(tmp_path / "results.sqlite") as opened:
        run_id = opened.start_run(
            label="nightly",
            suite="smoke",
            command="vlbench run --suite smoke",
            env={"torch": "2.5.1", "gpu": "H100"},
            settings={"repeats": 15},
        )
        opened.add_case(run_id, OK)
        opened.add_case(run_id, OOM)
        opened.finish_run(run_id)
        yield opened


def test_json_export_has_documented_fields(store):
    exported = export_json(store, [1])
    assert json.loads(json.dumps(exported)) == exported  # plain JSON types only

    assert exported["schema"] == "vlbench.results" == SCHEMA_NAME
    assert exported["schema_version"] == SCHEMA_VERSION
    (run,) = exported["runs"]
    assert run["id"] == 1
    assert (run["label"], run["suite"], run["status"]) == ("nightly", "smoke", "finished")
    assert run["command"] == "vlbench run --suite smoke"
    assert run["environment"] == {"torch": "2.5.1", "gpu": "H100"}
    assert run["settings"] == {"repeats": 15}
    assert run["started_at"] and run["finished_at"]

    ok, oom = run["cases"]
    assert ok.keys() >= CASE_KEYS and oom.keys() >= CASE_KEYS
    assert ok["model"] == "visualbert"
    assert ok["image_size"] == [384, 640]
    assert (ok["batch_size"], ok["text_len"], ok["precision"], ok["device"]) == (
        2,
        32,
        "fp16",
        "cuda",
    )
    assert ok["tokens"] == {"text": 32, "image": 36}
    assert ok["end_to_end"].keys() >= E2E_KEYS
    assert ok["end_to_end"]["median_ms"] == 20.0
    assert ok["end_to_end"]["samples_ms"] == [19.5, 20.0, 20.5]
    assert ok["flops_total"] == 13_000_000_000

    assert list(ok["stages"]) == ["backbone", "transformer"]
    backbone = ok["stages"]["backbone"]
    assert backbone.keys() >= STAGE_KEYS
    assert backbone["median_ms"] == 12.0
    assert backbone["flops"] == 9_000_000_000
    assert backbone["peak_mem_bytes"] == 512 << 20
    assert ok["stages"]["transformer"]["peak_mem_bytes"] is None

    assert oom["status"] == "oom"
    assert oom["message"] == "CUDA out of memory. Tried to allocate 3.50 GiB"
    assert oom["end_to_end"] is None
    assert oom["stages"] == {}


def test_case_row_of_untimed_stage_and_duplicate_names():
    untimed = StageResult("rpn.nms", "region_ops", "backbone", None, 2, 0, 0, host_sync=True)
    row = case_row(CaseResult(spec=OK.spec, status="error", message="boom", stages=(untimed,)))
    stage = row["stages"]["rpn.nms"]
    assert stage["median_ms"] is None and stage["n"] is None
    assert (stage["parent"], stage["calls"], stage["host_sync"]) == ("backbone", 2, True)
    assert row["end_to_end"] is None

    with pytest.raises(ValueError, match="two stages named 'rpn.nms'"):
        case_row(CaseResult(spec=OK.spec, status="ok", stages=(untimed, untimed)))


def test_json_export_keeps_run_order_and_final_attempts(store):
    second = store.start_run(label=None, suite=None, command="x", env={}, settings={})
    store.add_case(second, OOM)
    store.add_case(second, OOM)
    exported = export_json(store, [second, 1])
    assert [run["id"] for run in exported["runs"]] == [second, 1]
    assert len(exported["runs"][0]["cases"]) == 1
    with pytest.raises(KeyError):
        export_json(store, [42])


def test_csv_has_one_row_per_stage_plus_end_to_end(store):
    text = export_csv(store, [1])
    rows = list(csv.DictReader(io.StringIO(text)))
    assert tuple(next(csv.reader(io.StringIO(text)))) == CSV_COLUMNS
    assert len(rows) == (1 + 2) + (1 + 0)
    assert [(r["model"], r["stage"]) for r in rows] == [
        ("visualbert", "end_to_end"),
        ("visualbert", "backbone"),
        ("visualbert", "transformer"),
        ("lxmert", "end_to_end"),
    ]
    e2e, backbone, _, oom = rows
    assert float(e2e["median_ms"]) == 20.0
    assert int(e2e["flops"]) == 13_000_000_000
    assert (e2e["image_h"], e2e["image_w"]) == ("384", "640")
    assert backbone["kind"] == "backbone"
    assert float(backbone["median_ms"]) == 12.0
    assert int(backbone["params"]) == 25_000_000
    assert {r["run_id"] for r in rows} == {"1"}
    assert oom["status"] == "oom"
    assert oom["message"] == "CUDA out of memory. Tried to allocate 3.50 GiB"
    assert oom["median_ms"] == ""


def test_load_json_round_trip_and_rejections(store, tmp_path):
    path = tmp_path / "export.json"
    exported = export_json(store, [1])
    path.write_text(json.dumps(exported), encoding="utf-8")
    assert load_json(path) == exported

    wrong_version = {**exported, "schema_version": SCHEMA_VERSION + 1}
    path.write_text(json.dumps(wrong_version), encoding="utf-8")
    with pytest.raises(ValueError, match="schema_version") as excinfo:
        load_json(path)
    assert "\n" not in str(excinfo.value)

    path.write_text(json.dumps({**exported, "schema": "other.tool"}), encoding="utf-8")
    with pytest.raises(ValueError, match="not a vlbench results export"):
        load_json(path)

    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ValueError, match="not a vlbench results export"):
        load_json(path)

    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_json(path)


def test_to_dataframe_has_one_row_per_stage(store):
    pytest.importorskip("pandas")
    frame = to_dataframe(store)
    assert tuple(frame.columns) == CSV_COLUMNS
    assert len(frame) == 4
    stages = frame[frame["stage"] != "end_to_end"]
    assert list(stages["stage"]) == ["backbone", "transformer"]
    assert stages["median_ms"].tolist() == [12.0, 7.0]

    from_export = to_dataframe(export_json(store, [1]))
    assert from_export.equals(frame)
    assert to_dataframe(export_json(store, [1]), run_ids=[99]).empty


# -- fields added since the first layout (additive: schema_version stays 1) ---------------------


def test_case_rows_carry_category_gallery_size_canonical_input_and_paper():
    recorded = dataclasses.replace(
        OK, spec=dataclasses.replace(OK.spec, model="vilt-b32"),
        stages=(dataclasses.replace(OK.stages[0], category=paper.BACKBONE), OK.stages[1]),
        canonical_image_size=(384, 640), canonical_text_len=40,
        paper_row=paper.table6_row("vilt-b32"), paper_bar=paper.figure1_bar("vilt-b32"))
    row = json.loads(json.dumps(case_row(recorded)))
    assert row["gallery_size"] is None and row["batch_size"] == 2
    assert row["canonical_input"] == {"image_size": [384, 640], "text_len": 40}
    assert row["paper"]["table6_row"]["tokens"] == "200+40"
    assert row["paper"]["figure1_bar"]["parts_ms"] == {paper.VISUAL_EMBEDDING: 0.4,
                                                       paper.INTERACTION: 15.0}
    # a stored category as stored; a hand-built record's "" by the stage kind ("fusion": other)
    assert [s["category"] for s in row["stages"].values()] == [paper.BACKBONE, "other"]

    back = case_from_row(row)
    assert (back.spec, back.canonical_image_size, back.canonical_text_len) == (
        recorded.spec, (384, 640), 40)
    assert (back.paper_row, back.paper_bar) == (recorded.paper_row, recorded.paper_bar)
    assert [s.category for s in back.stages] == [paper.BACKBONE, "other"]

    plain = case_row(OK)
    assert plain["canonical_input"] is None and plain["paper"] is None  # not recorded
    assert case_from_row(plain).paper_row is None  # stored as none: not looked up again

    retrieval = dataclasses.replace(OK, spec=dataclasses.replace(OK.spec, task="retrieval-t2i"))
    assert case_row(retrieval)["gallery_size"] == 2 == case_row(retrieval)["batch_size"]


def test_an_export_of_the_previous_release_reads_like_its_migrated_store(tmp_path):
    old = load_json(DATA / "export_v2.json")  # run 3 of store_v2.db, exported before migration
    cases = [case_from_row(row) for row in old["runs"][0]["cases"]]
    db = tmp_path / "v2.sqlite"
    shutil.copyfile(DATA / "store_v2.db", db)
    with Store.open(db) as store:
        stored = store.cases(3)
    assert [c.spec for c in cases] == [c.spec for c in stored]
    for read, migrated in zip(cases, stored, strict=True):
        assert read.paper_row == migrated.paper_row is not None
        assert read.paper_bar == migrated.paper_bar is not None
        assert read.canonical_image_size is None and read.canonical_text_len is None
        assert [s.category for s in read.stages] == [s.category for s in migrated.stages]
        assert all(s.category for s in read.stages)


def test_export_of_a_migrated_store_of_the_previous_release(tmp_path):
    db = tmp_path / "v2.sqlite"
    shutil.copyfile(DATA / "store_v2.db", db)
    with Store.open(db) as store:
        exported = export_json(store, store.run_ids())
        text = export_csv(store, [3])
    assert json.loads(json.dumps(exported)) == exported
    rows = {c["model"]: c for run in exported["runs"] for c in run["cases"]}
    assert rows["uniter-base"]["paper"]["table6_row"]["model"] == "UNITER-Base"
    assert rows["vilt-b32-tiny"]["paper"] is None
    assert all(c["canonical_input"] is None for c in rows.values())
    assert rows["vilt-b32"]["stages"]["visual"]["category"] == paper.VISUAL_EMBEDDING
    retrieval = exported["runs"][1]["cases"]
    assert retrieval and all(c["gallery_size"] == c["batch_size"] for c in retrieval)
    assert text.splitlines()[0] == ",".join(CSV_COLUMNS)  # the CSV keeps its columns
