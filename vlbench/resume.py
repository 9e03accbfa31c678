"""What a resume has to do: a stored run's cases and options, and which cases are missing.

A run records its case specs and options when it starts (``settings["cases"]`` and
``RunOptions.settings()``), so ``vlbench run --resume`` needs nothing else from the command line
and measures the missing cases exactly as the first pass would have. Missing means: no attempt
yet, or a last attempt that failed; the store keeps every attempt and reads the last.
"""

from __future__ import annotations

from dataclasses import dataclass

from .context import resolve_device
from .options import RunOptions
from .results import CaseSpec
from .store import RunActiveError, Store, case_key


@dataclass(frozen=True)
class ResumePlan:
    run_id: int
    status: str  # the run's effective status before the resume
    cases: tuple[CaseSpec, ...]  # every case of the run, in sweep order
    missing: tuple[CaseSpec, ...]  # those to measure (again)
    options: RunOptions
    device: str


def plan_resume(store: Store, ref: str | int | None) -> ResumePlan:
    """Read a run back; raises RunActiveError for a run still in progress and ValueError for a
    run that did not record its cases."""
    run_id = store.resolve_run(ref)
    run = store.get_run(run_id)
    if run.status == "running":
        raise RunActiveError(f"run {run_id} is still running (pid {run.pid} on {run.host}); "
                             "wait for it to end or stop it before resuming")
    settings = run.settings
    if "cases" not in settings or "timing" not in settings:
        raise ValueError(f"run {run_id} did not record its cases and settings; "
                         "it cannot be resumed")
    try:  # a damaged record is one line naming the run, not a traceback
        cases = tuple(CaseSpec(**{**c, "image_size": tuple(c["image_size"])})
                      for c in settings["cases"])
        options = RunOptions.from_settings(settings)
    except (TypeError, KeyError, ValueError) as exc:
        raise ValueError(f"run {run_id}: its recorded cases or settings are damaged "
                         f"({exc}); it cannot be resumed") from None
    done = store.completed_case_keys(run_id)
    missing = tuple(c for c in cases if case_key(c) not in done)
    device = settings.get("device") or (cases[0].device if cases else "cpu")
    return ResumePlan(run_id=run_id, status=run.status, cases=cases, missing=missing,
                      options=options, device=device)


def reopen(store: Store, ref: str | int | None) -> ResumePlan:
    """Plan a resume and take the run over (``Store.reopen_run``: running again, owned by this
    process). A run with nothing missing is only closed as finished, if it was not."""
    plan = plan_resume(store, ref)
    if not plan.missing:
        if plan.status != "finished":  # died after its last case: only the ending was lost
            store.reopen_run(plan.run_id)
            store.finish_run(plan.run_id, "finished")
        return plan
    resolve_device(plan.device)  # a CUDA run resumed where no GPU is visible: say so now
    store.reopen_run(plan.run_id)
    return plan
