"""The environment record must be complete, serialisable and truthful about the checkout."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from vlbench.env import (
    cgroup_cpu_quota,
    collect_environment,
    cuda_info,
    git_state,
    nvidia_smi,
    parse_cpu_max,
)

KEYS = {
    "timestamp_utc",
    "python_version",
    "python_executable",
    "platform",
    "hostname",
    "pid",
    "cpu_model",
    "cpu_count",
    "cpu_affinity",
    "cpu_governor",
    "cgroup_cpu_quota",
    "torch_num_threads",
    "torch_num_interop_threads",
    "versions",
    "torch_config",
    "torch_cpu_capability",
    "device",
    "cuda",
    "git_commit",
    "git_dirty",
    "argv",
    "command",
}

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")


def _git(repo: Path, *args: str) -> str:
    cmd = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    cmd += ["-c", "commit.gpgsign=false", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def test_cpu_record_has_documented_keys_and_true_values(tmp_path: Path) -> None:
    argv = ["vlbench", "run", "--model", "vilt b32", "--device", "cpu"]
    env = collect_environment("cpu", project_dir=tmp_path, argv=argv)
    assert set(env) == KEYS
    json.loads(json.dumps(env))  # must be serialisable without a custom encoder
    assert env["versions"]["torch"] == torch.__version__
    assert env["torch_num_threads"] == torch.get_num_threads()
    assert env["torch_num_interop_threads"] == torch.get_num_interop_threads()
    assert env["argv"] == argv
    assert env["command"] == "vlbench run --model 'vilt b32' --device cpu"
    assert env["device"] == "cpu" and env["cuda"] is None
    assert (env["git_commit"], env["git_dirty"]) == (None, None)  # tmp_path is no checkout
    assert env["timestamp_utc"].endswith("+00:00")
    assert isinstance(env["torch_config"], str) and "PyTorch" in env["torch_config"]


def test_versions_lookup_reports_missing_package_as_none(monkeypatch: pytest.MonkeyPatch) -> None:
    import vlbench.env as env_mod

    monkeypatch.setattr(env_mod, "PACKAGES", ("torch", "surely-not-installed-pkg"))
    versions = collect_environment("cpu", argv=[])["versions"]
    assert versions == {"torch": torch.__version__, "surely-not-installed-pkg": None}


def test_failing_probe_yields_none(monkeypatch: pytest.MonkeyPatch) -> None:
    import vlbench.env as env_mod

    def boom() -> str:
        raise RuntimeError("no cpuinfo")

    monkeypatch.setattr(env_mod, "cpu_model", boom)
    assert collect_environment("cpu", argv=[])["cpu_model"] is None


def test_argv_defaults_to_sys_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.argv", ["prog", "a b"])
    env = collect_environment("cpu")
    assert env["argv"] == ["prog", "a b"] and env["command"] == "prog 'a b'"


@needs_git
def test_git_state_tracks_commit_and_dirtiness(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("one\n")
    _git(tmp_path, "add", "a.txt")
    _git(tmp_path, "commit", "-q", "-m", "first")
    sha = _git(tmp_path, "rev-parse", "HEAD")
    assert len(sha) == 40
    assert git_state(tmp_path) == (sha, False)
    (tmp_path / "untracked.txt").write_text("new\n")
    assert git_state(tmp_path) == (sha, True)
    env = collect_environment("cpu", project_dir=tmp_path, argv=[])
    assert (env["git_commit"], env["git_dirty"]) == (sha, True)


@needs_git
def test_git_state_outside_a_checkout(tmp_path: Path) -> None:
    assert git_state(tmp_path) == (None, None)


def test_git_state_on_missing_directory(tmp_path: Path) -> None:
    assert git_state(tmp_path / "does-not-exist") == (None, None)


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("max 100000", None), ("200000 100000", 2.0), ("150000 100000\n", 1.5), ("max", None)],
)
def test_parse_cpu_max(text: str, cpus: float | None) -> None:
    assert parse_cpu_max(text) == cpus


def test_cgroup_quota_v2_and_v1_layouts(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("50000 100000\n")
    assert cgroup_cpu_quota(v2) == 0.5

    v1 = tmp_path / "v1" / "cpu,cpuacct"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("400000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(tmp_path / "v1") == 4.0
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")  # v1 spelling of unlimited
    assert cgroup_cpu_quota(tmp_path / "v1") is None

    assert cgroup_cpu_quota(tmp_path / "empty") is None


def _fake_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, output: str) -> None:
    script = tmp_path / "nvidia-smi"
    script.write_text(f"#!/bin/sh\nprintf '{output}'\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))


def test_nvidia_smi_parses_driver_clocks_and_power(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_nvidia_smi(tmp_path, monkeypatch, "550.54.15, 1980, 1755, 700.00\\n")
    assert nvidia_smi("0") == {
        "driver_version": "550.54.15",
        "clocks_max_sm_mhz": 1980.0,
        "clocks_sm_mhz": 1755.0,
        "power_limit_w": 700.0,
    }


def test_nvidia_smi_unreported_field_is_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_nvidia_smi(tmp_path, monkeypatch, "550.54.15, 1980, 1755, [N/A]\\n")
    assert nvidia_smi("0")["power_limit_w"] is None


def test_nvidia_smi_missing_gives_all_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # empty directory: no nvidia-smi
    assert set(nvidia_smi("0").values()) == {None}


def test_cuda_info_none_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cuda_info("cuda:0") is None
    assert collect_environment("cuda", argv=[])["cuda"] is None
    assert cuda_info("cpu") is None
