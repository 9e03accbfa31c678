"""Launchers: who measures a run's cases, behind one interface (``base.Launcher``).

``inline`` measures in this process, ``processes`` in reused worker processes (the default of
``vlbench run``: a crash or the kernel's OOM killer takes a case, not the run), ``ray_cluster`` on
a Ray cluster. All call ``vlbench.measure.run_case`` with the run's ``MeasureOptions``.
``run_cases`` picks the launcher from the run's ``LaunchOptions`` and skips the larger batch sizes
of a model once one ran out of memory (``OomCutoff``), whichever launcher measures.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ..options import RunOptions
from ..results import CaseResult, CaseSpec
from .base import BeforeCase, Launcher, OnResult
from .inline import InlineLauncher
from .processes import ProcessLauncher
from .ray_cluster import RayLauncher


def launcher_for(options: RunOptions) -> Launcher:
    """Ray when the run asks for it, worker processes when isolated, else this process."""
    if options.launch.executor == "ray":
        return RayLauncher(options)
    if options.launch.isolated:
        return ProcessLauncher(options)
    return InlineLauncher(options)


def _oom_key(spec: CaseSpec) -> tuple:
    """Cases that differ only in batch size: one model at one input, precision, device, mode
    and thread count."""
    return (spec.model, tuple(spec.image_size), spec.text_len, spec.precision, spec.device,
            spec.mode, spec.threads, spec.side, spec.task)


@dataclass
class OomCutoff:
    """Once a batch size is out of memory, a larger one of the same model and input would be too:
    skip it rather than spend a worker start and an allocation failure on it. Cases are drawn
    lazily through ``cases`` and every result is reported to ``note``, so the rule holds for the
    in-process and the worker path alike."""

    #: smallest batch size that ran out of memory, per ``_oom_key``
    limits: dict[tuple, int] = field(default_factory=dict)
    skipped: list[CaseSpec] = field(default_factory=list)

    def note(self, result: CaseResult) -> None:
        if result.status == "oom":
            key = _oom_key(result.spec)
            self.limits[key] = min(self.limits.get(key, result.spec.batch_size),
                                   result.spec.batch_size)

    def cases(self, specs: Iterable[CaseSpec]) -> Iterator[CaseSpec]:
        for spec in specs:
            limit = self.limits.get(_oom_key(spec))
            if limit is not None and spec.batch_size > limit:
                self.skipped.append(spec)
                continue
            yield spec


def run_cases(cases: Iterable[CaseSpec], options: RunOptions, on_result: OnResult,
              before: BeforeCase | None = None) -> list[CaseResult]:
    """Run cases with the run's launcher, handing each result to ``on_result`` (the store) as it
    finishes. Larger batch sizes of a model are skipped after an ``oom`` (``OomCutoff``)."""
    cutoff = OomCutoff()

    def noted(result: CaseResult) -> None:
        cutoff.note(result)
        on_result(result)

    return launcher_for(options).run(cutoff.cases(cases), noted, before)


__all__ = ["Launcher", "OomCutoff", "launcher_for", "run_cases"]
