"""The report's view of devices: a run spread over several (a Ray run over mixed GPUs) is
reported per device and never pooled across them.

What a case's device is comes from ``vlbench.devices``: a sweep over a homogeneous cluster stays
one series, while every case still records its own host and board. Labels change only in runs
whose cases came from more than one device; a single-device run's report reads as before.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from vlbench.devices import (  # noqa: F401 - device_tags: re-exported for old callers
    case_host,
    device_name,
    device_tags,
)
from vlbench.report.section import ReportCase
from vlbench.results import CaseResult

C = TypeVar("C", bound=ReportCase)


@dataclass(frozen=True)
class DeviceRow:
    """One device of a run that used several: what it is, where, and how many cases it ran."""

    run_id: int
    device: str
    hosts: tuple[str, ...]
    cases: int
    failed: int
    driver: str | None


def mixed_runs(cases: Sequence[ReportCase]) -> set[int]:
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


def device_rows(cases: Sequence[ReportCase]) -> list[DeviceRow]:
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
        hosts = tuple(sorted({h for h in map(case_host, results) if h}))
        drivers = {(r.settings["env"].get("cuda") or {}).get("driver_version") for r in results}
        drivers.discard(None)
        rows.append(DeviceRow(run_id, name, hosts, len(results),
                              sum(r.status != "ok" for r in results),
                              ", ".join(sorted(drivers)) or None))
    return rows
