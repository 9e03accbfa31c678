"""The report's optional sections, in page order (``vlbench.report.section``): a new section is
its module plus one line here."""

from __future__ import annotations

from vlbench.report import backends, energy, regions, retrieval
from vlbench.report.section import Section

SECTIONS: tuple[Section, ...] = (
    retrieval.SECTION,
    regions.SECTION,
    backends.SECTION,
    energy.SECTION,
)
