"""Measure one case: the one place every launcher calls (in this process, in a worker process,
on a Ray node). It picks the case's scenario by task, builds the case context once and turns
any failure of the case into its record: it never raises for a failure of the case itself."""

from __future__ import annotations

import dataclasses
import time

import torch

from .context import CaseContext, Subject, apply_threads
from .failures import failure, release_memory
from .options import MeasureOptions
from .results import CaseResult, CaseSpec
from .sampler import Sampler
from .scenarios import scenario_for

DEFAULT_OPTIONS = MeasureOptions()


def run_case(spec: CaseSpec, options: MeasureOptions = DEFAULT_OPTIONS, *,
             subject: Subject | None = None) -> CaseResult:
    """Measure one case: the preset ``spec.model`` names, or ``subject`` (a module given as it
    is); a failure (out of memory, an unsupported case, any error) is its ``oom``/``error``
    record. An ``ok`` record carries what the machine was doing while the scenario measured
    (``vlbench.contention``: sampled here, so every scenario and launcher gets it)."""
    began = time.perf_counter()
    run_threads = torch.get_num_threads()
    try:
        apply_threads(spec.threads)  # a thread sweep's case; restored for the next case below
        scenario = scenario_for(spec.task)
        scenario.check(spec)
        ctx = (CaseContext.for_subject(spec, options, subject) if subject is not None else
               CaseContext.for_preset(spec, options, head=options.head and scenario.uses_head))
        with Sampler() as sampler:
            result = scenario.measure(ctx)
        result = dataclasses.replace(result, contention=ctx.contention(sampler.observation()))
    except Exception as exc:  # noqa: BLE001 - a case's failure is data, not a crash
        result = failure(spec, exc)
        del exc  # drop the frames that hold tensors before freeing memory
    finally:
        if torch.get_num_threads() != run_threads:
            torch.set_num_threads(run_threads)
        release_memory()
    return dataclasses.replace(result, wall_s=round(time.perf_counter() - began, 3))
