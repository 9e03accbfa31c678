"""Which device measured each case, so a run spread over several (a Ray run over mixed GPUs) is
reported per device and never pooled across them.

A case measured by a Ray worker carries that worker's environment (``settings["env"]``,
``vlbench.ray_executor``); a case measured locally does not, and belongs to its run's machine.
A device is a GPU model (its name), or on CPU a CPU model with its usable cores: boards of one
model on different hosts count as one device, so a sweep over a homogeneous cluster stays one
series, while every case still records its own host and board. Labels change only in runs whose
cases came from more than one device; a single-device run's report reads as before.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from vlbench.results import CaseResult


class _Case(Protocol):
    run_id: int
    result: CaseResult
    label: str


C = TypeVar("C", bound=_Case)


@dataclass(frozen=True)
class DeviceRow:
    """One device of a run that used several: what it is, where, and how many cases it ran."""

    run_id: int
    device: str
    hosts: tuple[str, ...]
    cases: int
    failed: int
    driver: str | None


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


def _host(result: CaseResult) -> str | None:
    env = result.settings.get("env") if result.settings else None
    return env.get("hostname") if isinstance(env, dict) else None


def mixed_runs(cases: Sequence[_Case]) -> set[int]:
    """Runs whose cases recorded more than one device."""
    seen: dict[int, set[str]] = defaultdict(set)
    for case in cases:
        name = device_name(case.result)
        if name is not None:
            seen[case.run_id].add(name)
    return {run_id for run_id, names in seen.items() if len(names) > 1}


def label_devices(cases: Sequence[C]) -> list[C]:
    """Cases of mixed-device runs get their device (``device``) and a label that names it;
    others are returned unchanged."""
    mixed = mixed_runs(cases)
    out = []
    for case in cases:
        name = device_name(case.result) if case.run_id in mixed else None
        if name is None:
            out.append(case)
            continue
        changes: dict[str, Any] = {"label": f"{case.label} [{name}]"}
        if "device" in {f.name for f in dataclasses.fields(case)}:  # html.Case has the field
            changes["device"] = name
        out.append(dataclasses.replace(case, **changes))
    return out


def device_rows(cases: Sequence[_Case]) -> list[DeviceRow]:
    """Per mixed-device run, one row per device: the report's device table (empty when every
    run used one device)."""
    mixed = mixed_runs(cases)
    groups: dict[tuple[int, str], list[CaseResult]] = defaultdict(list)
    for case in cases:
        name = device_name(case.result)
        if case.run_id in mixed and name is not None:
            groups[(case.run_id, name)].append(case.result)
    rows = []
    for (run_id, name), results in groups.items():
        hosts = tuple(sorted({h for h in map(_host, results) if h}))
        drivers = {(r.settings["env"].get("cuda") or {}).get("driver_version") for r in results}
        drivers.discard(None)
        rows.append(DeviceRow(run_id, name, hosts, len(results),
                              sum(r.status != "ok" for r in results),
                              ", ".join(sorted(drivers)) or None))
    return rows


def device_tags(results: Sequence[CaseResult]) -> list[str]:
    """Per result, ' [device]' where the results came from more than one device, else ''
    (the run's printed table)."""
    names = [device_name(r) for r in results]
    if len({n for n in names if n is not None}) < 2:
        return [""] * len(results)
    return [f" [{n}]" if n else "" for n in names]
