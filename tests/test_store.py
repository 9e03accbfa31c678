"""The results store keeps every finished case, refuses foreign files, and survives crashes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from store_records import dead_pid, new_run, ok_result, oom_result, raw, spec

from vlbench.runs import format_ids
from vlbench.store import (
    STALE_AFTER_S,
    RunRecord,
    Store,
    case_key,
    default_db_path,
    effective_status,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


# -- location ------------------------------------------------------------------------------


def test_default_db_path_prefers_env_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("VLBENCH_DB", str(tmp_path / "explicit.sqlite"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_db_path() == tmp_path / "explicit.sqlite"

    monkeypatch.delenv("VLBENCH_DB")
    assert default_db_path() == tmp_path / "xdg" / "vlbench" / "results.sqlite"

    monkeypatch.setenv("XDG_DATA_HOME", "relative/dir")  # invalid per the XDG spec: ignored
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    expected = tmp_path / "home" / ".local" / "share" / "vlbench" / "results.sqlite"
    assert default_db_path() == expected
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_db_path() == expected


def test_open_without_path_uses_env(monkeypatch, tmp_path):
    db = tmp_path / "nested" / "dirs" / "r.sqlite"
    monkeypatch.setenv("VLBENCH_DB", str(db))
    with Store.open() as store:
        assert store.path == db
    assert db.is_file()


# -- cases ---------------------------------------------------------------------------------


def test_case_round_trip_is_exact(tmp_path):
    original = ok_result()
    with Store.open(tmp_path / "r.sqlite") as store:
        run_id = new_run(store)
        assert store.add_case(run_id, original) == 1
        store.add_case(run_id, oom_result("lxmert"))
        back = store.cases(run_id)
    assert back == [original, oom_result("lxmert")]
    assert back[0].stages[0].timing == original.stages[0].timing
    assert back[0].spec.image_size == (600, 1000)


def test_case_key_is_stable_and_distinguishes_fields():
    assert case_key(spec()) == "vilbert|1|600x1000|40|fp32|cpu"
    assert case_key(spec()) == case_key(spec())
    assert case_key(spec(size=(1000, 600))) != case_key(spec())
    assert case_key(spec(batch=2)) != case_key(spec())


def test_attempts_final_only_and_completed_keys(tmp_path):
    with Store.open(tmp_path / "r.sqlite") as store:
        run_id = new_run(store)
        assert store.add_case(run_id, ok_result("a", median=1.0)) == 1
        assert store.add_case(run_id, ok_result("b", median=5.0)) == 1
        assert store.add_case(run_id, ok_result("a", median=2.0)) == 2
        assert store.add_case(run_id, oom_result("c")) == 1

        final = store.cases(run_id)
        # One record per key, the last attempt, in the order the keys first appeared.
        assert [(c.spec.model, c.end_to_end and c.end_to_end.median_ms) for c in final] == [
            ("a", 2.0),
            ("b", 5.0),
            ("c", None),
        ]
        every = store.cases(run_id, final_only=False)
        assert [c.spec.model for c in every] == ["a", "b", "a", "c"]
        assert every[0].end_to_end.median_ms == 1.0

        assert store.completed_case_keys(run_id) == {case_key(spec("a")), case_key(spec("b"))}
        # A retry that failed makes the case incomplete again: resume must redo it.
        store.add_case(run_id, oom_result("b"))
        assert store.completed_case_keys(run_id) == {case_key(spec("a"))}


def test_attempts_are_counted_per_run(tmp_path):
    with Store.open(tmp_path / "r.sqlite") as store:
        first, second = new_run(store), new_run(store)
        assert store.add_case(first, ok_result()) == 1
        assert store.add_case(second, ok_result()) == 1
        assert store.cases(second) == [ok_result()]


def test_unknown_run_is_a_key_error(tmp_path):
    with Store.open(tmp_path / "r.sqlite") as store:
        new_run(store)
        with pytest.raises(KeyError, match="available runs: 1"):
            store.add_case(7, ok_result())
        with pytest.raises(KeyError):
            store.get_run(7)
        with pytest.raises(KeyError):
            store.cases(7)
        with pytest.raises(KeyError):
            store.finish_run(7)
        with pytest.raises(KeyError):
            store.heartbeat(7)
        assert store.cases(1) == []


# -- runs ----------------------------------------------------------------------------------


def test_run_record_and_finish(tmp_path):
    with Store.open(tmp_path / "r.sqlite") as store:
        run_id = new_run(store, label="baseline")
        record = store.get_run(run_id)
        assert isinstance(record, RunRecord)
        assert record.id == run_id
        assert (record.label, record.suite, record.command) == (
            "baseline",
            "smoke",
            "vlbench run --suite smoke",
        )
        assert record.status == "running"  # this process is alive and just beat
        assert record.pid == os.getpid()
        assert record.host
        assert record.env == {"python": "3.11", "torch": "2.5"}
        assert record.settings == {"repeats": 20}
        assert record.finished_at is None
        started = datetime.fromisoformat(record.started_at)
        assert started.utcoffset() == timedelta(0)
        assert abs(datetime.now(UTC) - started) < timedelta(minutes=1)

        store.finish_run(run_id)
        record = store.get_run(run_id)
        assert record.status == "finished"
        assert datetime.fromisoformat(record.finished_at) >= started

        failed = new_run(store)
        store.finish_run(failed, status="failed")
        assert store.get_run(failed).status == "failed"
        with pytest.raises(ValueError):
            store.finish_run(failed, status="running")
        with pytest.raises(ValueError):
            store.finish_run(failed, status="done")


def test_resolve_run(tmp_path):
    with Store.open(tmp_path / "r.sqlite") as store:
        with pytest.raises(KeyError, match="empty") as excinfo:
            store.resolve_run("latest")
        assert "\n" not in str(excinfo.value)
        with pytest.raises(KeyError, match="empty"):
            store.resolve_run(None)
        with pytest.raises(KeyError, match="empty"):
            store.resolve_run(3)
        assert store.latest_run_id() is None

        ids = [new_run(store) for _ in range(3)]
        assert store.run_ids() == ids
        assert store.latest_run_id() == ids[-1]
        assert store.resolve_run("latest") == ids[-1]
        assert store.resolve_run(None) == ids[-1]
        assert store.resolve_run(ids[1]) == ids[1]
        assert store.resolve_run(str(ids[0])) == ids[0]

        with pytest.raises(KeyError) as excinfo:
            store.resolve_run(99)
        message = str(excinfo.value)
        assert message.startswith("no run 99 in ")
        assert message.endswith("available runs: 1, 2, 3")
        assert "\n" not in message
        with pytest.raises(KeyError, match="available runs: 1, 2, 3"):
            store.resolve_run("yesterday")


def test_format_ids_stays_short_for_long_histories():
    assert format_ids([3, 1, 2]) == "1, 2, 3"
    assert format_ids([*range(1, 41), 42, 50, 51]) == "1-40, 42, 50-51"


def test_running_run_with_dead_pid_is_interrupted(tmp_path):
    db = tmp_path / "r.sqlite"
    with Store.open(db) as store:
        run_id = new_run(store)
        conn = raw(db)
        conn.execute("UPDATE runs SET pid = ? WHERE id = ?", (dead_pid(), run_id))
        conn.close()
        assert store.get_run(run_id).status == "interrupted"
        # The stored status is untouched: it is computed on read.
        conn = raw(db)
        assert conn.execute("SELECT status FROM runs").fetchone()[0] == "running"
        conn.close()


def test_running_run_with_stale_heartbeat_is_interrupted(tmp_path):
    db = tmp_path / "r.sqlite"
    with Store.open(db) as store:
        run_id = new_run(store)
        stale = datetime.now(UTC) - timedelta(seconds=STALE_AFTER_S + 60)
        conn = raw(db)
        # Another host: its pid cannot be checked, only the heartbeat tells.
        conn.execute(
            "UPDATE runs SET host = 'elsewhere', heartbeat_at = ? WHERE id = ?",
            (stale.isoformat(), run_id),
        )
        conn.close()
        assert store.get_run(run_id).status == "interrupted"
        store.heartbeat(run_id)
        assert store.get_run(run_id).status == "running"


def test_effective_status_rules():
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    fresh = (now - timedelta(minutes=1)).isoformat()
    old = (now - timedelta(minutes=11)).isoformat()
    assert effective_status("running", "elsewhere", 1, fresh, now=now) == "running"
    assert effective_status("running", "elsewhere", 1, old, now=now) == "interrupted"
    assert effective_status("finished", "elsewhere", 1, old, now=now) == "finished"
    assert effective_status("failed", "elsewhere", 1, old, now=now) == "failed"


# -- concurrency and crashes ----------------------------------------------------------------


def test_two_stores_on_one_file_write_alternately(tmp_path):
    db = tmp_path / "r.sqlite"
    with Store.open(db) as first, Store.open(db) as second:
        run_a = first.start_run(label="a", suite=None, command="a", env={}, settings={})
        run_b = second.start_run(label="b", suite=None, command="b", env={}, settings={})
        for i in range(5):
            first.add_case(run_a, ok_result(f"m{i}"))
            second.add_case(run_b, ok_result(f"m{i}"))
            second.add_case(run_a, ok_result(f"n{i}"))
            first.heartbeat(run_b)
        first.finish_run(run_b)
        second.finish_run(run_a)
        # Each handle sees what the other committed.
        assert len(first.cases(run_a)) == 10
        assert len(second.cases(run_b)) == 5
        assert first.get_run(run_b).status == "finished"


def test_concurrent_writers_never_duplicate_attempts(tmp_path):
    """Attempt numbers are read and written under one write lock, so racing writers stay exact."""
    db = tmp_path / "r.sqlite"
    with Store.open(db) as store:
        run_id = new_run(store)
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with Store.open(db) as own:
                for _ in range(25):
                    own.add_case(run_id, ok_result())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    conn = raw(db)
    attempts = [row[0] for row in conn.execute("SELECT attempt FROM cases ORDER BY attempt")]
    conn.close()
    assert attempts == list(range(1, 76))


def test_cases_survive_a_crash_mid_run(tmp_path):
    db = tmp_path / "r.sqlite"
    script = textwrap.dedent(
        """
        import os, sys
        from vlbench.results import CaseResult, CaseSpec
        from vlbench.store import Store

        store = Store.open(sys.argv[1])
        run_id = store.start_run(label="crash", suite=None, command="x", env={}, settings={})
        spec = CaseSpec("vilbert", 1, (600, 1000), 40, "fp32", "cpu")
        store.add_case(run_id, CaseResult(spec=spec, status="ok", wall_s=1.0))
        print(run_id, flush=True)
        os._exit(1)  # no close, no finish_run, no checkpoint
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.run(
        [sys.executable, "-c", script, str(db)],
        check=False,
        env=env,
        capture_output=True,
        text=True,
    )
    assert child.returncode == 1, child.stderr
    run_id = int(child.stdout)

    with Store.open(db) as store:
        assert [c.spec.model for c in store.cases(run_id)] == ["vilbert"]
        assert store.completed_case_keys(run_id) == {"vilbert|1|600x1000|40|fp32|cpu"}
        assert store.get_run(run_id).status == "interrupted"
