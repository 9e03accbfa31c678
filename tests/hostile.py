"""Helpers for the hostile-input tests (``test_hostile_*.py``): a store of synthetic runs (no
model is run: building one takes no torch), the state of files before and after a command, the
one-line error every refusal must be, and running ``vlbench`` in a fresh interpreter."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from contention_records import quiet

from vlbench.cli import NO_ISOLATION_ENV
from vlbench.export import export_json
from vlbench.results import CaseResult, CaseSpec, StageResult
from vlbench.stats import summarize
from vlbench.store import Store

REPO = Path(__file__).resolve().parents[1]
SPEC = CaseSpec(model="vilt-b32-tiny", batch_size=1, image_size=(64, 96), text_len=8,
                precision="fp32", device="cpu")


def case(round_: int, scale: float = 1.0) -> CaseResult:
    """One round of a synthetic case: end to end and one stage, ``scale`` times slower."""
    samples = [scale * (10.0 + 0.01 * round_ + 0.001 * i) for i in range(5)]
    stage = [0.5 * s for s in samples]
    return CaseResult(
        spec=CaseSpec(**{**SPEC.__dict__, "round": round_}), status="ok",
        end_to_end=summarize(samples), end_to_end_samples_ms=tuple(samples),
        stage_sum_ms=0.5 * samples[2], flops_total=1000, params_total=10,
        stages=(StageResult(name="visual", kind="patch", parent=None,
                            timing=summarize(stage), calls=1, flops=1000, params=10,
                            samples_ms=tuple(stage), category="patch or grid embedding"),))


def synthetic_store(path: Path, scales: tuple[float, ...] = (1.0, 2.0), rounds: int = 5) -> Path:
    """A store with one finished run per scale, each ``rounds`` rounds of ``case``."""
    with Store.open(path) as store:
        for scale in scales:
            cases = [quiet(case(r, scale)) for r in range(rounds)]  # measured on a quiet machine
            run_id = store.start_run(label=None, suite="synthetic", command="vlbench run",
                                     env={"host": "test"},
                                     settings={"cases": [c.spec.__dict__ for c in cases]})
            for result in cases:
                store.add_case(run_id, result)
            store.finish_run(run_id)
    return path


def export(db: Path, run_id: int, out: Path) -> dict:
    """``vlbench export`` of one run, written to ``out`` and returned."""
    with Store.open(db) as store:
        data = export_json(store, [run_id])
    out.write_text(json.dumps(data))
    return data


def state(*paths: Path) -> dict[str, str]:
    """A digest of every file at and beside ``paths`` (a store's -wal and -shm included)."""
    out = {}
    for path in paths:
        for sibling in sorted(path.parent.glob(path.name + "*")):
            if sibling.is_file():
                out[str(sibling)] = hashlib.sha256(sibling.read_bytes()).hexdigest()
    return out


def assert_one_line(code: int, err: str, *expected: str, status: int = 2) -> None:
    """A refusal: exit ``status``, one line on standard error naming what is wrong."""
    lines = err.strip().splitlines()
    assert code == status, err
    assert len(lines) == 1, err
    assert lines[0].startswith("vlbench: error: "), err
    assert "Traceback" not in err
    for text in expected:
        assert text in lines[0], (text, lines[0])


def vlbench_process(*argv: str, cwd: Path = REPO, isolation: bool = True,
                    timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m vlbench ARGV`` in a fresh interpreter (worker isolation on by default)."""
    env = {k: v for k, v in os.environ.items() if k != NO_ISOLATION_ENV or not isolation}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "vlbench", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


#: a fresh interpreter runs command lines in-process, then says whether torch was loaded
_SCRIPT = """
import contextlib, io, json, sys
from vlbench.cli import main
out = []
for argv in json.loads(sys.argv[1]):
    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        code = main(argv)
    out.append([code, o.getvalue(), e.getvalue()])
print(json.dumps({"results": out, "torch": "torch" in sys.modules}))
"""


def run_fresh(argvs: list[list[str]], cwd: Path) -> tuple[list[tuple[int, str, str]], bool]:
    """``main(argv)`` for each argv in one fresh interpreter, worker isolation on (as a user
    runs vlbench) and no default store: each (exit status, stdout, stderr), and whether torch
    was loaded by the end."""
    env = {k: v for k, v in os.environ.items() if k != NO_ISOLATION_ENV}
    env.update(PYTHONPATH=str(REPO), VLBENCH_DB=str(cwd / "default.sqlite"))
    done = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(argvs)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, check=True)
    data = json.loads(done.stdout)
    return [tuple(r) for r in data["results"]], data["torch"]
