"""The store's file format: its schema, its version and migrations, and the check that keeps
vlbench from writing to a file that is not its own. ``vlbench.store`` re-exports these names;
see its docstring, "Schema versions and migrations"."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

APP_NAME = "vlbench"
STORE_VERSION = 2
BUSY_TIMEOUT_S = 30.0

_SQLITE_MAGIC = b"SQLite format 3\x00"

_SCHEMA = (
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
        settings_json TEXT,
        vlbench_version TEXT
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


def _migrate_1_to_2(conn: sqlite3.Connection) -> None:
    """Record which vlbench version started each run (unknown, NULL, for older runs)."""
    conn.execute("ALTER TABLE runs ADD COLUMN vlbench_version TEXT")


#: ``MIGRATIONS[n]`` upgrades a store from version ``n`` to ``n + 1``, inside the caller's
#: transaction; it must not commit. See "Schema versions and migrations" above.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: _migrate_1_to_2,
}


def _newer_message(path: Path, version: int) -> str:
    return (
        f"{path} was written by a newer vlbench (store version {version} > {STORE_VERSION});"
        " upgrade vlbench"
    )


def _parse_version(path: Path, value: object) -> int:
    """The store_version as an int; NotAStoreError when it is missing, garbled or newer."""
    text = str(value) if value is not None else ""
    if not text.isdigit() or int(text) < 1:
        raise NotAStoreError(f"{path} has an invalid store_version {value!r} (not a vlbench store)")
    version = int(text)
    if version > STORE_VERSION:
        raise NotAStoreError(_newer_message(path, version))
    return version


class NotAStoreError(Exception):
    """The path holds something other than a vlbench store; it was left untouched."""


def _inspect_existing(path: Path) -> bool:
    """Check an existing file read-only; return True when it is already a vlbench store.

    Returns False for a zero-byte file (treated as new); raises NotAStoreError otherwise.
    """
    if not path.is_file():
        raise NotAStoreError(f"{path} is not a regular file (not a vlbench store)")
    size = path.stat().st_size
    if size == 0:
        return False
    with path.open("rb") as handle:
        header = handle.read(len(_SQLITE_MAGIC))
    if header != _SQLITE_MAGIC:
        raise NotAStoreError(f"{path} exists and is not an SQLite database (not a vlbench store)")
    uri = f"{path.resolve().as_uri()}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error as exc:
        raise NotAStoreError(f"{path} cannot be opened as SQLite: {exc}") from exc
    try:
        has_meta = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
        ).fetchone()
        if not has_meta:
            raise NotAStoreError(f"{path} is an SQLite database of another application")
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.DatabaseError as exc:
        raise NotAStoreError(f"{path} is not a readable SQLite database: {exc}") from exc
    finally:
        conn.close()
    if meta.get("app") != APP_NAME:
        raise NotAStoreError(f"{path} is an SQLite database of another application")
    _parse_version(path, meta.get("store_version"))
    return True
