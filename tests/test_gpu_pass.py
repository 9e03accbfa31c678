"""The GPU pass's dry run (``benchmarks/gpu_pass.py --device cpu --size tiny``): the one command
spent on a lent GPU machine runs its steps under its budget, cuts and skips what the budget does
not allow (saying so), and packs the store, export, report, summary and log into at most 8
files, so the script cannot rot between the rare occasions a GPU is there."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from vlbench.cli import NO_ISOLATION_ENV

REPO = Path(__file__).resolve().parents[1]
STEPS = ("latency", "modes", "compile", "parity", "retrieval")


def test_dry_run_runs_its_steps_under_the_budget_and_packs_the_results(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != NO_ISOLATION_ENV}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_pass.py"), "--device", "cpu", "--size",
         "tiny", "--budget-s", "150", "--out", str(out), "--no-install"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir() if not p.name.endswith(("-wal", "-shm")))
    assert {"gpu-pass.db", "gpu-pass.log", "results.json", "report.html", "summary.md"} <= set(
        files) and len(files) <= 8
    log = (out / "gpu-pass.log").read_text()
    for step in STEPS:  # each step ran, was cut by the budget, or was skipped: and says which
        assert any(line.startswith(f"{step}: ") and ("exit" in line or "cut" in line
                                                     or "skipped" in line)
                   for line in log.splitlines()), (step, log)
    with sqlite3.connect(out / "gpu-pass.db") as conn:
        labels = [r[0] for r in conn.execute("SELECT label FROM runs ORDER BY id")]
        ok = conn.execute("SELECT COUNT(*) FROM cases WHERE status = 'ok'").fetchone()[0]
    assert labels[0] == "gpu-pass: latency" and ok > 0
    export = json.loads((out / "results.json").read_text())
    assert export["schema"] == "vlbench.results" and export["runs"][0]["cases"]
    ok_cases = [c for run in export["runs"] for c in run["cases"] if c["status"] == "ok"]
    assert all(c["settings"]["energy"]["status"] == "not available: not a GPU run"
               for c in ok_cases)  # a CPU has no energy counter: said, never a zero
    assert "vilt-b32-tiny" in (out / "report.html").read_text()
