"""The in-process launcher: every case in this process, one after another (debugging, the
Python API, tests that patch the measuring code)."""

from __future__ import annotations

from collections.abc import Iterable

from ..context import apply_threads
from ..measure import run_case
from ..options import RunOptions
from ..plugins import load_plugins
from ..results import CaseResult, CaseSpec
from .base import BeforeCase, OnResult


class InlineLauncher:
    def __init__(self, options: RunOptions) -> None:
        if options.launch.interleaved:
            raise ValueError("an interleaved A/B run needs worker processes for its two sides")
        self.options = options

    def run(self, cases: Iterable[CaseSpec], on_result: OnResult,
            before: BeforeCase | None = None) -> list[CaseResult]:
        load_plugins(self.options.launch.plugins)
        apply_threads(self.options.launch.threads)
        results = []
        for spec in cases:
            if before is not None:
                before(spec)
            result = run_case(spec, self.options.measure)
            on_result(result)
            results.append(result)
        return results
