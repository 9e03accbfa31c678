"""``vlbench run --executor ray``: one Ray task per case, results streamed back to this process,
which alone writes the store.

Placement
---------
Timings must not share a device, so vlbench places every case itself rather than leaving Ray to
pack tasks: a GPU case asks for one whole GPU (``num_gpus=1``, never a fraction) and a CPU case
for every CPU of one node (``--allow-shared``: ``--threads`` CPUs, so several cases share a
node's cores), pinned to that node with a hard ``NodeAffinitySchedulingStrategy``. Pinning is
what lets a CPU case take all of a node whatever its size (nodes may differ) and lets a
resubmitted case go to another node. Cases are drawn from the run's (lazy) sequence only when a
node can take one, so a case that follows an ``oom`` is skipped as with the local executor
(``OomCutoff``) unless it was already running beside it. Nodes are read from the cluster as
cases are placed: a node that joins mid-run gets work, an autoscaler's future nodes are not
waited for.

Faults
------
Ray's own retries are off (``max_retries=0``, ``retry_exceptions=False``; Ray's memory-monitor
retries apply only to retriable tasks): a silent retry would hide a failure and time a case
twice. A worker or node that dies mid-case (``WorkerCrashedError``, ``NodeDiedError``, a pinned
node gone) gets the case recorded as ``error`` with the reason, then vlbench resubmits it once,
to another node where one can take it (else to a fresh worker on the same node). The store keeps
both attempts; the last is the case's status. A task that Ray's memory monitor kills is an
``oom`` record, not resubmitted. Ctrl-C or SIGTERM cancels what is in flight; everything
committed stays and ``vlbench run --resume`` continues with the run's recorded executor.

Workers
-------
A task sets the run's thread count (``CaseOptions.threads``) itself: Ray starts task processes
with ``OMP_NUM_THREADS`` set to the task's CPU request (1 unless told otherwise), which would
silently change what a CPU case measures. The task's runtime environment sets
``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` to the run's count before the process starts, the task
calls ``torch.set_num_threads``, and both are recorded (``settings["ray"]["thread_env"]``,
``settings["threads"]``). Every result carries the worker's environment (``settings["env"]``:
host, CPU, GPU name and driver, versions) and ``settings["ray"]`` (node, worker pid, attempt,
resources), so a run over mixed devices is reported per device (``vlbench.report.devices``).
A CPU case runs under the run's memory budget (``RLIMIT_DATA``, as ``vlbench.worker`` does),
lifted again when the case ends since Ray reuses its worker processes; Ray's own ``memory``
resource is bookkeeping only and is not asked for. GPU tasks get a fresh process per case
(Ray's default ``max_calls=1`` for GPU tasks), CPU tasks reuse one.

Code on the workers
-------------------
With ``--address`` (the user's cluster) the job's runtime environment ships vlbench's packages
(``vlbench``, ``architectures``, ``feature_extractors``, ``benchmarks``) and the run's plugin
files as ``py_modules``, so workers run exactly the driver's code without it being installed
there. Ray starts locally (no address) with this interpreter on this file system: the workers
import the same files, so nothing is shipped (it would only zip and upload the packages on
every run). A caller that connected Ray itself (``ray.init`` before ``run_cases``) keeps its
own connection and runtime environment (``job_runtime_env`` builds the one vlbench would use).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import os
import resource
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from .results import CaseResult, CaseSpec
from .runner import CaseOptions

INSTALL_HINT = "pip install 'vlbench[ray]'"
#: the top-level packages a worker needs to measure a case
PACKAGES = ("vlbench", "architectures", "feature_extractors", "benchmarks")
#: the py_module that carries the run's plugin files to the workers
PLUGIN_PACKAGE = "vlbench_ray_plugins"
#: vlbench's own resubmissions of a case whose worker or node died
RESUBMISSIONS = 1
#: seconds between checks for finished cases (and for Ctrl-C) while cases run
POLL_S = 0.5
#: per-case environment keys left out of a result: the run's record has them, and they are long
_ENV_DROP = ("argv", "command", "torch_config")


def check_ray_available() -> None:
    """Raise ValueError (one line, the CLI's exit 2) when Ray cannot be imported."""
    _import_ray()


def _import_ray():  # noqa: ANN202 - ray is optional: no annotation that needs it
    try:
        import ray
    except ImportError:
        raise ValueError(f"--executor ray needs Ray, which is not installed: {INSTALL_HINT}"
                         ) from None
    return ray


def run_on_ray(
    cases: Iterable[CaseSpec],
    options: CaseOptions,
    on_result: Callable[[CaseResult], None],
    before: Callable[[CaseSpec], None] | None = None,
) -> list[CaseResult]:
    """``run_cases`` on a Ray cluster: ``on_result`` (the store) runs here, as each case
    finishes, in the order they finish."""
    ray = _import_ray()
    if options.interleaved or options.python is not None:
        raise ValueError("--executor ray measures with the cluster's Python and one set of "
                         "plugins; interleaved A/B runs and --python need the local executor")
    with _connected(ray, options):
        return _Dispatcher(ray, options, on_result, before).run(iter(cases))


# -- connecting -------------------------------------------------------------------------------


@contextlib.contextmanager
def _connected(ray: Any, options: CaseOptions) -> Iterator[None]:
    """Join ``options.ray_address`` or start Ray here; leave a caller's connection alone."""
    if ray.is_initialized():
        yield
        return
    quiet: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    with tempfile.TemporaryDirectory(prefix="vlbench-ray-") as staging:
        try:
            if options.ray_address:
                ray.init(address=options.ray_address, **quiet,
                         runtime_env=job_runtime_env(options.plugins, Path(staging)))
            else:  # "local": a fresh instance, never a cluster someone else started here
                ray.init(address="local", include_dashboard=False, **quiet)
        except (ConnectionError, RuntimeError) as exc:  # a one-line error, not a traceback
            where = options.ray_address or "a local Ray instance"
            raise ValueError(f"cannot start or join {where}: {_first_line(exc)}") from None
        try:
            yield
        finally:
            ray.shutdown()


def job_runtime_env(plugins: Iterable[str], staging: Path) -> dict[str, Any]:
    """The job's runtime environment for a remote cluster: vlbench's packages and the plugin
    files (copied into ``staging`` as the package ``PLUGIN_PACKAGE``) as ``py_modules``."""
    modules = [str(_package_dir(name)) for name in PACKAGES]
    plugins = list(plugins)
    if plugins:
        package = staging / PLUGIN_PACKAGE
        package.mkdir(parents=True, exist_ok=True)
        (package / "__init__.py").write_text('"""Plugin files shipped by vlbench."""\n')
        for index, path in enumerate(plugins):
            shutil.copy2(path, package / _shipped_name(index, path))
        modules.append(str(package))
    return {"py_modules": modules}


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"cannot ship package {name!r} to the Ray workers: not importable here")
    return Path(next(iter(spec.submodule_search_locations)))


def _shipped_name(index: int, path: str) -> str:
    """Unique within the run: two plugins may share a file name in different directories."""
    return f"p{index}_{Path(path).name}"


# -- placing cases ----------------------------------------------------------------------------


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
                options: CaseOptions) -> dict[str, float] | None:
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


class _Dispatcher:
    """Keeps every node busy with at most what it can run unshared, and turns each finished
    task (or its failure) into one ``on_result`` call in this process."""

    def __init__(self, ray: Any, options: CaseOptions, on_result: Callable[[CaseResult], None],
                 before: Callable[[CaseSpec], None] | None) -> None:
        self.ray, self.options, self.on_result, self.before = ray, options, on_result, before
        self.task = ray.remote(max_retries=0, retry_exceptions=False)(measure_on_worker)
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
                    if not any(request_for(job.spec, r, self.options) for r in nodes.values()):
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
        able = [n for n, r in nodes.items() if request_for(job.spec, r, self.options)]
        if job.avoid is not None and any(n != job.avoid for n in able):
            able = [n for n in able if n != job.avoid]
        for node in sorted(able, key=lambda n: sum(used.get(n, {}).values())):
            request = request_for(job.spec, nodes[node], self.options) or {}
            if all(used.get(node, {}).get(k, 0.0) + v <= nodes[node].get(k, 0.0) + 1e-9
                   for k, v in request.items()):
                return node
        return None

    def _nowhere(self, spec: CaseSpec, nodes: dict[str, dict[str, float]]) -> str:
        need = "a GPU" if spec.device.startswith("cuda") else "a CPU"
        return f"no node of the Ray cluster ({len(nodes)} alive) has {need} for this case"

    def _submit(self, job: _Job, node: str, resources: dict[str, float]) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if self.before is not None:
            self.before(job.spec)
        request = request_for(job.spec, resources, self.options) or {}
        ref = self.task.options(
            num_cpus=request.get("CPU", 0.0), num_gpus=request.get("GPU", 0.0),
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
            runtime_env={"env_vars": thread_env(self.options.threads)},
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
            result = self._failure(flight, "error", f"Ray task failed: {_first_line(exc)}")
        except exceptions.OutOfMemoryError as exc:
            result = self._failure(flight, "oom", f"killed by Ray's memory monitor: "
                                   f"{_first_line(exc)}")
        except exceptions.RayError as exc:  # the worker or the node died under the case
            again = job.attempt <= RESUBMISSIONS
            reason = (f"Ray worker or node lost ({type(exc).__name__}: {_first_line(exc)}) "
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def thread_env(threads: int | None) -> dict[str, str]:
    """The thread variables a task's process starts with: the run's count, not Ray's default
    (the task's CPU request)."""
    if threads is None:
        return {}
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


# -- inside a Ray worker ----------------------------------------------------------------------

def measure_on_worker(spec: CaseSpec, options: CaseOptions, attempt: int,
                      request: dict[str, float]) -> dict[str, Any]:
    """The Ray task: one case, measured as the local executor measures it, returned as plain
    data with the worker's environment attached."""
    import ray

    from .env import collect_environment
    from .runner import apply_threads, run_case
    from .worker import format_budget

    os.environ.update(thread_env(options.threads))  # for libraries that read them late
    apply_threads(options.threads)
    _load_plugins(options.plugins)
    # Ray shows a GPU task only its own GPU (CUDA_VISIBLE_DEVICES): "cuda:N" is "cuda" here
    device = "cuda" if spec.device.startswith("cuda") else spec.device
    budget = options.memory_budget if device == "cpu" else None
    with _data_limit(budget):
        result = run_case(dataclasses.replace(spec, device=device), options)
    context = ray.get_runtime_context()
    env = collect_environment(device, argv=[])
    settings = {**result.settings,
                "env": {k: v for k, v in env.items() if k not in _ENV_DROP},
                "worker_pid": os.getpid(),
                "ray": {"node_id": context.get_node_id(), "node_ip": _soft_node_ip(ray),
                        "worker_pid": os.getpid(), "attempt": attempt, "resources": request,
                        "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                        "thread_env": {k: os.environ.get(k) for k in
                                       ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}}}
    message = result.message
    if result.status == "oom" and budget is not None:
        message = f"{message} (worker memory budget {format_budget(budget)})"
    return dataclasses.replace(result, spec=spec, settings=settings, message=message).to_dict()


def _soft_node_ip(ray: Any) -> str | None:
    with contextlib.suppress(Exception):
        return ray.util.get_node_ip_address()
    return None


def _load_plugins(paths: tuple[str, ...]) -> None:
    """The run's plugin files (the shipped copies on a remote cluster, the driver's own files on
    this machine) and the worker's entry-point plugins; ``load_plugins`` is idempotent per
    process, and Ray reuses processes."""
    if importlib.util.find_spec("vlbench.plugins") is None:  # a vlbench from before plugins
        if paths:
            raise RuntimeError("this run names plugin files but the worker's vlbench has no "
                               "vlbench.plugins")
        return
    from vlbench.plugins import load_plugins

    shipped = importlib.util.find_spec(PLUGIN_PACKAGE) if paths else None
    if shipped is not None and shipped.submodule_search_locations:
        base = Path(next(iter(shipped.submodule_search_locations)))
        paths = tuple(str(base / _shipped_name(i, p)) for i, p in enumerate(paths))
    load_plugins(paths)


@contextlib.contextmanager
def _data_limit(nbytes: int | None) -> Iterator[None]:
    """The run's memory budget (RLIMIT_DATA) for one case, lifted afterwards: Ray reuses the
    process for later tasks."""
    if nbytes is None:
        yield
        return
    previous = resource.getrlimit(resource.RLIMIT_DATA)
    soft, hard = previous
    limit = nbytes if hard == resource.RLIM_INFINITY else min(nbytes, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, previous)
