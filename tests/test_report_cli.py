"""`vlbench report` and `vlbench run --report` as a user runs them, bad input included."""

from __future__ import annotations

import pytest

from vlbench import cli
from vlbench.store import Store

FAST = ["--repeats", "2", "--min-time", "0", "--warmup", "1", "--no-progress"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two tiny runs of different models, the second with --report (cwd: a temp dir)."""
    root = tmp_path_factory.mktemp("reportcli")
    db = root / "r.sqlite"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        assert cli.main(["run", "--models", "vilt-b32-tiny", "--db", str(db), *FAST]) == 0
        assert cli.main(["run", "--models", "clip-vit-b32-tiny", "--db", str(db), "--report",
                         *FAST]) == 0
    return root, db


def test_run_report_writes_under_reports(two_runs):
    root, _ = two_runs
    written = sorted((root / "reports").glob("*.html"))
    assert [p.name for p in written] == ["vlbench-run2.html"]
    html = written[0].read_text()
    assert "clip-vit-b32-tiny" in html
    assert "% of peak" in html  # achieved share of the run's measured matmul peak, per stage


def test_report_of_several_runs_and_markdown(two_runs, tmp_path, capsys):
    _, db = two_runs
    out = tmp_path / "both.html"
    assert cli.main(["report", "--run", "1", "2", "--db", str(db), "--out", str(out)]) == 0
    html = out.read_text()
    assert "vilt-b32-tiny" in html and "clip-vit-b32-tiny" in html
    assert str(out) in capsys.readouterr().err
    md = tmp_path / "r.md"
    assert cli.main(["report", "--run", "1", "--format", "markdown", "--db", str(db),
                     "--out", str(md)]) == 0
    assert "vilt-b32-tiny" in md.read_text()


@pytest.mark.parametrize("args", [
    ["--run", "99"],  # no such run
    ["--run", "1", "--baseline", "2"],  # no cases in common
])
def test_bad_report_input_is_one_line_and_leaves_no_file(two_runs, tmp_path, capsys, args):
    _, db = two_runs
    out = tmp_path / "r.html"
    assert cli.main(["report", *args, "--db", str(db), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vlbench: error:")
    assert not out.exists()
    assert not list(tmp_path.iterdir())  # no partial or temporary file either


def test_report_of_an_empty_store_is_one_line(tmp_path, capsys):
    db = tmp_path / "empty.sqlite"
    Store.open(db).close()
    assert cli.main(["report", "--db", str(db), "--out", str(tmp_path / "x.html")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "empty" in err[0]
