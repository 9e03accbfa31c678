"""The report's machine section: what the machine was doing while each case ran
(``vlbench.contention``), so that a figure measured on a busy machine is never read as a good
one: each case's state (busy, quiet, not measured), why, and the measures behind it.

Not a registered section (those show a kind of case, ``vlbench.report.registry``): every report
has it, after its per-stage tables (``ReportData.machine``); its page part is
``templates/_contention.html.j2``. The all-cases table flags busy cases too, and links here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vlbench.contention import (
    BUSY,
    NOT_MEASURED,
    PEAK_DRIFT,
    RUN_DELAY_LIMIT,
    RUNQUEUE_EXCESS,
    STEAL_LIMIT,
    state,
)
from vlbench.report.section import ReportCase
from vlbench.report.text import escape
from vlbench.results import Contention


@dataclass(frozen=True)
class MachineRow:
    """One ``ok`` case: its label, run, state and record (None: not measured)."""

    label: str
    run_id: int
    case: str  # batch, input, precision
    state: str
    record: Contention | None


@dataclass(frozen=True)
class MachineSection:
    rows: list[MachineRow]
    busy: int
    not_measured: int
    #: the rule's limits, for the note under the table
    limits: dict[str, float]


def machine_section(cases: Sequence[ReportCase]) -> MachineSection | None:
    """Every ``ok`` case's machine state; None when the report has no ``ok`` case."""
    rows = []
    for case in cases:
        r = case.result
        if r.status != "ok":
            continue
        s = r.spec
        rows.append(MachineRow(
            case.label, case.run_id,
            f"b{s.batch_size} {s.image_size[0]}x{s.image_size[1]}+{s.text_len} {s.precision}",
            state(r.contention), r.contention))
    if not rows:
        return None
    return MachineSection(
        rows, busy=sum(row.state == BUSY for row in rows),
        not_measured=sum(row.state == NOT_MEASURED for row in rows),
        limits={"runqueue_excess": RUNQUEUE_EXCESS, "run_delay": RUN_DELAY_LIMIT,
                "steal": STEAL_LIMIT, "peak_drift": PEAK_DRIFT})


def machine_markdown(section: MachineSection) -> list[str]:
    """A line of counts, and each busy or unmeasured case with why."""
    total = len(section.rows)
    lines = ["### Machine", "",
             f"{section.busy} of {total} case(s) measured on a busy machine, "
             f"{section.not_measured} not measured, the rest quiet.", ""]
    for row in section.rows:
        if row.state == BUSY and row.record is not None:
            lines.append(f"- **busy**: {escape(row.label)} {escape(row.case)}: "
                         f"{escape('; '.join(row.record.reasons))}")
        elif row.state == NOT_MEASURED:
            lines.append(f"- not measured: {escape(row.label)} {escape(row.case)} (stored "
                         "before vlbench measured contention)")
    return [*lines, ""] if section.busy or section.not_measured else lines
