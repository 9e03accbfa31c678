"""The embedded results database: every run and every measured case, kept in one SQLite file.

Where the file lives
--------------------
``default_db_path()`` picks, in order:

1. ``$VLBENCH_DB`` when set (``~`` is expanded);
2. ``$XDG_DATA_HOME/vlbench/results.sqlite`` when ``XDG_DATA_HOME`` is set to an absolute path;
3. ``~/.local/share/vlbench/results.sqlite``.

Why SQLite and why this way
---------------------------
A benchmark run can take hours and die at any point (OOM killer, Ctrl-C, a lost node). Each case
is therefore committed in its own transaction the moment it finishes, so an interrupted run keeps
every finished case and can later be resumed (``completed_case_keys``). The database runs in WAL
mode so a report can read while a run writes, and every write opens with ``BEGIN IMMEDIATE``:
Python's default deferred transactions take the write lock only at the first write, which under
WAL fails with "database is locked" instead of waiting when a reader has to be upgraded.

A file that exists and is not a vlbench store (not SQLite at all, or SQLite without our ``meta``
table saying ``app = 'vlbench'``) raises :class:`NotAStoreError` and is never written to: it is
inspected through a read-only connection before anything opens it for writing. A zero-byte file
counts as new.

The file's format (tables, ``store_version``, migrations of older stores, run within one
transaction when a store is opened) is described and kept in ``vlbench/store_schema.py``; a run's
record and whether one recorded as running still is, in ``vlbench/runs.py``; case keys, in
``vlbench/case_keys.py``. ``cases.result_json`` holds ``CaseResult.to_dict()``; values JSON
cannot encode are stored as their ``str()`` rather than losing a measured case, and non-finite
numbers as null (strict JSON). A case measured again in the same run (a resume, a retry) gets the
next ``attempt`` number; readers take the last attempt. A ``Store`` may be shared between threads.

Rows are checked as they are read (``vlbench.records``): a damaged one reads as an ``error`` case,
with a warning naming its run and case, and a resume measures it again.
``Store.open(path, read_only=True)`` reads a store it must not, or cannot, write (read-only
media: ``vlbench.store_schema.connect_read_only``).
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from vlbench import __version__
from vlbench.case_keys import case_key, identity_key  # noqa: F401 - identity_key re-exported
from vlbench.records import readable, stored_case, stored_json
from vlbench.results import CaseResult
from vlbench.runs import (  # noqa: F401 - re-exported: the store's public surface
    RUN_STATUSES,
    STALE_AFTER_S,
    RunActiveError,
    RunRecord,
    UnknownRunError,
    effective_status,
    format_ids,
    iso,
    utc_now,
)
from vlbench.store_schema import (  # noqa: F401 - re-exported: the store's public surface
    APP_NAME,
    BUSY_TIMEOUT_S,
    MIGRATIONS,
    STORE_VERSION,
    NotAStoreError,
    _migrate_1_to_2,
    _migrate_2_to_3,
    apply_migrations,
    connect_read_only,
    create_schema,
    inspect_existing,
    parse_version,
    to_json,
)

DEFAULT_DB_ENV = "VLBENCH_DB"


def default_db_path() -> Path:
    """Where results go when no path is given; see the module docstring for the order."""
    explicit = os.environ.get(DEFAULT_DB_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    # The XDG spec says relative values are invalid and must be ignored.
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
    return base / "vlbench" / "results.sqlite"


class Store:
    """A handle on one results database; use ``Store.open(path)`` as a context manager."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *,
                 read_only: bool = False) -> None:
        self.path = Path(path) if path is not None else default_db_path()
        exists = self.path.exists()
        is_store = inspect_existing(self.path) if exists else False
        self._lock = threading.RLock()
        if read_only:
            self._open_read_only(is_store)
            return
        if not exists:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: the sqlite3 module opens no implicit transactions; we issue
        # BEGIN IMMEDIATE ourselves. check_same_thread=False: access is serialised by _lock.
        self._conn = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._conn.execute("PRAGMA journal_mode = WAL")
            if is_store:
                self._migrate()
            else:
                self._create_schema()
        except BaseException:
            self._conn.close()
            raise

    def _open_read_only(self, is_store: bool) -> None:
        """Reading a store that cannot be written (read-only media): no schema, no migration,
        no journal change; only a store of the current version reads this way."""
        if not is_store:
            raise NotAStoreError(f"{self.path} is not a vlbench store" if self.path.exists()
                                 else f"no results database at {self.path}")
        self._conn = connect_read_only(self.path, isolation_level=None,
                                       check_same_thread=False)
        version = self._read("SELECT value FROM meta WHERE key = 'store_version'")[0][0]
        if parse_version(self.path, version) != STORE_VERSION:
            self._conn.close()
            raise NotAStoreError(f"{self.path} is a version {version} store on read-only media: "
                                 "this vlbench reads it once upgraded, which writes it; copy it "
                                 "somewhere writable")

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None = None, *,
             read_only: bool = False) -> Store:
        """Open (creating when new) the store at ``path``, default ``default_db_path()``;
        ``read_only``: an existing store, never written (a store on read-only media)."""
        return cls(path, read_only=read_only)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taking the write lock up front (see the module docstring)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def _create_schema(self) -> None:
        with self._write() as conn:
            create_schema(conn, self.path)

    def _migrate(self) -> None:
        """Bring an existing store up to ``STORE_VERSION`` (one transaction; see
        ``vlbench.store_schema``)."""
        version = self._read("SELECT value FROM meta WHERE key = 'store_version'")
        if version and parse_version(self.path, version[0][0]) == STORE_VERSION:
            return  # the common case: no write transaction at all
        with self._write() as conn:
            apply_migrations(conn, self.path)

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def _require_run(self, conn: sqlite3.Connection, run_id: int) -> None:
        if conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
            raise UnknownRunError(self._unknown_run_message(run_id))

    def _available(self) -> str:
        ids = [row[0] for row in self._conn.execute("SELECT id FROM runs ORDER BY id")]
        return f"available runs: {format_ids(ids)}" if ids else "the store is empty"

    def _unknown_run_message(self, ref: object) -> str:
        return f"no run {ref!s} in {self.path}; {self._available()}"

    # -- runs -------------------------------------------------------------------------------

    def start_run(
        self,
        *,
        label: str | None,
        suite: str | None,
        command: str,
        env: dict[str, Any],
        settings: dict[str, Any],
    ) -> int:
        """Record a new run as 'running', owned by this process on this host; return its id."""
        now = iso(utc_now())
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT INTO runs (label, suite, status, started_at, finished_at, heartbeat_at,"
                " host, pid, command, env_json, settings_json, vlbench_version)"
                " VALUES (?, ?, 'running', ?, NULL, ?, ?, ?, ?, ?, ?, ?)",
                (label, suite, now, now, socket.gethostname(), os.getpid(), command,
                 to_json(env), to_json(settings), __version__),
            )
            run_id = cursor.lastrowid
        assert run_id is not None
        return run_id

    def heartbeat(self, run_id: int) -> None:
        """Mark the run as alive now, so readers do not report it interrupted."""
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE runs SET heartbeat_at = ? WHERE id = ?", (iso(utc_now()), run_id)
            )
            if cursor.rowcount == 0:
                raise UnknownRunError(self._unknown_run_message(run_id))

    def finish_run(self, run_id: int, status: str = "finished") -> None:
        """Close the run with a final status (finished, interrupted or failed)."""
        if status not in RUN_STATUSES or status == "running":
            raise ValueError(f"a run ends finished, interrupted or failed, not {status!r}")
        now = iso(utc_now())
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE runs SET status = ?, finished_at = ?, heartbeat_at = ? WHERE id = ?",
                (status, now, now, run_id),
            )
            if cursor.rowcount == 0:
                raise UnknownRunError(self._unknown_run_message(run_id))

    def reopen_run(self, run_id: int) -> None:
        """Mark a run that ended (or died) as 'running' again, owned by this process on this
        host, so that a resume adds its cases to it. The liveness check and the update share one
        write transaction: two resumes of the same run cannot both proceed.

        Raises RunActiveError when the run is still in progress.
        """
        now = iso(utc_now())
        with self._write() as conn:
            row = conn.execute(
                "SELECT status, host, pid, heartbeat_at FROM runs WHERE id = ?", (run_id,)
            ).fetchone()
            if row is None:
                raise UnknownRunError(self._unknown_run_message(run_id))
            status, host, pid, beat = row
            if effective_status(status, host, pid, beat) == "running":
                raise RunActiveError(
                    f"run {run_id} is still running (pid {pid} on {host}); "
                    "wait for it to end or stop it before resuming"
                )
            conn.execute(
                "UPDATE runs SET status = 'running', finished_at = NULL, heartbeat_at = ?,"
                " host = ?, pid = ? WHERE id = ?",
                (now, socket.gethostname(), os.getpid(), run_id),
            )

    def run_ids(self) -> list[int]:
        """All run ids, oldest first."""
        return [row[0] for row in self._read("SELECT id FROM runs ORDER BY id")]

    def latest_run_id(self) -> int | None:
        """The newest run's id, or None when the store is empty."""
        return self._read("SELECT MAX(id) FROM runs")[0][0]

    def resolve_run(self, ref: str | int | None) -> int:
        """Turn a user's run reference ('latest', None, 7, '7') into an existing run id.

        Raises UnknownRunError (a KeyError) with a one-line message listing the available ids.
        """
        with self._lock:
            if ref is None or (isinstance(ref, str) and ref.strip().lower() == "latest"):
                latest = self.latest_run_id()
                if latest is None:
                    raise UnknownRunError(f"no runs in {self.path}; the store is empty")
                return latest
            if isinstance(ref, str) and ref.strip().isascii() and ref.strip().isdigit():
                ref = int(ref.strip())
            if not isinstance(ref, int) or isinstance(ref, bool):
                raise UnknownRunError(
                    f"run reference must be 'latest' or a run id, got {ref!r}; {self._available()}"
                )
            if not 0 < ref < 2**63:  # beyond SQLite's integers: no such run, not an overflow
                raise UnknownRunError(self._unknown_run_message(ref))
            if self._conn.execute("SELECT 1 FROM runs WHERE id = ?", (ref,)).fetchone() is None:
                raise UnknownRunError(self._unknown_run_message(ref))
            return ref

    def get_run(self, run_id: int) -> RunRecord:
        """The run's record, with the effective status (see ``effective_status``)."""
        rows = self._read(
            "SELECT id, label, suite, status, started_at, finished_at, heartbeat_at, host, pid,"
            " command, env_json, settings_json, vlbench_version FROM runs WHERE id = ?",
            (run_id,),
        )
        if not rows:
            with self._lock:
                raise UnknownRunError(self._unknown_run_message(run_id))
        (rid, label, suite, status, started, finished, beat, host, pid, command, env, settings) = (
            rows[0][:12]
        )
        return RunRecord(
            id=rid, label=label, suite=suite, status=effective_status(status, host, pid, beat),
            started_at=started, finished_at=finished, heartbeat_at=beat, host=host, pid=pid,
            command=command, env=stored_json(rid, "environment", env, self.path),
            settings=stored_json(rid, "settings", settings, self.path),
            vlbench_version=rows[0][12],
        )

    # -- cases ------------------------------------------------------------------------------

    def add_case(self, run_id: int, result: CaseResult) -> int:
        """Commit one finished case (its own transaction, so a crash loses nothing before it).

        Returns the attempt number: 1 + earlier attempts of the same case key in this run.
        """
        key = case_key(result.spec)
        payload = to_json(result.to_dict())
        now = iso(utc_now())
        with self._write() as conn:
            self._require_run(conn, run_id)
            previous = conn.execute(
                "SELECT COALESCE(MAX(attempt), 0) FROM cases WHERE run_id = ? AND case_key = ?",
                (run_id, key),
            ).fetchone()[0]
            attempt = previous + 1
            conn.execute(
                "INSERT INTO cases (run_id, case_key, attempt, model, status, message,"
                " result_json, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, key, attempt, result.spec.model, result.status, result.message,
                 payload, now),
            )
            conn.execute("UPDATE runs SET heartbeat_at = ? WHERE id = ?", (now, run_id))
        return attempt

    def _case_rows(self, run_id: int) -> list[tuple[str, str, str]]:
        """(case_key, status, result_json) of every attempt, in the order they were recorded."""
        with self._lock:
            self._require_run(self._conn, run_id)
            return self._conn.execute(
                "SELECT case_key, status, result_json FROM cases WHERE run_id = ?"
                " ORDER BY attempt, id",
                (run_id,),
            ).fetchall()

    def _final_rows(self, run_id: int) -> dict[str, tuple[str, str]]:
        # Ordered by attempt, so a later attempt overwrites an earlier one while the key keeps
        # the position of its first appearance: reports keep the sweep order after a resume.
        final: dict[str, tuple[str, str]] = {}
        for key, status, payload in self._case_rows(run_id):
            final[key] = (status, payload)
        return final

    def cases(self, run_id: int, final_only: bool = True) -> list[CaseResult]:
        """The run's case results; with ``final_only`` only the last attempt of each case key."""
        if final_only:
            rows = [(key, payload) for key, (_, payload) in self._final_rows(run_id).items()]
        else:
            with self._lock:
                self._require_run(self._conn, run_id)
                rows = self._conn.execute(
                    "SELECT case_key, result_json FROM cases WHERE run_id = ? ORDER BY id",
                    (run_id,),
                ).fetchall()
        # a damaged row reads as an error case with a warning (vlbench.records.stored_case)
        return [stored_case(run_id, key, payload, self.path) for key, payload in rows]

    def completed_case_keys(self, run_id: int) -> set[str]:
        """Case keys whose last attempt is 'ok' (and readable): what a resume may skip."""
        return {key for key, (status, payload) in self._final_rows(run_id).items()
                if status == "ok" and readable(payload)}
