"""``vlbench run --rounds``, interleaved A/B runs and ``vlbench compare`` as a user runs them:
real runs into a temporary store, exit statuses 0 / 1 / 2, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vlbench.cli import NO_ISOLATION_ENV, expand_rounds, main
from vlbench.gate import _split, ref_path
from vlbench.results import CaseSpec
from vlbench.rounds import pool_rounds
from vlbench.store import Store, case_key, identity_key
from vlbench.table import results_table

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "docs" / "examples" / "vlbench_plugin_example.py"
DATA = REPO / "tests" / "data"  # a store and an export written by the previous release
QUICK = ("--warmup", "1", "--repeats", "3", "--min-time", "0", "--threads", "1",
         "--no-progress", "--device", "cpu")


def _run(db: Path, *argv: str) -> int:
    return main(["run", "--db", str(db), *QUICK, *argv])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two ordinary runs of one tiny model, 5 rounds each (in-process: tests set
    VLBENCH_NO_ISOLATION), and an export of each."""
    db = tmp_path_factory.mktemp("gate") / "runs.db"
    for _ in range(2):
        assert _run(db, "--models", "vilt-b32-tiny", "--rounds", "5") == 0
    for run in (1, 2):
        assert main(["export", "--db", str(db), "--run", str(run),
                     "--out", str(db.parent / f"run{run}.json")]) == 0
    return db


def test_rounds_are_stored_apart(runs: Path) -> None:
    with Store.open(runs) as store:
        cases = store.cases(1)
        settings = store.get_run(1).settings
    assert sorted(c.spec.round for c in cases) == [0, 1, 2, 3, 4]
    assert len({case_key(c.spec) for c in cases}) == 5
    assert len({identity_key(c.spec) for c in cases}) == 1
    assert settings["rounds"] == 5 and settings["interleaved"] is False
    pooled = pool_rounds(cases)  # what the run's table and the report show: one row per case
    assert len(pooled) == 1 and pooled[0].settings["rounds"] == 5
    assert len(pooled[0].settings["round_medians_ms"]) == 5
    assert pooled[0].end_to_end.n == sum(c.end_to_end.n for c in cases)


def test_expand_rounds_alternates_sides() -> None:
    spec = CaseSpec("m", 1, (8, 8), 4, "fp32", "cpu")
    order = [(c.round, c.side) for c in expand_rounds([spec], 3, interleaved=True)]
    assert order == [(0, "A"), (0, "B"), (1, "A"), (1, "B"), (2, "A"), (2, "B")]
    assert [c.side for c in expand_rounds([spec], 2, interleaved=False)] == [None, None]


def test_compare_two_runs(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    summary = tmp_path / "summary.md"
    status = main(["compare", "1", "2", "--db", str(runs), "--markdown", str(summary)])
    out = capsys.readouterr()
    # two separate runs and no history of run-to-run drift: never "slower"
    assert status == 0
    assert "run 1 (baseline) -> run 2 (current): separate runs" in out.out
    assert "drift unknown" in out.out
    assert "smallest detectable slowdown" in out.out and "end_to_end" in out.out
    assert "SLOWER" not in out.out
    assert summary.read_text().startswith("## vlbench compare")
    # the same comparison from the exported files
    status = main(["compare", str(runs.parent / "run1.json"), str(runs.parent / "run2.json"),
                   "--format", "json"])
    data = json.loads(capsys.readouterr().out)
    assert status == 0 and data["exit_status"] == 0 and not data["interleaved"]
    assert {s["stage"] for s in data["stages"]} >= {"end_to_end", "visual", "text", "fusion"}
    assert all(s["n_baseline"] == 5 and s["n_current"] == 5 for s in data["stages"])


def test_separate_runs_take_drift_from_the_store(runs: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    """With three or more other runs of the same cases in the store, a comparison of separate
    runs measures the run-to-run drift from them instead of calling it unknown."""
    db = tmp_path / "history.db"
    db.write_bytes(runs.read_bytes())
    assert _run(db, "--models", "vilt-b32-tiny", "--rounds", "5") == 0
    assert _run(db, "--models", "vilt-b32-tiny", "--rounds", "5") == 0
    capsys.readouterr()
    assert main(["compare", "1", "2", "--db", str(db)]) in (0, 1)
    assert "drift from the store's other runs" in capsys.readouterr().out
    assert main(["compare", "1", "2", "--db", str(db), "--run-noise", "0.05"]) in (0, 1)
    assert "drift given: sd 5.0%" in capsys.readouterr().out


def test_single_rounds_are_inconclusive_and_strict_fails(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    db = tmp_path / "one.db"
    for _ in range(2):
        assert _run(db, "--models", "vilt-b32-tiny") == 0
    capsys.readouterr()
    assert main(["compare", "1", "2", "--db", str(db)]) == 0
    out = capsys.readouterr()
    assert "cannot reach p < 0.01" in out.out and "INCONCLUSIVE" in out.err
    assert main(["compare", "1", "2", "--db", str(db), "--strict"]) == 1


def _error(capsys: pytest.CaptureFixture, *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vlbench: error:") and "\n" not in err
    return err


def test_ref_path_drops_the_side_or_run_suffix() -> None:
    assert [ref_path(r) for r in ("12", "latest", "12:B", "7:A", "x.json", "x.json:3")] == [
        "12", "latest", "12", "7", "x.json", "x.json"]
    assert ref_path("12:C") == "12:C" and ref_path("x.txt:3") == "x.txt:3"  # no such suffix
    assert _split("x.json:3") == ("x.json", "3") and _split("12:B") == ("12", "B")


def test_runs_of_the_previous_release_compare(tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    db = tmp_path / "v2.sqlite"
    shutil.copyfile(DATA / "store_v2.db", db)
    assert main(["compare", "3", "3", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "run 3 (baseline) -> run 3 (current): separate runs" in out
    assert "uniter-base" in out and "visual.nms" in out and "SLOWER" not in out
    # its export, written by that release, against the migrated store
    assert main(["compare", str(DATA / "export_v2.json"), "3", "--db", str(db),
                 "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["exit_status"] == 0 and data["changes"] == []  # the same work on both sides
    assert {s["model"] for s in data["stages"]} == {"vilt-b32", "pixelbert-r50", "uniter-base"}


def test_bad_input_is_one_line_exit_2(runs: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture) -> None:
    db = str(runs)
    with Store.open(runs) as store:
        other = store.start_run(label=None, suite=None, command="x", env={}, settings={})
        store.finish_run(other)
        running = store.start_run(label=None, suite=None, command="x", env={}, settings={})
        dead = store.start_run(label=None, suite=None, command="x", env={}, settings={})
        store.finish_run(dead, "interrupted")
    assert "no successful cases in common" in _error(capsys, "compare", "1", str(other),
                                                      "--db", db)
    assert "still running" in _error(capsys, "compare", "1", str(running), "--db", db)
    assert "did not finish (interrupted)" in _error(capsys, "compare", "1", str(dead),
                                                     "--db", db)
    assert "no run 99" in _error(capsys, "compare", "1", "99", "--db", db)
    assert "not an interleaved" in _error(capsys, "compare", "1:A", "2", "--db", db)
    assert "--alpha" in _error(capsys, "compare", "1", "2", "--alpha", "2", "--db", db)
    old = json.loads((runs.parent / "run1.json").read_text())
    old["schema_version"] = 99
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert "schema_version 99" in _error(capsys, "compare", str(tmp_path / "old.json"),
                                         str(runs.parent / "run2.json"))
    assert "no such file" in _error(capsys, "compare", str(tmp_path / "nope.json"),
                                    str(runs.parent / "run2.json"))
    with Store.open(runs) as store:
        store.finish_run(running)


def test_interleaved_plugin_ab_flags_the_changed_stage(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    """The gate end to end: side A loads the example plugin, side B a copy whose
    ``visual.refine`` makes three MLP passes instead of two; side A's workers run through another
    interpreter (``--baseline-python``, here this one, through the foreign-worker path). Only that
    stage, its parent and end-to-end are flagged; every round ran in a fresh worker."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text(PLUGIN.read_text())
    # one more pass, +50% in one ~2 ms stage, as in benchmarks/gate_error_rates.py's trials: much
    # more (12 passes) also slows the sub-millisecond stages after it through the caches
    b.write_text(PLUGIN.read_text().replace("REFINE_PASSES = 2", "REFINE_PASSES = 3"))
    db = tmp_path / "ab.db"
    # its own process, as a user runs it: this one has the example plugin's names registered
    env = {k: v for k, v in os.environ.items() if k != NO_ISOLATION_ENV}
    env["PYTHONPATH"] = str(REPO)
    subprocess.run([sys.executable, "-m", "vlbench", "run", "--db", str(db), *QUICK,
                    "--repeats", "10", "--min-time", "0.1",  # the trials' timing
                    "--models", "conv-stem-vilt", "--rounds", "6", "--plugin", str(b),
                    "--baseline-plugin", str(a), "--baseline-python", sys.executable],
                   cwd=REPO, env=env, check=True, capture_output=True, timeout=600)
    with Store.open(db) as store:
        cases = store.cases(1)
    assert [(c.spec.round, c.spec.side) for c in cases] == [
        (r, s) for r in range(6) for s in ("A", "B")]
    assert len({c.settings["worker_pid"] for c in cases}) == 12  # a fresh worker per round
    capsys.readouterr()
    status = main(["compare", "1", "--db", str(db), "--format", "json"])
    data = json.loads(capsys.readouterr().out)
    table = [(s["stage"], round(s["ratio"], 3), s["p_value"], s["verdict"])
             for s in data["stages"]]
    assert data["interleaved"], table
    assert all(c.contention is not None for c in cases)  # every round saw its machine
    if any(c.contention.contended for c in cases):
        # a busy machine (other work beside the test): the gate may not decide, whatever the
        # rounds say (docs/contention.md); the statistics below need a quiet machine
        assert status == 0 and all(s["verdict"] == "inconclusive" and s["contention"]
                                   for s in data["stages"]), table
        assert main(["compare", "1", "--db", str(db), "--strict"]) == 1
    else:
        assert status == 1, table
        flagged = {s["stage"] for s in data["stages"] if s["verdict"] == "slower"}
        assert "visual.refine" in flagged, table
        assert flagged <= {"visual.refine", "visual", "end_to_end"}, table
    assert {(c["stage"], c["what"]) for c in data["changes"]} >= {("visual.refine", "flops")}
    assert main(["compare", "1:A", "1:B", "--db", str(db), "--fail-on-flops-change"]) == 1
    # the report of the run shows both sides and their comparison, with the same verdicts
    out = tmp_path / "ab.html"
    assert main(["report", "--db", str(db), "--out", str(out)]) == 0
    page = out.read_text()
    assert "Interleaved A/B comparison" in page and "conv-stem-vilt [A]" in page
    assert page.count('class="comparison-row"') == len(data["stages"])
    table = results_table(pool_rounds(cases))  # what the run printed: one row per side
    assert "conv-stem-vilt [A]" in table and "conv-stem-vilt [B]" in table


def test_ab_needs_workers(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    err = _error(capsys, "run", "--db", str(tmp_path / "x.db"), "--models", "vilt-b32-tiny",
                 "--baseline-plugin", str(PLUGIN))
    assert "separate worker processes" in err
    assert "--rounds" in _error(capsys, "run", "--db", str(tmp_path / "x.db"), "--rounds", "0")
    assert "fresh worker processes" in _error(capsys, "run", "--db", str(tmp_path / "x.db"),
                                              "--rounds", "5", "--executor", "ray")


def test_a_side_whose_plugin_breaks_is_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture) -> None:
    """Side A's plugin file fails to import in its worker: A's case is an error that says why,
    B's case runs, and comparing the run is bad input (no case ok on both sides)."""
    monkeypatch.delenv(NO_ISOLATION_ENV)
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('no such layer')\n")
    db = tmp_path / "broken.db"
    assert _run(db, "--models", "vilt-b32-tiny", "--baseline-plugin", str(broken)) == 0
    with Store.open(db) as store:
        by_side = {c.spec.side: c for c in store.cases(1)}
    assert by_side["A"].status == "error" and "no such layer" in by_side["A"].message
    assert by_side["B"].status == "ok"
    capsys.readouterr()
    assert "no successful cases in common" in _error(capsys, "compare", "1", "--db", str(db))
