"""A run's options, split by who reads them: ``MeasureOptions`` (the scenarios: how a case is
measured) and ``LaunchOptions`` (the launchers: which processes and machines measure it).

Both are frozen dataclasses recorded with the run (``RunOptions.settings()``: one flat mapping,
one key per field) and read back from it (``RunOptions.from_settings``) so that a resume
measures the missing cases exactly as the first pass did, and a worker started in another
environment gets the same options. Fields that ``vlbench run`` sets from a flag declare it in
their metadata (``flag(...)``): the command line's flags, and the check that a resume takes none
of them, are derived from these fields. Pure: no torch.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .parse import (
    BadValue,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    text,
)

#: a field's metadata key for its command-line flag: (flag names, argparse keyword arguments)
FLAG = "flag"
#: a field's metadata key for the parser of a field that no flag sets
CHECK = "check"


def flag(*names: str, **kwargs: Any) -> dict[str, Any]:
    """Field metadata declaring the ``vlbench run`` flag that sets the field."""
    return {FLAG: (names, kwargs)}


def check_values(cls: type, values: Mapping[str, Any]) -> None:
    """Each value through its field's parser (its flag's ``type=`` and ``choices``), so a value
    from a suite file, a stored run or the Python API is checked exactly as the flag's is: the
    one check of an option, where it is defined. Raises ``BadValue`` naming the flag and field."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in values if k not in known)
    if unknown:
        raise BadValue(f"unknown key(s) {', '.join(unknown)}; valid: {', '.join(known)}")
    for name, value in values.items():
        f = known[name]
        if value is None:
            continue
        names, kwargs = f.metadata.get(FLAG, ((), {}))
        what = f"{names[0]} ({name})" if names else name
        parser, choices = kwargs.get("type") or f.metadata.get(CHECK), kwargs.get("choices")
        items = value if isinstance(value, (list, tuple)) else (value,)
        try:
            for item in items:
                if parser is not None:
                    parser(item)
                if choices is not None and item not in choices:
                    raise BadValue(f"expected one of {', '.join(choices)}, got {item!r}")
        except BadValue as exc:
            raise BadValue(f"{what}: {exc}") from None


def _check_fields(options: Any) -> None:
    check_values(type(options), {f.name: getattr(options, f.name)
                                 for f in dataclasses.fields(options)})


@dataclass(frozen=True)
class TimingOptions:
    """Warm-up, then repetitions until both ``min_repeats`` and ``min_time_s`` are met (fast
    cases stop at the time, slow ones at the count), never more than ``max_repeats``; a very slow
    case (a region detector on a CPU) stops once ``max_time_s`` has passed with at least
    ``MIN_SAMPLES`` repetitions, and its sample count says so."""

    warmup: int = field(default=2, metadata=flag(
        "--warmup", type=non_negative_int, help="warm-up forwards per case"))
    min_repeats: int = field(default=10, metadata=flag(
        "--repeats", type=positive_int, help="minimum timed iterations per case"))
    min_time_s: float = field(default=2.0, metadata=flag(
        "--min-time", type=non_negative_float, help="minimum timed seconds per case"))
    max_repeats: int = field(default=500, metadata=flag(
        "--max-repeats", type=positive_int, help="at most this many timed iterations"))
    max_time_s: float = field(default=120.0, metadata=flag(
        "--max-time", type=positive_float,
        help="a slow case stops after this many seconds (at least 3 iterations)"))
    #: on CPU, a forward slower than this shares its iterations: the end-to-end time is taken
    #: around the hooked forward (hooks cost microseconds against seconds of work) and one
    #: warm-up suffices; on GPU iterations are never shared
    cpu_share_above_s: float = field(default=1.0, metadata={CHECK: non_negative_float})

    def __post_init__(self) -> None:
        _check_fields(self)
        if self.warmup < 0 or self.min_repeats < 1 or self.max_repeats < self.min_repeats:
            raise ValueError("need warmup >= 0 and 1 <= min_repeats <= max_repeats")
        if self.min_time_s < 0 or self.max_time_s <= 0:
            raise ValueError("need min_time_s >= 0 and max_time_s > 0")

    def done(self, samples: int, elapsed_s: float) -> bool:
        """The stopping rule every timing loop uses: enough samples and time, the cap, or a slow
        case past ``max_time_s`` with at least ``MIN_SAMPLES``."""
        if samples >= self.max_repeats:
            return True
        if samples >= self.min_repeats and elapsed_s >= self.min_time_s:
            return True
        return samples >= min(MIN_SAMPLES, self.min_repeats) and elapsed_s >= self.max_time_s


#: a case that runs out of ``max_time_s`` still gets at least this many samples
MIN_SAMPLES = 3


@dataclass(frozen=True)
class MeasureOptions:
    """How every case of a run is measured (read by the scenarios)."""

    timing: TimingOptions = TimingOptions()
    head: bool = field(default=False, metadata=flag(
        "--head", action="store_true", help="include each preset's task head"))
    seed: int = field(default=0, metadata=flag(
        "--seed", type=non_negative_int, help="seed for weights and inputs (default 0)"))
    #: torch.compile backend for "compile" cases; None: torch's default (inductor)
    compile_backend: str | None = field(default=None, metadata=flag(
        "--compile-backend", type=text, help="torch.compile backend for compile cases "
        "(default inductor; aot_eager compiles in seconds)"))
    #: write one torch.profiler chrome trace per case into this directory
    trace_dir: str | None = field(default=None, metadata=flag(
        "--trace", type=text, metavar="DIR",
        help="write a torch.profiler chrome trace of one forward per case into DIR"))
    #: wrap each stage's timed calls in an NVTX range named after the stage
    nvtx: bool = field(default=False, metadata=flag(
        "--nvtx", action="store_true",
        help="wrap each stage in an NVTX range named after it (for Nsight Systems)"))
    #: hf- models: build from this save_pretrained directory (config.json, weights if present)
    hf_dir: str | None = field(default=None, metadata=flag(
        "--hf-dir", type=text, metavar="PATH",
        help="hf- models: build transformers' class from this save_pretrained directory "
        "(its config.json, and its weights where present; else random weights)"))
    #: native presets: load this checkpoint (save_pretrained directory or state dict)
    weights: str | None = field(default=None, metadata=flag(
        "--weights", type=text, metavar="PATH",
        help="native presets: load trained weights from a transformers save_pretrained "
        "directory or a safetensors / torch state dict of the reference model"))
    #: a user's own detectron2 network for the detectron2 region backend (local files)
    d2_config: str | None = field(default=None, metadata=flag(
        "--d2-config", type=text, metavar="FILE",
        help="--region-backend detectron2: build the detector from this detectron2 config "
        "(.yaml)"))
    d2_weights: str | None = field(default=None, metadata=flag(
        "--d2-weights", type=text, metavar="FILE",
        help="--region-backend detectron2: load this detectron2 checkpoint (model_final.pth)"))

    def __post_init__(self) -> None:
        _check_fields(self)


@dataclass(frozen=True)
class LaunchOptions:
    """Who measures the cases, in which processes and on which machines (read by the
    launchers, ``vlbench.launchers``)."""

    #: torch intra-op threads, applied in whichever process measures; None keeps torch's default
    threads: int | None = field(default=None, metadata=flag(
        "--threads", type=positive_int, help="torch CPU threads (default: torch's)"))
    #: "process": reused worker processes (``vlbench.worker``); "none": this process
    isolation: str = field(default="none", metadata=flag(
        "--no-isolation", action="store_true",
        help="measure in this process (debugging); by default each case runs in a worker "
        "process, so a crash or out-of-memory costs one case, not the run"))
    #: bytes of private memory a CPU worker may hold (RLIMIT_DATA); None: no limit
    memory_budget_bytes: int | None = field(default=None, metadata=flag(
        "--memory-budget", type=positive_float, metavar="GIB",
        help="CPU runs: memory a worker may hold, in GiB (2^30 bytes), libraries included; "
        "beyond it a case is recorded 'oom' (default 80%% of memory)"))
    #: who runs the cases: "local" (this machine) or "ray" (``vlbench.launchers.ray_cluster``)
    executor: str = field(default="local", metadata=flag(
        "--executor", choices=["local", "ray"],
        help="local (default): this machine; ray: one Ray task per case, one whole GPU each "
        "(pip install 'vlbench[ray]')"))
    #: Ray cluster to join; None starts Ray locally
    ray_address: str | None = field(default=None, metadata=flag(
        "--address", type=text, help="--executor ray: the Ray cluster to join (default: start Ray "
        "locally)"))
    #: Ray on CPU nodes: let cases share a node's cores (default: one case per node)
    allow_shared: bool = field(default=False, metadata=flag(
        "--allow-shared", action="store_true",
        help="--executor ray on CPU nodes: let cases share a node's cores"))
    #: user plugin files loaded (``vlbench.plugins``) in every process that builds models; the
    #: flag is every command's, not only run's
    plugins: tuple[str, ...] = field(default=(), metadata=flag(
        "--plugin", action="append", type=text, default=[], metavar="FILE.py",
        help="a user plugin file registering embedders, fusions or presets (repeatable; entry "
        "points of group 'vlbench.plugins' load always)"))
    #: Python interpreter of the worker processes; None: this one
    python: str | None = None
    #: interleaved A/B runs: side A's plugin files and interpreter (side B uses ``plugins`` and
    #: ``python``); both None: not an A/B run
    baseline_plugins: tuple[str, ...] | None = field(default=None, metadata=flag(
        "--baseline-plugin", action="append", type=text, metavar="FILE.py",
        help="interleaved A/B: side A (baseline) loads this plugin file instead of --plugin's; "
        "rounds alternate A B A B in separate workers"))
    baseline_python: str | None = field(default=None, metadata=flag(
        "--baseline-python", type=text, metavar="PYTHON",
        help="interleaved A/B: side A's workers run this interpreter (another environment "
        "with vlbench installed, e.g. the base branch's)"))

    def __post_init__(self) -> None:
        _check_fields(self)

    @property
    def isolated(self) -> bool:
        return self.isolation == "process"

    @property
    def interleaved(self) -> bool:
        return self.baseline_plugins is not None or self.baseline_python is not None

    def for_side(self, side: str | None) -> LaunchOptions:
        """The options side ``"A"`` (baseline) or ``"B"``/None (current) measures with."""
        if side != "A":
            return self
        return dataclasses.replace(
            self, plugins=self.plugins if self.baseline_plugins is None else self.baseline_plugins,
            python=self.baseline_python or self.python)


@dataclass(frozen=True)
class RunOptions:
    """Everything a run's cases are measured with; recorded with the run."""

    measure: MeasureOptions = MeasureOptions()
    launch: LaunchOptions = LaunchOptions()

    def settings(self) -> dict[str, Any]:
        """One flat mapping, one key per field (what ``from_settings`` reads back)."""
        return {**_plain_fields(self.measure), **_plain_fields(self.launch)}

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> RunOptions:
        """The options of a stored run; keys a run of an older vlbench lacks take defaults."""
        return cls(measure=_from_plain(MeasureOptions, settings),
                   launch=_from_plain(LaunchOptions, settings))


def _plain_fields(options: Any) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def _from_plain(cls: type, settings: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in settings:
            continue
        value, hint = settings[f.name], hints[f.name]
        if dataclasses.is_dataclass(hint):
            value = hint(**value)
        elif value is not None and typing.get_origin(_not_none(hint)) is tuple:
            value = tuple(value)
        values[f.name] = value
    return cls(**values)


def _not_none(hint: Any) -> Any:
    """``X | None`` -> ``X``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) in (typing.Union, type(int | None)) and args else hint


def flagged_fields(*classes: type) -> list[dataclasses.Field]:
    """The fields of ``classes`` (and of their dataclass-typed fields) that declare a flag."""
    out = []
    for cls in classes:
        for f in dataclasses.fields(cls):
            if FLAG in f.metadata:
                out.append(f)
            elif dataclasses.is_dataclass(f.default):
                out.extend(flagged_fields(type(f.default)))
    return out
