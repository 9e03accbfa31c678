"""Suites: YAML files naming models, batch sizes and precisions, expanded into cases.

Built-in suites ship as package data of ``benchmarks`` and are read with ``importlib.resources``,
so they are found from a non-editable install too. A suite entry is a preset name, or a mapping
``{model: NAME, image_size: HxW, text_len: N}`` that overrides the canonical input, or a mapping
with ``sweep: {image_size: [...]}`` (or ``text_len``) that stands for one entry per value: one
input varied at a time, so that ``vlbench.fit`` can attribute the time change to token count.
``batch_sizes`` is a list, or ``{double_from: N, max: M}`` for N, 2N, 4N ... up to M; a run stops
a model's larger batch sizes once one is out of memory (``vlbench.launchers.OomCutoff``).
``modes`` lists execution modes (eager, compile, cudagraphs; default eager); ``threads`` is a
list of CPU thread counts or ``all`` (1 up to the cores this process may use), one case each;
without it every case uses the run's thread count.

A model entry may also fix its own ``precision`` and ``mode`` (one each, in place of the suite's
lists and of ``--precisions`` / ``--modes``) and say ``gpu_only: REASON``: off a GPU that case is
recorded as skipped with the reason (the ``regions`` suite's bf16 and compile steps). A model
name may carry a variant suffix, ``uniter-base[nms=class-agnostic]``
(``architectures.variants``); cases carry its canonical spelling, so their keys are stable.

``tasks`` makes a suite time something other than one forward (a scenario of
``vlbench.scenarios``): ``retrieval-t2i`` and ``retrieval-i2t`` rank a gallery. Such a suite
names its gallery sizes ``gallery_sizes`` (a list, or ``{double_from: N, max: M}``; they are the
cases' ``gallery_size``, stored as ``batch_size``, so ``--batch-sizes`` overrides them) and may
give larger ones for GPU runs as ``gallery_sizes_cuda``.

A suite file is user input: it is bounded before anything walks it (``vlbench.suite_file``: size,
nesting, YAML alias expansion), and every value is checked as its flag's value is (``timing``
entries by the ``TimingOptions`` fields' own parsers).

A model that re-ranks (an ITC and an ITM path: ALBEF, BLIP, VLMo's fusion way;
``architectures.retrieval.strategies``) gets one case per ``rerank_k`` (its candidates per query;
default 16, 128, 256; each clamped to N when measured), every other model one case as before.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from . import parse
from .machine import usable_cores
from .options import TimingOptions, check_values
from .results import REGION_BACKENDS, CaseSpec
from .retrieval_cost import TASKS as RETRIEVAL_TASKS
from .suite_file import load_yaml, read_bounded

#: a re-ranking's candidates per query when a suite does not say: ALBEF's and BLIP's retrieval
#: configurations use 256 (COCO) and 128 (Flickr30K)
RERANK_K = (16, 128, 256)


class SuiteError(ValueError):
    """A suite that cannot be loaded; the message is one line."""


@dataclass(frozen=True)
class ModelEntry:
    model: str
    image_size: tuple[int, int] | None = None
    text_len: int | None = None
    #: this entry's one precision and mode, in place of the suite's lists; None: the suite's
    precision: str | None = None
    mode: str | None = None
    #: why this entry is measured on a GPU only; elsewhere its cases are recorded as skipped
    gpu_only: str | None = None
    #: "detectron2": this entry's region detector on detectron2's modules; None: vlbench's
    region_backend: str | None = None


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    models: tuple[ModelEntry, ...]
    batch_sizes: tuple[int, ...] = (1,)
    precisions: tuple[str, ...] = ("fp32",)
    timing: dict[str, Any] = field(default_factory=dict)  # TimingOptions overrides
    modes: tuple[str, ...] = ("eager",)
    #: thread counts to sweep; (None,): the run's setting
    threads: tuple[int | None, ...] = (None,)
    #: what each case times: (None,) one forward; retrieval tasks rank a gallery of batch_size
    tasks: tuple[str | None, ...] = (None,)
    #: batch (gallery) sizes for CUDA devices, where they differ; None: ``batch_sizes``
    cuda_batch_sizes: tuple[int, ...] | None = None
    #: a re-ranking model's candidates per query, one case each (retrieval tasks only)
    rerank_k: tuple[int, ...] = RERANK_K

    def rerank_ks(self, model: str, task: str | None) -> tuple[int | None, ...]:
        """The k of each case of ``model`` for ``task``: ``rerank_k`` for a re-ranking model's
        retrieval, else (None,)."""
        return self.rerank_k if task in RETRIEVAL_TASKS and _reranks(model) else (None,)

    def cases(self, device: str) -> list[CaseSpec]:
        """Every case of the suite; ValueError for an input a model cannot take at all (an image
        smaller than a detector's smallest anchor, or than one patch), before anything is
        built."""
        from architectures import (  # model code: loaded when cases are made
            check_input,
            is_variant,
            region_backend,
            resolve_preset,
        )

        sizes = self.batch_sizes
        if device.startswith("cuda") and self.cuda_batch_sizes is not None:
            sizes = self.cuda_batch_sizes
        out = []
        for entry in self.models:
            preset = resolve_preset(entry.model)
            image_size = entry.image_size or preset.image_size
            try:
                check_input(preset, image_size)
            except ValueError as exc:
                raise ValueError(f"{entry.model}: {exc}; give a larger --image-size (or the "
                                 "suite's image_size)") from None
            # a variant's canonical spelling (the preset's name), so its case keys are stable
            model = preset.name if is_variant(entry.model) else entry.model
            precisions = (entry.precision,) if entry.precision else self.precisions
            modes = (entry.mode,) if entry.mode else self.modes
            # a backend choice applies to the models with a detector only
            backend = entry.region_backend if region_backend(preset) else None
            for task in self.tasks:
                out.extend(
                    CaseSpec(model=model, batch_size=batch, image_size=image_size,
                             text_len=entry.text_len or preset.text_len, precision=precision,
                             device=device, mode=mode, threads=threads, task=task, rerank_k=k,
                             gpu_only=entry.gpu_only, region_backend=backend)
                    for k, batch, precision, mode, threads in itertools.product(
                        self.rerank_ks(entry.model, task), sizes, precisions, modes,
                        self.threads))
        return out


@cache
def _reranks(model: str) -> bool:
    """Whether a model's natural retrieval is a re-ranking (its fusion built on the meta
    device: no memory)."""
    from architectures import resolve_preset  # model code: loaded when needed
    from architectures.retrieval import preset_strategies

    return preset_strategies(resolve_preset(model))[0] == "rerank"


def _builtin_dir() -> Any:
    return resources.files("benchmarks").joinpath("suites")


def builtin_suites() -> list[str]:
    return sorted(p.name[:-5] for p in _builtin_dir().iterdir() if p.name.endswith(".yaml"))


def load_suite(name_or_path: str, *, resolve: bool = True) -> Suite:
    """A built-in suite by name, or a YAML file by path. ``resolve=False`` checks everything
    but the model and task names, which need the registries (model code, torch): what
    ``vlbench run`` checks before it loads them."""
    path = Path(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")) or path.is_file():
        try:
            text = read_bounded(path)
        except OSError as exc:
            raise SuiteError(f"cannot read suite file {name_or_path}: "
                             f"{exc.strerror or exc}") from None
        except ValueError as exc:
            raise SuiteError(f"suite file {name_or_path}: {exc}") from None
        source = str(path)
    else:
        resource = _builtin_dir().joinpath(f"{name_or_path}.yaml")
        if not resource.is_file():
            raise SuiteError(f"unknown suite {name_or_path!r}; valid: "
                             f"{', '.join(builtin_suites())} (or a path to a .yaml file)")
        text = resource.read_text()
        source = name_or_path
    return parse_suite(text, source, resolve=resolve)


def parse_suite(text: str, source: str = "<suite>", *, resolve: bool = True) -> Suite:
    try:
        data = load_yaml(text)  # bounded: size, nesting and alias expansion
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SuiteError(f"suite {source}: not valid YAML{where}") from None
    except ValueError as exc:
        raise SuiteError(f"suite {source}: {exc}") from None
    if not isinstance(data, dict):
        raise SuiteError(f"suite {source}: expected a mapping with a 'models' list")
    unknown = set(data) - {"name", "description", "models", "batch_sizes", "precisions", "timing",
                           "modes", "threads", "tasks", "gallery_sizes", "gallery_sizes_cuda",
                           "rerank_k"}
    if unknown:
        raise SuiteError(f"suite {source}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    try:
        models = tuple(e for item in _list(data, "models", []) for e in _entries(item))
        if not models:
            raise ValueError("'models' must be a non-empty list")
        if resolve:
            from architectures import resolve_preset  # model code: the registries

            for entry in models:
                resolve_preset(entry.model)
        tasks = parse_tasks(data.get("tasks"), resolve=resolve)
        batches, cuda_batches = _sizes(data, tasks)
        rerank_k = parse_rerank_k(data.get("rerank_k"), tasks)
        precisions = parse.precisions(_list(data, "precisions", ["fp32"]))
        modes = parse.execution_modes(_list(data, "modes", ["eager"]))
        threads = parse_threads(data.get("threads"))
        timing = data.get("timing") or {}
        if not isinstance(timing, dict):
            raise ValueError("'timing' must be a mapping")
        check_timing(timing)
    except (KeyError, ValueError, TypeError) as exc:
        raise SuiteError(f"suite {source}: {exc}") from None
    return Suite(
        name=str(data.get("name", Path(source).stem)),
        description=str(data.get("description", "")),
        models=models,
        batch_sizes=batches,
        precisions=precisions,
        timing=timing,
        modes=modes,
        threads=threads,
        tasks=tasks,
        cuda_batch_sizes=cuda_batches,
        rerank_k=rerank_k,
    )


def check_timing(timing: dict) -> None:
    """``timing``: each entry a ``TimingOptions`` field, its value checked by that field's own
    parser (the flag's: NaN, infinities and non-integers refused)."""
    try:
        check_values(TimingOptions, timing)
    except ValueError as exc:
        raise ValueError(f"timing: {exc}") from None


def parse_tasks(value: Any, *, resolve: bool = True) -> tuple[str | None, ...]:
    """``tasks``: missing (one forward per case) or a list of scenario tasks, no repeats."""
    if value is None:
        return (None,)
    if not isinstance(value, list) or not value:
        raise ValueError(f"'tasks' must be a non-empty list, got {value!r}")
    if not all(isinstance(task, str) for task in value):
        raise ValueError(f"'tasks' must be a list of task names, got {value!r}")
    tasks = value
    if resolve:
        from .scenarios import known_tasks  # the scenarios' registry loads torch

        tasks = known_tasks()
    for task in value:
        if task not in tasks:
            raise ValueError(f"unknown task {task!r}; valid: {', '.join(tasks)}")
    if len(set(value)) != len(value):
        raise ValueError(f"'tasks' lists a task twice: {', '.join(value)}")
    return tuple(value)


def parse_rerank_k(value: Any, tasks: tuple[str | None, ...]) -> tuple[int, ...]:
    """``rerank_k``: missing (``RERANK_K``) or, with retrieval tasks only, a list of positive
    integers, no repeats."""
    if value is None:
        return RERANK_K
    if not any(t in RETRIEVAL_TASKS for t in tasks):
        raise ValueError("'rerank_k' needs retrieval 'tasks' (e.g. [retrieval-t2i])")
    if not isinstance(value, list) or not value or not all(_positive_int(v) for v in value):
        raise ValueError("'rerank_k' must be a list of positive integers (e.g. [16, 128, 256]), "
                         f"got {value!r}")
    if len(set(value)) != len(value):
        raise ValueError(f"'rerank_k' lists a k twice: {', '.join(map(str, value))}")
    return tuple(value)


def _sizes(data: dict, tasks: tuple[str | None, ...]) -> tuple[tuple[int, ...],
                                                              tuple[int, ...] | None]:
    """Batch sizes, or for a task suite its gallery sizes (and those for CUDA runs)."""
    gallery = {k for k in ("gallery_sizes", "gallery_sizes_cuda") if k in data}
    if gallery and tasks == (None,):
        raise ValueError(f"{', '.join(sorted(gallery))} need 'tasks' (e.g. [retrieval-t2i])")
    if "gallery_sizes" in data and "batch_sizes" in data:
        raise ValueError("give 'gallery_sizes' or 'batch_sizes', not both")
    key = "gallery_sizes" if "gallery_sizes" in data else "batch_sizes"
    cuda = data.get("gallery_sizes_cuda")
    return _batch_sizes(data.get(key)), _batch_sizes(cuda) if cuda is not None else None


def parse_threads(value: Any) -> tuple[int | None, ...]:
    """``threads``: missing (the run's setting), ``all`` (1 .. usable cores) or a list of
    positive integers."""
    if value is None:
        return (None,)
    if value == "all":
        return tuple(range(1, usable_cores() + 1))
    if not isinstance(value, list) or not value or not all(_positive_int(v) for v in value):
        raise ValueError("'threads' must be a list of positive integers (e.g. [1, 2]) or 'all', "
                         f"got {value!r}")
    return tuple(value)


def _list(data: dict, key: str, default: list) -> list:
    """data[key] as a list (missing or null: ``default``); a scalar is an error, not a string
    iterated character by character."""
    value = data.get(key)
    if value is None:
        return default
    if not isinstance(value, list):
        raise ValueError(f"'{key}' must be a list, got {value!r}")
    return value


def _batch_sizes(value: Any) -> tuple[int, ...]:
    """A list of batch sizes, or ``{double_from: N, max: M}``: a throughput sweep written once
    instead of a list that must be edited at both ends."""
    if isinstance(value, dict):
        if set(value) != {"double_from", "max"}:
            raise ValueError("'batch_sizes' as a mapping is {double_from: N, max: M}, "
                             f"got keys {', '.join(sorted(map(str, value)))}")
        start, cap = value["double_from"], value["max"]
        if not all(_positive_int(v) for v in (start, cap)) or cap < start:
            raise ValueError("'batch_sizes' double_from and max must be positive integers with "
                             f"max >= double_from, got {start!r} and {cap!r}")
        sizes = [start]
        while sizes[-1] * 2 <= cap:
            sizes.append(sizes[-1] * 2)
        return tuple(sizes)
    return parse.int_list(",".join(map(str, _list({"batch_sizes": value}, "batch_sizes", [1]))),
                    "batch_sizes")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _entries(item: Any) -> list[ModelEntry]:
    """One entry, or one per value of a ``sweep`` (the other input stays as written)."""
    if not (isinstance(item, dict) and "sweep" in item):
        return [_entry(item)]
    sweep = item["sweep"]
    if not isinstance(sweep, dict) or len(sweep) != 1 or next(iter(sweep)) not in (
        "image_size", "text_len"
    ):
        raise ValueError("'sweep' is a mapping with one key, image_size or text_len, and a "
                         f"list of values; got {sweep!r}")
    key, values = next(iter(sweep.items()))
    if key in item:
        raise ValueError(f"a model entry cannot both set and sweep {key}")
    if not isinstance(values, list) or len(values) < 2:
        raise ValueError(f"'sweep' {key} must be a list of at least two values, got {values!r}")
    rest = {k: v for k, v in item.items() if k != "sweep"}
    return [_entry({**rest, key: value}) for value in values]


def _entry(item: Any) -> ModelEntry:
    if isinstance(item, str):
        return ModelEntry(item)
    if isinstance(item, dict) and "model" in item:
        extra = set(item) - {"model", "image_size", "text_len", "precision", "mode", "gpu_only",
                             "region_backend"}
        if extra:
            raise ValueError(f"unknown model entry key(s) {', '.join(sorted(map(str, extra)))}")
        size = item.get("image_size")
        text_len = item.get("text_len")
        if text_len is not None and not _positive_int(text_len):
            raise ValueError(f"text_len must be a positive integer, got {text_len!r}")
        return ModelEntry(
            str(item["model"]), parse.image_size(size) if size is not None else None, text_len,
            **_entry_how(item),
        )
    raise ValueError(f"a model entry is a name or a mapping with 'model', got {item!r}")


def _entry_how(item: dict) -> dict[str, str | None]:
    """An entry's own ``precision``, ``mode`` and ``region_backend`` (one each) and its
    ``gpu_only`` reason."""
    precision, mode, why, backend = (item.get(k) for k in ("precision", "mode", "gpu_only",
                                                           "region_backend"))
    if backend not in (None, "vlbench", *REGION_BACKENDS):
        raise ValueError(f"region_backend is vlbench or {' or '.join(REGION_BACKENDS)}, got "
                         f"{backend!r}")
    if why is not None and (not isinstance(why, str) or not why.strip()):
        raise ValueError(f"gpu_only is the reason the entry needs a GPU (text), got {why!r}")
    return {"precision": parse.precisions([precision])[0] if precision is not None else None,
            "mode": parse.execution_modes([mode])[0] if mode is not None else None,
            "gpu_only": why.strip() if why is not None else None,
            "region_backend": None if backend == "vlbench" else backend}
