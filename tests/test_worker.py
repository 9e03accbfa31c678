"""Cases in worker processes, with real faults: an allocation beyond the memory budget, a worker
killed mid-case. Each fault costs its case (``oom`` / ``error``) and the run goes on."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from live_runs import FOUR_CASES, is_gone, start_run, wait_for_cases, worker_pid

from vlbench.budget import choose_memory_budget, default_memory_budget
from vlbench.cli import NO_ISOLATION_ENV, main
from vlbench.launchers import run_cases
from vlbench.options import LaunchOptions, MeasureOptions, RunOptions
from vlbench.results import MEASURED_SETTINGS, CaseSpec
from vlbench.store import Store
from vlbench.timing import TimingOptions

FAST = ("--warmup", "1", "--repeats", "2", "--min-time", "0", "--no-progress", "--device", "cpu")
TIMING = TimingOptions(warmup=1, min_repeats=2, min_time_s=0.0, max_repeats=2)


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    """``vlbench run``'s default: worker processes (tests/conftest.py turns them off)."""
    monkeypatch.delenv(NO_ISOLATION_ENV, raising=False)


def test_over_budget_case_is_oom_and_the_next_case_runs(isolated: None, tmp_path: Path) -> None:
    # Importing torch and the model packages takes ~1 GB of a worker's data limit; full-size
    # ViLT-B/32 at batch 8 needs ~0.6 GB more (0.45 GB of weights alone), the tiny one ~20 MB.
    db = tmp_path / "r.sqlite"
    code = main(["run", "--models", "vilt-b32,vilt-b32-tiny", "--batch-sizes", "8",
                 "--threads", "2", "--memory-budget", "1.25", *FAST, "--db", str(db)])
    assert code == 0
    with Store.open(db) as store:
        run = store.get_run(1)
        big, tiny = store.cases(1)
    assert run.status == "finished"
    assert run.settings["isolation"] == "process"
    assert run.settings["memory_budget_bytes"] == int(1.25 * 2**30)
    assert (big.spec.model, big.status) == ("vilt-b32", "oom")
    assert "can't allocate memory" in big.message and "budget 1.25 GiB" in big.message
    assert (tiny.spec.model, tiny.status) == ("vilt-b32-tiny", "ok"), tiny.message
    assert tiny.end_to_end is not None and tiny.end_to_end.median_ms > 0
    assert tiny.settings["worker_pid"] != big.settings["worker_pid"]  # replaced after the OOM
    assert tiny.settings["worker_pid"] != os.getpid()


def test_a_healthy_worker_is_reused_and_measures_like_this_process() -> None:
    """Threads and seeds reach the worker; the CPU peak is per case, not the worker's lifetime
    maximum (a big case first, then a small one in the same process)."""
    big = CaseSpec("vilt-b32-tiny", 48, (384, 640), 8, "fp32", "cpu")
    small = CaseSpec("vilt-b32-tiny", 1, (64, 96), 8, "fp32", "cpu")
    recorded = []
    options = RunOptions(MeasureOptions(TIMING, seed=7),
                         LaunchOptions(threads=1, isolation="process"))
    first, second = run_cases([big, small], options, recorded.append)
    assert recorded == [first, second]
    assert first.status == second.status == "ok", (first.message, second.message)
    assert first.settings["worker_pid"] == second.settings["worker_pid"] != os.getpid()
    assert first.settings["threads"] == second.settings["threads"] == 1
    assert first.settings["seed"] == second.settings["seed"] == 7
    assert first.peak_mem_bytes - second.peak_mem_bytes > 100 * 2**20  # 48 images: 141 MB
    (here,) = run_cases([small], RunOptions(MeasureOptions(TIMING, seed=7),
                                            LaunchOptions(threads=1)), lambda r: None)
    assert "worker_pid" not in here.settings
    # the measured matmul peak is a measurement, not a setting: equal only in kind
    settings = {k: v for k, v in second.settings.items()
                if k not in {"worker_pid", *MEASURED_SETTINGS}}
    assert settings == {k: v for k, v in here.settings.items() if k not in MEASURED_SETTINGS}
    assert second.settings["peak_flops"] > 0 and here.settings["peak_flops"] > 0
    assert (here.flops_total, here.params_total, here.tokens) == (
        second.flops_total, second.params_total, second.tokens)


def test_a_killed_worker_is_an_error_and_the_run_goes_on(tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite"
    run = start_run(db, *FOUR_CASES, "--min-time", "1")
    try:
        wait_for_cases(db, 1, run)  # case 1 is in; the same worker now measures case 2
        victim = worker_pid(run.pid)
        os.kill(victim, signal.SIGKILL)
        out, err = run.communicate(timeout=120)
    finally:
        run.kill()
    assert run.returncode == 0, err
    assert is_gone(victim)
    with Store.open(db) as store:
        assert store.get_run(1).status == "finished"
        cases = store.cases(1)
    assert [c.spec.batch_size for c in cases] == [1, 2, 3, 4]
    assert [c.status for c in cases] == ["ok", "error", "ok", "ok"]
    assert cases[1].message == "worker died (signal 9)"
    assert "worker died (signal 9)" in out  # the results table
    assert cases[0].settings["worker_pid"] == victim
    assert cases[2].settings["worker_pid"] == cases[3].settings["worker_pid"] != victim


def test_default_memory_budget_is_80_percent_of_memory() -> None:
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < default_memory_budget() <= 0.8 * physical
    assert choose_memory_budget(True, "cpu", None) == default_memory_budget()
    assert choose_memory_budget(True, "cpu", 1.5) == int(1.5 * 2**30)
    assert choose_memory_budget(False, "cpu", None) is None  # in-process: never limit pytest
    assert choose_memory_budget(True, "cuda", None) is None
    for isolated, device, gib in ((False, "cpu", 2.0), (True, "cuda", 2.0), (True, "cpu", 0.0)):
        with pytest.raises(ValueError, match="--memory-budget"):
            choose_memory_budget(isolated, device, gib)


def test_memory_budget_with_no_isolation_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    db = tmp_path / "r.sqlite"
    code = main(["run", "--models", "vilt-b32-tiny", *FAST, "--no-isolation",
                 "--memory-budget", "2", "--db", str(db)])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith("vlbench: error: --memory-budget") and len(err.splitlines()) == 1
    assert not db.exists()


def test_in_process_runs_record_their_isolation(tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite"
    assert main(["run", "--models", "vilt-b32-tiny", *FAST, "--db", str(db)]) == 0
    with Store.open(db) as store:
        settings = store.get_run(1).settings
    assert (settings["isolation"], settings["memory_budget_bytes"]) == ("none", None)
    assert json.dumps(settings)  # plain data: a resume reads it back
