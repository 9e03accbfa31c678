"""Records and stores the store tests share: a finished case, an out-of-memory case, a run, a
pid that is certainly dead, a raw connection."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from vlbench.results import CaseResult, CaseSpec, StageResult, Summary
from vlbench.store import (
    Store,
)


def summary(median: float, n: int = 20) -> Summary:
    return Summary(
        median_ms=median,
        iqr_ms=0.25 * median,
        p90_ms=1.2 * median,
        mean_ms=1.01 * median,
        cv=0.031,
        n=n,
        ci_low_ms=0.95 * median,
        ci_high_ms=1.05 * median,
        ci_coverage=0.9586,
        unstable=False,
    )


def spec(model: str = "vilbert", batch: int = 1, size: tuple[int, int] = (600, 1000)) -> CaseSpec:
    return CaseSpec(
        model=model,
        batch_size=batch,
        image_size=size,
        text_len=40,
        precision="fp32",
        device="cpu",
    )


def ok_result(model: str = "vilbert", median: float = 12.5, batch: int = 1) -> CaseResult:
    return CaseResult(
        spec=spec(model, batch),
        status="ok",
        embedder="region",
        fusion="dual-stream",
        tokens={"text": 40, "image": 37},
        end_to_end=summary(median),
        end_to_end_samples_ms=(median, median + 0.5, median - 0.25),
        stage_sum_ms=0.9 * median,
        stages=(
            StageResult(
                name="backbone",
                kind="backbone",
                parent=None,
                timing=summary(0.6 * median),
                calls=1,
                flops=123_456_789_000,
                params=44_500_000,
                peak_mem_bytes=1 << 30,
                samples_ms=(7.5, 7.6),
            ),
            StageResult(
                name="rpn.nms",
                kind="region_ops",
                parent="backbone",
                timing=None,
                calls=2,
                flops=0,
                params=0,
                host_sync=True,
            ),
        ),
        flops_total=200_000_000_000,
        params_total=221_000_000,
        peak_mem_bytes=None,
        settings={"threads": 8, "tf32": False, "seed": 0},
        wall_s=31.25,
    )


def oom_result(model: str = "vilbert") -> CaseResult:
    return CaseResult(
        spec=spec(model),
        status="oom",
        message="CUDA out of memory. Tried to allocate 2.00 GiB",
        embedder="region",
        fusion="dual-stream",
        wall_s=3.0,
    )


def new_run(store: Store, label: str | None = "test") -> int:
    return store.start_run(
        label=label,
        suite="smoke",
        command="vlbench run --suite smoke",
        env={"python": "3.11", "torch": "2.5"},
        settings={"repeats": 20},
    )


def dead_pid() -> int:
    """A pid that certainly belonged to a process that has exited and been reaped."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(child.stdout)


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)
