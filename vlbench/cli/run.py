"""``vlbench run``: plan the cases (a suite and the flags that change it), measure them into the
store (``vlbench.session``), then print the run's tables; ``--resume`` measures what a stored run
is missing with its recorded cases and options."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from architectures import case_preset, check_sources, resolve_preset

from ..compiled import check_backend
from ..contention import advice
from ..context import DeviceError, apply_threads, resolve_device
from ..env import collect_environment
from ..fit import fit_token_scaling, scaling_table
from ..launchers.ray_cluster import check_ray_available
from ..options import MeasureOptions, RunOptions
from ..results import CaseSpec
from ..resume import reopen
from ..retrieval_cost import retrieval_summary
from ..rounds import pool_rounds
from ..sampler import MachineLoad, machine_load
from ..session import execute
from ..store import Store, default_db_path
from ..suites import ModelEntry, Suite, load_suite
from ..table import results_table
from ..waterfall import waterfall_summary
from .parsers import UsageError
from .read import report_to
from .run_options import (
    PlanOptions,
    check_reachable,
    check_rounds,
    expand_rounds,
    fresh_flags_given,
    launch_from,
    measure_from,
    plan_from_args,
    timing_from,
)
from .stores import open_store

#: exit status when ``--require-quiet`` finds the machine busy: sysexits' EX_TEMPFAIL ("try again
#: later"), so a CI job tells a busy runner from bad input (2) and a regression (1)
EXIT_BUSY = 75


def cmd_run(args: argparse.Namespace) -> int:
    if args.resume is not None:
        return _resume(args)
    plan = plan_from_args(args)
    suite = _suite(plan)
    # on Ray a GPU case runs on the cluster's GPUs: this driver need not have one
    device = _device(plan.device or "auto", remote=args.executor == "ray")
    try:
        timing = timing_from(suite.timing, args)
    except TypeError as exc:
        raise UsageError(f"suite {suite.name}: bad 'timing' entry ({exc})") from None
    apply_threads(args.threads)
    options = RunOptions(measure_from(args, timing),
                         launch_from(args, device, threads=torch.get_num_threads()))
    check_backend(options.measure.compile_backend)
    if options.launch.executor == "ray":
        check_ray_available()  # one line saying how to install it, exit 2
        if options.launch.ray_address:
            check_reachable(options.launch.ray_address)
    rounds = plan.rounds or 1
    check_rounds(rounds, options.launch)
    cases = expand_rounds(suite.cases(device), rounds, interleaved=options.launch.interleaved)
    measure = options.measure
    # --hf-dir / --weights that do not fit a model are refused here, before the store is touched
    check_sources([resolve_preset(m) for m in dict.fromkeys(c.model for c in cases)],
                  head=measure.head, hf_dir=measure.hf_dir, weights=measure.weights)
    _check_region_backends(cases, measure)
    with open_store(args.db) as store:  # a bad --db is bad input before the machine is looked at
        load = machine_before(torch.get_num_threads(), require_quiet=plan.require_quiet)
        if load is not None and load.busy and plan.require_quiet:
            return EXIT_BUSY
        run_id = store.start_run(
            label=plan.label, suite=suite.name, command=shlex.join(args.argv),
            env=collect_environment(device, argv=args.argv),
            settings={"suite": suite.name, "device": device, **options.settings(),
                      "rounds": rounds, "interleaved": options.launch.interleaved,
                      "cases": [c.__dict__ for c in cases],
                      "machine_at_start": dataclasses.asdict(load) if load else None})
        print(f"run {run_id}: suite {suite.name}, {len(cases)} case(s) on {device}, "
              f"results in {store.path}", file=sys.stderr)
        return _execute(store, run_id, cases, options, args)


def machine_before(threads: int, *, require_quiet: bool = False) -> MachineLoad | None:
    """Look at the machine before measuring (``vlbench.sampler.machine_load``): one line on
    standard error when it is already busy, an error line when ``--require-quiet`` then refuses
    to start. None where the run queue cannot be read."""
    load = machine_load(threads)
    if load is None or not load.busy:
        return load
    if require_quiet:
        print(f"vlbench: error: {load.line()}; --require-quiet: not starting (exit {EXIT_BUSY}; "
              "try again when the machine is quieter)", file=sys.stderr)
    else:
        print(f"{load.line()} ('--require-quiet' refuses to start on a busy machine)",
              file=sys.stderr)
    return load


def _backend(flag: str) -> str | None:
    """``--region-backend``'s value as a case stores it: None for vlbench's own detector."""
    return None if flag == "vlbench" else flag


def _check_region_backends(cases: list[CaseSpec], measure: MeasureOptions) -> None:
    """One line, before the store is touched: detectron2 missing, a detectron2 file missing,
    or detectron2 files given to a run with no case on that backend."""
    on_d2 = dict.fromkeys(c.model for c in cases if c.region_backend == "detectron2")
    if (measure.d2_config or measure.d2_weights) and not on_d2:
        raise ValueError("--d2-config and --d2-weights need --region-backend detectron2 and a "
                         "model with a region detector")
    for model in on_d2:
        case_preset(model, "detectron2", measure.d2_config, measure.d2_weights)


def _suite(plan: PlanOptions) -> Suite:
    """The suite with the plan's flags applied: models, sizes, batch sizes, precisions, modes."""
    suite = load_suite(plan.suite or "latency")
    entries = suite.models
    if plan.models or plan.compose:
        names = [*(plan.models or ()), *(plan.compose or ())]
        for name in names:
            resolve_preset(name)  # one-line KeyError listing the valid names
        entries = tuple(ModelEntry(m) for m in names)
    entries = tuple(
        dataclasses.replace(
            e, model=resolve_preset(e.model, plan.size).name if plan.size else e.model,
            image_size=plan.image_size or e.image_size, text_len=plan.text_len or e.text_len,
            region_backend=_backend(plan.region_backend) if plan.region_backend
            else e.region_backend)
        for e in entries)
    changes: dict = {"models": entries}
    if plan.batch_sizes:
        changes["batch_sizes"] = plan.batch_sizes
        changes["cuda_batch_sizes"] = None  # a suite's GPU gallery sizes yield to the flag
    if plan.precisions:
        changes["precisions"] = plan.precisions
    if plan.modes:
        changes["modes"] = plan.modes
    return dataclasses.replace(suite, **changes)


def _device(name: str, remote: bool = False) -> str:
    if remote and name.startswith("cuda"):
        return name  # checked against the cluster: a case no node can take is recorded so
    try:
        return resolve_device(name)
    except DeviceError as exc:
        raise UsageError(str(exc)) from None


def _resume(args: argparse.Namespace) -> int:
    given = fresh_flags_given(args)
    if given:
        raise UsageError("--resume measures the run's recorded cases with its recorded "
                         f"settings; drop {', '.join(given)}")
    path = Path(args.db) if args.db else default_db_path()
    if not path.exists():
        raise UsageError(f"no results database at {path}; nothing to resume")
    with open_store(path) as store:
        plan = reopen(store, args.resume)
        if not plan.missing:
            print(f"run {plan.run_id} is complete: all {len(plan.cases)} case(s) ok; "
                  "nothing to resume")
            return 0
        apply_threads(plan.options.launch.threads)
        machine_before(torch.get_num_threads())
        print(f"run {plan.run_id}: resuming {len(plan.missing)} of {len(plan.cases)} case(s) "
              f"on {plan.device}, results in {store.path}", file=sys.stderr)
        return _execute(store, plan.run_id, plan.missing, plan.options, args)


def _execute(store: Store, run_id: int, cases: Sequence[CaseSpec], options: RunOptions,
             args: argparse.Namespace) -> int:
    """Measure into the store (vlbench.session), then print the run's table and report."""
    hint = f" --db {shlex.quote(str(args.db))}" if args.db else ""
    interrupted = execute(store, run_id, cases, options, show_progress=not args.no_progress,
                          resume_hint=hint)
    if interrupted is not None:
        return interrupted
    # after a resume: the whole run, last attempts; one row per case however many rounds
    results = pool_rounds(store.cases(run_id))
    print(results_table(results))
    fits = fit_token_scaling(results)
    if fits:
        print("\n" + scaling_table(fits))
    if any(r.spec.task for r in results):
        print("\n" + retrieval_summary(results))
    waterfall = waterfall_summary(results)
    if waterfall:
        print("\n" + waterfall)
    busy = advice(results)
    if busy:
        print(f"\n{busy}", file=sys.stderr)
    print(f"\nrun {run_id} stored in {store.path}; export with: vlbench export --run {run_id}")
    if args.report:
        with open_store(store.path) as reader:
            path = report_to(reader, [run_id], None, "html", None, args.argv)
        print(f"report: {path}")
    failed = [r for r in results if r.status != "ok"]
    return 1 if failed and len(failed) == len(results) else 0
