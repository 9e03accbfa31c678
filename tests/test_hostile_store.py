"""Hostile stores and disks: a damaged row names its run and case and blocks nothing (export,
report, compare go on; a resume measures it again), a store on read-only media reads, a full
disk mid-run is one line that says how to resume (and the resume completes), and everything
vlbench writes as JSON is strict JSON."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hostile import (
    SPEC,
    assert_one_line,
    case,
    state,
    synthetic_store,
    vlbench_process,
)

from vlbench.cli import main
from vlbench.records import VlbenchWarning
from vlbench.results import CaseResult
from vlbench.store import Store, case_key

FAST = ("--warmup", "1", "--repeats", "2", "--min-time", "0", "--threads", "1",
        "--no-progress", "--device", "cpu")


def cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def strict(text: str) -> Any:
    """JSON as strict readers take it: a bare NaN or Infinity is an error."""
    def refuse(word: str) -> None:
        raise ValueError(f"not strict JSON: {word}")
    return json.loads(text, parse_constant=refuse)


def damage(db: Path, key: str, payload: str | None, run_id: int = 1) -> None:
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE cases SET result_json = ? WHERE run_id = ? AND case_key = ?",
                     (payload, run_id, key))


_RECORD = case(0).to_dict()
#: a damaged result_json -> what the warning says of it
DAMAGED_ROWS: dict[str, tuple[str | None, str]] = {
    "truncated": ('{"spec": {"model": "vilt', "Unterminated string"),
    "empty": ("", "Expecting value"),
    "null": (None, "the JSON object must be str"),
    "a-list": ("[1, 2]", "expected an object"),
    "nan-median": (json.dumps({**_RECORD, "end_to_end": {**_RECORD["end_to_end"],
                                                         "median_ms": math.nan}}), "median_ms"),
    "wrong-type": (json.dumps({**_RECORD, "flops_total": "many"}), "flops_total"),
    "unknown-status": (json.dumps({**_RECORD, "status": "great"}), "status"),
    "unknown-field": (json.dumps({**_RECORD, "colour": "red"}), "unknown field(s) colour"),
}


@pytest.mark.parametrize("name", DAMAGED_ROWS)
def test_a_damaged_row_is_named_and_blocks_nothing(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str) -> None:
    db = synthetic_store(tmp_path / "results.sqlite")
    key = case_key(SPEC)
    damage(db, key, DAMAGED_ROWS[name][0])
    code, out, err = cli(capsys, "export", "--db", db, "--run", "1")
    assert code == 0
    (warning,) = err.splitlines()
    assert warning.startswith(f"vlbench: warning: run 1 case {key}: damaged record")
    assert DAMAGED_ROWS[name][1] in warning and "--resume 1" in warning
    cases = {c["case_key"]: c for c in strict(out)["runs"][0]["cases"]}
    assert cases[key]["status"] == "error" and "damaged record" in cases[key]["message"]
    assert sum(c["status"] == "ok" for c in cases.values()) == 4  # the other rounds
    code, out, _ = cli(capsys, "report", "--db", db, "--run", "1", "--out", "-")
    assert code == 0 and "</html>" in out
    code, _, err = cli(capsys, "compare", "1", "2", "--db", db, "--run-noise", "0.01")
    assert code in (0, 1) and "vlbench: error" not in err
    with Store.open(db) as store:
        assert key not in store.completed_case_keys(1)  # a resume measures it again


RUN_REFS = {
    "beyond-sqlite": ("99999999999999999999999", "no run 99999999999999999999999"),
    "negative": ("-1", "'-1'"),
    "zero": ("0", "no run 0"),
    "superscript-digit": ("\u00b2", "run reference must be"),
    "arabic-digits": ("\u0661\u0662", "run reference must be"),
    "side-suffix": ("1:A", "run reference must be"),
}


@pytest.mark.parametrize("name", RUN_REFS)
@pytest.mark.parametrize("command", ["export", "report", "compare", "resume"])
def test_a_bad_run_reference_is_one_line_listing_the_runs(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, command: str) -> None:
    db = synthetic_store(tmp_path / "results.sqlite")
    ref, expected = RUN_REFS[name]
    argv = {"export": ["export", "--run", ref], "report": ["report", "--run", ref, "--out", "-"],
            "compare": ["compare", "1", ref], "resume": ["run", "--resume", ref]}[command]
    before = state(db)
    code, out, err = cli(capsys, *argv, "--db", db)
    if command == "compare" and name == "side-suffix":
        expected = "no side A"  # compare reads ID:A as a side of an interleaved run
    assert_one_line(code, err, expected)
    assert out == "" and state(db) == before


@pytest.mark.parametrize("column", ["settings_json", "env_json"])
def test_a_damaged_run_record_reads_as_empty_with_a_warning(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, column: str) -> None:
    db = synthetic_store(tmp_path / "results.sqlite")
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(f"UPDATE runs SET {column} = '{{oops' WHERE id = 1")  # noqa: S608
    code, out, err = cli(capsys, "export", "--db", db, "--run", "1")
    assert code == 0 and len(strict(out)["runs"][0]["cases"]) == 5
    (warning,) = err.splitlines()
    assert warning.startswith("vlbench: warning: run 1: damaged ") and "read as empty" in warning


def test_damaged_recorded_cases_refuse_a_resume_naming_the_run(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    db = synthetic_store(tmp_path / "results.sqlite")
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("""UPDATE runs SET settings_json = '{"cases": [5], "timing": {}}',
                        status = 'interrupted' WHERE id = 1""")
    before = state(db)
    code, _, err = cli(capsys, "run", "--resume", "1", "--db", db)
    assert_one_line(code, err, "run 1", "damaged", "cannot be resumed")
    assert state(db) == before


def test_a_resume_measures_a_damaged_case_again(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    db = tmp_path / "results.sqlite"
    code, _, err = cli(capsys, "run", "--models", "vilt-b32-tiny", "--batch-sizes", "1,2",
                       "--image-size", "64x96", *FAST, "--db", db)
    assert code == 0, err
    with Store.open(db) as store:
        first, second = (case_key(c.spec) for c in store.cases(1))
    damage(db, first, '{"spec": ')
    code, out, err = cli(capsys, "run", "--resume", "--db", db)
    assert code == 0, err
    assert "resuming 1 of 2 case(s)" in err and "vlbench: warning" not in err
    with Store.open(db) as store, pytest.warns(VlbenchWarning, match="damaged record"):
        attempts = [(case_key(c.spec), c.status) for c in store.cases(1, final_only=False)]
        assert [c.status for c in store.cases(1)] == ["ok", "ok"]
    assert attempts == [(first, "error"), (second, "ok"), (first, "ok")]


# -- the disk -----------------------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A size-limited tmpfs at ``path`` (root only; skips where mounting is refused)."""
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_store_on_read_only_media_reads(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with tmpfs(tmp_path / "media", "4m") as media:
        db = synthetic_store(media / "results.sqlite")
        with contextlib.closing(sqlite3.connect(db)) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        subprocess.run(["mount", "-o", "remount,ro", str(media)], check=True)
        before = state(db)
        code, out, err = cli(capsys, "export", "--db", db)
        assert code == 0, err
        assert [c["status"] for c in strict(out)["runs"][0]["cases"]] == ["ok"] * 5
        code, out, err = cli(capsys, "report", "--db", db, "--out", "-")
        assert code == 0 and "</html>" in out, err
        code, out, err = cli(capsys, "compare", "1", "2", "--db", db, "--run-noise", "0.01")
        assert code == 1 and "SLOWER" in out, err
        code, _, err = cli(capsys, "run", "--resume", "1", "--db", db)
        assert_one_line(code, err, str(db))
        assert state(db) == before


def test_a_full_disk_is_one_line_with_the_resume_command_and_loses_nothing(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "1m") as disk:
        db = disk / "results.sqlite"
        filler = disk / "filler"
        room = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        filler.write_bytes(b"\0" * (room - 160 * 1024))  # room for the run and a few cases
        sizes = ",".join(str(b) for b in range(1, 17))
        # its own process, as a user's: the run it leaves 'running' has a dead owner after it
        done = vlbench_process("run", "--models", "vilt-b32-tiny", "--batch-sizes", sizes,
                               "--image-size", "32x32", *FAST, "--db", str(db), isolation=False)
        code, err = done.returncode, done.stderr
        assert "Traceback" not in err
        *_, last = err.strip().splitlines()
        assert code == 2 and last.startswith("vlbench: error: cannot write to the results "), err
        assert f"vlbench run --resume 1 --db {db}" in last
        with Store.open(db, read_only=True) as store:
            kept = {case_key(c.spec) for c in store.cases(1)}
        assert 0 < len(kept) < 16
        filler.unlink()
        code, out, err = cli(capsys, "run", "--resume", "1", "--db", db)
        assert code == 0, err
        with Store.open(db) as store:
            every = store.cases(1, final_only=False)
            assert store.get_run(1).status == "finished"
        assert [c.status for c in every] == ["ok"] * 16  # each case once: none lost or redone
        assert kept <= {case_key(c.spec) for c in every[:len(kept)]}


# -- strict JSON --------------------------------------------------------------------------------


def test_non_finite_numbers_are_written_as_null(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    db = tmp_path / "results.sqlite"
    result = case(0)
    odd = CaseResult(**{**result.__dict__, "settings": {"peak_flops": math.inf,
                                                        "note": math.nan}})
    with Store.open(db) as store:
        run_id = store.start_run(label=None, suite="x", command="vlbench run", env={},
                                 settings={"timing": {"min_time_s": math.nan}})
        store.add_case(run_id, odd)
        store.finish_run(run_id)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT settings_json FROM runs UNION ALL "
                            "SELECT result_json FROM cases").fetchall()
    for (text,) in rows:
        strict(text)
    code, out, _ = cli(capsys, "export", "--db", db)
    assert code == 0
    case_row = strict(out)["runs"][0]["cases"][0]
    assert case_row["settings"] == {"peak_flops": None, "note": None}
    # a store written by an older vlbench holds bare NaN: its export is strict JSON all the same
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("""UPDATE runs SET settings_json = '{"min_time_s": NaN}'""")
    code, out, _ = cli(capsys, "export", "--db", db)
    assert code == 0 and strict(out)["runs"][0]["settings"] == {"min_time_s": None}


def test_json_outputs_are_strict(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    db = synthetic_store(tmp_path / "results.sqlite")
    code, out, _ = cli(capsys, "compare", "1", "2", "--db", db, "--format", "json")
    assert code == 0 and strict(out)["exit_status"] == 0  # inconclusive: drift unknown
    code, out, _ = cli(capsys, "profile", "vilt-b32-tiny", "--format", "json")
    assert code == 0 and strict(out)["model"] == "vilt-b32-tiny"


def test_dash_is_standard_output(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    db = synthetic_store(tmp_path / "results.sqlite")
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, "report", "--db", db, "--out", "-")
    assert code == 0 and out.lstrip().lower().startswith("<!doctype html") and err == ""
    code, out, _ = cli(capsys, "report", "--db", db, "--out", "-", "--format", "markdown")
    assert code == 0 and out.startswith("#")
    code, out, _ = cli(capsys, "export", "--db", db, "--out", "-")
    assert code == 0 and strict(out)["schema"] == "vlbench.results"
    code, out, _ = cli(capsys, "compare", "1", "2", "--db", db, "--markdown", "-")
    assert code == 0 and "## vlbench compare" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.sqlite"]
