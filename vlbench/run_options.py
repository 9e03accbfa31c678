"""What ``vlbench run``'s flags make of a run beyond the suite: its rounds, the two sides of an
interleaved A/B run, and the executor. Bad combinations are ``ValueError``s, which the command
line prints as one line with exit status 2."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import socket
from pathlib import Path


def expand_rounds(cases: list, rounds: int, *, interleaved: bool) -> list:
    """Every case once per round, rounds outermost (so rounds are spread over the run's time);
    an interleaved A/B run measures side A then side B within each round: A B A B ..."""
    sides = ("A", "B") if interleaved else (None,)
    return [dataclasses.replace(c, round=r, side=side)
            for r in range(rounds) for side in sides for c in cases]


def ab_options(args: argparse.Namespace, isolated: bool, no_isolation_env: str) -> dict:
    """CaseOptions fields of --plugin/--baseline-plugin/--baseline-python: plugin paths made
    absolute (workers and a resume import them from anywhere)."""
    from .plugins import resolve_plugin_paths

    out: dict = {"plugins": resolve_plugin_paths(args.plugin)}
    if args.baseline_plugin is not None:
        out["baseline_plugins"] = resolve_plugin_paths(args.baseline_plugin)
    if args.baseline_python is not None:
        python = shutil.which(args.baseline_python) or args.baseline_python
        if not (Path(python).is_file() and os.access(python, os.X_OK)):
            raise ValueError(f"--baseline-python {args.baseline_python}: not an executable")
        out["baseline_python"] = str(Path(python).absolute())
    if len(out) > 1 and not isolated:
        raise ValueError("an interleaved A/B run measures its sides in separate worker "
                         f"processes; drop --no-isolation (or unset {no_isolation_env})")
    if len(out) > 1 and (args.executor or "local") != "local":
        raise ValueError("interleaved A/B runs use the local executor")
    return out


def executor_options(args: argparse.Namespace) -> dict:
    """CaseOptions fields of --executor/--address/--allow-shared; Ray-only flags without
    --executor ray are an error rather than silently ignored."""
    executor = args.executor or "local"
    if executor != "ray" and (args.address or args.allow_shared):
        raise ValueError("--address and --allow-shared apply to --executor ray")
    if executor == "ray":
        from .ray_executor import check_ray_available

        check_ray_available()  # one line saying how to install it, exit 2
        if args.address:
            check_reachable(args.address)
    return {"executor": executor, "ray_address": args.address,
            "allow_shared": bool(args.allow_shared)}


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
