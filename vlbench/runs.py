"""Runs as the store records them: the record, whether one recorded as 'running' still is, and
the errors that name runs.

A run whose process died (OOM killer, a lost node, kill -9) never records its end, so readers
judge it by its owner's pid and its heartbeat: a run recorded as ``running`` whose process is
gone (same host, pid not alive) or whose heartbeat is older than ``STALE_AFTER_S`` reads
``interrupted``. Writers refresh the heartbeat on every case (``vlbench.store.Store.add_case``);
a runner whose single case may take longer than that should also call ``Store.heartbeat`` from
a timer.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

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


def format_ids(ids: list[int], spell_out: int = 12) -> str:
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


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    """A stored timestamp: UTC ISO 8601 to the millisecond."""
    return moment.isoformat(timespec="milliseconds")


def pid_alive(pid: int) -> bool:
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
    if host == socket.gethostname() and pid is not None and not pid_alive(pid):
        return "interrupted"
    if heartbeat_at is not None:
        try:
            beat = datetime.fromisoformat(heartbeat_at)
        except ValueError:
            return status
        if beat.tzinfo is None:
            beat = beat.replace(tzinfo=UTC)
        if (now or utc_now()) - beat > timedelta(seconds=STALE_AFTER_S):
            return "interrupted"
    return status
