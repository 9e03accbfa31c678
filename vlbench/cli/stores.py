"""Opening the results database for a command, with every way it can fail as one line."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from ..store import Store, default_db_path
from .parsers import UsageError


def open_store(path: str | Path | None, *, read_only: bool = False) -> Store:
    """Store.open, with an unusable path (a directory, no permission) as a one-line error."""
    try:
        return Store.open(path, read_only=read_only)
    except (OSError, sqlite3.Error) as exc:
        where = path if path is not None else default_db_path()
        raise UsageError(f"cannot open results database {where}: {exc}") from None


def existing_store(db: str | None) -> Path:
    """The path of a store a reading command needs: it must exist (reading never creates)."""
    path = Path(db) if db else default_db_path()
    if not path.exists():
        raise UsageError(f"no results database at {path}; run 'vlbench run' first or pass --db")
    return path


def open_existing(db: str | None) -> Store:
    """The store a reading command reads: it must exist; one that this process cannot write
    (read-only media, another user's file) is opened read-only rather than refused."""
    path = existing_store(db)
    writable = os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)
    return open_store(path, read_only=not writable)
