"""What a report section is: an optional part of the page (and of the markdown summary) with
data of its own, built from the report's cases.

A new section is one module (its data, charts, template and markdown lines, ending in a
``Section``) and one line in ``vlbench.report.registry``; both renderers iterate the registry,
so neither names any section.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from vlbench.results import CaseResult


class ReportCase(Protocol):
    """What a section sees of a case (``vlbench.report.data.Case``)."""

    run_id: int
    result: CaseResult
    label: str


@dataclass(frozen=True)
class Section:
    """One registered section."""

    #: the page anchor, and the word for the cases it shows ("retrieval")
    name: str
    #: its heading and navigation link ("Retrieval cost")
    title: str
    #: the report's cases -> the section's data; None: nothing to show in this report
    build: Callable[[Sequence[ReportCase]], Any | None]
    #: its HTML template under ``templates/``, rendered with the built data as ``section``
    template: str
    #: the built data -> its lines of the markdown report
    markdown: Callable[[Any], list[str]]


@dataclass(frozen=True)
class Shown:
    """A section with the data it shows in one report."""

    section: Section
    data: Any


def build_sections(sections: Sequence[Section], cases: Sequence[ReportCase]) -> list[Shown]:
    """The sections that have something to show, in registry order."""
    shown = [Shown(section, section.build(cases)) for section in sections]
    return [s for s in shown if s.data is not None]
