"""Opening the results database for a command, with every way it can fail as one line."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ..store import Store, default_db_path
from .parsers import UsageError


def open_store(path: str | Path | None) -> Store:
    """Store.open, with an unusable path (a directory, no permission) as a one-line error."""
    try:
        return Store.open(path)
    except (OSError, sqlite3.Error) as exc:
        where = path if path is not None else default_db_path()
        raise UsageError(f"cannot open results database {where}: {exc}") from None


def existing_store(db: str | None) -> Path:
    """The path of a store a reading command needs: it must exist (reading never creates)."""
    path = Path(db) if db else default_db_path()
    if not path.exists():
        raise UsageError(f"no results database at {path}; run 'vlbench run' first or pass --db")
    return path
