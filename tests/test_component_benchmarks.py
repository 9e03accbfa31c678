"""The pytest-benchmark component benchmarks under ``benchmarks/``, run as a user runs them.

Each check reads a pytest run in a subprocess from the repository root: the benchmarks bring
their own conftest (options, parametrisation, machine info), and the default test run must never
collect them. The runs start two at a time, since each spends seconds importing torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from architectures import build_model, resolve_preset

ROOT = Path(__file__).resolve().parents[1]
BENCH = "benchmarks/test_components.py"
MODELS = ("vilt-b32", "uniter-base")


def pytest_run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", *args, "-p", "no:cacheprovider"],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


Runs = dict[str, "Future[subprocess.CompletedProcess[str]]"]


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("benchmarks")


@pytest.fixture(scope="module")
def runs(out_dir: Path) -> Iterator[Runs]:
    models = ",".join(MODELS)
    commands = {
        "collect": (BENCH, "--collect-only", "-q", "--vlbench-models", models),
        "disabled": (BENCH, "--benchmark-disable", "--vlbench-models", models, "-q"),
        # vilt-b32 whole; of ViLBERT's fusion (without its detector) the co-attention blocks
        "json": (BENCH, "--benchmark-json", str(out_dir / "out.json"),
                 "--benchmark-min-rounds", "2", "--benchmark-max-time", "0.01",
                 "--vlbench-models", "vilt-b32,vilbert-base-precomputed",
                 "-k", "vilt-b32 or co_attention", "-q"),
        "unknown": (BENCH, "--collect-only", "-q", "--vlbench-models", "vilt-b32,nope"),
        # collection errors elsewhere must not hide the answer
        "default": ("--collect-only", "-q", "--continue-on-collection-errors"),
    }
    with ThreadPoolExecutor(max_workers=2) as pool:  # two at a time: torch imports overlap
        yield {name: pool.submit(pytest_run, *args) for name, args in commands.items()}


def result(runs: Runs, name: str, *, ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = runs[name].result()
    if ok:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def node_ids(output: str) -> list[str]:
    return [line.strip() for line in output.splitlines() if "::" in line]


def expected_ids(name: str) -> list[str]:
    """One benchmark per declared stage, then end to end, named by the resolved tiny preset."""
    preset = resolve_preset(name, "tiny")
    stages = [s.name for s in build_model(preset).stages()]
    return ([f"{BENCH}::test_stage[{preset.name}:{s}]" for s in stages]
            + [f"{BENCH}::test_end_to_end[{preset.name}]"])


def test_one_benchmark_per_stage_plus_end_to_end(runs: Runs) -> None:
    expected = [i for name in MODELS for i in expected_ids(name)]
    # a model's benchmarks run together, so one built model is held at a time
    assert node_ids(result(runs, "collect").stdout) == expected
    assert len(expected) == sum(len(build_model(resolve_preset(m, "tiny")).stages()) + 1
                                for m in MODELS)


def test_benchmarks_pass_when_disabled(runs: Runs) -> None:
    """The test-run mode: each benchmark calls its stage once on the captured inputs."""
    count = sum(len(expected_ids(m)) for m in MODELS)
    assert f"{count} passed" in result(runs, "disabled").stdout


def test_json_carries_machine_info_and_stage_names(runs: Runs, out_dir: Path) -> None:
    result(runs, "json")
    data = json.loads((out_dir / "out.json").read_text())
    info = data["machine_info"]
    assert info["torch_version"] == torch.__version__
    assert info["versions"]["torchvision"] is not None
    assert info["torch_num_threads"] >= 1
    assert info["precision"]["precision"] == "fp32"
    assert info["vlbench"] == {"size": "tiny", "device": info["vlbench"]["device"]}
    assert (info["gpu"] is None) == (info["vlbench"]["device"] == "cpu")

    stages = [s.name for s in build_model(resolve_preset("vilt-b32", "tiny")).stages()]
    benches = [b for b in data["benchmarks"] if b["group"] == "vilt-b32-tiny"]
    assert [b["extra_info"]["stage"] for b in benches] == [*stages, "end_to_end"]
    for bench in benches:
        assert bench["extra_info"]["model"] == "vilt-b32-tiny"
        assert bench["extra_info"]["calls"] == 1
        assert bench["extra_info"]["flops_per_forward"] >= 0  # a lookup counts no FLOPs
        assert bench["stats"]["rounds"] >= 2
    flops = {b["extra_info"]["stage"]: b["extra_info"]["flops_per_forward"] for b in benches}
    assert flops["end_to_end"] == flops["visual"] + flops["text"] + flops["fusion"] > 0


def test_two_stream_stage_records_its_calls_per_forward(runs: Runs, out_dir: Path) -> None:
    """ViLBERT's co-attention blocks run between its single-stream layer groups: the benchmark
    times the first call and says how many there are."""
    result(runs, "json")
    data = json.loads((out_dir / "out.json").read_text())
    (bench,) = [b for b in data["benchmarks"] if b["group"] == "vilbert-base-precomputed-tiny"]
    assert bench["extra_info"]["stage"] == "fusion.co_attention"
    assert bench["extra_info"]["calls"] > 1
    assert bench["extra_info"]["timed_call"].startswith("first of")


def test_unknown_model_is_a_usage_error_listing_names(runs: Runs) -> None:
    done = result(runs, "unknown", ok=False)
    assert done.returncode == pytest.ExitCode.USAGE_ERROR
    assert "unknown model 'nope'" in done.stderr and "vilt-b32" in done.stderr


def test_default_run_does_not_collect_benchmarks(runs: Runs) -> None:
    """``testpaths = tests``: measurements never run as part of the test suite."""
    done = result(runs, "default", ok=False)
    ids = node_ids(done.stdout)
    assert any(i.startswith("tests/") for i in ids), done.stdout + done.stderr
    assert not [i for i in ids if i.startswith("benchmarks/")]
