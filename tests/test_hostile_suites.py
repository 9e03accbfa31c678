"""Hostile suite files (``vlbench run --suite FILE``): bounded before anything walks them (size,
nesting, alias expansion) and checked value by value as the flags' values are. Each is one line
naming the file, exit status 2, the store unchanged, and no torch: every command line here runs
in one fresh interpreter."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from hostile import assert_one_line, run_fresh, state, synthetic_store

from vlbench.machine import usable_cores
from vlbench.suite_file import MAX_BYTES
from vlbench.suites import SuiteError, load_suite

MODEL = "models: [vilt-b32-tiny]\n"
#: under 400 bytes that expand to 9^9 values when walked (the issue's 370-byte file)
ALIAS_BOMB = "\n".join(
    ["a: &a [x,x,x,x,x,x,x,x,x]"]
    + [f"{n}: &{n} [{','.join([f'*{p}'] * 9)}]"
       for p, n in zip("abcdefgh", "bcdefghi", strict=True)]
    + ["models: [*i]"]) + "\n"
DEEP_THROUGH_ALIASES = "".join(
    f"l{i}: &l{i} [[[[{'*l' + str(i - 1) if i else 'x'}]]]]\n" for i in range(6)) + MODEL

#: a suite file's contents (text or bytes) -> what the one line must contain besides its name
SUITES: dict[str, tuple[str | bytes, list[str]]] = {
    "alias-bomb": (ALIAS_BOMB, ["expands to more than"]),
    "deep-nesting": ("models: " + "[" * 5000 + "]" * 5000 + "\n", ["nested more than"]),
    "deep-through-aliases": (DEEP_THROUGH_ALIASES, ["nested more than", "aliases"]),
    "recursive-alias": ("models: &m [vilt-b32-tiny, *m]\n", ["recursive"]),
    "too-large": ("#" + "x" * MAX_BYTES + "\n" + MODEL, ["larger than"]),
    "binary": (bytes(range(256)) * 4, ["not a text file"]),
    "latin-1": ((MODEL + "description: caf\xe9\n").encode("latin-1"), ["not a text file"]),
    "empty": ("", ["expected a mapping"]),
    "not-yaml": ("models: [vilt\n", ["not valid YAML"]),
    "a-scalar": ("vilt-b32-tiny\n", ["expected a mapping"]),
    "models-empty": ("models: []\n", ["non-empty"]),
    "models-scalar": ("models: vilt-b32-tiny\n", ["'models' must be a list"]),
    "unknown-key": (MODEL + "repeats: 3\n", ["unknown key", "repeats"]),
    "min-repeats-fraction": (MODEL + "timing: {min_repeats: 2.5}\n", ["min_repeats", "2.5"]),
    "warmup-nan": (MODEL + "timing: {warmup: .nan}\n", ["warmup", "nan"]),
    "warmup-inf": (MODEL + "timing: {warmup: .inf}\n", ["warmup", "inf"]),
    "warmup-bool": (MODEL + "timing: {warmup: yes}\n", ["warmup", "True"]),
    "min-time-nan": (MODEL + "timing: {min_time_s: .nan}\n", ["min_time_s", "finite"]),
    "min-time-empty": (MODEL + "timing: {min_time_s: ''}\n", ["min_time_s"]),
    "max-time-inf": (MODEL + "timing: {max_time_s: .inf}\n", ["max_time_s", "finite"]),
    "max-time-zero": (MODEL + "timing: {max_time_s: 0}\n", ["max_time_s", "positive"]),
    "share-nan": (MODEL + "timing: {cpu_share_above_s: .nan}\n", ["cpu_share_above_s"]),
    "timing-unknown": (MODEL + "timing: {repeats: 3}\n", ["unknown key", "repeats"]),
    "timing-list": (MODEL + "timing: [1]\n", ["'timing' must be a mapping"]),
    "text-len-fraction": ("models: [{model: vilt-b32-tiny, text_len: 2.5}]\n", ["text_len"]),
    "text-len-nan": ("models: [{model: vilt-b32-tiny, text_len: .nan}]\n", ["text_len"]),
    "image-size-nan": ("models: [{model: vilt-b32-tiny, image_size: .nan}]\n",
                       ["HEIGHTxWIDTH"]),
    "image-size-fraction": ("models: [{model: vilt-b32-tiny, image_size: 64.5x96}]\n",
                            ["HEIGHTxWIDTH"]),
    "image-size-empty": ("models: [{model: vilt-b32-tiny, image_size: ''}]\n", ["HEIGHTxWIDTH"]),
    "batch-sizes-inf": (MODEL + "batch_sizes: [.inf]\n", ["batch_sizes"]),
    "batch-sizes-fraction": (MODEL + "batch_sizes: [1.5]\n", ["batch_sizes"]),
    "batch-sizes-empty-list": (MODEL + "batch_sizes: []\n", ["batch_sizes"]),
    "batch-sizes-empty-string": (MODEL + "batch_sizes: ''\n", ["batch_sizes"]),
    "double-from-inf": (MODEL + "batch_sizes: {double_from: 1, max: .inf}\n", ["max"]),
    "double-from-fraction": (MODEL + "batch_sizes: {double_from: 0.5, max: 4}\n",
                             ["double_from"]),
    "threads-fraction": (MODEL + "threads: [1, 2.5]\n", ["threads"]),
    "threads-zero": (MODEL + "threads: [0]\n", ["threads"]),
    "threads-nan": (MODEL + "threads: [.nan]\n", ["threads"]),
    "threads-beyond-cores": (MODEL + f"threads: [1, {usable_cores() + 1}]\n",
                             ["'threads'", "usable core"]),
    "precisions-nan": (MODEL + "precisions: [.nan]\n", ["unknown precision"]),
    "modes-empty": (MODEL + "modes: []\n", ["mode"]),
    "tasks-number": (MODEL + "tasks: [1]\n", ["tasks"]),
    "sweep-one-value": ("models: [{model: vilt-b32-tiny, sweep: {text_len: [8]}}]\n",
                        ["sweep"]),
}


@pytest.fixture(scope="module")
def refused(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every bad suite through ``vlbench run --suite``, in one fresh interpreter."""
    base = tmp_path_factory.mktemp("suites")
    db = synthetic_store(base / "results.sqlite")
    argvs = []
    for name, (content, _) in SUITES.items():
        path = base / f"{name}.yaml"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        argvs.append(["run", "--suite", str(path), "--no-progress", "--device", "cpu",
                      "--db", str(db)])
    before = state(db)
    began = time.perf_counter()
    results, torch_loaded = run_fresh(argvs, base)
    return {"results": dict(zip(SUITES, results, strict=True)), "torch": torch_loaded,
            "unchanged": state(db) == before, "seconds": time.perf_counter() - began}


@pytest.mark.parametrize("name", SUITES)
def test_bad_suite_file_is_one_line_naming_it(refused: dict[str, Any], name: str) -> None:
    code, out, err = refused["results"][name]
    assert_one_line(code, err, name, *SUITES[name][1])
    assert out == ""


def test_bad_suites_are_refused_fast_without_torch_and_change_nothing(
        refused: dict[str, Any]) -> None:
    assert refused["torch"] is False
    assert refused["unchanged"]
    assert refused["seconds"] < 120  # the alias bomb alone took 114 s and 4 GB before


def test_the_alias_bomb_is_refused_in_milliseconds(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(ALIAS_BOMB)
    assert len(path.read_bytes()) < 400
    began = time.perf_counter()
    with pytest.raises(SuiteError, match="expands to more than 100,000 values"):
        load_suite(str(path))
    assert time.perf_counter() - began < 2.0


def test_aliases_within_the_bounds_still_load(tmp_path: Path) -> None:
    path = tmp_path / "aliases.yaml"
    path.write_text("models: &m [vilt-b32-tiny, clip-vit-b32-tiny]\n"
                    "timing: &t {warmup: 1, min_repeats: 2}\n")
    suite = load_suite(str(path))
    assert [e.model for e in suite.models] == ["vilt-b32-tiny", "clip-vit-b32-tiny"]
    assert suite.timing == {"warmup": 1, "min_repeats": 2}
