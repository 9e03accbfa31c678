"""The ``vlbench`` command on bad input and failing cases: one line and exit 2 that changes
nothing, and a failing case stored while the others still run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from cli_helpers import (
    FAST,
    assert_one_line_error,
    cli,
    quiet_main,
    snapshot,
    tiny_run,
)

import vlbench.context
from vlbench.store import Store

# -- bad input ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_input_store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A store with one finished run and a foreign file, plus their contents beforehand."""
    base = tmp_path_factory.mktemp("bad")
    db = base / "results.sqlite"
    code, _, err = quiet_main(*tiny_run(db, models=("vilt-b32-tiny",)))
    assert code == 0, err
    foreign = base / "foreign.bin"
    foreign.write_bytes(os.urandom(4096))
    suite = base / "broken.yaml"
    suite.write_text("models: [vilt-b32-tiny]\nprecisions: [fp64]\n")
    return {"db": db, "foreign": foreign, "suite": suite, "snapshot": snapshot(db),
            "foreign_bytes": foreign.read_bytes()}


VILT = ("--models", "vilt-b32-tiny", *FAST)
BAD_INPUT = {
    "unknown-model": (["run", "--models", "nope", *FAST], ["unknown model 'nope'", "vilt-b32"]),
    "unknown-model-in-list": (
        ["run", "--models", "vilt-b32-tiny,nope", *FAST], ["'nope'", "clip-vit-b16"]
    ),
    "empty-model-list": (["run", "--models", ",", *FAST], ["comma-separated"]),
    "unknown-suite": (["run", "--suite", "nope", *VILT], ["unknown suite 'nope'", "latency"]),
    "bad-suite-file": (["run", "--suite", "{suite}", *VILT], ["fp64", "broken.yaml"]),
    "profile-unknown-model": (["profile", "nope"], ["unknown model 'nope'", "vilt-b32"]),
    "malformed-image-size": (
        ["run", *VILT, "--image-size", "384by640"], ["HEIGHTxWIDTH", "384by640"]
    ),
    "profile-malformed-image-size": (
        ["profile", "vilt-b32", "--image-size", "384by640"], ["HEIGHTxWIDTH"]
    ),
    "batch-sizes-not-int": (["run", *VILT, "--batch-sizes", "1,x"], ["--batch-sizes", "'1,x'"]),
    "batch-sizes-zero": (["run", *VILT, "--batch-sizes", "0"], ["--batch-sizes", "positive"]),
    "unknown-precision": (["run", *VILT, "--precisions", "fp8"], ["unknown precision 'fp8'"]),
    "text-len-zero": (["run", *VILT, "--text-len", "0"], ["--text-len"]),
    "text-len-not-int": (["run", *VILT, "--text-len", "x"], ["--text-len", "'x'"]),
    "negative-warmup": (["run", *VILT, "--warmup", "-1"], ["warmup"]),
    "unknown-device": (["run", *VILT, "--device", "tpu"], ["unknown device 'tpu'"]),
    "profile-no-head": (["profile", "clip-vit-b32-tiny", "--head"], ["no task head"]),
    "profile-bad-format": (["profile", "vilt-b32", "--format", "xml"], ["'xml'"]),
    "export-unknown-run": (["export", "--run", "99"], ["no run 99", "available runs: 1"]),
    "export-bad-run-ref": (["export", "--run", "first"], ["'first'", "available runs: 1"]),
    "export-foreign-file": (["export", "--db", "{foreign}"], ["foreign.bin", "not"]),
    "run-into-foreign-file": (["run", *VILT, "--db", "{foreign}"], ["foreign.bin", "not"]),
    "export-csv-foreign-file": (
        ["export", "--db", "{foreign}", "--format", "csv"], ["foreign.bin"]
    ),
}


@pytest.mark.parametrize(("argv", "expected"), BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_bad_input_is_one_line_exit_2_and_changes_nothing(
    capsys: pytest.CaptureFixture[str],
    bad_input_store: dict[str, Any],
    argv: list[str],
    expected: list[str],
) -> None:
    paths = {k: str(bad_input_store[k]) for k in ("foreign", "suite")}
    args = [a.format(**paths) for a in argv]
    if args[0] != "profile" and "--db" not in args:
        args += ["--db", str(bad_input_store["db"])]
    code, out, err = cli(capsys, *args)
    assert_one_line_error(code, out, err, *expected)
    assert snapshot(bad_input_store["db"]) == bad_input_store["snapshot"]
    assert bad_input_store["foreign"].read_bytes() == bad_input_store["foreign_bytes"]


def test_export_without_a_store_creates_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    db = tmp_path / "absent.sqlite"
    code, out, err = cli(capsys, "export", "--db", db)
    assert_one_line_error(code, out, err, "no results database", str(db))
    assert list(tmp_path.iterdir()) == []


def test_db_that_is_a_directory_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = cli(capsys, "export", "--db", tmp_path)
    assert_one_line_error(code, out, err, str(tmp_path))
    code, out, err = cli(capsys, *tiny_run(tmp_path))
    assert_one_line_error(code, out, err, str(tmp_path))


def test_missing_subcommand_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys)
    assert_one_line_error(code, out, err, "command")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible here")
def test_run_on_cuda_without_a_gpu_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    db = tmp_path / "r.sqlite"
    code, out, err = cli(capsys, "run", "--models", "vilt-b32-tiny", "--device", "cuda",
                         "--no-progress", "--db", db)
    assert_one_line_error(code, out, err, "cuda", "--device cpu")
    assert not db.exists()


# -- failing cases ------------------------------------------------------------------------------


def _failing_build_model(monkeypatch: pytest.MonkeyPatch, fail: str, exc: BaseException) -> None:
    real = vlbench.context.build_model

    def build_model(preset, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        name = preset if isinstance(preset, str) else preset.name
        if name == fail:
            raise exc
        return real(preset, *args, **kwargs)

    monkeypatch.setattr(vlbench.context, "build_model", build_model)


@pytest.mark.parametrize(
    ("exc", "status", "message"),
    [
        (RuntimeError("injected failure"), "error", "RuntimeError: injected failure"),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"), "oom",
         "out of memory"),
        (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 TB"),
         "oom", "can't allocate memory"),
    ],
    ids=["error", "torch-oom", "cpu-allocator-oom"],
)
def test_a_failing_case_is_stored_and_the_others_still_run(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    exc: BaseException,
    status: str,
    message: str,
) -> None:
    _failing_build_model(monkeypatch, "vilt-b32-tiny", exc)
    db = tmp_path / "r.sqlite"
    code, out, err = cli(capsys, *tiny_run(db))
    assert code == 0, err  # one case failed, not all of them
    assert f"{status.upper()}: " in out
    with Store.open(db) as store:
        run = store.get_run(1)
        failed, ok = store.cases(1)
    assert run.status == "finished"
    assert (failed.spec.model, failed.status) == ("vilt-b32-tiny", status)
    assert message in failed.message
    assert failed.end_to_end is None
    assert (ok.spec.model, ok.status) == ("clip-vit-b32-tiny", "ok")
    assert ok.end_to_end is not None and ok.end_to_end.median_ms > 0
    _, exported, _ = cli(capsys, "export", "--db", db)
    rows = {c["model"]: c for c in json.loads(exported)["runs"][0]["cases"]}
    assert rows["vilt-b32-tiny"]["status"] == status
    assert message in rows["vilt-b32-tiny"]["message"]
    assert rows["vilt-b32-tiny"]["end_to_end"] is None
    assert rows["clip-vit-b32-tiny"]["status"] == "ok"


def test_when_every_case_fails_the_run_still_finishes_but_exits_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def broken(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("nothing builds")

    monkeypatch.setattr(vlbench.context, "build_model", broken)
    db = tmp_path / "r.sqlite"
    code, out, _ = cli(capsys, *tiny_run(db))
    assert code == 1
    assert out.count("ERROR: RuntimeError: nothing builds") == 2
    with Store.open(db) as store:
        assert store.get_run(1).status == "finished"
        assert [c.status for c in store.cases(1)] == ["error", "error"]
