"""The ``vlbench`` command end to end: list, run, profile, export (bad input and failing cases:
``test_cli_errors.py``).

Only tiny presets are ever timed (a few forwards each); full-size presets go through ``profile``,
which builds them on the meta device and computes nothing.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from cli_helpers import (
    REPO,
    TINY,
    assert_one_line_error,
    cli,
    quiet_main,
    table_rows,
    tiny_run,
)

from architectures import FUSIONS, PRESETS
from feature_extractors import EMBEDDERS
from vlbench.export import CSV_COLUMNS, export_json
from vlbench.results import SCHEMA_VERSION
from vlbench.store import Store
from vlbench.suites import builtin_suites, load_suite
from vlbench.timing import TimingOptions


@pytest.fixture(scope="module")
def two_model_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run of the two tiny presets at batch 1, shared by the read-only tests below."""
    db = tmp_path_factory.mktemp("run") / "results.sqlite"
    code, out, err = quiet_main(*tiny_run(db, "--label", "cli-test"))
    code_json, exported, _ = quiet_main("export", "--db", db, "--format", "json")
    assert code_json == 0
    return {"db": db, "code": code, "out": out, "err": err, "export": json.loads(exported)}


# -- list ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("what", "names"),
    [
        ("models", PRESETS.names()),
        # then one line per family of names: "timm:<name>"
        ("embedders", EMBEDDERS.names() + [f"{p}:<name>" for p in EMBEDDERS.families()]),
        ("fusions", FUSIONS.names()),
        ("suites", builtin_suites()),
    ],
)
def test_list_prints_every_registered_name(
    capsys: pytest.CaptureFixture[str], what: str, names: list[str]
) -> None:
    code, out, err = cli(capsys, "list", what)
    assert code == 0
    assert err == ""
    listed = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert listed == names
    assert names  # something is registered


def test_list_defaults_to_models(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = cli(capsys, "list")
    assert [line.split()[0] for line in out.splitlines()] == PRESETS.names()


def test_list_models_shows_the_canonical_input(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = cli(capsys, "list", "models")
    rows = {line.split()[0]: line for line in out.splitlines()}
    assert "384x640 + 40 text" in rows["vilt-b32"]
    assert "224x224 + 77 text" in rows["clip-vit-b16"]


def test_module_entry_point_runs_as_a_program() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ok = subprocess.run(
        [sys.executable, "-m", "vlbench", "list", "models"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert [line.split()[0] for line in ok.stdout.splitlines()] == PRESETS.names()
    bad = subprocess.run(
        [sys.executable, "-m", "vlbench", "profile", "nope"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert len(bad.stderr.splitlines()) == 1
    assert bad.stderr.startswith("vlbench: error: unknown model 'nope'")


# -- run and export -----------------------------------------------------------------------------


def test_run_exits_zero_and_prints_a_row_per_case(two_model_run: dict[str, Any]) -> None:
    assert two_model_run["code"] == 0, two_model_run["err"]
    rows = table_rows(two_model_run["out"])
    assert [row[0] for row in rows] == list(TINY)
    assert all(row[1] == "1" for row in rows)  # batch column
    assert "run 1 stored in" in two_model_run["out"]
    assert "ERROR" not in two_model_run["out"] and "OOM" not in two_model_run["out"]


def test_run_stores_a_finished_run_with_one_ok_case_per_model(
    two_model_run: dict[str, Any],
) -> None:
    with Store.open(two_model_run["db"]) as store:
        assert store.run_ids() == [1]
        run = store.get_run(1)
        cases = store.cases(1)
    assert run.status == "finished"
    assert run.finished_at is not None
    assert run.label == "cli-test"
    assert [(c.spec.model, c.spec.batch_size) for c in cases] == [(m, 1) for m in TINY]
    assert [c.status for c in cases] == ["ok", "ok"]
    for case in cases:
        preset = PRESETS.get(case.spec.model)
        assert case.spec.image_size == preset.image_size
        assert case.spec.text_len == preset.text_len
        assert case.spec.precision == "fp32"
        assert case.spec.device == "cpu"


def test_run_records_command_environment_and_settings(two_model_run: dict[str, Any]) -> None:
    with Store.open(two_model_run["db"]) as store:
        run = store.get_run(1)
    assert run.command.startswith("vlbench run ")
    assert "--models vilt-b32-tiny,clip-vit-b32-tiny" in run.command
    assert run.env["command"] == run.command
    assert run.env["argv"][:2] == ["vlbench", "run"]
    assert run.env["versions"]["torch"] == torch.__version__
    assert run.env["device"] == "cpu"
    settings = run.settings
    suite_timing = load_suite("latency").timing  # the suite's own settings, then the flags
    expected = TimingOptions(**{**suite_timing, "warmup": 1, "min_repeats": 2, "min_time_s": 0})
    assert settings["timing"] == expected.__dict__
    assert (settings["timing"]["warmup"], settings["timing"]["min_repeats"]) == (1, 2)
    assert settings["device"] == "cpu"
    assert settings["suite"] == "latency"
    assert settings["head"] is False
    assert settings["seed"] == 0
    assert settings["threads"] == torch.get_num_threads()
    assert [c["model"] for c in settings["cases"]] == list(TINY)


def test_export_json_layout(two_model_run: dict[str, Any]) -> None:
    data = two_model_run["export"]
    assert data["schema_version"] == SCHEMA_VERSION
    (run,) = data["runs"]
    assert run["id"] == 1
    assert run["status"] == "finished"
    assert run["command"].startswith("vlbench run")
    cases = run["cases"]
    assert [c["model"] for c in cases] == list(TINY)
    for case in cases:
        assert case["status"] == "ok"
        assert case["message"] == ""
        assert case["end_to_end"]["median_ms"] > 0
        assert case["end_to_end"]["n"] >= 2
        assert len(case["end_to_end"]["samples_ms"]) == case["end_to_end"]["n"]
        assert {"visual", "text", "fusion"} <= set(case["stages"])
        for stage in case["stages"].values():
            assert stage["calls"] >= 1
            assert stage["flops"] >= 0
            assert stage["params"] > 0
        top = [s for s in case["stages"].values() if s["parent"] is None]
        assert sum(s["params"] for s in top) == case["params_total"]
        assert case["flops_total"] > 0


@pytest.mark.parametrize("model", TINY)
def test_run_flops_and_params_match_profile(
    capsys: pytest.CaptureFixture[str], two_model_run: dict[str, Any], model: str
) -> None:
    (case,) = [c for c in two_model_run["export"]["runs"][0]["cases"] if c["model"] == model]
    code, out, _ = cli(capsys, "profile", model, "--format", "json")
    assert code == 0
    profile = json.loads(out)
    assert profile["params_total"] == case["params_total"]
    assert profile["flops_total"] == case["flops_total"]
    assert profile["tokens"] == case["tokens"]
    assert list(profile["stages"]) == list(case["stages"])
    for name, stage in profile["stages"].items():
        assert (stage["params"], stage["flops"]) == (
            case["stages"][name]["params"], case["stages"][name]["flops"]
        ), name


def test_export_csv_to_a_file(
    capsys: pytest.CaptureFixture[str], two_model_run: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "out.csv"
    code, out, err = cli(capsys, "export", "--db", two_model_run["db"], "--format", "csv",
                         "--out", path)
    assert code == 0
    assert out == ""
    assert str(path) in err
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames
        rows = list(reader)
    assert header == list(CSV_COLUMNS)
    cases = two_model_run["export"]["runs"][0]["cases"]
    assert len(rows) == sum(len(c["stages"]) + 1 for c in cases)
    for case in cases:
        mine = [r for r in rows if r["model"] == case["model"]]
        assert [r["stage"] for r in mine] == ["end_to_end", *case["stages"]]
        assert int(mine[0]["flops"]) == case["flops_total"]
        assert int(mine[0]["params"]) == case["params_total"]
        assert float(mine[0]["median_ms"]) == pytest.approx(case["end_to_end"]["median_ms"])
        assert {r["status"] for r in mine} == {"ok"}
        assert {r["run_id"] for r in mine} == {"1"}


def test_export_json_to_stdout_by_run_id_and_latest_agree(
    capsys: pytest.CaptureFixture[str], two_model_run: dict[str, Any]
) -> None:
    _, by_id, _ = cli(capsys, "export", "--db", two_model_run["db"], "--run", "1")
    _, latest, _ = cli(capsys, "export", "--db", two_model_run["db"], "--run", "latest")
    assert json.loads(by_id) == json.loads(latest) == two_model_run["export"]


def test_batch_sizes_and_image_size_override(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    db = tmp_path / "r.sqlite"
    code, out, err = cli(capsys, *tiny_run(db, "--batch-sizes", "1,2", "--image-size", "96x128"))
    assert code == 0, err
    assert [(row[0], row[1]) for row in table_rows(out)] == [
        (m, b) for m in TINY for b in ("1", "2")
    ]
    with Store.open(db) as store:
        stored = store.cases(1)
        exported = export_json(store, [1])["runs"][0]["cases"]
    assert [(c.spec.model, c.spec.batch_size) for c in stored] == [
        (m, b) for m in TINY for b in (1, 2)
    ]
    assert {c.status for c in stored} == {"ok"}
    assert {c.spec.image_size for c in stored} == {(96, 128)}
    assert len({c["case_key"] for c in exported}) == 4
    expected_image_tokens = {"vilt-b32-tiny": 1 + 3 * 4, "clip-vit-b32-tiny": 1 + 6 * 8}
    for case in exported:
        assert case["image_size"] == [96, 128]
        assert case["tokens"]["image"] == expected_image_tokens[case["model"]]
        # The same input through `profile` counts the same FLOPs and parameters.
        _, profiled, _ = cli(capsys, "profile", case["model"], "--image-size", "96x128",
                             "--batch-size", case["batch_size"], "--format", "json")
        profile = json.loads(profiled)
        assert (profile["flops_total"], profile["params_total"]) == (
            case["flops_total"], case["params_total"]
        )
    flops = {(c["model"], c["batch_size"]): c["flops_total"] for c in exported}
    assert flops["vilt-b32-tiny", 2] == 2 * flops["vilt-b32-tiny", 1]
    # CLIP also scores every image against every text: a batch x batch similarity matrix.
    clip_1, clip_2 = flops["clip-vit-b32-tiny", 1], flops["clip-vit-b32-tiny", 2]
    assert 2 * clip_1 < clip_2 < 2.01 * clip_1


def test_run_from_a_suite_file_with_a_model_entry_override(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    suite = tmp_path / "mine.yaml"
    suite.write_text(
        "models:\n"
        "  - {model: clip-vit-b16-tiny, image_size: 32x48, text_len: 5}\n"
        "timing: {warmup: 1, min_repeats: 2, min_time_s: 0}\n"
    )
    db = tmp_path / "r.sqlite"
    code, _, err = cli(capsys, "run", "--suite", suite, "--no-progress", "--device", "cpu",
                       "--db", db)
    assert code == 0, err
    with Store.open(db) as store:
        run = store.get_run(1)
        (case,) = store.cases(1)
    assert run.suite == "mine"
    assert run.settings["timing"]["min_repeats"] == 2
    assert case.status == "ok"
    assert (case.spec.image_size, case.spec.text_len) == ((32, 48), 5)
    assert case.tokens == {"text": 5, "image": 1 + 4 * 6}


def test_export_to_an_unwritable_path_is_one_line(
    capsys: pytest.CaptureFixture[str], two_model_run: dict[str, Any], tmp_path: Path
) -> None:
    target = tmp_path / "missing-dir" / "out.json"
    code, out, err = cli(capsys, "export", "--db", two_model_run["db"], "--out", target)
    assert_one_line_error(code, out, err, "cannot write", "out.json")


# -- profile ------------------------------------------------------------------------------------


def test_profile_vilt_b32_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "profile", "vilt-b32", "--format", "json")
    assert code == 0, err
    profile = json.loads(out)
    assert profile["model"] == "vilt-b32"
    assert profile["params_total"] == 111_595_008
    assert profile["image_size"] == [384, 640]
    assert profile["text_len"] == 40
    assert profile["tokens"] == {"image": 1 + 12 * 20, "text": 40}  # 241 + 40
    assert {"visual", "text", "fusion"} <= set(profile["stages"])
    for stage in profile["stages"].values():
        assert set(stage) >= {"params", "flops", "kind", "parent"}
    top = [s for s in profile["stages"].values() if s["parent"] is None]
    assert sum(s["params"] for s in top) == profile["params_total"]
    assert sum(s["flops"] for s in top) == profile["flops_total"]
    assert profile["flops_total"] > 40e9  # ~52 GFLOPs for one image-text pair


def test_profile_vilt_b32_other_image_size(capsys: pytest.CaptureFixture[str]) -> None:
    _, canonical, _ = cli(capsys, "profile", "vilt-b32", "--format", "json")
    code, out, _ = cli(capsys, "profile", "vilt-b32", "--image-size", "384x608", "--format", "json")
    assert code == 0
    profile = json.loads(out)
    assert profile["image_size"] == [384, 608]
    assert profile["tokens"] == {"image": 1 + 12 * 19, "text": 40}  # 229 + 40
    assert profile["params_total"] == json.loads(canonical)["params_total"]
    assert profile["flops_total"] < json.loads(canonical)["flops_total"]


def test_profile_clip_tokens_and_head(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = cli(capsys, "profile", "clip-vit-b16", "--format", "json")
    assert json.loads(out)["tokens"] == {"image": 1 + 14 * 14, "text": 77}
    _, plain, _ = cli(capsys, "profile", "vilt-b32", "--format", "json")
    _, headed, _ = cli(capsys, "profile", "vilt-b32", "--head", "--format", "json")
    assert json.loads(headed)["params_total"] > json.loads(plain)["params_total"]


def test_profile_table_names_every_stage(capsys: pytest.CaptureFixture[str]) -> None:
    _, as_json, _ = cli(capsys, "profile", "vilt-b32", "--format", "json")
    code, out, err = cli(capsys, "profile", "vilt-b32")
    assert code == 0
    assert err == ""
    first_column = [line.split()[0] for line in out.splitlines()[1:] if line.strip()]
    for name in json.loads(as_json)["stages"]:
        assert name in first_column
    assert "total" in first_column
    assert "241 image tokens" in out.splitlines()[0]
    assert "111.60" in out  # params in millions on the total row
