"""The results store keeps every finished case, refuses foreign files, and survives crashes."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import vlbench
import vlbench.store as store_module
from vlbench import paper
from vlbench.results import CaseResult, CaseSpec, StageResult, Summary
from vlbench.runs import format_ids
from vlbench.store import (
    MIGRATIONS,
    STALE_AFTER_S,
    STORE_VERSION,
    NotAStoreError,
    RunRecord,
    Store,
    case_key,
    default_db_path,
    effective_status,
)
from vlbench.upgrade import legacy_category, upgrade_case

REPO_ROOT = Path(__file__).resolve().parents[1]


def summary(median: float, n: int = 20) -> Summary:
    return Summary(
        median_ms=median,
        iqr_ms=0.25 * median,
        p90_ms=1.2 * median,
        mean_ms=1.01 * median,
        cv=0.031,
        n=n,
        ci_low_ms=0.95 * median,
        ci_high_ms=1.05 * median,
        ci_coverage=0.9586,
        unstable=False,
    )


def spec(model: str = "vilbert", batch: int = 1, size: tuple[int, int] = (600, 1000)) -> CaseSpec:
    return CaseSpec(
        model=model,
        batch_size=batch,
        image_size=size,
        text_len=40,
        precision="fp32",
        device="cpu",
    )


def ok_result(model: str = "vilbert", median: float = 12.5, batch: int = 1) -> CaseResult:
    return CaseResult(
        spec=spec(model, batch),
        status="ok",
        embedder="region",
        fusion="dual-stream",
        tokens={"text": 40, "image": 37},
        end_to_end=summary(median),
        end_to_end_samples_ms=(median, median + 0.5, median - 0.25),
        stage_sum_ms=0.9 * median,
        stages=(
            StageResult(
                name="backbone",
                kind="backbone",
                parent=None,
                timing=summary(0.6 * median),
                calls=1,
                flops=123_456_789_000,
                params=44_500_000,
                peak_mem_bytes=1 << 30,
                samples_ms=(7.5, 7.6),
            ),
            StageResult(
                name="rpn.nms",
                kind="region_ops",
                parent="backbone",
                timing=None,
                calls=2,
                flops=0,
                params=0,
                host_sync=True,
            ),
        ),
        flops_total=200_000_000_000,
        params_total=221_000_000,
        peak_mem_bytes=None,
        settings={"threads": 8, "tf32": False, "seed": 0},
        wall_s=31.25,
    )


def oom_result(model: str = "vilbert") -> CaseResult:
    return CaseResult(
        spec=spec(model),
        status="oom",
        message="CUDA out of memory. Tried to allocate 2.00 GiB",
        embedder="region",
        fusion="dual-stream",
        wall_s=3.0,
    )


def new_run(store: Store, label: str | None = "test") -> int:
    return store.start_run(
        label=label,
        suite="smoke",
        command="vlbench run --suite smoke",
        env={"python": "3.11", "torch": "2.5"},
        settings={"repeats": 20},
    )


def dead_pid() -> int:
    """A pid that certainly belonged to a process that has exited and been reaped."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(child.stdout)


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


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


# -- schema --------------------------------------------------------------------------------


def test_new_store_has_versioned_schema_in_wal_mode(tmp_path):
    db = tmp_path / "a" / "b" / "results.sqlite"
    with Store.open(db):
        pass
    conn = raw(db)
    assert dict(conn.execute("SELECT key, value FROM meta")) == {
        "app": "vlbench",
        "store_version": str(STORE_VERSION),
    }
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"meta", "runs", "cases"} <= tables
    index_cols = [row[2] for row in conn.execute("PRAGMA index_info(cases_run_key)")]
    assert index_cols == ["run_id", "case_key"]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_reopening_keeps_data(tmp_path):
    db = tmp_path / "r.sqlite"
    with Store.open(db) as store:
        run_id = new_run(store)
        store.add_case(run_id, ok_result())
    with Store.open(db) as store:
        assert store.run_ids() == [run_id]
        assert store.cases(run_id) == [ok_result()]


def test_zero_byte_file_is_treated_as_new(tmp_path):
    db = tmp_path / "empty.sqlite"
    db.touch()
    with Store.open(db) as store:
        assert store.run_ids() == []
        new_run(store)
    assert db.stat().st_size > 0


def _random_file(path: Path) -> None:
    path.write_bytes(b"not sqlite at all\n" + os.urandom(8192))


def _foreign_sqlite(path: Path) -> None:
    conn = raw(path)
    conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT)")
    conn.execute("INSERT INTO accounts (owner) VALUES ('alice'), ('bob')")
    conn.close()


def _foreign_meta(path: Path) -> None:
    conn = raw(path)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    conn.execute("INSERT INTO meta VALUES ('app', 'someone-else'), ('store_version', '1')")
    conn.close()


def _newer_store(path: Path) -> None:
    conn = raw(path)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    conn.execute("INSERT INTO meta VALUES ('app', 'vlbench'), ('store_version', '99')")
    conn.close()


@pytest.mark.parametrize("make", [_random_file, _foreign_sqlite, _foreign_meta, _newer_store])
def test_foreign_file_is_refused_and_left_untouched(tmp_path, make):
    db = tmp_path / "precious.db"
    make(db)
    before = db.read_bytes()
    listing = sorted(p.name for p in tmp_path.iterdir())

    with pytest.raises(NotAStoreError) as excinfo:
        Store.open(db)

    assert str(db) in str(excinfo.value)
    assert db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == listing  # no -wal / -shm left behind


# -- migrations ----------------------------------------------------------------------------

# The schema exactly as store version 1 created it (vlbench 0.1.0 before migrations existed).
V1_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)",
    """CREATE TABLE IF NOT EXISTS runs (
        id INTEGER PRIMARY KEY,
        label TEXT,
        suite TEXT,
        status TEXT,  -- running | finished | interrupted | failed
        started_at TEXT,
        finished_at TEXT,
        heartbeat_at TEXT,
        host TEXT,
        pid INTEGER,
        command TEXT,
        env_json TEXT,
        settings_json TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS cases (
        id INTEGER PRIMARY KEY,
        run_id INTEGER REFERENCES runs(id),
        case_key TEXT,
        attempt INTEGER,
        model TEXT,
        status TEXT,
        message TEXT,
        result_json TEXT,
        created_at TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS cases_run_key ON cases (run_id, case_key)",
)


def _v1_store(path: Path) -> None:
    """A version-1 store as the old vlbench left it: one finished run with one case."""
    conn = raw(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("BEGIN")
    for statement in V1_SCHEMA:
        conn.execute(statement)
    conn.execute("INSERT INTO meta VALUES ('app', 'vlbench'), ('store_version', '1')")
    conn.execute(
        "INSERT INTO runs VALUES (7, 'old', 'smoke', 'finished', '2024-05-01T10:00:00.000+00:00',"
        " '2024-05-01T10:05:00.000+00:00', '2024-05-01T10:05:00.000+00:00', 'oldhost', 4242,"
        " 'vlbench run --suite smoke', '{\"torch\": \"2.3\"}', '{\"repeats\": 20}')"
    )
    result = ok_result()
    conn.execute(
        "INSERT INTO cases VALUES (1, 7, ?, 1, 'vilbert', 'ok', NULL, ?,"
        " '2024-05-01T10:01:00.000+00:00')",
        (case_key(result.spec), json.dumps(result.to_dict(), sort_keys=True, default=str)),
    )
    conn.execute("COMMIT")
    conn.close()


def _dump(path: Path) -> list[str]:
    conn = raw(path)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def _shape(path: Path) -> dict[str, object]:
    """Columns of every table and the indexes, to compare a migrated store with a new one."""
    conn = raw(path)
    try:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            )
        ]
        shape: dict[str, object] = {
            table: [row[1:] for row in conn.execute(f"PRAGMA table_info({table})")]
            for table in tables
        }
        shape["indexes"] = sorted(
            (name, table, tuple(r[2] for r in conn.execute(f"PRAGMA index_info({name})")))
            for name, table in conn.execute(
                "SELECT name, tbl_name FROM sqlite_master WHERE type = 'index'"
                " AND name NOT LIKE 'sqlite_autoindex%'"
            )
        )
        shape["meta"] = dict(conn.execute("SELECT key, value FROM meta"))
        return shape
    finally:
        conn.close()


def test_every_older_version_has_a_migration_step():
    assert sorted(MIGRATIONS) == list(range(1, STORE_VERSION))


def test_version_1_store_is_migrated_and_keeps_its_data(tmp_path):
    db = tmp_path / "old.sqlite"
    _v1_store(db)

    with Store.open(db) as store:
        assert store.run_ids() == [7]
        old = store.get_run(7)
        assert (old.label, old.status, old.host, old.pid) == ("old", "finished", "oldhost", 4242)
        assert old.env == {"torch": "2.3"}
        assert old.settings == {"repeats": 20}
        assert old.vlbench_version is None  # unknown for runs recorded before version 2
        assert store.cases(7) == [ok_result()]
        assert store.completed_case_keys(7) == {case_key(ok_result().spec)}

        new = new_run(store)
        assert store.get_run(new).vlbench_version == vlbench.__version__
        store.add_case(new, ok_result())

    fresh = tmp_path / "fresh.sqlite"
    Store.open(fresh).close()
    assert _shape(db) == _shape(fresh)  # migrated schema == the schema of a new store
    assert _shape(db)["meta"] == {"app": "vlbench", "store_version": str(STORE_VERSION)}

    with Store.open(db) as store:  # a second open finds nothing to do
        assert store.run_ids() == [7, new]


def test_new_runs_record_the_vlbench_version(tmp_path):
    with Store.open(tmp_path / "r.sqlite") as store:
        assert store.get_run(new_run(store)).vlbench_version == vlbench.__version__


def test_failing_migration_leaves_the_old_store_intact(tmp_path, monkeypatch):
    db = tmp_path / "old.sqlite"
    _v1_store(db)
    before = _dump(db)

    def half_done(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE runs ADD COLUMN vlbench_version TEXT")
        conn.execute("DELETE FROM cases")
        raise RuntimeError("disk on fire")

    monkeypatch.setitem(MIGRATIONS, 1, half_done)
    with pytest.raises(RuntimeError, match="disk on fire"):
        Store.open(db)

    assert _dump(db) == before  # still version 1, same schema, same rows
    conn = raw(db)
    assert conn.execute("SELECT value FROM meta WHERE key = 'store_version'").fetchone() == ("1",)
    assert conn.execute("SELECT COUNT(*) FROM cases").fetchone() == (1,)
    conn.close()

    monkeypatch.setitem(MIGRATIONS, 1, store_module._migrate_1_to_2)
    with Store.open(db) as store:  # the real step then succeeds
        assert store.cases(7) == [ok_result()]


# A store written by the previous release (store version 2, vlbench at commit 9107562): a smoke
# run of the tiny twins, a tiny retrieval run, and vilt-b32, pixelbert-r50 and uniter-base at
# full size (tests/data/README.md says how it was made).
STORE_V2 = REPO_ROOT / "tests" / "data" / "store_v2.db"
NEW_FIELDS = {"paper_row", "paper_bar", "canonical_image_size", "canonical_text_len",
              "contention"}


def test_a_store_of_the_previous_release_is_migrated(tmp_path):
    db = tmp_path / "v2.sqlite"
    shutil.copyfile(STORE_V2, db)
    before = {row_id: json.loads(payload) for row_id, payload
              in raw(db).execute("SELECT id, result_json FROM cases")}
    assert before and all(not NEW_FIELDS & set(case) for case in before.values())

    with Store.open(db) as store:
        assert store.run_ids() == [1, 2, 3]
        results = [r for run_id in store.run_ids() for r in store.cases(run_id)]
    fresh = tmp_path / "fresh.sqlite"
    Store.open(fresh).close()
    assert _shape(db) == _shape(fresh)
    assert len(results) == len(before) == 12 + 8 + 3
    by_model = {r.spec.model: r for r in results}
    for name in ("vilt-b32", "pixelbert-r50", "uniter-base"):
        assert by_model[name].paper_row == paper.table6_row(name) is not None
        assert by_model[name].paper_bar == paper.figure1_bar(name) is not None
    for r in results:
        assert (r.canonical_image_size, r.canonical_text_len) == (None, None)  # not recorded
        assert r.contention is None  # not measured then: never read as a quiet machine
        assert all(s.category == legacy_category(s.kind) for s in r.stages)
        if r.spec.model.endswith("-tiny"):
            assert r.paper_row is None and r.paper_bar is None
    categories = {s.category for r in results for s in r.stages}
    assert {paper.BACKBONE, paper.REGION_OPS, paper.VISUAL_EMBEDDING, paper.TEXT_EMBEDDING,
            paper.INTERACTION, "other"} <= categories  # "other": retrieval's steps

    after = {row_id: json.loads(payload) for row_id, payload
             in raw(db).execute("SELECT id, result_json FROM cases")}
    for row_id, old in before.items():  # only added: every stored value is kept
        new = after[row_id]
        assert {k: v for k, v in new.items() if k not in NEW_FIELDS | {"stages"}} == {
            k: v for k, v in old.items() if k != "stages"}
        assert [{k: v for k, v in s.items() if k != "category"} for s in new["stages"]] == (
            old["stages"])


def test_a_damaged_case_does_not_block_the_migration(tmp_path):
    db = tmp_path / "v2.sqlite"
    shutil.copyfile(STORE_V2, db)
    conn = raw(db)
    row_id, key = conn.execute(
        "SELECT id, case_key FROM cases WHERE run_id = 3 ORDER BY id LIMIT 1").fetchone()
    conn.execute("UPDATE cases SET result_json = '{\"spec\": ' WHERE id = ?", (row_id,))
    conn.close()

    with pytest.warns(UserWarning, match=f"run 3 case {re.escape(key)} .*damaged"):
        Store.open(db).close()

    conn = raw(db)
    assert conn.execute("SELECT value FROM meta WHERE key = 'store_version'").fetchone() == (
        str(STORE_VERSION),)
    assert conn.execute("SELECT result_json FROM cases WHERE id = ?", (row_id,)).fetchone() == (
        '{"spec": ',)
    others = [json.loads(p) for (p,) in conn.execute(
        "SELECT result_json FROM cases WHERE id != ?", (row_id,))]
    conn.close()
    assert others and all(set(case) >= NEW_FIELDS for case in others)


def test_upgrading_a_case_adds_only_what_it_lacks():
    old = ok_result("vilt-b32").to_dict()
    for key in NEW_FIELDS:
        del old[key]
    for stage in old["stages"]:
        del stage["category"]
    new = upgrade_case(old)
    assert [s["category"] for s in new["stages"]] == [paper.BACKBONE, paper.REGION_OPS]
    assert new["paper_row"]["tokens"] == "200+40" and new["paper_bar"]["total_ms"] == 15.0
    assert new["canonical_image_size"] is None and new["canonical_text_len"] is None
    assert "category" not in old["stages"][0] and "paper_row" not in old  # input untouched
    stored = json.loads(json.dumps({**ok_result("vilt-b32").to_dict(), "paper_row": None}))
    assert upgrade_case(stored) == stored  # fields present are kept as stored, None included
    assert legacy_category("offline") == legacy_category("made-up kind") == "other"


def test_store_from_a_newer_vlbench_is_refused_with_one_line(tmp_path):
    db = tmp_path / "future.sqlite"
    _v1_store(db)
    conn = raw(db)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'store_version'", (str(STORE_VERSION + 1),))
    conn.close()
    before = db.read_bytes()
    listing = [p.name for p in tmp_path.iterdir()]

    with pytest.raises(NotAStoreError) as excinfo:
        Store.open(db)

    message = str(excinfo.value)
    assert "\n" not in message
    assert message == (
        f"{db} was written by a newer vlbench "
        f"(store version {STORE_VERSION + 1} > {STORE_VERSION}); upgrade vlbench"
    )
    assert db.read_bytes() == before
    # The store is in WAL mode, so the read-only inspection may leave SQLite's empty -wal/-shm
    # companions (normal for any reader); it writes nothing to the store itself.
    wal = db.with_name(db.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    extra = set(p.name for p in tmp_path.iterdir()) - set(listing)
    assert extra <= {wal.name, db.name + "-shm"}


@pytest.mark.parametrize("value", ["", "two", "0", None])
def test_garbled_store_version_is_refused(tmp_path, value):
    db = tmp_path / "odd.sqlite"
    _v1_store(db)
    conn = raw(db)
    if value is None:
        conn.execute("DELETE FROM meta WHERE key = 'store_version'")
    else:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'store_version'", (value,))
    conn.close()
    before = db.read_bytes()
    with pytest.raises(NotAStoreError, match="invalid store_version"):
        Store.open(db)
    assert db.read_bytes() == before


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
