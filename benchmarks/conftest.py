"""What the component benchmarks run, and the machine they ran on.

``pytest benchmarks/test_components.py`` times every stage of every published preset with
pytest-benchmark. This file owns the selection (``--vlbench-models``, ``--vlbench-size``,
``--vlbench-device``), the parametrisation over (preset, stage), and the machine info saved
with every result; ``test_components.py`` owns how a stage is timed.

The default test run (``testpaths = tests``) never collects this directory: these are
measurements, not checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch

from architectures import PRESETS, build_model, resolve_preset
from architectures.compose import SIZES
from vlbench.env import collect_environment
from vlbench.precision import apply_precision, precision_flags

#: Every benchmark runs in fp32 with TF32 off (see ``vlbench.precision``).
PRECISION = "fp32"

#: Fields of ``collect_environment`` that describe the machine rather than the run.
ENV_FIELDS = ("cpu_model", "cgroup_cpu_quota", "torch_num_threads", "torch_num_interop_threads",
              "torch_cpu_capability")

#: GPU fields that identify a board and its limits. The current SM clock is left out: it moves
#: between runs, and pytest-benchmark warns on any machine-info difference when comparing.
GPU_FIELDS = ("name", "capability", "total_memory_bytes", "driver_version",
              "clocks_max_sm_mhz", "power_limit_w")

_OPTIONS = pytest.StashKey["BenchOptions"]()


@dataclass(frozen=True)
class BenchOptions:
    """The parsed ``--vlbench-*`` options. ``models`` are the names as given; each is resolved
    at ``size`` with ``resolve_preset(name, size)``."""

    models: tuple[str, ...]
    size: str
    device: str  # "cpu" or "cuda", never "auto"
    precision: str = PRECISION


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("vlbench", "vlbench component benchmarks")
    group.addoption("--vlbench-models", default=None, metavar="A,B",
                    help="comma-separated presets or EMBEDDER+FUSION pairs "
                         "(default: every published preset)")
    group.addoption("--vlbench-size", default="tiny", choices=SIZES,
                    help="tiny: test widths, a first try takes seconds; base: published sizes "
                         "(default: tiny)")
    group.addoption("--vlbench-device", default="auto", choices=("auto", "cpu", "cuda"),
                    help="auto: cuda when available, else cpu (default: auto)")


def published_presets() -> list[str]:
    return [name for name in PRESETS.names() if not name.endswith("-tiny")]


def parse_options(config: pytest.Config) -> BenchOptions:
    """Validate the options once; an unknown model fails with the list of valid names."""
    device = config.getoption("vlbench_device")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--vlbench-device cuda: torch sees no CUDA device")
    given = config.getoption("vlbench_models")
    models = [m.strip() for m in given.split(",") if m.strip()] if given else published_presets()
    size = config.getoption("vlbench_size")
    for name in models:
        try:  # the name as given first, so an error names what the user typed
            resolve_preset(name)
            resolve_preset(name, size)
        except (KeyError, ValueError) as exc:
            raise pytest.UsageError(f"--vlbench-models: {exc}") from None
    return BenchOptions(models=tuple(dict.fromkeys(models)), size=size, device=device)


def pytest_configure(config: pytest.Config) -> None:
    """Parse the options and set fp32 flags before anything reads them: pytest-benchmark reads
    machine info at session start (``--benchmark-compare``) as well as at the end."""
    config.stash[_OPTIONS] = parse_options(config)
    apply_precision(PRECISION)


@pytest.fixture(scope="session")
def vlbench_options(pytestconfig: pytest.Config) -> BenchOptions:
    return pytestconfig.stash[_OPTIONS]


def stage_names(name: str, size: str) -> list[str]:
    """A preset's stages, read from a weightless build on the meta device (collection must not
    allocate a base-size detector); a model the meta device cannot build is built for real."""
    preset = resolve_preset(name, size)
    try:
        with torch.device("meta"):
            model = build_model(preset)
    except Exception:  # noqa: BLE001 - a third-party model may touch data while building
        model = build_model(preset)
    return [stage.name for stage in model.stages()]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """(model, stage) for ``test_stage``; model alone for ``test_end_to_end``. Ids carry the
    resolved preset name (``vilt-b32-tiny``) so saved runs of different sizes never match up."""
    if "model_name" not in metafunc.fixturenames:
        return
    opts: BenchOptions = metafunc.config.stash[_OPTIONS]
    resolved = {m: resolve_preset(m, opts.size).name for m in opts.models}
    if "stage_name" in metafunc.fixturenames:
        cases = [(m, s) for m in opts.models for s in stage_names(m, opts.size)]
        metafunc.parametrize(("model_name", "stage_name"), cases,
                             ids=[f"{resolved[m]}:{s}" for m, s in cases])
    else:
        metafunc.parametrize("model_name", opts.models, ids=[resolved[m] for m in opts.models])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run every benchmark of one model together (its stages, then end to end), so the session
    holds one built model at a time instead of rebuilding each for its end-to-end test."""
    order = {m: i for i, m in enumerate(config.stash[_OPTIONS].models)}

    def rank(item: pytest.Item) -> int:
        return order[item.callspec.params["model_name"]]

    ours = [i for i, item in enumerate(items)
            if "model_name" in getattr(getattr(item, "callspec", None), "params", {})]
    for index, item in zip(ours, sorted((items[i] for i in ours), key=rank), strict=True):
        items[index] = item


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]
                                         ) -> None:
    """Library versions, GPU and precision flags: the context that shapes a timing and that
    pytest-benchmark's own machine info (CPU, Python) lacks. Only stable fields, since
    ``--benchmark-compare`` warns about any difference between runs."""
    opts: BenchOptions = config.stash[_OPTIONS]
    env = collect_environment(opts.device)
    gpu = env["cuda"]
    machine_info.update(
        torch_version=torch.__version__,
        versions=env["versions"],
        cuda_version=torch.version.cuda,
        cudnn_version=_cudnn_version(),
        gpu=None if gpu is None else {key: gpu.get(key) for key in GPU_FIELDS},
        **{key: env[key] for key in ENV_FIELDS},
        precision={"precision": PRECISION, **precision_flags()},
        vlbench={"size": opts.size, "device": opts.device},
    )


def _cudnn_version() -> int | None:
    try:
        return torch.backends.cudnn.version()
    except Exception:  # noqa: BLE001 - a CPU build may raise instead of answering None
        return None
