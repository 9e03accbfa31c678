"""The ``vlbench`` command: list, run, profile, report, compare, export.

Each subcommand is one function in one module of this package, imported only when that command
runs (start-up laziness: ``vlbench export`` or a bad flag never waits for torch). Bad input
(unknown names, malformed values, a file that is not a store) ends with a one-line
``vlbench: error: ...`` and exit status 2.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from ..plugins import load_plugins
from ..store_schema import NotAStoreError
from .parsers import UsageError, build_parser
from .run_options import NO_ISOLATION_ENV, expand_rounds

EXIT_BAD_INPUT = 2
#: command -> (module of this package, function): imported when the command runs
HANDLERS = {"list": ("info", "cmd_list"), "profile": ("info", "cmd_profile"),
            "run": ("run", "cmd_run"), "report": ("read", "cmd_report"),
            "compare": ("read", "cmd_compare"), "export": ("read", "cmd_export")}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        args.argv = ["vlbench", *argv]  # recorded with a run: the command that reproduces it
        load_plugins(args.plugins)
        module, name = HANDLERS[args.command]
        # start-up laziness: a command imports torch and the model packages only if it needs
        handler = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        return handler(args)
    except BrokenPipeError:  # `vlbench ... | head`: the reader left, nothing to report
        sys.stderr.close()
        return 0
    except (UsageError, NotAStoreError, KeyError, ValueError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"vlbench: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT


__all__ = ["EXIT_BAD_INPUT", "NO_ISOLATION_ENV", "UsageError", "expand_rounds", "main"]
