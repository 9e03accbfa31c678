"""What ``vlbench run``'s flags make of a run: the plan (which suite, models, sizes, precisions,
rounds: ``PlanOptions``) and the run's ``RunOptions`` (``vlbench.options``). Every flag is declared
on a field (``vlbench.options.flag``); the parser, and the check that a resume takes none of
them, are derived from those fields. Bad combinations are ``ValueError``s, which the command
line prints as one line with exit status 2. Pure until a run starts: no torch here."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import parse
from ..budget import choose_memory_budget
from ..options import (
    FLAG,
    LaunchOptions,
    MeasureOptions,
    RunOptions,
    TimingOptions,
    flag,
    flagged_fields,
)
from ..plugins import resolve_plugin_paths
from ..results import CaseSpec

#: set (non-empty, not 0) to make 'vlbench run' measure in-process by default
NO_ISOLATION_ENV = "VLBENCH_NO_ISOLATION"


def _listed(parser: Any, what: str) -> Any:
    """A comma-separated flag value through ``parser`` (which takes the list)."""
    def parse_list(text: str) -> Any:
        return parser(parse.names(text, what))
    return parse_list


@dataclass(frozen=True)
class PlanOptions:
    """Which cases a run measures, beyond its suite file."""

    suite: str | None = field(default=None, metadata=flag(
        "--suite", type=parse.text, help="built-in suite name or a .yaml path (default latency)"))
    models: tuple[str, ...] | None = field(default=None, metadata=flag(
        "--models", type=_listed(tuple, "names"),
        help="comma-separated presets (default: the suite's)"))
    compose: tuple[str, ...] | None = field(default=None, metadata=flag(
        "--compose", type=_listed(tuple, "EMBEDDER+FUSION pairs"),
        help="comma-separated EMBEDDER+FUSION pairs, e.g. patch+two-stream,region+dual-encoder "
        "(added to --models)"))
    size: str | None = field(default=None, metadata=flag(
        "--size", choices=["base", "tiny"],
        help="tiny: every model at its tiny twin's widths (seconds on a CPU)"))
    device: str | None = field(default=None, metadata=flag(
        "--device", type=parse.device, help="auto, cpu, cuda or cuda:N (default auto)"))
    batch_sizes: tuple[int, ...] | None = field(default=None, metadata=flag(
        "--batch-sizes", type=lambda text: parse.int_list(text, "--batch-sizes"),
        help="comma-separated, e.g. 1,8 (default: the suite's)"))
    precisions: tuple[str, ...] | None = field(default=None, metadata=flag(
        "--precisions", type=_listed(parse.precisions, "precisions"),
        help="comma-separated: fp32, tf32, bf16, fp16"))
    modes: tuple[str, ...] | None = field(default=None, metadata=flag(
        "--modes", type=_listed(parse.execution_modes, "modes"),
        help="comma-separated execution modes: eager, compile (torch.compile, timed end to end "
        "only), cudagraphs (GPU only), compile-fusion (torch.compile of the fusion only)"))
    image_size: tuple[int, int] | None = field(default=None, metadata=flag(
        "--image-size", type=parse.image_size,
        help="HxW for every model (default: each canonical input)"))
    text_len: int | None = field(default=None, metadata=flag(
        "--text-len", type=parse.positive_int,
        help="text tokens (default: each canonical input)"))
    region_backend: str | None = field(default=None, metadata=flag(
        "--region-backend", choices=["vlbench", "detectron2"],
        help="region detectors on vlbench's own modules or detectron2's (default: each suite "
        "entry's, else vlbench)"))
    label: str | None = field(default=None, metadata=flag(
        "--label", type=parse.text, help="a label stored with the run"))
    rounds: int | None = field(default=None, metadata=flag(
        "--rounds", type=parse.positive_int,
        help="measure every case in this many rounds, each in fresh worker processes (default "
        "1; 'vlbench compare' needs 5 or more per side)"))
    require_quiet: bool = field(default=False, metadata=flag(
        "--require-quiet", action="store_true",
        help="refuse to start (exit 75) when the machine is already busy: other runnable tasks "
        "beyond the cores the run's threads leave free (for CI; see docs/contention.md)"))


#: the classes whose flagged fields make up ``vlbench run``'s fresh-run flags
RUN_FLAG_CLASSES = (PlanOptions, MeasureOptions, LaunchOptions)


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """Every fresh-run flag, from the fields that declare one (``--plugin`` excepted: every
    command has it)."""
    for f in flagged_fields(*RUN_FLAG_CLASSES):
        names, kwargs = f.metadata[FLAG]
        if names != ("--plugin",):
            parser.add_argument(*names, dest=f.name, **kwargs)


def fresh_flags_given(args: argparse.Namespace) -> list[str]:
    """The fresh-run flags on the command line (a resume takes none: it measures the run's
    recorded cases with its recorded settings)."""
    return [f.metadata[FLAG][0][0] for f in flagged_fields(*RUN_FLAG_CLASSES)
            if getattr(args, f.name, None) not in (None, False, [])]


def plan_from_args(args: argparse.Namespace) -> PlanOptions:
    return PlanOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PlanOptions)})


def timing_from(suite_timing: dict[str, Any], args: argparse.Namespace) -> TimingOptions:
    """The suite's timing entries, overridden by the timing flags given."""
    values = dict(suite_timing)
    for f in flagged_fields(TimingOptions):
        if getattr(args, f.name) is not None:
            values[f.name] = getattr(args, f.name)
    return TimingOptions(**values)


def measure_from(args: argparse.Namespace, timing: TimingOptions) -> MeasureOptions:
    return MeasureOptions(
        timing=timing, head=args.head, seed=0 if args.seed is None else args.seed,
        compile_backend=args.compile_backend or None,
        trace_dir=_absolute(args.trace_dir),
        nvtx=args.nvtx, hf_dir=_absolute(args.hf_dir), weights=_absolute(args.weights),
        d2_config=_absolute(args.d2_config), d2_weights=_absolute(args.d2_weights))


def _absolute(path: str | None) -> str | None:
    """A path flag made absolute: workers and a resume read it from anywhere."""
    return str(Path(path).resolve()) if path else None


def launch_from(args: argparse.Namespace, device: str, threads: int) -> LaunchOptions:
    """The launch options; ``threads`` always explicit, so a worker and a resume use exactly
    the recorded count."""
    # the flags' own values: --no-isolation (True: in this process), --memory-budget (GiB)
    no_isolation, gib = args.isolation, args.memory_budget_bytes
    isolated = not (no_isolation or os.environ.get(NO_ISOLATION_ENV, "") not in ("", "0"))
    executor = args.executor or "local"
    if executor != "ray" and (args.ray_address or args.allow_shared):
        raise ValueError("--address and --allow-shared apply to --executor ray")
    # on Ray this machine's memory says nothing of the workers'
    budget = (None if executor == "ray" and gib is None
              else choose_memory_budget(isolated, device, gib))
    launch = LaunchOptions(
        threads=threads, isolation="process" if isolated else "none",
        memory_budget_bytes=budget, executor=executor, ray_address=args.ray_address,
        allow_shared=bool(args.allow_shared), plugins=resolve_plugin_paths(args.plugins),
        baseline_plugins=(None if args.baseline_plugins is None
                          else resolve_plugin_paths(args.baseline_plugins)),
        baseline_python=_interpreter(args.baseline_python))
    _check_interleaved(launch)
    return launch


def _interpreter(python: str | None) -> str | None:
    """``--baseline-python``: an executable, made absolute (workers start it from anywhere)."""
    if python is None:
        return None
    found = shutil.which(python) or python
    if not (Path(found).is_file() and os.access(found, os.X_OK)):
        raise ValueError(f"--baseline-python {python}: not an executable")
    return str(Path(found).absolute())


def _check_interleaved(launch: LaunchOptions) -> None:
    if launch.interleaved and not launch.isolated:
        raise ValueError("an interleaved A/B run measures its sides in separate worker "
                         f"processes; drop --no-isolation (or unset {NO_ISOLATION_ENV})")
    if launch.interleaved and launch.executor != "local":
        raise ValueError("interleaved A/B runs use the local executor")


def check_rounds(rounds: int, launch: LaunchOptions) -> None:
    if rounds > 1 and launch.executor == "ray":
        raise ValueError("--rounds needs fresh worker processes per round, which Ray's reused "
                         "workers do not give; use the local executor")


def expand_rounds(cases: list[CaseSpec], rounds: int, *, interleaved: bool) -> list[CaseSpec]:
    """Every case once per round, rounds outermost (so rounds are spread over the run's time);
    an interleaved A/B run measures side A then side B within each round: A B A B ..."""
    sides = ("A", "B") if interleaved else (None,)
    return [dataclasses.replace(c, round=r, side=side)
            for r in range(rounds) for side in sides for c in cases]


def check_reachable(address: str) -> None:
    """A Ray address that nothing answers on is a one-line error now, not minutes inside Ray's
    own connection retries ('auto' and addresses without a port are left to Ray)."""
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise ValueError(f"--address {address}: nothing answers there "
                         f"({exc.strerror or exc})") from None


__all__ = ["NO_ISOLATION_ENV", "PlanOptions", "RunOptions", "expand_rounds"]
