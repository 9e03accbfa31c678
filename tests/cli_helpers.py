"""What the command-line tests share: running ``vlbench`` in-process, the tiny presets and fast
timing flags, reading a store back, and the one-line error check."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from vlbench.cli import main
from vlbench.export import export_json
from vlbench.store import Store

REPO = Path(__file__).resolve().parents[1]
TINY = ("vilt-b32-tiny", "clip-vit-b32-tiny")
FAST = ("--warmup", "1", "--repeats", "2", "--min-time", "0", "--no-progress", "--device", "cpu")


def cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    """Run ``vlbench ARGV`` in-process: (exit status, stdout, stderr)."""
    capsys.readouterr()  # drop anything printed before
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def quiet_main(*argv: object) -> tuple[int, str, str]:
    """``main`` for module-scoped fixtures, where capsys is not available."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def tiny_run(db: Path, *extra: object, models: tuple[str, ...] = TINY) -> list[object]:
    return ["run", "--models", ",".join(models), *FAST, "--db", db, *extra]


def snapshot(db: Path) -> str:
    """Everything the store holds, as the export sees it."""
    with Store.open(db) as store:
        return json.dumps(export_json(store, store.run_ids()), sort_keys=True)


def table_rows(out: str, models: tuple[str, ...] = TINY) -> list[list[str]]:
    return [line.split() for line in out.splitlines() if line.split()[:1] in ([m] for m in models)]


def assert_one_line_error(code: int, out: str, err: str, *expected: str) -> None:
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("vlbench: error: ")
    for text in expected:
        assert text in lines[0]
