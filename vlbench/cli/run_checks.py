"""What ``vlbench run`` checks before it loads torch and the model code (seconds, more on a busy
machine): everything a command line or a suite file can get wrong that no model is needed to see,
refused at once with nothing stored. The checks are the options' own (``run_options``: the same
functions build the run's options later); what needs the registries or torch (model and task
names, whether a GPU is there, a ``torch.compile`` backend's name, a detector's smallest anchor)
is checked by ``vlbench.cli.run`` once they are loaded, still before anything is stored. Pure:
no torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..machine import machine_problems
from ..store import default_db_path
from ..suites import load_suite
from .parsers import UsageError
from .run_options import check_rounds, fresh_flags_given, launch_from, plan_from_args


def check_run(args: argparse.Namespace) -> None:
    """Refuse a ``vlbench run`` command line that cannot run (ValueError or UsageError)."""
    if args.resume is not None:
        given = fresh_flags_given(args)
        if given:
            raise UsageError("--resume measures the run's recorded cases with its recorded "
                             f"settings; drop {', '.join(given)}")
        path = Path(args.db) if args.db else default_db_path()
        if not path.exists():
            raise UsageError(f"no results database at {path}; nothing to resume")
        return
    plan = plan_from_args(args)
    suite = load_suite(plan.suite or "latency", resolve=False)  # names: once models load
    modes = plan.modes or suite.modes
    if args.compile_backend is not None and "compile" not in modes:
        raise UsageError(f"--compile-backend {args.compile_backend} applies to compile cases, "
                         f"and this run has none (modes: {', '.join(modes)}); add --modes "
                         "compile")
    # 'auto' is decided once torch is loaded; the budget's device check is repeated then
    device = plan.device if plan.device not in (None, "auto") else "cpu"
    launch = launch_from(args, device, threads=args.threads)
    check_rounds(plan.rounds or 1, launch)
    if launch.executor == "local":  # on Ray each node is checked in its task
        _check_machine(args, suite.name, suite.threads)


def _check_machine(args: argparse.Namespace, suite: str,
                   sweep: tuple[int | None, ...]) -> None:
    """Thread counts and the memory budget against this machine, which runs the cases."""
    problems = [f"--threads {args.threads}: {p}" for p in machine_problems([args.threads], None)]
    problems += [f"suite {suite} 'threads': {p}" for p in machine_problems(sweep, None)]
    if args.memory_budget_bytes is not None:  # the flag's value, in GiB
        nbytes = int(args.memory_budget_bytes * 2**30)
        problems += [f"--memory-budget {args.memory_budget_bytes:g}: {p}"
                     for p in machine_problems((), nbytes)]
    if problems:
        raise UsageError("; ".join(problems))
