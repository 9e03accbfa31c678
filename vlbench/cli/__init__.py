"""The ``vlbench`` command: list, run, profile, report, compare, export.

Each subcommand is one function in one module of this package, imported only when that command
runs (start-up laziness: ``vlbench export`` or a bad flag never waits for torch; ``vlbench run``
checks everything that needs no model code first, ``run_checks``). Importing this package loads
the standard library only, so that a Ctrl-C however early is handled here. Bad input (unknown
names, malformed values, a file that is not a store) ends with a one-line ``vlbench: error: ...``
and exit status 2; a file or database the system refuses (a full disk, no permission) likewise;
Ctrl-C at any moment ends with one line and exit status 130. A traceback means a bug in vlbench.
"""

from __future__ import annotations

import contextlib
import importlib
import sqlite3
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from ..interrupts import EXIT_INTERRUPTED, watch

EXIT_BAD_INPUT = 2
#: command -> (module of this package, function): imported when the command runs
HANDLERS = {"list": ("info", "cmd_list"), "profile": ("info", "cmd_profile"),
            "run": ("run", "cmd_run"), "report": ("read", "cmd_report"),
            "compare": ("read", "cmd_compare"), "export": ("read", "cmd_export")}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        with watch(), _one_line_warnings():
            return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C before a run exists (a run says more, vlbench.session)
        print("vlbench: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _main(argv: list[str]) -> int:
    from ..plugins import load_plugins
    from ..store import default_db_path
    from ..store_schema import NotAStoreError
    from .parsers import UsageError, build_parser

    args = None
    try:
        args = build_parser().parse_args(argv)
        args.argv = ["vlbench", *argv]  # recorded with a run: the command that reproduces it
        if args.command == "run":
            from .run_checks import check_run

            check_run(args)  # before torch: what needs no model code
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
        return _error(message)
    except OSError as exc:  # a file the system refuses: no space, no permission, read-only
        where = f" ({exc.filename})" if exc.filename else ""
        return _error(f"{exc.strerror or exc}{where}")
    except sqlite3.Error as exc:  # a damaged file, or a full disk before a run exists
        return _error(f"results database {getattr(args, 'db', None) or default_db_path()}: "
                      f"{exc}")


def _error(message: object) -> int:
    text = " ".join(str(message).split()) or "unknown error"
    print(f"vlbench: error: {text}", file=sys.stderr)
    return EXIT_BAD_INPUT


@contextlib.contextmanager
def _one_line_warnings() -> Iterator[None]:
    """vlbench's own warnings (a damaged record read as an error, a store migration that kept a
    row) as one line each: ``vlbench: warning: ...``."""
    from ..records import VlbenchWarning

    previous = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: Any = None, line: str | None = None) -> None:
        if issubclass(category, VlbenchWarning):
            print(f"vlbench: warning: {' '.join(str(message).split())}", file=sys.stderr)
        else:
            previous(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


def __getattr__(name: str) -> Any:
    """The names this package has always offered, loaded on first use (importing the package
    stays light)."""
    if name in ("NO_ISOLATION_ENV", "expand_rounds"):
        from . import run_options

        return getattr(run_options, name)
    if name == "UsageError":
        from .parsers import UsageError

        return UsageError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["EXIT_BAD_INPUT", "NO_ISOLATION_ENV", "UsageError", "expand_rounds", "main"]
