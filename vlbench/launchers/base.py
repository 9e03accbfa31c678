"""What a launcher is: something that measures a run's cases somewhere (this process, worker
processes, a Ray cluster) and hands each result to the caller as it finishes."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from ..results import CaseResult, CaseSpec

#: called with each finished case, at once (the store commits it before anything else happens)
OnResult = Callable[[CaseResult], None]
#: called with each case just before it starts (a progress bar)
BeforeCase = Callable[[CaseSpec], None]


class Launcher(Protocol):
    def run(self, cases: Iterable[CaseSpec], on_result: OnResult,
            before: BeforeCase | None = None) -> list[CaseResult]:
        """Measure ``cases`` (drawn lazily, so a caller can skip cases as results come in),
        calling ``on_result`` as each finishes; returns the results in the order they
        finished."""
