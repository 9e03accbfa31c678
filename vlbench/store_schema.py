"""The store's file format: its schema, its version and migrations, and the check that keeps
vlbench from writing to a file that is not its own. ``vlbench.store`` re-exports these names.

Schema (``store_version`` 3)::

    meta(key TEXT PRIMARY KEY, value TEXT)      -- app='vlbench', store_version='3'
    runs(id, label, suite, status, started_at, finished_at, heartbeat_at,
         host, pid, command, env_json, settings_json,
         vlbench_version)                         -- since 2; NULL for runs migrated from 1
    cases(id, run_id -> runs.id, case_key, attempt, model, status, message,
          result_json, created_at)                -- index on (run_id, case_key)

``runs.status`` is ``running``, ``finished``, ``interrupted`` or ``failed``; timestamps are UTC
ISO 8601. ``cases.result_json`` holds ``CaseResult.to_dict()``.

Schema versions and migrations
------------------------------
``meta.store_version`` says which schema the file has. A new store is created at
``STORE_VERSION``. An older store is upgraded when it is opened: ``MIGRATIONS[n]`` turns version
``n`` into ``n + 1``; all the steps it needs run in order inside ONE ``BEGIN IMMEDIATE``
transaction that also sets the new ``store_version``, so a crash or an error half way leaves the
file exactly as it was (still the old version, readable by the old vlbench). Two processes opening
the same old store migrate it once: the version is re-read under the write lock. A store written by
a newer vlbench (``store_version`` above ``STORE_VERSION``) is refused with
:class:`NotAStoreError` before anything opens it for writing. History:

1. the first schema;
2. ``runs.vlbench_version``: the version of the vlbench that started the run;
3. every ``cases.result_json`` carries what readers show without model code: each stage's
   ``category``, the model's ``canonical_image_size`` / ``canonical_text_len`` and the ViLT
   paper's ``paper_row`` / ``paper_bar``. Older rows gain them as ``vlbench.upgrade`` derives
   them (categories by the frozen kind map, the paper's figures by model name, canonical input
   null: not recorded); a row whose JSON is damaged is left as it was, with a warning naming
   its run and case.

To change the schema: bump ``STORE_VERSION``, update ``SCHEMA`` (the schema of a new store) and
add ``MIGRATIONS[STORE_VERSION - 1]``; a test checks that a migrated store matches a new one, and
one opens a store file written by the previous release (``tests/data/``).
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlbench.records import VlbenchWarning
from vlbench.upgrade import upgrade_case

APP_NAME = "vlbench"
STORE_VERSION = 3
BUSY_TIMEOUT_S = 30.0

_SQLITE_MAGIC = b"SQLite format 3\x00"

SCHEMA = (
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


def _migrate_2_to_3(conn: sqlite3.Connection) -> None:
    """Add what readers need to every stored case (``vlbench.upgrade.upgrade_case``); a row
    whose JSON is damaged is kept as it is, so it cannot block the others."""
    rows = conn.execute("SELECT id, run_id, case_key, result_json FROM cases").fetchall()
    for row_id, run_id, key, payload in rows:
        try:
            data = json.loads(payload)
            if not isinstance(data, dict):
                raise ValueError(f"a JSON {type(data).__name__}, not an object")
            upgraded = upgrade_case(data)
        except (TypeError, ValueError, AttributeError) as exc:  # JSONDecodeError is a ValueError
            warnings.warn(f"store migration to version 3: run {run_id} case {key} (row "
                          f"{row_id}) has damaged result_json, left as it was: {exc}",
                          VlbenchWarning, stacklevel=2)
            continue
        conn.execute("UPDATE cases SET result_json = ? WHERE id = ?", (to_json(upgraded), row_id))


def to_json(value: Any) -> str:
    """How the store writes a value: strict JSON (a non-finite number is null, never a bare
    ``NaN`` that other JSON readers refuse), sorted keys, ``str()`` of what JSON cannot encode."""
    return json.dumps(finite(value), sort_keys=True, default=str, allow_nan=False)


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, infinities) replaced by None, at any depth:
    what vlbench writes as JSON is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


#: ``MIGRATIONS[n]`` upgrades a store from version ``n`` to ``n + 1``, inside the caller's
#: transaction; it must not commit. See "Schema versions and migrations" above.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: _migrate_1_to_2,
    2: _migrate_2_to_3,
}


def create_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Create a new store's tables in the caller's write transaction (idempotent), refusing a
    database another application made meanwhile, and migrate one an older vlbench made."""
    # Re-check under the write lock: another process may have created the file meanwhile.
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if tables and "meta" not in tables:
        raise NotAStoreError(f"{path} is an SQLite database of another application")
    for statement in SCHEMA:
        conn.execute(statement)
    conn.execute("INSERT OR IGNORE INTO meta VALUES ('app', ?)", (APP_NAME,))
    conn.execute("INSERT OR IGNORE INTO meta VALUES ('store_version', ?)", (str(STORE_VERSION),))
    app = conn.execute("SELECT value FROM meta WHERE key = 'app'").fetchone()
    if app is None or app[0] != APP_NAME:
        raise NotAStoreError(f"{path} is an SQLite database of another application")
    # Another (possibly older) vlbench may have created the store meanwhile.
    apply_migrations(conn, path)


def apply_migrations(conn: sqlite3.Connection, path: Path) -> None:
    """Run the missing steps in the caller's write transaction and record the new version."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'store_version'").fetchone()
    version = parse_version(path, row[0] if row else None)
    if version == STORE_VERSION:
        return
    for step in range(version, STORE_VERSION):
        migrate = MIGRATIONS.get(step)
        if migrate is None:
            raise RuntimeError(f"vlbench has no migration from store version {step}")
        migrate(conn)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'store_version'", (str(STORE_VERSION),))


def _newer_message(path: Path, version: int) -> str:
    return (
        f"{path} was written by a newer vlbench (store version {version} > {STORE_VERSION});"
        " upgrade vlbench"
    )


def parse_version(path: Path, value: object) -> int:
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


def inspect_existing(path: Path) -> bool:
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
    try:
        conn = connect_read_only(path)
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
    parse_version(path, meta.get("store_version"))
    return True


def connect_read_only(path: Path, **kwargs: Any) -> sqlite3.Connection:
    """A connection that cannot write: ``mode=ro``; where SQLite cannot open the file so (a WAL
    store on read-only media, where it cannot create the shared-memory file) and nothing can
    write the file either (its directory is not writable), ``immutable=1``."""
    base = path.resolve().as_uri()
    kwargs.setdefault("timeout", BUSY_TIMEOUT_S)
    conn = sqlite3.connect(f"{base}?mode=ro", uri=True, **kwargs)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError:
        conn.close()
        if os.access(path.parent, os.W_OK):
            raise
    conn = sqlite3.connect(f"{base}?immutable=1", uri=True, **kwargs)
    conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    return conn
