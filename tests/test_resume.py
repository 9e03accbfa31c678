"""Interrupted runs keep every finished case and ``vlbench run --resume`` measures exactly what is
missing: a run killed with SIGKILL, stopped with SIGTERM or Ctrl-C, and the refusals."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest
from live_runs import FOUR_CASES, is_gone, start_run, wait_for_cases, worker_pid

from vlbench.cli import NO_ISOLATION_ENV, main
from vlbench.options import RunOptions
from vlbench.results import CaseResult, CaseSpec
from vlbench.store import RunActiveError, Store, case_key


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(NO_ISOLATION_ENV, raising=False)


def attempts(db: Path, run_id: int = 1) -> dict[str, list[int]]:
    """case key -> the attempt numbers stored for it."""
    with Store.open(db) as store:
        rows = store._read("SELECT case_key, attempt FROM cases WHERE run_id = ? ORDER BY id",
                           (run_id,))
    out: dict[str, list[int]] = {}
    for key, attempt in rows:
        out.setdefault(key, []).append(attempt)
    return out


def test_a_run_killed_with_sigkill_resumes_only_the_missing_cases(
    isolated: None, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    db = tmp_path / "r.sqlite"
    run = start_run(db, *FOUR_CASES, "--min-time", "0.5")
    try:
        wait_for_cases(db, 2, run)
        worker = worker_pid(run.pid)
        run.kill()  # SIGKILL: no handler runs, no finish_run
        run.wait(timeout=30)
    finally:
        run.kill()
    assert is_gone(worker)  # PR_SET_PDEATHSIG: no orphan measuring on
    before = attempts(db)
    with Store.open(db) as store:
        assert store.get_run(1).status == "interrupted"  # 'running', but its pid is dead
        all_keys = [case_key(CaseSpec(**{**c, "image_size": tuple(c["image_size"])}))
                    for c in store.get_run(1).settings["cases"]]
    assert 2 <= len(before) < 4 and all(a == [1] for a in before.values())

    capsys.readouterr()
    assert main(["run", "--resume", "--db", str(db), "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert f"resuming {4 - len(before)} of 4 case(s)" in err
    after = attempts(db)
    assert after == {key: [1] for key in all_keys}  # each missing case once, the rest untouched
    with Store.open(db) as store:
        run_record = store.get_run(1)
        cases = store.cases(1)
    assert run_record.status == "finished" and run_record.pid == os.getpid()
    assert [c.spec.batch_size for c in cases] == [1, 2, 3, 4]
    assert {c.status for c in cases} == {"ok"}
    assert {c.settings["threads"] for c in cases} == {1}  # the recorded --threads
    assert [line.split()[1] for line in out.splitlines() if line.startswith("vilt-b32-tiny")] == [
        "1", "2", "3", "4"]

    assert main(["run", "--resume", "1", "--db", str(db)]) == 0
    out, _ = capsys.readouterr()
    assert out.strip() == "run 1 is complete: all 4 case(s) ok; nothing to resume"
    assert attempts(db) == after


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)],
                         ids=["sigterm", "ctrl-c"])
def test_sigterm_and_ctrl_c_end_the_run_interrupted(
    tmp_path: Path, signum: signal.Signals, code: int
) -> None:
    db = tmp_path / "r.sqlite"
    run = start_run(db, *FOUR_CASES, "--min-time", "2")
    try:
        wait_for_cases(db, 1, run)
        worker = worker_pid(run.pid)
        if signum == signal.SIGINT:  # as a terminal sends it: to the run and its worker
            os.killpg(run.pid, signum)
        else:  # as kill or a scheduler sends it: to the run alone
            run.send_signal(signum)
        _, err = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == code, err
    assert f"interrupted ({signum.name})" in err and f"--resume 1 --db {db}" in err
    assert is_gone(worker, timeout=1)  # the run killed it on the way out
    with Store.open(db) as store:
        record = store._read("SELECT status, finished_at FROM runs WHERE id = 1")[0]
        kept = store.cases(1)
    assert record[0] == "interrupted" and record[1] is not None  # recorded, not inferred
    assert [(c.spec.batch_size, c.status) for c in kept] == [(1, "ok")]


def test_resume_of_a_live_run_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    db = tmp_path / "r.sqlite"
    with Store.open(db) as store:  # owned by this (live) process
        run_id = _run_with_cases(store, [_spec(1), _spec(2)], done=1)
    code = main(["run", "--resume", "--db", str(db)])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.splitlines() == [f"vlbench: error: run {run_id} is still running (pid "
                                f"{os.getpid()} on {socket.gethostname()}); wait for it to end "
                                "or stop it before resuming"]
    assert attempts(db) == {case_key(_spec(1)): [1]}
    assert main(["run", "--resume", "99", "--db", str(db)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"vlbench: error: no run 99 in {db}; available runs: {run_id}"]


def test_resume_takes_everything_from_the_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    db = tmp_path / "r.sqlite"
    code = main(["run", "--resume", "--models", "vilt-b32-tiny", "--seed", "3", "--db", str(db)])
    _, err = capsys.readouterr()
    assert code == 2 and err.splitlines() == [
        "vlbench: error: --resume measures the run's recorded cases with its recorded settings; "
        "drop --models, --seed"]
    assert main(["run", "--resume", "--db", str(db)]) == 2
    assert "no results database" in capsys.readouterr().err
    assert not db.exists()


def test_a_complete_run_that_died_before_its_end_is_closed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    db = tmp_path / "r.sqlite"
    with Store.open(db) as store:
        run_id = _run_with_cases(store, [_spec(1)], done=1)
        with store._write() as conn:  # as if its process had died after the last case
            conn.execute("UPDATE runs SET pid = 0 WHERE id = ?", (run_id,))
    assert main(["run", "--resume", "--db", str(db)]) == 0
    assert "nothing to resume" in capsys.readouterr().out
    with Store.open(db) as store:
        assert store.get_run(run_id).status == "finished"


def test_reopen_run(tmp_path: Path) -> None:
    with Store.open(tmp_path / "r.sqlite") as store:
        run_id = _run_with_cases(store, [_spec(1)], done=0)
        with pytest.raises(RunActiveError, match="still running"):
            store.reopen_run(run_id)  # alive: this process owns it
        store.finish_run(run_id, "interrupted")
        store.reopen_run(run_id)
        run = store.get_run(run_id)
        assert (run.status, run.finished_at, run.pid) == ("running", None, os.getpid())
        with pytest.raises(KeyError, match="no run 99"):
            store.reopen_run(99)


def _spec(batch: int) -> CaseSpec:
    return CaseSpec("vilt-b32-tiny", batch, (64, 96), 8, "fp32", "cpu")


def _run_with_cases(store: Store, specs: list[CaseSpec], done: int) -> int:
    """A run as ``vlbench run`` records it, with its first ``done`` cases committed ok."""
    run_id = store.start_run(label=None, suite="t", command="vlbench run", env={},
                             settings={"suite": "t", "device": "cpu", **RunOptions().settings(),
                                       "cases": [s.__dict__ for s in specs]})
    for spec in specs[:done]:
        store.add_case(run_id, CaseResult(spec=spec, status="ok"))
    return run_id
