"""The ``vlbench`` command: list, run, profile, export.

Each subcommand is one function. Bad input (unknown names, malformed sizes or lists, a file
that is not a store) ends with a one-line ``vlbench: error: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from .run_options import ab_options, executor_options, expand_rounds
from .store import NotAStoreError, Store, default_db_path
from .suites import SuiteError, parse_image_size, parse_int_list

EXIT_BAD_INPUT = 2
#: set (non-empty, not 0) to make 'vlbench run' measure in-process by default
NO_ISOLATION_ENV = "VLBENCH_NO_ISOLATION"


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that reports bad arguments as a UsageError (one line, exit 2) instead of
    printing the usage block and raising SystemExit; subparsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog="vlbench",
        description="Where the time goes in vision-language models: per-stage latency, "
        "FLOPs, parameters and memory.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    plugin = _ArgumentParser(add_help=False)
    plugin.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                        help="a user plugin file registering embedders, fusions or presets "
                        "(repeatable; entry points of group 'vlbench.plugins' load always)")

    p = sub.add_parser("list", parents=[plugin],
                       help="list models, embedders, fusion schemes or suites")
    p.add_argument("what", nargs="?", default="models",
                   choices=["models", "embedders", "fusions", "pairs", "suites"])

    p = sub.add_parser("run", parents=[plugin], help="run a suite and store the results")
    p.add_argument("--suite", help="built-in suite name or a .yaml path (default latency)")
    p.add_argument("--models", help="comma-separated presets (default: the suite's)")
    p.add_argument("--compose", help="comma-separated EMBEDDER+FUSION pairs, e.g. "
                   "patch+two-stream,region+dual-encoder (added to --models)")
    p.add_argument("--size", choices=["base", "tiny"],
                   help="tiny: every model at its tiny twin's widths (seconds on a CPU)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--batch-sizes", help="comma-separated, e.g. 1,8 (default: the suite's)")
    p.add_argument("--precisions", help="comma-separated: fp32, tf32, bf16, fp16")
    p.add_argument("--modes", help="comma-separated execution modes: eager, compile "
                   "(torch.compile, timed end to end only), cudagraphs (GPU only)")
    p.add_argument("--compile-backend", help="torch.compile backend for compile cases "
                   "(default inductor; aot_eager compiles in seconds)")
    p.add_argument("--trace", metavar="DIR",
                   help="write a torch.profiler chrome trace of one forward per case into DIR")
    p.add_argument("--image-size", help="HxW for every model (default: each canonical input)")
    p.add_argument("--text-len", type=int, help="text tokens (default: each canonical input)")
    p.add_argument("--warmup", type=int, help="warm-up forwards per case")
    p.add_argument("--repeats", type=int, help="minimum timed iterations per case")
    p.add_argument("--min-time", type=float, help="minimum timed seconds per case")
    p.add_argument("--max-repeats", type=int, help="at most this many timed iterations")
    p.add_argument("--max-time", type=float,
                   help="a slow case stops after this many seconds (at least 3 iterations)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--head", action="store_true", help="include each preset's task head")
    p.add_argument("--seed", type=int, help="seed for weights and inputs (default 0)")
    p.add_argument("--label", help="a label stored with the run")
    p.add_argument("--no-isolation", action="store_true",
                   help="measure in this process (debugging); by default each case runs in a "
                   "worker process, so a crash or out-of-memory costs one case, not the run")
    p.add_argument("--memory-budget", type=float, metavar="GIB",
                   help="CPU runs: memory a worker may hold, in GiB (2^30 bytes), libraries "
                   "included; beyond it a case is recorded 'oom' (default 80%% of memory)")
    p.add_argument("--resume", nargs="?", const="latest", metavar="RUN",
                   help="measure what run RUN (default latest) is missing, with its recorded "
                   "cases and settings")
    p.add_argument("--db", help=f"results database (default {default_db_path()})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--report", action="store_true",
                   help="write an HTML report of the run when it ends (under reports/)")
    p.add_argument("--executor", choices=["local", "ray"],
                   help="local (default): this machine; ray: one Ray task per case, one whole "
                   "GPU each (pip install 'vlbench[ray]')")
    p.add_argument("--address", help="--executor ray: the Ray cluster to join "
                   "(default: start Ray locally)")
    p.add_argument("--allow-shared", action="store_true",
                   help="--executor ray on CPU nodes: let cases share a node's cores")
    p.add_argument("--rounds", type=int,
                   help="measure every case in this many rounds, each in fresh worker "
                   "processes (default 1; 'vlbench compare' needs 5 or more per side)")
    p.add_argument("--baseline-plugin", action="append", metavar="FILE.py",
                   help="interleaved A/B: side A (baseline) loads this plugin file instead of "
                   "--plugin's; rounds alternate A B A B in separate workers")
    p.add_argument("--baseline-python", metavar="PYTHON",
                   help="interleaved A/B: side A's workers run this interpreter (another "
                   "environment with vlbench installed, e.g. the base branch's)")

    p = sub.add_parser("profile", parents=[plugin],
                       help="parameters and FLOPs per stage, no timing")
    p.add_argument("model", help="a preset or an EMBEDDER+FUSION pair")
    p.add_argument("--size", choices=["base", "tiny"])
    p.add_argument("--image-size", help="HxW (default: the canonical input)")
    p.add_argument("--text-len", type=int)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--head", action="store_true")
    p.add_argument("--format", choices=["table", "json"], default="table")

    p = sub.add_parser("report", parents=[plugin],
                       help="write a self-contained HTML (or markdown) report")
    p.add_argument("--run", nargs="+", default=["latest"],
                   help="run id(s) (space- or comma-separated) or 'latest'")
    p.add_argument("--baseline", help="compare with this run id")
    p.add_argument("--format", choices=["html", "markdown"], default="html")
    p.add_argument("--out", help="default reports/vlbench-run<ID>.html")
    p.add_argument("--db", help=f"results database (default {default_db_path()})")

    p = sub.add_parser("compare", parents=[plugin],
                       help="the regression gate: compare two runs (or an A/B run's sides) "
                       "per model and stage")
    p.add_argument("refs", nargs="+", metavar="RUN",
                   help="BASELINE CURRENT: run ids, 'latest', ID:A / ID:B (a side of an "
                   "interleaved run) or exported FILE.json; one interleaved run id alone "
                   "compares its side A with its side B")
    p.add_argument("--threshold", type=float, default=0.10,
                   help="relative slowdown that counts (default 0.10 = 10%%)")
    p.add_argument("--alpha", type=float, default=0.01, help="significance level (default 0.01)")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when any stage comparison is inconclusive")
    p.add_argument("--fail-on-flops-change", action="store_true",
                   help="exit 1 when parameters, FLOPs or workload differ")
    p.add_argument("--run-noise", type=float, metavar="FRACTION",
                   help="separate runs: run-to-run drift (standard deviation, e.g. 0.05); "
                   "default: estimated from 3+ other runs of the same cases in the store")
    p.add_argument("--format", choices=["table", "markdown", "json"], default="table")
    p.add_argument("--markdown", metavar="FILE",
                   help="also write a markdown summary here (e.g. $GITHUB_STEP_SUMMARY)")
    p.add_argument("--db", help=f"results database (default {default_db_path()})")

    p = sub.add_parser("export", parents=[plugin], help="export a stored run as JSON or CSV")
    p.add_argument("--run", default="latest", help="run id or 'latest' (default)")
    p.add_argument("--format", choices=["json", "csv"], default="json")
    p.add_argument("--out", help="write to this file instead of standard output")
    p.add_argument("--db", help=f"results database (default {default_db_path()})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    handlers = {"list": cmd_list, "run": cmd_run, "profile": cmd_profile, "export": cmd_export,
                "report": cmd_report, "compare": cmd_compare}
    try:
        args = _parser().parse_args(argv)
        args.argv = ["vlbench", *argv]  # recorded with a run: the command that reproduces it
        from .plugins import load_plugins

        load_plugins(args.plugin)
        return handlers[args.command](args)
    except BrokenPipeError:  # `vlbench ... | head`: the reader left, nothing to report
        sys.stderr.close()
        return 0
    except (UsageError, SuiteError, NotAStoreError, KeyError, ValueError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"vlbench: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _open_store(path: str | Path | None) -> Store:
    """Store.open, with an unusable path (a directory, no permission) as a one-line error."""
    try:
        return Store.open(path)
    except (OSError, sqlite3.Error) as exc:
        where = path if path is not None else default_db_path()
        raise UsageError(f"cannot open results database {where}: {exc}") from None


def _parse(fn, *args):  # noqa: ANN001, ANN202 - turns a ValueError into a usage error
    try:
        return fn(*args)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def cmd_list(args: argparse.Namespace) -> int:
    from architectures import FUSIONS, PRESETS
    from feature_extractors import EMBEDDERS

    from .suites import builtin_suites, load_suite

    if args.what == "models":
        for name in PRESETS:
            p = PRESETS.get(name)
            h, w = p.image_size
            print(f"{name:<30} {h}x{w} + {p.text_len} text  {p.description}")
    elif args.what == "embedders":
        for name in EMBEDDERS:
            e = EMBEDDERS.get(name)
            print(f"{name:<12} {e.modality:<7} {e.description}")
    elif args.what == "fusions":
        for name in FUSIONS:
            print(f"{name:<14} {FUSIONS.get(name).description}")
    elif args.what == "pairs":
        _print_pairs()
    else:
        for name in builtin_suites():
            print(f"{name:<10} {load_suite(name).description}")
    return 0


def _print_pairs() -> None:
    """The embedder x fusion matrix: every cell is a model ('vlbench run --compose V+F');
    published presets are listed in their cell."""
    from architectures import FUSIONS, pair_matrix

    matrix = pair_matrix()
    fusions = FUSIONS.names()
    visuals = sorted({v for v, _ in matrix})
    cells = {k: ", ".join(v) or "-" for k, v in matrix.items()}
    widths = [max(len(f), *(len(cells[(v, f)]) for v in visuals)) for f in fusions]
    print(f"{'':<12} " + " | ".join(f"{f:<{w}}" for f, w in zip(fusions, widths, strict=True)))
    for v in visuals:
        row = " | ".join(f"{cells[(v, f)]:<{w}}" for f, w in zip(fusions, widths, strict=True))
        print(f"{v:<12} {row}")
    print("\nany cell runs as EMBEDDER+FUSION, e.g. 'vlbench run --compose patch+two-stream'; "
          "'--size tiny' for test widths")


def _csv_names(text: str, registry_get) -> list[str]:  # noqa: ANN001
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UsageError(f"expected comma-separated names, got {text!r}")
    for name in names:
        registry_get(name)  # one-line KeyError listing the valid names
    return names


def cmd_run(args: argparse.Namespace) -> int:
    if args.resume is not None:
        return _resume_run(args)
    import torch

    from architectures import resolve_preset

    from .env import collect_environment
    from .precision import check_precision
    from .runner import CaseOptions
    from .suites import ModelEntry, load_suite
    from .timing import TimingOptions
    from .worker import choose_memory_budget

    suite = load_suite(args.suite or "latency")
    # on Ray a GPU case runs on the cluster's GPUs: this driver need not have one
    device = _device(args.device or "auto", remote=args.executor == "ray")
    image_size = _parse(parse_image_size, args.image_size) if args.image_size else None
    if args.text_len is not None and args.text_len <= 0:
        raise UsageError(f"--text-len must be a positive integer, got {args.text_len}")
    entries = suite.models
    if args.models or args.compose:
        names = _csv_names(args.models, resolve_preset) if args.models else []
        names += _csv_names(args.compose, resolve_preset) if args.compose else []
        entries = tuple(ModelEntry(m) for m in names)
    entries = tuple(
        ModelEntry(resolve_preset(e.model, args.size).name if args.size else e.model,
                   image_size or e.image_size, args.text_len or e.text_len)
        for e in entries
    )
    changes: dict = {"models": entries}
    if args.batch_sizes:
        changes["batch_sizes"] = _parse(parse_int_list, args.batch_sizes, "--batch-sizes")
        changes["cuda_batch_sizes"] = None  # a suite's GPU gallery sizes yield to the flag
    if args.precisions:
        precisions = tuple(p.strip() for p in args.precisions.split(","))
        for p in precisions:
            _parse(check_precision, p)
        changes["precisions"] = precisions
    if args.modes:
        from .suites import parse_modes

        changes["modes"] = _parse(parse_modes, args.modes.split(","))
    suite = type(suite)(**{**suite.__dict__, **changes})

    timing = dict(suite.timing)
    for key, value in (("warmup", args.warmup), ("min_repeats", args.repeats),
                       ("min_time_s", args.min_time), ("max_repeats", args.max_repeats),
                       ("max_time_s", args.max_time)):
        if value is not None:
            timing[key] = value
    try:
        timing_options = TimingOptions(**timing)
    except TypeError as exc:
        raise UsageError(f"suite {suite.name}: bad 'timing' entry ({exc})") from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.threads is not None:
        if args.threads <= 0:
            raise UsageError(f"--threads must be a positive integer, got {args.threads}")
        torch.set_num_threads(args.threads)
    isolated = not (args.no_isolation or os.environ.get(NO_ISOLATION_ENV, "") not in ("", "0"))
    rounds = 1 if args.rounds is None else args.rounds
    if rounds < 1:
        raise UsageError(f"--rounds must be a positive integer, got {rounds}")
    if rounds > 1 and args.executor == "ray":
        raise UsageError("--rounds needs fresh worker processes per round, which Ray's reused "
                         "workers do not give; use the local executor")
    ab = ab_options(args, isolated, NO_ISOLATION_ENV)
    # threads always explicit: a worker and a resume then use exactly the recorded count
    options = CaseOptions(timing=timing_options, head=args.head,
                          seed=0 if args.seed is None else args.seed,
                          threads=torch.get_num_threads(), isolated=isolated,
                          # Ray: this machine's memory says nothing of the workers'
                          memory_budget=(None if args.executor == "ray" and
                                         args.memory_budget is None else
                                         choose_memory_budget(isolated, device,
                                                              args.memory_budget)),
                          compile_backend=args.compile_backend or None,
                          trace_dir=str(Path(args.trace).resolve()) if args.trace else None,
                          **executor_options(args), **ab)
    cases = expand_rounds(suite.cases(device), rounds, interleaved=options.interleaved)

    argv = args.argv
    with _open_store(args.db) as store:
        run_id = store.start_run(
            label=args.label, suite=suite.name, command=shlex.join(argv),
            env=collect_environment(device, argv=argv),
            settings={"suite": suite.name, "device": device, **options.settings(),
                      "rounds": rounds, "interleaved": options.interleaved,
                      "cases": [c.__dict__ for c in cases]},
        )
        print(f"run {run_id}: suite {suite.name}, {len(cases)} case(s) on {device}, "
              f"results in {store.path}", file=sys.stderr)
        return _execute(store, run_id, cases, options, args)


def _device(name: str, remote: bool = False) -> str:
    from .runner import DeviceError, resolve_device

    if remote and name.startswith("cuda"):
        return name  # checked against the cluster: a case no node can take is recorded so

    try:
        return resolve_device(name)
    except DeviceError as exc:
        raise UsageError(str(exc)) from None


#: run flags that choose what to measure; a resume takes all of them from the stored run
_FRESH_RUN_FLAGS = ("suite", "models", "compose", "size", "device", "batch_sizes", "precisions",
                    "image_size", "text_len", "warmup", "repeats", "min_time", "max_repeats",
                    "max_time", "threads", "head", "seed", "label", "memory_budget",
                    "no_isolation", "modes", "compile_backend", "trace", "executor",
                    "address", "allow_shared", "rounds", "baseline_plugin", "baseline_python",
                    "plugin")


def _resume_run(args: argparse.Namespace) -> int:
    from .resume import reopen
    from .runner import apply_threads

    given = [f"--{n.replace('_', '-')}" for n in _FRESH_RUN_FLAGS
             if getattr(args, n) not in (None, False, [])]
    if given:
        raise UsageError("--resume measures the run's recorded cases with its recorded "
                         f"settings; drop {', '.join(given)}")
    path = Path(args.db) if args.db else default_db_path()
    if not path.exists():
        raise UsageError(f"no results database at {path}; nothing to resume")
    with _open_store(path) as store:
        plan = reopen(store, args.resume)
        if not plan.missing:
            print(f"run {plan.run_id} is complete: all {len(plan.cases)} case(s) ok; "
                  "nothing to resume")
            return 0
        apply_threads(plan.options.threads)
        print(f"run {plan.run_id}: resuming {len(plan.missing)} of {len(plan.cases)} case(s) "
              f"on {plan.device}, results in {store.path}", file=sys.stderr)
        return _execute(store, plan.run_id, plan.missing, plan.options, args)


def _execute(store: Store, run_id: int, cases, options, args: argparse.Namespace) -> int:  # noqa: ANN001
    """Measure into the store (vlbench.session), then print the run's table and report."""
    from .fit import fit_token_scaling, scaling_table
    from .rounds import pool_rounds
    from .session import execute
    from .table import results_table

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
        from .retrieval_cli import retrieval_summary

        print("\n" + retrieval_summary(results))
    print(f"\nrun {run_id} stored in {store.path}; export with: vlbench export --run {run_id}")
    if args.report:
        with _open_store(store.path) as reader:
            path = _write_report(reader, [run_id], None, "html", None, args.argv)
        print(f"report: {path}")
    failed = [r for r in results if r.status != "ok"]
    return 1 if failed and len(failed) == len(results) else 0


def cmd_profile(args: argparse.Namespace) -> int:
    from .profile import profile_model

    image_size = _parse(parse_image_size, args.image_size) if args.image_size else None
    if args.batch_size <= 0 or (args.text_len is not None and args.text_len <= 0):
        raise UsageError("--batch-size and --text-len must be positive integers")
    from architectures import resolve_preset

    name = resolve_preset(args.model, args.size).name
    profile = profile_model(name, image_size=image_size, text_len=args.text_len,
                            batch_size=args.batch_size, head=args.head)
    if args.format == "json":
        print(json.dumps(profile, indent=2))
        return 0
    h, w = profile["image_size"]
    tokens = profile["tokens"]
    print(f"{profile['model']}: batch {profile['batch_size']}, {h}x{w} "
          f"({tokens['image']} image tokens) + {profile['text_len']} text tokens; "
          f"FLOPs: {profile['flop_convention']}")
    print(f"{'stage':<24} {'kind':<16} {'params (M)':>11} {'GFLOPs':>10}  workload")
    for name, s in profile["stages"].items():
        label = ("  " if s["parent"] else "") + name
        work = ", ".join(f"{k} {v}" for k, v in s["workload"].items()) if s["parent"] else ""
        print(f"{label:<24} {s['kind']:<16} {s['params'] / 1e6:>11.2f} "
              f"{s['flops'] / 1e9:>10.2f}  {work}")
    print(f"{'total':<24} {'':<16} {profile['params_total'] / 1e6:>11.2f} "
          f"{profile['flops_total'] / 1e9:>10.2f}")
    if profile["profiled_on"] != "meta":
        print("data-dependent stages (host_sync): profiled by one forward on the CPU")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    path = Path(args.db) if args.db else default_db_path()
    if not path.exists():
        raise UsageError(f"no results database at {path}; run 'vlbench run' first or pass --db")
    with _open_store(path) as store:
        refs = [r.strip() for arg in args.run for r in arg.split(",") if r.strip()]
        run_ids = [store.resolve_run(r) for r in refs]
        baseline = store.resolve_run(args.baseline) if args.baseline else None
        out = _write_report(store, run_ids, baseline, args.format, args.out, args.argv)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _write_report(store: Store, run_ids: list[int], baseline: int | None, fmt: str,
                  out: str | None, argv: list[str]) -> Path:
    from .report import write_report

    try:
        return write_report(store, run_ids, baseline=baseline, fmt=fmt,
                            out=Path(out) if out else None, command=shlex.join(argv))
    except OSError as exc:
        raise UsageError(f"cannot write report: {exc.strerror or exc}") from None


def cmd_compare(args: argparse.Namespace) -> int:
    """The regression gate (vlbench.gate): 1 slower, 0 otherwise, 2 bad input."""
    from .gate import compare_refs, format_json, format_markdown, format_table

    if len(args.refs) > 2:
        raise UsageError("compare takes BASELINE CURRENT, or one interleaved run")
    path = Path(args.db) if args.db else default_db_path()
    needs_store = any(not _split_ref(r).endswith(".json") for r in args.refs)
    if needs_store and not path.exists():
        raise UsageError(f"no results database at {path}; run 'vlbench run' first or pass --db")
    store = _open_store(path) if needs_store else None
    try:
        comparison = compare_refs(args.refs, store, threshold=args.threshold, alpha=args.alpha,
                                  run_noise=args.run_noise)
    finally:
        if store is not None:
            store.close()
    status = comparison.exit_status(strict=args.strict,
                                    fail_on_flops_change=args.fail_on_flops_change)
    formatter = {"table": format_table, "markdown": format_markdown, "json": format_json}
    print(formatter[args.format](comparison, status))
    if args.markdown:
        try:
            with open(args.markdown, "a", encoding="utf-8") as handle:
                handle.write(format_markdown(comparison, status))
        except OSError as exc:
            raise UsageError(f"cannot write {args.markdown}: {exc.strerror or exc}") from None
    if comparison.count("inconclusive"):
        consequence = "exit 1 (--strict)" if args.strict else "exit 0; --strict fails them"
        print(f"vlbench compare: INCONCLUSIVE: {comparison.count('inconclusive')} stage "
              f"comparison(s) could not be decided ({consequence})", file=sys.stderr)
    return status


def _split_ref(ref: str) -> str:
    from .gate import _split

    return _split(ref)[0]


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_csv, export_json

    path = Path(args.db) if args.db else default_db_path()
    if not path.exists():
        raise UsageError(f"no results database at {path}; run 'vlbench run' first or pass --db")
    with _open_store(path) as store:
        run_id = store.resolve_run(args.run)
        if args.format == "json":
            text = json.dumps(export_json(store, [run_id]), indent=2)
        else:
            text = export_csv(store, [run_id])
    if args.out:
        try:
            Path(args.out).write_text(text)
        except OSError as exc:
            raise UsageError(f"cannot write {args.out}: {exc.strerror or exc}") from None
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
