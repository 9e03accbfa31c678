"""Placing a run's cases on a Ray cluster's nodes and collecting their results (the policy is
described in ``vlbench.launchers.ray_cluster``): every node kept busy with at most what it can run
unshared, each finished task (or its failure) one ``on_result`` call in the driver, a case whose
worker or node died resubmitted once, to another node where one can take it."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from ..options import LaunchOptions, RunOptions
from ..results import CaseResult, CaseSpec
from .base import BeforeCase, OnResult

#: vlbench's own resubmissions of a case whose worker or node died
RESUBMISSIONS = 1
#: seconds between checks for finished cases (and for Ctrl-C) while cases run
POLL_S = 0.5


@dataclasses.dataclass
class _Job:
    spec: CaseSpec
    attempt: int = 1
    avoid: str | None = None  # the node an earlier attempt died on


@dataclasses.dataclass
class _Flight:
    job: _Job
    node: str
    request: dict[str, float]
    began: float


def request_for(spec: CaseSpec, node_resources: dict[str, float],
                options: LaunchOptions) -> dict[str, float] | None:
    """What one case asks of a node (``{"CPU": n, "GPU": g}``), None when the node cannot
    run it: a whole GPU, else every CPU of the node (or ``--threads`` of them, shared)."""
    cpus = float(node_resources.get("CPU", 0.0))
    if spec.device.startswith("cuda"):
        if node_resources.get("GPU", 0.0) < 1:
            return None
        return {"CPU": min(1.0, cpus), "GPU": 1.0}
    if cpus < 1:
        return None
    if options.allow_shared:
        return {"CPU": float(min(options.threads or 1, int(cpus)))}
    return {"CPU": cpus}


class Dispatcher:
    """Keeps every node busy with at most what it can run unshared, and turns each finished
    task (or its failure) into one ``on_result`` call in this process."""

    def __init__(self, ray: Any, task: Callable[..., Any], options: RunOptions,
                 on_result: OnResult, before: BeforeCase | None) -> None:
        self.ray, self.options, self.on_result, self.before = ray, options, on_result, before
        self.launch = options.launch
        self.task = ray.remote(max_retries=0, retry_exceptions=False)(task)
        self.flights: dict[Any, _Flight] = {}
        self.results: list[CaseResult] = []

    def run(self, cases: Iterator[CaseSpec]) -> list[CaseResult]:
        waiting: deque[_Job] = deque()
        drawn_last: CaseSpec | None = None
        exhausted = False
        try:
            while True:
                nodes = self._nodes()
                while True:  # fill free capacity, drawing a case only when one could start
                    if not waiting:
                        if exhausted or (drawn_last is not None
                                         and self._place(_Job(drawn_last), nodes) is None):
                            break
                        spec = next(cases, None)
                        if spec is None:
                            exhausted = True
                            break
                        drawn_last = spec
                        waiting.append(_Job(spec))
                    job = waiting[0]
                    if not any(request_for(job.spec, r, self.launch) for r in nodes.values()):
                        waiting.popleft()
                        self._record(CaseResult(spec=job.spec, status="error",
                                                message=self._nowhere(job.spec, nodes)))
                        continue
                    node = self._place(job, nodes)
                    if node is None:
                        break
                    waiting.popleft()
                    self._submit(job, node, nodes[node])
                if not self.flights and not waiting and exhausted:
                    return self.results
                if not self.flights:  # capacity held by others: look again shortly
                    time.sleep(POLL_S)
                    continue
                ready, _ = self.ray.wait(list(self.flights), num_returns=1, timeout=POLL_S)
                for ref in ready:
                    retry = self._finish(ref)
                    if retry is not None:
                        waiting.appendleft(retry)
        except BaseException:  # Ctrl-C, SIGTERM, a store error: stop measuring at once
            for ref in self.flights:
                with contextlib.suppress(Exception):
                    self.ray.cancel(ref, force=True)
            raise

    def _nodes(self) -> dict[str, dict[str, float]]:
        """Alive nodes and their total resources."""
        return {n["NodeID"]: dict(n.get("Resources") or {})
                for n in self.ray.nodes() if n.get("Alive")}

    def _place(self, job: _Job, nodes: dict[str, dict[str, float]]) -> str | None:
        """A node with room for the job now, or None; never the node an earlier attempt died
        on while another node could run it."""
        used: dict[str, dict[str, float]] = {}
        for flight in self.flights.values():
            totals = used.setdefault(flight.node, {})
            for key, amount in flight.request.items():
                totals[key] = totals.get(key, 0.0) + amount
        able = [n for n, r in nodes.items() if request_for(job.spec, r, self.launch)]
        if job.avoid is not None and any(n != job.avoid for n in able):
            able = [n for n in able if n != job.avoid]
        for node in sorted(able, key=lambda n: sum(used.get(n, {}).values())):
            request = request_for(job.spec, nodes[node], self.launch) or {}
            if all(used.get(node, {}).get(k, 0.0) + v <= nodes[node].get(k, 0.0) + 1e-9
                   for k, v in request.items()):
                return node
        return None

    def _nowhere(self, spec: CaseSpec, nodes: dict[str, dict[str, float]]) -> str:
        need = "a GPU" if spec.device.startswith("cuda") else "a CPU"
        return f"no node of the Ray cluster ({len(nodes)} alive) has {need} for this case"

    def _submit(self, job: _Job, node: str, resources: dict[str, float]) -> None:
        from ray.util.scheduling_strategies import (  # Ray is optional: loaded with Ray only
            NodeAffinitySchedulingStrategy,
        )

        if self.before is not None:
            self.before(job.spec)
        request = request_for(job.spec, resources, self.launch) or {}
        ref = self.task.options(
            num_cpus=request.get("CPU", 0.0), num_gpus=request.get("GPU", 0.0),
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
            runtime_env={"env_vars": thread_env(self.launch.threads)},
            name=f"vlbench {job.spec.model} b{job.spec.batch_size}",
        ).remote(job.spec, self.options, job.attempt, request)
        self.flights[ref] = _Flight(job, node, request, time.perf_counter())

    def _finish(self, ref: Any) -> _Job | None:
        """Record one finished task; returns the job to resubmit when its worker died."""
        exceptions = self.ray.exceptions
        flight = self.flights.pop(ref)
        job, retry = flight.job, None
        try:
            result = CaseResult.from_dict(self.ray.get(ref))
        except exceptions.RayTaskError as exc:  # vlbench's task code raised: not a death
            result = self._failure(flight, "error", f"Ray task failed: {first_line(exc)}")
        except exceptions.OutOfMemoryError as exc:
            result = self._failure(flight, "oom", f"killed by Ray's memory monitor: "
                                   f"{first_line(exc)}")
        except exceptions.RayError as exc:  # the worker or the node died under the case
            again = job.attempt <= RESUBMISSIONS
            reason = (f"Ray worker or node lost ({type(exc).__name__}: {first_line(exc)}) "
                      f"on node {flight.node[:12]}, attempt {job.attempt}")
            result = self._failure(flight, "error", reason + ("; resubmitted" if again else ""))
            if again:
                retry = _Job(job.spec, job.attempt + 1, avoid=flight.node)
        self._record(result)
        return retry

    def _failure(self, flight: _Flight, status: str, message: str) -> CaseResult:
        ray_info = {"node_id": flight.node, "attempt": flight.job.attempt,
                    "resources": flight.request}
        return CaseResult(spec=flight.job.spec, status=status, message=message,
                          settings={"ray": ray_info},
                          wall_s=round(time.perf_counter() - flight.began, 3))

    def _record(self, result: CaseResult) -> None:
        self.on_result(result)  # committed before anything else can go wrong
        self.results.append(result)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def thread_env(threads: int | None) -> dict[str, str]:
    """The thread variables a task's process starts with: the run's count, not Ray's default
    (the task's CPU request)."""
    if threads is None:
        return {}
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
