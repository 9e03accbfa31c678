"""The report's energy section: joules per forward (per query, for a retrieval case) from NVML's
total-energy counter over each GPU case's timing loop (``vlbench.energy``), total and above the
GPU's idle power, or why a case has no figure ("not available: ...", never a zero).

Shown for runs with a GPU case: on a CPU every case says "not a GPU run", which needs no
section. Registered as ``SECTION``; its page part is ``templates/_energy.html.j2``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vlbench.report.section import ReportCase, Section
from vlbench.report.text import escape
from vlbench.table import case_text

NOT_GPU = "not available: not a GPU run"


@dataclass(frozen=True)
class EnergyRow:
    label: str
    run_id: int
    case: str
    #: joules per forward and above idle; None where the case has no figure
    joules: float | None
    above_idle: float | None
    idle_watts: float | None
    window_s: float | None
    #: "measured", or why not
    status: str


@dataclass(frozen=True)
class EnergySection:
    rows: list[EnergyRow]


def energy_section(cases: Sequence[ReportCase]) -> EnergySection | None:
    """A row per successful case of a report with GPU cases; None without any."""
    rows = []
    for c in cases:
        record = c.result.settings.get("energy")
        if c.result.status != "ok" or not isinstance(record, dict):
            continue
        spec = c.result.spec
        rows.append(EnergyRow(
            label=c.label, run_id=c.run_id,
            case=case_text(spec),
            joules=record.get("joules_per_forward"),
            above_idle=record.get("joules_above_idle_per_forward"),
            idle_watts=record.get("idle_watts"), window_s=record.get("window_s"),
            status=str(record.get("status", "not recorded"))))
    if all(r.status == NOT_GPU for r in rows):
        return None
    return EnergySection(rows)


def _j(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def energy_markdown(section: EnergySection) -> list[str]:
    lines = ["### Energy per forward (GPU, NVML)", "",
             "| model | run | case | J / forward | above idle | idle W | status |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {escape(r.label)} | {r.run_id} | {escape(r.case)} | {_j(r.joules)} | "
              f"{_j(r.above_idle)} | {_j(r.idle_watts)} | {escape(r.status)} |"
              for r in section.rows]
    return [*lines, ""]


SECTION = Section(name="energy", title="Energy per forward", build=energy_section,
                  template="_energy.html.j2", markdown=energy_markdown)
