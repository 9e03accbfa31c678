"""The store's schema and its migrations: a new store is versioned, foreign and newer files are
refused untouched, every older version migrates and keeps its data, a failed migration leaves
the old store as it was."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
from pathlib import Path

import pytest
from store_records import new_run, ok_result, raw

import vlbench
import vlbench.store as store_module
from vlbench import paper
from vlbench.store import (
    MIGRATIONS,
    STORE_VERSION,
    NotAStoreError,
    Store,
    case_key,
)
from vlbench.upgrade import legacy_category, upgrade_case

REPO_ROOT = Path(__file__).resolve().parents[1]


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
