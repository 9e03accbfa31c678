"""Which device measured a case, from the environment its worker recorded.

A case measured by a Ray worker carries that worker's environment (``settings["env"]``,
``vlbench.ray_executor``); a case measured locally does not, and belongs to its run's machine. A
device is a GPU model (its name), or on CPU a CPU model with its usable cores: boards of one
model on different hosts count as one device. Tables, round pooling and reports all ask here, so
a run over mixed devices is never pooled across them (``vlbench.report.devices`` builds the
report's device section on top of this).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vlbench.results import CaseResult


def device_name(result: CaseResult) -> str | None:
    """The device a case ran on, from the environment its worker recorded; None when the case
    recorded none (measured on its run's own machine)."""
    env = result.settings.get("env") if result.settings else None
    if not isinstance(env, dict):
        return None
    return environment_device(env)


def environment_device(env: dict[str, Any]) -> str | None:
    """'NVIDIA H100 80GB HBM3', or 'Intel(R) Xeon(R) ... (2 cores)' for a CPU environment."""
    cuda = env.get("cuda")
    if isinstance(cuda, dict) and cuda.get("name"):
        return str(cuda["name"])
    cpu = env.get("cpu_model")
    if not cpu:
        return None
    cores = env.get("cpu_affinity") or env.get("cpu_count")
    return f"{cpu} ({cores} cores)" if cores else str(cpu)


def case_host(result: CaseResult) -> str | None:
    """The host a worker recorded for the case; None when it recorded no environment."""
    env = result.settings.get("env") if result.settings else None
    return env.get("hostname") if isinstance(env, dict) else None


def device_tags(results: Sequence[CaseResult]) -> list[str]:
    """Per result, ' [device]' where the results came from more than one device, else ''
    (the run's printed table)."""
    names = [device_name(r) for r in results]
    if len({n for n in names if n is not None}) < 2:
        return [""] * len(results)
    return [f" [{n}]" if n else "" for n in names]
