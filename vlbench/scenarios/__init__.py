"""Scenarios: the kinds of case vlbench measures, registered by name. A new kind of case is one
file here and one registration below; ``scenario_for`` picks a case's scenario by its task."""

from __future__ import annotations

from feature_extractors import Registry

from ..failures import UnsupportedCase
from .base import Scenario
from .forward import FORWARD
from .retrieval import RETRIEVAL

SCENARIOS: Registry[Scenario] = Registry("scenario")
SCENARIOS.register(FORWARD.name, FORWARD)
SCENARIOS.register(RETRIEVAL.name, RETRIEVAL)


def scenario_for(task: str | None) -> Scenario:
    """The scenario that measures cases with ``task``; ``UnsupportedCase`` (the case's error
    record) for an unknown one."""
    for name in SCENARIOS:
        if task in SCENARIOS.get(name).tasks:
            return SCENARIOS.get(name)
    raise UnsupportedCase(f"unknown task {task!r}; valid: {', '.join(known_tasks())}")


def known_tasks() -> tuple[str, ...]:
    """Every task a suite may name (``tasks:``)."""
    return tuple(t for n in SCENARIOS for t in SCENARIOS.get(n).tasks if t is not None)


__all__ = ["SCENARIOS", "Scenario", "known_tasks", "scenario_for"]
