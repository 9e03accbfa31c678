"""The ``vlbench`` command line's parser: one subcommand per command. ``run``'s fresh-run flags
come from the option fields that declare them (``run_options``); the others are here."""

from __future__ import annotations

import argparse
from typing import NoReturn

from .. import parse
from ..options import FLAG, LaunchOptions
from ..store import default_db_path
from .run_options import add_run_flags

COMMANDS = ("list", "run", "profile", "report", "compare", "export")


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports bad arguments as a UsageError (one line, exit 2) instead of
    printing the usage block and raising SystemExit; subparsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="vlbench",
        description="Where the time goes in vision-language models: per-stage latency, "
        "FLOPs, parameters and memory.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    plugin = ArgumentParser(add_help=False)
    names, kwargs = LaunchOptions.__dataclass_fields__["plugins"].metadata[FLAG]
    plugin.add_argument(*names, dest="plugins", **kwargs)
    _list(sub, plugin)
    _run(sub, plugin)
    _profile(sub, plugin)
    _report(sub, plugin)
    _compare(sub, plugin)
    _export(sub, plugin)
    return parser


def _db(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", type=parse.text, help=f"results database (default {default_db_path()})")


def _list(sub: argparse._SubParsersAction, plugin: argparse.ArgumentParser) -> None:
    p = sub.add_parser("list", parents=[plugin],
                       help="list models, embedders, fusion schemes or suites")
    p.add_argument("what", nargs="?", default="models",
                   choices=["models", "embedders", "fusions", "pairs", "suites", "hf"])


def _run(sub: argparse._SubParsersAction, plugin: argparse.ArgumentParser) -> None:
    p = sub.add_parser("run", parents=[plugin], help="run a suite and store the results")
    add_run_flags(p)
    p.add_argument("--resume", nargs="?", const="latest", metavar="RUN",
                   help="measure what run RUN (default latest) is missing, with its recorded "
                   "cases and settings")
    _db(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--report", action="store_true",
                   help="write an HTML report of the run when it ends (under reports/)")


def _profile(sub: argparse._SubParsersAction, plugin: argparse.ArgumentParser) -> None:
    p = sub.add_parser("profile", parents=[plugin],
                       help="parameters and FLOPs per stage, no timing")
    p.add_argument("model", type=parse.text, help="a preset or an EMBEDDER+FUSION pair")
    p.add_argument("--size", choices=["base", "tiny"])
    p.add_argument("--image-size", type=parse.image_size,
                   help="HxW (default: the canonical input)")
    p.add_argument("--text-len", type=parse.positive_int)
    p.add_argument("--batch-size", type=parse.positive_int, default=1)
    p.add_argument("--head", action="store_true")
    p.add_argument("--region-backend", choices=["vlbench", "detectron2"],
                   help="a region detector on vlbench's own modules (default) or detectron2's")
    p.add_argument("--d2-config", type=parse.text, metavar="FILE",
                   help="with --region-backend detectron2: the user's detectron2 config")
    p.add_argument("--d2-weights", type=parse.text, metavar="FILE",
                   help="with --region-backend detectron2: the user's detectron2 checkpoint")
    p.add_argument("--format", choices=["table", "json"], default="table")


def _report(sub: argparse._SubParsersAction, plugin: argparse.ArgumentParser) -> None:
    p = sub.add_parser("report", parents=[plugin],
                       help="write a self-contained HTML (or markdown) report")
    p.add_argument("--run", nargs="+", type=parse.text, default=["latest"],
                   help="run id(s) (space- or comma-separated) or 'latest'")
    p.add_argument("--baseline", type=parse.text, help="compare with this run id")
    p.add_argument("--format", choices=["html", "markdown"], default="html")
    p.add_argument("--out", type=parse.text,
                   help="default reports/vlbench-run<ID>.html; '-': standard output")
    _db(p)


def _compare(sub: argparse._SubParsersAction, plugin: argparse.ArgumentParser) -> None:
    p = sub.add_parser("compare", parents=[plugin],
                       help="the regression gate: compare two runs (or an A/B run's sides) "
                       "per model and stage")
    p.add_argument("refs", nargs="+", type=parse.text, metavar="RUN",
                   help="BASELINE CURRENT: run ids, 'latest', ID:A / ID:B (a side of an "
                   "interleaved run) or exported FILE.json; one interleaved run id alone "
                   "compares its side A with its side B")
    p.add_argument("--threshold", type=parse.non_negative_float, default=0.10,
                   help="relative slowdown that counts (default 0.10 = 10%%)")
    p.add_argument("--alpha", type=parse.probability, default=0.01,
                   help="significance level (default 0.01)")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when any stage comparison is inconclusive")
    p.add_argument("--fail-on-flops-change", action="store_true",
                   help="exit 1 when parameters, FLOPs or workload differ")
    p.add_argument("--run-noise", type=parse.non_negative_float, metavar="FRACTION",
                   help="separate runs: run-to-run drift (standard deviation, e.g. 0.05); "
                   "default: estimated from 3+ other runs of the same cases in the store")
    p.add_argument("--format", choices=["table", "markdown", "json"], default="table")
    p.add_argument("--markdown", type=parse.text, metavar="FILE",
                   help="also write a markdown summary here (e.g. $GITHUB_STEP_SUMMARY)")
    _db(p)


def _export(sub: argparse._SubParsersAction, plugin: argparse.ArgumentParser) -> None:
    p = sub.add_parser("export", parents=[plugin], help="export stored runs as JSON or CSV")
    p.add_argument("--run", nargs="+", type=parse.text, default=["latest"],
                   help="run id(s) (space- or comma-separated) or 'latest' (default)")
    p.add_argument("--format", choices=["json", "csv"], default="json")
    p.add_argument("--out", type=parse.text,
                   help="write to this file instead of standard output ('-': standard output)")
    _db(p)
