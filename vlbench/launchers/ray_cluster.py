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
node can take one, so a case that follows an ``oom`` is skipped as with the local launchers
(``vlbench.launchers.OomCutoff``) unless it was already running beside it. Nodes are read from
the cluster as cases are placed: a node that joins mid-run gets work, an autoscaler's future
nodes are not waited for. The placement itself is ``vlbench.launchers.ray_dispatch``.

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
A task sets the run's thread count (``LaunchOptions.threads``) itself: Ray starts task processes
with ``OMP_NUM_THREADS`` set to the task's CPU request (1 unless told otherwise), which would
silently change what a CPU case measures. The task's runtime environment sets
``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` to the run's count before the process starts, the task
calls ``torch.set_num_threads``, and both are recorded (``settings["ray"]["thread_env"]``,
``settings["threads"]``). A thread count beyond the node's usable cores, or a memory budget
beyond its memory, is recorded as the case's error, saying so (``vlbench.machine``): only the
task sees the node it runs on. Every result carries the worker's environment (``settings["env"]``:
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
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..budget import data_limit, oom_message
from ..context import apply_threads
from ..env import collect_environment
from ..machine import machine_problems
from ..measure import run_case
from ..options import LaunchOptions, RunOptions
from ..plugins import load_plugins
from ..results import CaseResult, CaseSpec
from .base import BeforeCase, OnResult
from .ray_dispatch import Dispatcher, first_line, thread_env

INSTALL_HINT = "pip install 'vlbench[ray]'"
#: the top-level packages a worker needs to measure a case
PACKAGES = ("vlbench", "architectures", "feature_extractors", "benchmarks")
#: the py_module that carries the run's plugin files to the workers
PLUGIN_PACKAGE = "vlbench_ray_plugins"
#: per-case environment keys left out of a result: the run's record has them, and they are long
_ENV_DROP = ("argv", "command", "torch_config")


def check_ray_available() -> None:
    """Raise ValueError (one line, the CLI's exit 2) when Ray cannot be imported."""
    _import_ray()


def _import_ray():  # noqa: ANN202 - ray is optional: no annotation that needs it
    try:
        import ray  # optional (vlbench[ray]): imported only when a run uses it
    except ImportError:
        raise ValueError(f"--executor ray needs Ray, which is not installed: {INSTALL_HINT}"
                         ) from None
    return ray


class RayLauncher:
    def __init__(self, options: RunOptions) -> None:
        launch = options.launch
        if launch.interleaved or launch.python is not None:
            raise ValueError("--executor ray measures with the cluster's Python and one set of "
                             "plugins; interleaved A/B runs and --python need the local "
                             "executor")
        self.options = options

    def run(self, cases: Iterable[CaseSpec], on_result: OnResult,
            before: BeforeCase | None = None) -> list[CaseResult]:
        """The cases on a Ray cluster: ``on_result`` (the store) runs here, as each case
        finishes, in the order they finish."""
        ray = _import_ray()
        with _connected(ray, self.options.launch):
            dispatcher = Dispatcher(ray, measure_on_worker, self.options, on_result, before)
            return dispatcher.run(iter(cases))


# -- connecting -------------------------------------------------------------------------------


@contextlib.contextmanager
def _connected(ray: Any, options: LaunchOptions) -> Iterator[None]:
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
            raise ValueError(f"cannot start or join {where}: {first_line(exc)}") from None
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


# -- inside a Ray worker ----------------------------------------------------------------------

def measure_on_worker(spec: CaseSpec, options: RunOptions, attempt: int,
                      request: dict[str, float]) -> dict[str, Any]:
    """The Ray task: one case, measured as the local launchers measure it, returned as plain
    data with the worker's environment attached."""
    ray = _import_ray()
    launch = options.launch
    os.environ.update(thread_env(launch.threads))  # for libraries that read them late
    apply_threads(launch.threads)
    _load_plugins(launch.plugins)
    # Ray shows a GPU task only its own GPU (CUDA_VISIBLE_DEVICES): "cuda:N" is "cuda" here
    device = "cuda" if spec.device.startswith("cuda") else spec.device
    budget = launch.memory_budget_bytes if device == "cpu" else None
    # this node's cores and memory bound the case, not the driver's
    problems = machine_problems([spec.threads or launch.threads], budget,
                                where=f"Ray node {_soft_node_ip(ray) or 'here'}")
    if problems:
        result = CaseResult(spec=spec, status="error", message="; ".join(problems))
    else:
        with data_limit(budget):
            result = run_case(dataclasses.replace(spec, device=device), options.measure)
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
    message = oom_message(result.message, budget) if result.status == "oom" else result.message
    return dataclasses.replace(result, spec=spec, settings=settings, message=message).to_dict()


def _soft_node_ip(ray: Any) -> str | None:
    with contextlib.suppress(Exception):
        return ray.util.get_node_ip_address()
    return None


def _load_plugins(paths: tuple[str, ...]) -> None:
    """The run's plugin files (the shipped copies on a remote cluster, the driver's own files on
    this machine) and the worker's entry-point plugins; ``load_plugins`` is idempotent per
    process, and Ray reuses processes."""
    shipped = importlib.util.find_spec(PLUGIN_PACKAGE) if paths else None
    if shipped is not None and shipped.submodule_search_locations:
        base = Path(next(iter(shipped.submodule_search_locations)))
        paths = tuple(str(base / _shipped_name(i, p)) for i, p in enumerate(paths))
    load_plugins(paths)
