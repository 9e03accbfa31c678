"""The machine a run measured on, recorded next to its numbers.

Timings are meaningless without the context that shapes them: thread counts, CPU quota and
frequency governor, library versions, GPU clocks and the exact code revision. Every probe fails
soft (``None``) because a missing file or tool must never cost a benchmark run.

Keys of :func:`collect_environment`: ``timestamp_utc``, ``python_version``,
``python_executable``, ``platform``, ``hostname``, ``pid``, ``cpu_model``, ``cpu_count``,
``cpu_affinity``, ``cpu_governor``, ``cgroup_cpu_quota``, ``torch_num_threads``,
``torch_num_interop_threads``, ``versions``, ``torch_config``, ``torch_cpu_capability``,
``device``, ``cuda``, ``git_commit``, ``git_dirty``, ``argv``, ``command``.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shlex
import socket
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

#: Distributions whose versions change results; looked up without importing them.
PACKAGES = ("torch", "torchvision", "timm", "transformers", "numpy", "pandas", "scipy")

_REPO_DIR = Path(__file__).resolve().parents[1]
_TIMEOUT_S = 10


def collect_environment(
    device: str, project_dir: Path | None = None, argv: list[str] | None = None
) -> dict[str, Any]:
    """JSON-serialisable description of this machine, process and checkout."""
    argv = list(sys.argv if argv is None else argv)
    commit, dirty = git_state(project_dir if project_dir is not None else _REPO_DIR)
    return {
        "timestamp_utc": datetime.now(UTC).isoformat(),
        "python_version": platform.python_version(),
        "python_executable": sys.executable,
        "platform": _soft(platform.platform),
        "hostname": _soft(socket.gethostname),
        "pid": os.getpid(),
        "cpu_model": _soft(cpu_model),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": _soft(lambda: len(os.sched_getaffinity(0))),
        "cpu_governor": _soft(_read_governor),
        "cgroup_cpu_quota": _soft(cgroup_cpu_quota),
        "torch_num_threads": _soft(_torch_threads),
        "torch_num_interop_threads": _soft(_torch_interop_threads),
        "versions": _versions(),
        "torch_config": _soft(_torch_config),
        "torch_cpu_capability": _soft(_torch_cpu_capability),
        "device": device,
        "cuda": _soft(lambda: cuda_info(device)),
        "git_commit": commit,
        "git_dirty": dirty,
        "argv": argv,
        "command": shlex.join(argv),
    }


def _soft(probe: Callable[[], T]) -> T | None:
    """Run one probe; any failure becomes None so the record is still written."""
    try:
        return probe()
    except Exception:  # noqa: BLE001 - a probe must never abort a run
        return None


def package_version(name: str) -> str | None:
    """Installed version of a distribution, None when absent."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _versions() -> dict[str, str | None]:
    """Package versions; torch's own string keeps the build tag (+cu130, +cpu) metadata drops."""
    versions = {name: package_version(name) for name in PACKAGES}
    if "torch" in versions:
        versions["torch"] = _soft(_torch_version) or versions["torch"]
    return versions


def cpu_model() -> str | None:
    """CPU model name: /proc/cpuinfo is precise on Linux, platform.processor() elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def _read_governor() -> str:
    return Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").read_text().strip()


def parse_cpu_max(text: str) -> float | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` line ("quota period"); None when unlimited."""
    quota, _, period = text.strip().partition(" ")
    if quota == "max":
        return None
    return _quota_cpus(int(quota), int(period or 100_000))


def _quota_cpus(quota_us: int, period_us: int) -> float | None:
    """Quota over period in CPUs; a non-positive quota (v1 writes -1) means unlimited."""
    if quota_us <= 0 or period_us <= 0:
        return None
    return quota_us / period_us


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPU quota of this container in CPUs (cgroup v2, else v1); None when unlimited/unknown.

    A quota below the CPU count silently throttles a benchmark that uses every core.
    """
    cpu_max = root / "cpu.max"
    if cpu_max.is_file():
        return parse_cpu_max(cpu_max.read_text())
    for sub in ("cpu", "cpu,cpuacct"):
        quota, period = root / sub / "cpu.cfs_quota_us", root / sub / "cpu.cfs_period_us"
        if quota.is_file() and period.is_file():
            return _quota_cpus(int(quota.read_text()), int(period.read_text()))
    return None


def _torch_version() -> str:
    import torch

    return torch.__version__


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _torch_interop_threads() -> int:
    import torch

    return torch.get_num_interop_threads()


def _torch_config() -> str:
    import torch

    return torch.__config__.show()


def _torch_cpu_capability() -> str | None:
    import torch

    get = getattr(torch.backends.cpu, "get_cpu_capability", None)
    return get() if get is not None else None


def cuda_info(device: str) -> dict[str, Any] | None:
    """GPU identity, versions and clocks; None unless ``device`` is CUDA and one is present."""
    if not device.startswith("cuda"):
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    props = torch.cuda.get_device_properties(index)
    info: dict[str, Any] = {
        "index": index,
        "name": props.name,
        "capability": [props.major, props.minor],
        "total_memory_bytes": props.total_memory,
        "cuda_version": torch.version.cuda,
        "cudnn_version": _soft(torch.backends.cudnn.version),
        "properties": _properties(props),
    }
    # nvidia-smi numbers GPUs ignoring CUDA_VISIBLE_DEVICES; the UUID names the same board.
    uuid = getattr(props, "uuid", None)
    info.update(nvidia_smi(f"GPU-{uuid}" if uuid is not None else str(index)))
    return info


def _properties(props: Any) -> dict[str, Any]:
    """All public scalar fields of torch's device properties, as JSON-friendly values."""
    out: dict[str, Any] = {}
    for name in dir(props):
        if name.startswith("_"):
            continue
        value = getattr(props, name)
        if callable(value):
            continue
        out[name] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return out


def nvidia_smi(gpu_id: str) -> dict[str, Any]:
    """Driver version, max/current SM clock (MHz) and power limit (W); None on any failure.

    Clocks and the power limit vary between boards of one model and move results by percents.
    """
    fields = ("driver_version", "clocks_max_sm_mhz", "clocks_sm_mhz", "power_limit_w")
    cmd = [
        "nvidia-smi",
        f"--id={gpu_id}",
        "--query-gpu=driver_version,clocks.max.sm,clocks.sm,power.limit",
        "--format=csv,noheader,nounits",
    ]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT_S, check=True)
        values = [v.strip() for v in out.stdout.strip().splitlines()[0].split(",")]
    except (OSError, subprocess.SubprocessError, IndexError):
        values = []
    if len(values) != len(fields):
        return dict.fromkeys(fields)
    driver, *numbers = values
    return dict(zip(fields, [driver or None, *(_float_or_none(v) for v in numbers)], strict=False))


def _float_or_none(text: str) -> float | None:
    """nvidia-smi prints "[N/A]" for fields a board does not report."""
    try:
        return float(text)
    except ValueError:
        return None


def git_state(path: Path) -> tuple[str | None, bool | None]:
    """Commit sha and dirty flag of the checkout at ``path``; (None, None) outside git."""
    commit = _git(path, "rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = _git(path, "status", "--porcelain")
    return commit, (None if status is None else bool(status))


def _git(path: Path, *args: str) -> str | None:
    """Stripped stdout of one git command, None if git is missing or the command fails."""
    try:
        out = subprocess.run(
            ["git", "-C", str(path), *args],
            capture_output=True,
            text=True,
            timeout=_TIMEOUT_S,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()
