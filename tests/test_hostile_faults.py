"""Hostile code and signals: a plugin cannot be bounded, but whatever it raises while it loads
(an exception, ``SystemExit``, ``KeyboardInterrupt``) is one line naming it and exit status 2,
never a run that exits 0 having measured nothing; Ctrl-C at any moment (while the interpreter
imports, while a plugin loads, while a case runs) ends with exit status 130, one line and no
traceback; on Ray a node that cannot take a case's threads records why."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from hostile import REPO, SPEC, assert_one_line, run_fresh, state, synthetic_store
from live_runs import as_in_a_terminal

import vlbench.plugins as plugins
from vlbench import interrupts
from vlbench.cli import NO_ISOLATION_ENV, main
from vlbench.launchers import ray_cluster
from vlbench.machine import machine_problems, usable_cores
from vlbench.options import LaunchOptions, RunOptions

RUN = ("run", "--models", "vilt-b32-tiny", "--warmup", "1", "--repeats", "2", "--min-time",
       "0", "--no-progress", "--device", "cpu")

#: a plugin file's code -> what the one line must say of it
PLUGINS: dict[str, tuple[str, str]] = {
    "exits-0": ("import sys\nsys.exit(0)\n", "called sys.exit(0)"),
    "exits-3": ("import sys\nsys.exit(3)\n", "called sys.exit(3)"),
    "exits-with-text": ("raise SystemExit('bye')\n", "called sys.exit('bye')"),
    "keyboard-interrupt": ("raise KeyboardInterrupt\n", "KeyboardInterrupt"),
    "exception": ("raise RuntimeError('boom')\n", "RuntimeError: boom"),
    "base-exception": ("raise GeneratorExit('odd')\n", "GeneratorExit: odd"),
    "syntax-error": ("def broken(:\n", "SyntaxError"),
    "missing-import": ("import no_such_module_here\n", "No module named"),
    "multiline-message": ("raise ValueError('first\\nsecond\\nthird')\n", "ValueError: first"),
}


@pytest.fixture(scope="module")
def refused(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every bad plugin through ``vlbench run`` and ``vlbench list``, in one fresh interpreter
    (a plugin that only misbehaves loads no torch)."""
    base = tmp_path_factory.mktemp("plugins")
    db = synthetic_store(base / "results.sqlite")
    argvs = []
    for name, (code, _) in PLUGINS.items():
        path = base / f"{name}.py"
        path.write_text(code)
        argvs += [[*RUN, "--plugin", str(path), "--db", str(db)],
                  ["list", "models", "--plugin", str(path)]]
    before = state(db)
    results, torch_loaded = run_fresh(argvs, base)
    return {"results": dict(zip(PLUGINS, zip(results[::2], results[1::2], strict=True),
                                strict=True)),
            "torch": torch_loaded, "unchanged": state(db) == before}


@pytest.mark.parametrize("name", PLUGINS)
def test_whatever_a_plugin_raises_is_one_line_naming_it(refused: dict[str, Any],
                                                        name: str) -> None:
    for code, out, err in refused["results"][name]:
        assert_one_line(code, err, "plugin file ", f"{name}.py", PLUGINS[name][1])
        assert out == ""
    assert refused["unchanged"]


def test_an_entry_point_that_exits_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    def leave() -> None:
        raise SystemExit(0)

    point = SimpleNamespace(name="mine", value="my_ext:register", load=lambda: leave)
    monkeypatch.setattr(plugins, "entry_points", lambda group: [point])
    monkeypatch.setattr(plugins, "_entry_points_loaded", False)
    code = main(["list", "models"])
    assert_one_line(code, capsys.readouterr().err, "entry point 'mine'", "sys.exit(0)")


@pytest.mark.parametrize("signalled", [False, True])
def test_keyboard_interrupt_from_a_plugin_is_its_error_unless_a_signal_raised_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signalled: bool) -> None:
    """SIGINT (vlbench.interrupts' handler) and a run's SIGTERM (vlbench.session's) note that a
    signal raised the KeyboardInterrupt: it then stays an interrupt, whatever was loading."""
    monkeypatch.setattr(interrupts, "_received", False)
    monkeypatch.setattr(plugins, "_loaded_files", {})
    path = tmp_path / "interrupted.py"
    path.write_text(("from vlbench import interrupts\ninterrupts.note()\n" if signalled else "")
                    + "raise KeyboardInterrupt\n")
    with pytest.raises(KeyboardInterrupt if signalled else plugins.PluginError):
        plugins.load_plugin_file(path)


# -- Ctrl-C -------------------------------------------------------------------------------------


@contextlib.contextmanager
def started(*argv: str, isolation: bool = False) -> Iterator[subprocess.Popen[str]]:
    """``python -m vlbench ARGV`` in a session of its own (the group a terminal's Ctrl-C
    reaches), killed if a test leaves it running."""
    env = {k: v for k, v in os.environ.items() if k != NO_ISOLATION_ENV or not isolation}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.Popen([sys.executable, "-m", "vlbench", *argv], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=as_in_a_terminal)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)


def ctrl_c(proc: subprocess.Popen[str]) -> tuple[int, str]:
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def assert_interrupted(code: int, err: str) -> None:
    assert code == 130, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last == "vlbench: interrupted" or last.startswith("interrupted (SIGINT)"), err


def wait_until(proc: subprocess.Popen[str], ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 120
    while not ready():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the moment never came"
        time.sleep(0.01)


def maps(proc: subprocess.Popen[str], library: str) -> Callable[[], bool]:
    """Whether the process has mapped ``library`` (it is importing the module that loads it)."""
    def mapped() -> bool:
        with contextlib.suppress(OSError):
            return library in Path(f"/proc/{proc.pid}/maps").read_text()
        return False
    return mapped


@pytest.mark.parametrize("moment", ["_sqlite3", "libtorch"])
def test_ctrl_c_while_starting_is_one_line_and_130(tmp_path: Path, moment: str) -> None:
    """Before a run exists: while vlbench's first modules import (sqlite3 is among them), and
    while torch loads (seconds)."""
    with started(*RUN, "--min-time", "60", "--db", str(tmp_path / "r.sqlite")) as proc:
        wait_until(proc, maps(proc, moment))
        code, err = ctrl_c(proc)
    assert_interrupted(code, err)
    assert err.strip() == "vlbench: interrupted"
    assert not (tmp_path / "r.sqlite").exists()


def test_ctrl_c_while_a_case_runs_keeps_the_run_resumable(tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite"
    with started(*RUN, "--batch-sizes", "1,2", "--min-time", "30", "--db", str(db),
                 isolation=True) as proc:
        wait_until(proc, lambda: committed_runs(db) > 0)
        time.sleep(1.0)
        code, err = ctrl_c(proc)
    assert_interrupted(code, err)
    assert "vlbench run --resume 1" in err


def committed_runs(db: Path) -> int:
    with contextlib.suppress(sqlite3.Error):
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        finally:
            conn.close()
    return 0


def test_ctrl_c_while_a_plugin_loads_is_an_interrupt(tmp_path: Path) -> None:
    """A real Ctrl-C during a slow plugin's import ends the command (130), unlike a plugin
    that raises KeyboardInterrupt itself (2, naming it)."""
    marker = tmp_path / "loading"
    slow = tmp_path / "slow.py"
    slow.write_text(f"import pathlib, time\npathlib.Path({str(marker)!r}).touch()\n"
                    "time.sleep(60)\n")
    with started("list", "models", "--plugin", str(slow)) as proc:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        code, err = ctrl_c(proc)
    assert_interrupted(code, err)
    assert err.strip() == "vlbench: interrupted"


# -- a machine bound checked where the case runs (Ray) ------------------------------------------


def test_machine_bounds_name_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    import vlbench.machine as machine

    monkeypatch.setattr(machine, "usable_cores", lambda: 4)
    monkeypatch.setattr(machine, "usable_memory", lambda: 8 * 2**30)
    assert machine_problems([None, 1, 4], 8 * 2**30, where="node n1") == []
    assert machine_problems([8, 5, 8], 9 * 2**30, where="node n1") == [
        "5 threads exceed the 4 usable core(s) of node n1",
        "8 threads exceed the 4 usable core(s) of node n1",
        "a memory budget of 9.00 GiB exceeds the 8.00 GiB of memory of node n1"]


def test_a_ray_task_records_threads_its_node_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside the task (``measure_on_worker``), against the node it runs on: the driver's
    cores say nothing of a remote node's."""
    fake = SimpleNamespace(
        get_runtime_context=lambda: SimpleNamespace(get_node_id=lambda: "n1"),
        get_gpu_ids=lambda: [], util=SimpleNamespace(get_node_ip_address=lambda: "10.0.0.7"))
    monkeypatch.setattr(ray_cluster, "_import_ray", lambda: fake)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # restored after: the task sets them
        monkeypatch.setenv(name, os.environ.get(name, "1"))
    threads = usable_cores() + 1
    options = RunOptions(launch=LaunchOptions(threads=threads, executor="ray"))
    ours = torch.get_num_threads()
    try:
        record = ray_cluster.measure_on_worker(SPEC, options, 1, {"CPU": 1.0})
    finally:
        torch.set_num_threads(ours)
    assert record["status"] == "error"
    assert record["message"] == (f"{threads} threads exceed the {usable_cores()} usable core(s) "
                                 "of Ray node 10.0.0.7")
    assert record["settings"]["ray"]["node_id"] == "n1"
