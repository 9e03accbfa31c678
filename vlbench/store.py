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

Schema (``store_version`` 2)::

    meta(key TEXT PRIMARY KEY, value TEXT)      -- app='vlbench', store_version='2'
    runs(id, label, suite, status, started_at, finished_at, heartbeat_at,
         host, pid, command, env_json, settings_json,
         vlbench_version)                         -- since 2; NULL for runs migrated from 1
    cases(id, run_id -> runs.id, case_key, attempt, model, status, message,
          result_json, created_at)                -- index on (run_id, case_key)

``runs.status`` is ``running``, ``finished``, ``interrupted`` or ``failed``; timestamps are UTC
ISO 8601. ``cases.result_json`` holds ``CaseResult.to_dict()``; values JSON cannot encode are
stored as their ``str()`` rather than losing a measured case. A case measured again in the same run
(a resume, a retry) gets the next ``attempt`` number; readers take the last attempt.

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
2. ``runs.vlbench_version``: the version of the vlbench that started the run.

To change the schema (in ``vlbench/store_schema.py``): bump ``STORE_VERSION``, update ``_SCHEMA``
(the schema of a new store) and add ``MIGRATIONS[STORE_VERSION - 1]``; a test checks that a
migrated store matches a new one.

A run recorded as ``running`` whose process is gone (same host, pid not alive) or whose heartbeat
is older than ``STALE_AFTER_S`` is reported as ``interrupted`` by :meth:`Store.get_run`. Writers
refresh the heartbeat on every ``add_case``; a runner whose single case may take longer than that
should also call :meth:`Store.heartbeat` from a timer. A ``Store`` may be shared between threads.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from vlbench import __version__
from vlbench.results import CaseResult, CaseSpec
from vlbench.store_schema import (  # noqa: F401 - re-exported: the store's public surface
    _SCHEMA,
    APP_NAME,
    BUSY_TIMEOUT_S,
    MIGRATIONS,
    STORE_VERSION,
    NotAStoreError,
    _inspect_existing,
    _migrate_1_to_2,
    _parse_version,
)

DEFAULT_DB_ENV = "VLBENCH_DB"
RUN_STATUSES = ("running", "finished", "interrupted", "failed")
#: A 'running' run whose heartbeat is older than this is reported as interrupted.
STALE_AFTER_S = 600.0

class RunActiveError(ValueError):
    """The run is still in progress (its process is alive, or its heartbeat is fresh)."""


class UnknownRunError(KeyError):
    """A run reference that matches no run; a ``KeyError`` whose ``str()`` is the plain message."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class RunRecord:
    """One run as stored; ``status`` is effective: a dead 'running' run reads 'interrupted'."""

    id: int
    label: str | None
    suite: str | None
    status: str
    started_at: str
    finished_at: str | None
    heartbeat_at: str | None
    host: str
    pid: int
    command: str
    env: dict[str, Any]
    settings: dict[str, Any]
    #: The vlbench version that started the run; None for runs recorded before store version 2.
    vlbench_version: str | None = None


def default_db_path() -> Path:
    """Where results go when no path is given; see the module docstring for the order."""
    explicit = os.environ.get(DEFAULT_DB_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    # The XDG spec says relative values are invalid and must be ignored.
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
    return base / "vlbench" / "results.sqlite"


def case_key(spec: CaseSpec) -> str:
    """A stable identity for a case within a run, so a resume can tell what is already done.
    The execution mode and a per-case thread count join the key only when they are not the
    defaults, so the keys of eager runs stay what they were."""
    height, width = spec.image_size
    key = (
        f"{spec.model}|{spec.batch_size}|{height}x{width}|{spec.text_len}"
        f"|{spec.precision}|{spec.device}"
    )
    if getattr(spec, "mode", "eager") != "eager":
        key += f"|{spec.mode}"
    if getattr(spec, "threads", None) is not None:
        key += f"|t{spec.threads}"
    if getattr(spec, "task", None):
        key += f"|{spec.task}"
    if getattr(spec, "side", None):
        key += f"|side{spec.side}"
    if getattr(spec, "round", 0):
        key += f"|r{spec.round}"
    return key


def identity_key(spec: CaseSpec) -> str:
    """What a case measures, whatever its round or side: the key that matches a case across
    runs, rounds and the two sides of an interleaved run."""
    return case_key(dataclasses.replace(spec, round=0, side=None))


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


def _pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (signal 0 only checks, never kills)."""
    if pid <= 0:
        return False
    if os.name == "nt":  # os.kill would terminate the process on Windows; rely on the heartbeat
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def effective_status(
    status: str,
    host: str | None,
    pid: int | None,
    heartbeat_at: str | None,
    now: datetime | None = None,
) -> str:
    """The status a reader should believe: a 'running' run with a dead owner is 'interrupted'."""
    if status != "running":
        return status
    if host == socket.gethostname() and pid is not None and not _pid_alive(pid):
        return "interrupted"
    if heartbeat_at is not None:
        try:
            beat = datetime.fromisoformat(heartbeat_at)
        except ValueError:
            return status
        if beat.tzinfo is None:
            beat = beat.replace(tzinfo=UTC)
        if (now or _now()) - beat > timedelta(seconds=STALE_AFTER_S):
            return "interrupted"
    return status


def _format_ids(ids: list[int], spell_out: int = 12) -> str:
    """One-line id list: ``1, 2, 4`` when short, ranges ``1-40, 42`` for a long history."""
    if len(ids) <= spell_out:
        return ", ".join(str(run_id) for run_id in sorted(ids))
    parts: list[str] = []
    start = prev = None
    for run_id in sorted(ids):
        if prev is not None and run_id == prev + 1:
            prev = run_id
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = run_id
    if start is not None:
        parts.append(str(start) if start == prev else f"{start}-{prev}")
    return ", ".join(parts)


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


class Store:
    """A handle on one results database; use ``Store.open(path)`` as a context manager."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_db_path()
        exists = self.path.exists()
        is_store = _inspect_existing(self.path) if exists else False
        if not exists:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
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

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None = None) -> Store:
        """Open (creating when new) the store at ``path``, default ``default_db_path()``."""
        return cls(path)

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
            # Re-check under the write lock: another process may have created the file meanwhile.
            tables = {
                row[0]
                for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            if tables and "meta" not in tables:
                raise NotAStoreError(f"{self.path} is an SQLite database of another application")
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('app', ?)", (APP_NAME,))
            conn.execute(
                "INSERT OR IGNORE INTO meta VALUES ('store_version', ?)", (str(STORE_VERSION),)
            )
            app = conn.execute("SELECT value FROM meta WHERE key = 'app'").fetchone()
            if app is None or app[0] != APP_NAME:
                raise NotAStoreError(f"{self.path} is an SQLite database of another application")
            # Another (possibly older) vlbench may have created the store meanwhile.
            self._apply_migrations(conn)

    def _migrate(self) -> None:
        """Bring an existing store up to ``STORE_VERSION`` (one transaction; see the docstring)."""
        version = self._read("SELECT value FROM meta WHERE key = 'store_version'")
        if version and _parse_version(self.path, version[0][0]) == STORE_VERSION:
            return  # the common case: no write transaction at all
        with self._write() as conn:
            self._apply_migrations(conn)

    def _apply_migrations(self, conn: sqlite3.Connection) -> None:
        """Run the missing steps in the caller's write transaction and record the new version."""
        row = conn.execute("SELECT value FROM meta WHERE key = 'store_version'").fetchone()
        version = _parse_version(self.path, row[0] if row else None)
        if version == STORE_VERSION:
            return
        for step in range(version, STORE_VERSION):
            migrate = MIGRATIONS.get(step)
            if migrate is None:
                raise RuntimeError(f"vlbench has no migration from store version {step}")
            migrate(conn)
        conn.execute("UPDATE meta SET value = ? WHERE key = 'store_version'", (str(STORE_VERSION),))

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def _require_run(self, conn: sqlite3.Connection, run_id: int) -> None:
        if conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
            raise UnknownRunError(self._unknown_run_message(run_id))

    def _available(self) -> str:
        ids = [row[0] for row in self._conn.execute("SELECT id FROM runs ORDER BY id")]
        return f"available runs: {_format_ids(ids)}" if ids else "the store is empty"

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
        now = _iso(_now())
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT INTO runs (label, suite, status, started_at, finished_at, heartbeat_at,"
                " host, pid, command, env_json, settings_json, vlbench_version)"
                " VALUES (?, ?, 'running', ?, NULL, ?, ?, ?, ?, ?, ?, ?)",
                (
                    label,
                    suite,
                    now,
                    now,
                    socket.gethostname(),
                    os.getpid(),
                    command,
                    _dumps(env),
                    _dumps(settings),
                    __version__,
                ),
            )
            run_id = cursor.lastrowid
        assert run_id is not None
        return run_id

    def heartbeat(self, run_id: int) -> None:
        """Mark the run as alive now, so readers do not report it interrupted."""
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE runs SET heartbeat_at = ? WHERE id = ?", (_iso(_now()), run_id)
            )
            if cursor.rowcount == 0:
                raise UnknownRunError(self._unknown_run_message(run_id))

    def finish_run(self, run_id: int, status: str = "finished") -> None:
        """Close the run with a final status (finished, interrupted or failed)."""
        if status not in RUN_STATUSES or status == "running":
            raise ValueError(f"a run ends finished, interrupted or failed, not {status!r}")
        now = _iso(_now())
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
        now = _iso(_now())
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
            if isinstance(ref, str) and ref.strip().isdigit():
                ref = int(ref.strip())
            if not isinstance(ref, int) or isinstance(ref, bool):
                raise UnknownRunError(
                    f"run reference must be 'latest' or a run id, got {ref!r}; {self._available()}"
                )
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
            id=rid,
            label=label,
            suite=suite,
            status=effective_status(status, host, pid, beat),
            started_at=started,
            finished_at=finished,
            heartbeat_at=beat,
            host=host,
            pid=pid,
            command=command,
            env=json.loads(env) if env else {},
            settings=json.loads(settings) if settings else {},
            vlbench_version=rows[0][12],
        )

    # -- cases ------------------------------------------------------------------------------

    def add_case(self, run_id: int, result: CaseResult) -> int:
        """Commit one finished case (its own transaction, so a crash loses nothing before it).

        Returns the attempt number: 1 + earlier attempts of the same case key in this run.
        """
        key = case_key(result.spec)
        payload = _dumps(result.to_dict())
        now = _iso(_now())
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
                (
                    run_id,
                    key,
                    attempt,
                    result.spec.model,
                    result.status,
                    result.message,
                    payload,
                    now,
                ),
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
            payloads = [payload for _, payload in self._final_rows(run_id).values()]
        else:
            with self._lock:
                self._require_run(self._conn, run_id)
                payloads = [
                    row[0]
                    for row in self._conn.execute(
                        "SELECT result_json FROM cases WHERE run_id = ? ORDER BY id", (run_id,)
                    )
                ]
        return [CaseResult.from_dict(json.loads(payload)) for payload in payloads]

    def completed_case_keys(self, run_id: int) -> set[str]:
        """Case keys whose last attempt is 'ok': what a resume may skip."""
        return {key for key, (status, _) in self._final_rows(run_id).items() if status == "ok"}
