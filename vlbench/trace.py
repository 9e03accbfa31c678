"""``--trace``: one profiled forward per case, written as a chrome trace for those who want to
dig below the stage level; and, on a GPU, the kernels a forward launches."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from .results import CaseSpec
from .store import case_key


def trace_path(spec: CaseSpec, directory: str | Path) -> Path:
    """DIR/<the store's case key with anything but letters, digits, '.', '-' and '_' replaced
    by '_'>.json."""
    key = case_key(spec)
    return Path(directory) / (re.sub(r"[^A-Za-z0-9._-]+", "_", key) + ".json")


def write_trace(spec: CaseSpec, forward: Callable[[], object], device: torch.device,
                directory: str) -> str:
    """One profiled forward after the timing, as a chrome trace; returns its path."""
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    path = trace_path(spec, directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    with profile(activities=activities) as prof:
        forward()
        if device.type == "cuda":
            torch.cuda.synchronize()
    prof.export_chrome_trace(str(path))
    return str(path)


def count_kernels(forward: Callable[[], object], device: torch.device) -> int:
    """GPU kernels one forward launches (one profiled forward): with the per-kernel launch cost,
    the floor under a small batch's latency however fast the GPU."""
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        forward()
        torch.cuda.synchronize(device)
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
