"""The commands that read stored runs: ``report``, ``compare`` (the regression gate) and
``export``. They need neither torch nor the model packages."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from ..export import export_csv, export_json
from ..gate import compare_refs, format_json, format_markdown, format_table, ref_path
from ..report import render_report, write_report
from ..store import Store
from ..store_schema import finite
from .parsers import UsageError
from .stores import open_existing

#: an output path that means standard output
STDOUT = "-"


def cmd_report(args: argparse.Namespace) -> int:
    with open_existing(args.db) as store:
        run_ids = _run_ids(store, args.run)
        baseline = store.resolve_run(args.baseline) if args.baseline else None
        if args.out == STDOUT:
            sys.stdout.writelines(render_report(store, run_ids, baseline=baseline,
                                                fmt=args.format, command=shlex.join(args.argv)))
            return 0
        out = report_to(store, run_ids, baseline, args.format, args.out, args.argv)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _run_ids(store: Store, refs: list[str]) -> list[int]:
    """``--run 3 4`` or ``--run 3,4`` or ``latest``: existing run ids, in order."""
    return [store.resolve_run(r.strip()) for arg in refs for r in arg.split(",") if r.strip()]


def report_to(store: Store, run_ids: list[int], baseline: int | None, fmt: str,
              out: str | None, argv: list[str]) -> Path:
    """Write a report (``vlbench.report``), an unwritable path as a one-line error."""
    try:
        return write_report(store, run_ids, baseline=baseline, fmt=fmt,
                            out=Path(out) if out else None, command=shlex.join(argv))
    except OSError as exc:
        raise UsageError(f"cannot write report: {exc.strerror or exc}") from None


def cmd_compare(args: argparse.Namespace) -> int:
    """The regression gate (vlbench.gate): 1 slower, 0 otherwise, 2 bad input."""
    if len(args.refs) > 2:
        raise UsageError("compare takes BASELINE CURRENT, or one interleaved run")
    needs_store = any(not ref_path(r).endswith(".json") for r in args.refs)
    store = open_existing(args.db) if needs_store else None
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
    if args.markdown == STDOUT:
        print(format_markdown(comparison, status), end="")
    elif args.markdown:
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


def cmd_export(args: argparse.Namespace) -> int:
    with open_existing(args.db) as store:
        run_ids = _run_ids(store, args.run)
        if args.format == "json":  # strict JSON: no bare NaN (vlbench.store_schema.finite)
            text = json.dumps(finite(export_json(store, run_ids)), indent=2, allow_nan=False)
        else:
            text = export_csv(store, run_ids)
    if args.out and args.out != STDOUT:
        try:
            Path(args.out).write_text(text)
        except OSError as exc:
            raise UsageError(f"cannot write {args.out}: {exc.strerror or exc}") from None
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0
