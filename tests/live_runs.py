"""Helpers for tests that fault a real ``vlbench run`` process: start it, wait until the store
holds a given number of cases (never a fixed sleep), find its worker, and tell when a process
is gone."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil

from vlbench.cli import NO_ISOLATION_ENV

REPO = Path(__file__).resolve().parents[1]
#: a tiny preset at four batch sizes: four distinct cases, each at least ``--min-time`` long
FOUR_CASES = ("--models", "vilt-b32-tiny", "--batch-sizes", "1,2,3,4", "--warmup", "1",
              "--repeats", "2", "--threads", "1", "--no-progress", "--device", "cpu")
DEADLINE_S = 120.0


def as_in_a_terminal() -> None:
    """Run in the child before exec: SIGINT handled as in a terminal's foreground job. Tests
    started in the background (``nohup pytest &``) inherit SIGINT ignored, an ignored signal
    stays ignored across exec, and a Ctrl-C sent to the child would then never arrive."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_run(db: Path, *argv: str) -> subprocess.Popen[str]:
    """``python -m vlbench run ARGV --db DB`` with worker isolation on, in a session of its own
    (its process group is what a terminal's Ctrl-C reaches: the run and its worker)."""
    env = {k: v for k, v in os.environ.items() if k != NO_ISOLATION_ENV}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.Popen(
        [sys.executable, "-m", "vlbench", "run", *argv, "--db", str(db)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, preexec_fn=as_in_a_terminal,
    )


def committed_cases(db: Path) -> int:
    """Case attempts committed so far, read without creating or locking the store."""
    if not db.exists():
        return 0
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute("SELECT COUNT(*) FROM cases").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:  # the schema is not there yet
        return 0


def wait_for_cases(db: Path, count: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while committed_cases(db) < count:
        if proc.poll() is not None:
            raise AssertionError(f"run ended early ({proc.returncode}): {proc.stderr.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {count} cases committed in {DEADLINE_S} s")
        time.sleep(0.02)


def worker_pid(run_pid: int) -> int:
    """The run's case worker: its child started by multiprocessing's spawn (the other child,
    if any, is multiprocessing's resource tracker)."""
    workers = [c.pid for c in psutil.Process(run_pid).children()
               if "spawn_main" in " ".join(c.cmdline())]
    assert len(workers) == 1, workers
    return workers[0]


def is_gone(pid: int, timeout: float = 15.0) -> bool:
    """Whether the process ends within ``timeout`` (a zombie awaiting its reaper counts)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False
