"""Time any ``nn.Module`` from a script or a notebook, no plugin file needed::

    from vlbench.api import time_module

    result = time_module(model, (images, input_ids, mask), stages=["vision", "fusion"],
                         name="my-model", store="results.sqlite")
    print(result.end_to_end.median_ms, {s.name: s.timing.median_ms for s in result.stages})

The module is measured as ``vlbench run`` measures a preset (``vlbench.measure.run_case``: the
same warm-up, stopping rule, hooks, FLOP and parameter counts) and the result is the same record
the command line stores. With ``store``, it is written there as a run of its own, so
``vlbench report`` and ``vlbench compare`` work on it. A failure of the case (out of memory, an
error in the module) is its ``oom``/``error`` record, as on the command line.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from feature_extractors import Stage, StageKind, Substage, declared_stages

from . import parse
from .context import ModelIdentity, Subject, resolve_device
from .env import collect_environment
from .measure import run_case
from .options import LaunchOptions, MeasureOptions, RunOptions, TimingOptions
from .results import CaseResult, CaseSpec
from .store import Store

DEFAULT_TIMING = TimingOptions()
#: ``stages``: module names (timed as kind "other"), or names mapped to a kind or a named set
StagesArg = Sequence[str] | Mapping[str, StageKind | str | Substage] | None


def time_module(module: nn.Module, inputs: tuple[Any, ...] | Mapping[str, Any], *,
                stages: StagesArg = None, name: str | None = None, device: str = "cpu",
                precision: str = "fp32", mode: str = "eager",
                timing: TimingOptions = DEFAULT_TIMING, seed: int = 0,
                batch_size: int = 1, image_size: tuple[int, int] = (0, 0), text_len: int = 0,
                store: str | Path | Store | None = None, label: str | None = None) -> CaseResult:
    """Measure one forward of ``module(*inputs)`` (or ``module(**inputs)``) per stage.

    ``stages``: None times the stages the module declares (``substages``; none: end to end
    only); a list of submodule names times each as a stage of kind "other"; a mapping gives
    each a kind, or a ``Substage`` for a named set of modules. ``batch_size``, ``image_size``
    and ``text_len`` describe the inputs in the record (reports show them).
    """
    (precision,) = parse.precisions([precision])
    (mode,) = parse.execution_modes([mode])
    spec = CaseSpec(model=name or type(module).__name__, batch_size=batch_size,
                    image_size=tuple(image_size), text_len=text_len, precision=precision,
                    device=resolve_device(device), mode=mode)
    subject = Subject(module, inputs, tuple(_stages(module, stages)), ModelIdentity())
    options = MeasureOptions(timing=timing, seed=seed)
    result = run_case(spec, options, subject=subject)
    if store is not None:
        _store(result, options, store, label)
    return result


def _stages(module: nn.Module, stages: StagesArg) -> list[Stage]:
    if stages is None:
        return declared_stages(module)
    if not isinstance(stages, Mapping):
        stages = {name: StageKind.OTHER for name in stages}
    return declared_stages(module, stages)


def _store(result: CaseResult, options: MeasureOptions, store: str | Path | Store,
           label: str | None) -> int:
    """Write the result as a finished run of its own; returns the run id."""
    run_options = RunOptions(options, LaunchOptions())
    spec = result.spec
    command = f"vlbench.api.time_module(name={shlex.quote(spec.model)})"
    owned = not isinstance(store, Store)
    handle = Store.open(store) if owned else store
    try:
        run_id = handle.start_run(
            label=label, suite="api", command=command,
            env=collect_environment(spec.device, argv=[]),
            settings={"suite": "api", "device": spec.device, **run_options.settings(),
                      "rounds": 1, "interleaved": False, "cases": [spec.__dict__]})
        handle.add_case(run_id, result)
        handle.finish_run(run_id, "finished")
    finally:
        if owned:
            handle.close()
    return run_id
