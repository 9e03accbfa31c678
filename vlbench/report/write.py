"""Where a report goes and how it is written: to a temporary sibling, then renamed, so a failure
leaves no partial report (and keeps an older one intact)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Literal

from vlbench.report.data import collect
from vlbench.report.html import render_html
from vlbench.report.markdown import markdown_from_data
from vlbench.store import Store

REPORTS_DIR = Path("reports")


def default_path(run_ids: list[int], fmt: str) -> Path:
    suffix = "md" if fmt == "markdown" else "html"
    return REPORTS_DIR / f"vlbench-run{'-'.join(str(i) for i in run_ids)}.{suffix}"


def write_atomic(path: Path, chunks: Iterable[str]) -> None:
    """Write via a temporary file in the same directory and ``os.replace``: all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a report is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_report(
    store: Store,
    run_ids: list[int],
    *,
    baseline: int | None = None,
    out: Path | None = None,
    fmt: Literal["html", "markdown"] = "html",
    command: str = "",
) -> Path:
    """Write the report of ``run_ids`` (with a ``baseline`` comparison) and return its path.

    Default path: ``reports/vlbench-run<ID>.html`` (``.md`` for markdown) under the current
    directory. Raises KeyError (the store's UnknownRunError) for an unknown run and ValueError
    for a baseline with no cases in common or an unknown format.
    """
    path = Path(out) if out is not None else default_path(run_ids, fmt)
    write_atomic(path, render_report(store, run_ids, baseline=baseline, fmt=fmt,
                                     command=command))
    return path


def render_report(store: Store, run_ids: list[int], *, baseline: int | None = None,
                  fmt: Literal["html", "markdown"] = "html", command: str = "") -> Iterator[str]:
    """The report's text in chunks (``write_report`` writes them to a file; ``vlbench report
    --out -`` to standard output). The data is collected before the first chunk."""
    if fmt not in ("html", "markdown"):
        raise ValueError(f"unknown report format {fmt!r}; valid: html, markdown")
    data = collect(store, run_ids, baseline)
    if fmt == "markdown":
        return iter([markdown_from_data(data, command)])
    return iter(render_html(data, command))
