"""What a scenario is: one kind of case (one forward of a model, ranking a retrieval gallery,
...), measured from a case context and reported through its stage-result builder."""

from __future__ import annotations

from typing import Protocol

from ..context import CaseContext
from ..results import CaseResult, CaseSpec


class Scenario(Protocol):
    #: the registry name
    name: str
    #: the ``CaseSpec.task`` values it measures (None: a case without a task)
    tasks: tuple[str | None, ...]
    #: whether the model is built with its task head when the run asks for heads (``--head``)
    uses_head: bool

    def check(self, spec: CaseSpec) -> None:
        """Raise ``vlbench.failures.UnsupportedCase`` for a case it cannot measure, before
        anything is built."""

    def measure(self, ctx: CaseContext) -> CaseResult:
        """Measure the case; a failure raises (``vlbench.measure`` records it)."""
