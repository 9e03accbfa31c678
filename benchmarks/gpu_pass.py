"""The GPU pass: everything GPU-only measured in one short call on a lent GPU machine.

A GPU machine comes now and then, for minutes, and nothing but the project's tree travels to it,
so this one command does all of it, in priority order, under a time budget, into ONE results
store (a second call with the returned store resumes where the first stopped):

1. the latency suite, every preset, fp32 (IEEE: no TF32 for matmuls or convolutions) and bf16,
   batch 1, with CUDA events, stage sums and per-stage memory;
2. ``vilt-b32`` and ``clip-vit-b32`` in bf16, eager and CUDA graphs then ``torch.compile``
   (compilation last: tens of seconds each), at batch 1 and 32;
3. ``benchmarks/parity`` on the device, for the models it covers (ours/theirs latency);
4. the later suites (retrieval up to N = 10,000, the post-ViLT presets...) as time allows.
Hook overhead (end to end with and without the stage hooks, interleaved) is in every eager case
of step 1 (``settings["hooked_end_to_end_ms"]`` beside the end-to-end median).

It packs the store, the JSON export, the HTML report, the markdown summary and a log into at
most 8 files under ``--out`` (``$OUT`` on the device machine). Each step runs as its own
``vlbench`` process with what is left of the budget as its timeout: a step cut short is
interrupted cleanly (its finished cases stay, and ``--resume`` continues it) and the log says so.

Run on the device machine (Python 3.12, torch preinstalled, no network)::

    python benchmarks/gpu_pass.py --out "$OUT"                  # installs vlbench, then runs

Dry run here (the same steps at tiny size on the CPU, about two minutes; a test runs it)::

    python benchmarks/gpu_pass.py --device cpu --size tiny --budget-s 120 --out /tmp/pass
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: seconds a step needs at least to be worth starting
MIN_STEP_S = 20.0
#: seconds a step's process gets to stop after SIGINT before it is killed
STOP_GRACE_S = 20.0


@dataclass(frozen=True)
class Step:
    """One command of the pass: ``vlbench`` arguments (or a module to run) and its ``share`` of
    the budget (what a step leaves unused goes to the next), in priority order."""

    name: str
    argv: tuple[str, ...]
    share: float
    module: str = "vlbench"


def steps(device: str, size: str, db: Path) -> list[Step]:
    """The pass's steps, most valuable first; compilation last within its step."""
    common = ("--device", device, "--db", str(db), "--no-progress")
    tiny = ("--size", "tiny") if size == "tiny" else ()
    quick = ("--repeats", "2", "--min-time", "0", "--warmup", "0") if size == "tiny" else ()
    pair = "vilt-b32,clip-vit-b32"
    # the dry run times one preset of each visual kind (patch, grid, region, dual encoder): the
    # same step and flags in a fraction of the time
    few = ("--models", "vilt-b32,pixelbert-r50,uniter-base,clip-vit-b32") if size == "tiny" else ()
    out = [
        Step("latency", ("run", "--suite", "latency", *few, "--precisions", "fp32,bf16",
                         "--label", "gpu-pass: latency", *tiny, *quick, *common), 0.5),
        Step("modes", ("run", "--models", pair, "--precisions", "bf16",
                       "--modes", "eager,cudagraphs" if device.startswith("cuda") else "eager",
                       "--batch-sizes", "1,32", "--label", "gpu-pass: modes", *tiny, *quick,
                       *common), 0.15),
        Step("compile", ("run", "--models", pair, "--precisions", "bf16", "--modes", "compile",
                         "--batch-sizes", "1,32", "--label", "gpu-pass: compile",
                         *(("--compile-backend", "aot_eager") if size == "tiny" else ()),
                         *tiny, *quick, *common), 0.15),
    ]
    # the parity script works at full size: the dry run checks it on its cheapest model
    parity_models = ("clip-vit-b32" if size == "tiny"
                     else "vilt-b32,clip-vit-b32,lxmert,visualbert,blip-base")
    out.append(Step("parity", ("--device", device, "--models", parity_models,
                               "--repeats", "2" if size == "tiny" else "10",
                               "--warmup", "1" if size == "tiny" else "2"),
                    0.1, module="benchmarks.parity"))
    out.append(Step("retrieval", ("run", "--suite", "retrieval", "--label",
                                  "gpu-pass: retrieval", *tiny, *quick, *common), 1.0))
    return out


def run_step(step: Step, timeout: float, log: list[str], env: dict[str, str]) -> bool:
    """Run one step for at most ``timeout`` seconds; True when it ran to its end."""
    if timeout < MIN_STEP_S:
        log.append(f"{step.name}: skipped, {max(timeout, 0):.0f} s of its time left")
        return False
    command = [sys.executable, "-m", step.module, *step.argv]
    log.append(f"{step.name}: {shlex.join(command)} (at most {timeout:.0f} s)")
    began = time.monotonic()
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
        cut = False
    except subprocess.TimeoutExpired:  # interrupt cleanly: finished cases stay, resumable
        os.killpg(proc.pid, signal.SIGINT)
        try:
            output, _ = proc.communicate(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
        cut = True
    took = time.monotonic() - began
    log.append(output.rstrip())
    verdict = "cut by the budget" if cut else f"exit {proc.returncode}"
    log.append(f"{step.name}: {verdict} after {took:.0f} s")
    return not cut and proc.returncode == 0


def pack(db: Path, out: Path, env: dict[str, str], log: list[str]) -> list[Path]:
    """The store's export, HTML report and markdown summary beside it (with the log: 5 files)."""
    made = []
    for name, argv in (("results.json", ("export", "--run", *_run_ids(db), "--format", "json",
                                         "--out")),
                       ("report.html", ("report", "--run", *_run_ids(db), "--out")),
                       ("summary.md", ("report", "--run", *_run_ids(db), "--format",
                                       "markdown", "--out"))):
        target = out / name
        done = subprocess.run([sys.executable, "-m", "vlbench", *argv, str(target),
                               "--db", str(db)], cwd=REPO, env=env, capture_output=True,
                              text=True, check=False)
        log.append(f"pack {name}: exit {done.returncode} {done.stderr.strip()}")
        if target.exists():
            made.append(target)
    return made


def _run_ids(db: Path) -> list[str]:
    """Every run in the store (the report covers the whole pass)."""
    if not db.exists():
        return ["latest"]
    with sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True) as conn:
        ids = [str(row[0]) for row in conn.execute("SELECT id FROM runs ORDER BY id")]
    return ids or ["latest"]


def install(log: list[str]) -> dict[str, str]:
    """``pip install --no-build-isolation --no-deps -e .`` against the machine's own stack;
    where that cannot work, the tree on ``PYTHONPATH`` instead."""
    env = dict(os.environ)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-build-isolation",
                           "--no-deps", "-e", str(REPO)], capture_output=True, text=True,
                          check=False)
    log.append(f"install: exit {done.returncode} {done.stderr.strip()[-400:]}")
    if done.returncode != 0:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        log.append(f"install: falling back to PYTHONPATH={REPO}")
    return env


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/gpu_pass.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-pass")))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", choices=["base", "tiny"], default="base")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="seconds for all steps together (default 7 minutes)")
    parser.add_argument("--db", type=Path, help="the store (default OUT/gpu-pass.db); a store "
                        "from an earlier call continues it")
    parser.add_argument("--no-install", action="store_true", help="vlbench is importable as is")
    args = parser.parse_args(argv)
    began = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    db = args.db or args.out / "gpu-pass.db"
    log: list[str] = [f"gpu pass: device {args.device}, size {args.size}, "
                      f"budget {args.budget_s:.0f} s, store {db}"]
    env = dict(os.environ) if args.no_install else install(log)
    share = 0.0
    for step in steps(args.device, args.size, db):  # a step's deadline: the shares so far
        share = min(1.0, share + step.share)
        run_step(step, began + share * args.budget_s - time.monotonic(), log, env)
    made = pack(db, args.out, env, log)
    log.append(f"gpu pass: {time.monotonic() - began:.0f} s in all; files: "
               f"{', '.join(p.name for p in [db, *made])}")
    (args.out / "gpu-pass.log").write_text("\n".join(log) + "\n")
    print(log[-1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
