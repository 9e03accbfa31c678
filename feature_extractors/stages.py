"""The contract between models and the harness: what a stage is, which kinds of stage exist, and
how a module declares its stages, its host synchronisation and its data-dependent workload.

Models declare; the harness reads through the functions here and nowhere else, so a new model
never needs harness code, and a misspelt kind fails when the model is built rather than showing
up as an "other" bar in a report.

A module declares its stages in ``substages``, a mapping from stage name to a ``StageKind`` (or
its string value, the form plugins have always used) or a ``Substage``:

- ``{"encoder": StageKind.INTERACTION}``: the child module ``encoder`` is a stage;
- ``{"v_ffn": Substage(StageKind.SINGLE_MODALITY, modules=("layers.0.v_ffn", ...))}``: a stage
  that is a *named set of modules* (paths relative to the declaring module), timed as the sum of
  their calls, with the call count recorded and shared parameters counted once. A hook on a
  container fires only when the container itself is called; a VLMo expert is twelve modules
  interleaved with attention, and transformers' BridgeTower calls its layers one by one.

A module that synchronises with the host by design (NMS, data-dependent selection) says
``host_sync = True``; one whose work depends on the data records it in ``last_workload``
(``{"boxes_in_nms": 480000, ...}``) on every forward.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable

from torch import nn

# Report categories: the groups of the ViLT paper's Figure 1 (what a stacked bar is split into).
BACKBONE = "backbone"
REGION_OPS = "region operations"
VISUAL_EMBEDDING = "patch or grid embedding"
TEXT_EMBEDDING = "text embedding"
SINGLE_MODALITY = "single-modality encoders"
INTERACTION = "modality interaction"
HEAD = "head"
#: retrieval's steps (offline gallery, per query, ranking) and modules timed without a kind:
#: never part of a Figure-1 comparison
OTHER = "other"


class StageKind(StrEnum):
    """What a stage does, for reports; a ``str`` so stored results keep plain strings."""

    BACKBONE = "backbone"
    REGION_OPS = "region_ops"
    PATCH = "patch"
    GRID = "grid"
    REGION = "region"
    PRECOMPUTED = "precomputed"
    VISUAL_EMBEDDING = "visual_embedding"
    TEXT = "text"
    SINGLE_MODALITY = "single_modality"
    INTERACTION = "interaction"
    HEAD = "head"
    OFFLINE = "offline"
    PER_QUERY = "per_query"
    RANKING = "ranking"
    #: a module a user names for timing without saying what it does (the Python API)
    OTHER = "other"

    @property
    def category(self) -> str:
        """The report category this kind of work belongs to."""
        return _CATEGORY[self]


_CATEGORY = {
    StageKind.BACKBONE: BACKBONE,
    StageKind.REGION_OPS: REGION_OPS,
    StageKind.PATCH: VISUAL_EMBEDDING,
    StageKind.GRID: VISUAL_EMBEDDING,
    StageKind.REGION: VISUAL_EMBEDDING,  # a region embedder's own time outside its parts
    StageKind.PRECOMPUTED: VISUAL_EMBEDDING,
    StageKind.VISUAL_EMBEDDING: VISUAL_EMBEDDING,
    StageKind.TEXT: TEXT_EMBEDDING,
    StageKind.SINGLE_MODALITY: SINGLE_MODALITY,
    StageKind.INTERACTION: INTERACTION,
    StageKind.HEAD: HEAD,
    StageKind.OFFLINE: OTHER,
    StageKind.PER_QUERY: OTHER,
    StageKind.RANKING: OTHER,
    StageKind.OTHER: OTHER,
}


class StageDeclarationError(ValueError):
    """A model declares a stage the harness cannot time: an unknown kind, a missing module."""


def stage_kind(value: StageKind | str, where: str = "") -> StageKind:
    """``value`` as a ``StageKind``; an unknown string is a one-line error listing the kinds."""
    try:
        return StageKind(value)
    except ValueError:
        at = f" ({where})" if where else ""
        raise StageDeclarationError(
            f"unknown stage kind {value!r}{at}; valid: {', '.join(k.value for k in StageKind)}"
        ) from None


@dataclass(frozen=True)
class Substage:
    """A declared stage: its kind and, for a named set, the modules (relative paths) it sums."""

    kind: StageKind | str
    modules: tuple[str, ...] = ()


@dataclass(frozen=True)
class Stage:
    """A named stage the harness times, counts and reports.

    ``parent`` is the enclosing stage (None for a top-level stage, whose times add up to the
    forward); ``modules`` are the module paths from the model's root whose calls make up the
    stage: the stage's own module, or a named set.
    """

    name: str
    kind: StageKind
    parent: str | None = None
    host_sync: bool = False  # data-dependent host synchronisation by design (NMS, selection)
    modules: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", stage_kind(self.kind, self.name))
        if not self.modules:
            object.__setattr__(self, "modules", (self.name,))

    @property
    def is_set(self) -> bool:
        """Whether the stage is a named set of modules rather than one module of its name."""
        return self.modules != (self.name,)


def stage_paths(stage: Stage | str) -> tuple[str, tuple[str, ...]]:
    """(name, module paths) of a stage, or of a bare module path (a one-module stage)."""
    if isinstance(stage, str):
        return stage, (stage,)
    return stage.name, stage.modules


@runtime_checkable
class DeclaresStages(Protocol):
    substages: Mapping[str, StageKind | str | Substage]


@runtime_checkable
class SyncsWithHost(Protocol):
    host_sync: bool


@runtime_checkable
class RecordsWorkload(Protocol):
    last_workload: Mapping[str, int]


def substages_of(module: nn.Module) -> dict[str, Substage]:
    """The stages ``module`` declares, validated (kinds known)."""
    declared = module.substages if isinstance(module, DeclaresStages) else {}
    return _validated(declared, type(module).__name__)


def _validated(declared: Mapping[str, StageKind | str | Substage], owner: str
               ) -> dict[str, Substage]:
    out = {}
    for name, value in declared.items():
        sub = value if isinstance(value, Substage) else Substage(value)
        out[name] = Substage(stage_kind(sub.kind, f"{owner}.substages[{name!r}]"),
                             tuple(sub.modules))
    return out


def syncs_with_host(module: nn.Module) -> bool:
    """Whether the module itself declares host synchronisation."""
    return isinstance(module, SyncsWithHost) and bool(module.host_sync)


def workload_of(module: nn.Module) -> dict[str, int]:
    """The data-dependent work the module recorded in its last forward ({} if it records none)."""
    return dict(module.last_workload) if isinstance(module, RecordsWorkload) else {}


def stage_workload(root: nn.Module, stage: Stage) -> dict[str, int]:
    """What a stage's modules recorded in the last forward (summed over a named set)."""
    out: dict[str, int] = {}
    for path in stage.modules:
        for key, value in workload_of(root.get_submodule(path)).items():
            out[key] = out.get(key, 0) + value
    return out


def declared_stages(root: nn.Module, top: Mapping[str, StageKind | str | Substage] | None = None
                    ) -> list[Stage]:
    """Every stage of a model, depth first: the ``top`` stages (default: the root's own
    ``substages``) and, recursively, what each stage's module declares. A stage synchronises with
    the host when its module says so or any stage inside it does. Raises
    ``StageDeclarationError`` for an unknown kind, a missing module, or a named set whose modules
    nest (their times would count twice)."""
    declared = substages_of(root) if top is None else _validated(top, type(root).__name__)
    return _walk(root, "", declared)


def _walk(root: nn.Module, prefix: str, declared: dict[str, Substage]) -> list[Stage]:
    out: list[Stage] = []
    for child, sub in declared.items():
        name = f"{prefix}.{child}" if prefix else child
        if sub.modules:
            paths = tuple(f"{prefix}.{m}" if prefix else m for m in sub.modules)
            modules = [_module(root, path, name) for path in paths]
            _check_disjoint(paths, name)
            out.append(Stage(name, sub.kind, prefix or None,
                             any(syncs_with_host(m) for m in modules), paths))
            continue
        module = _module(root, name, name)
        inner = _walk(root, name, substages_of(module))
        sync = syncs_with_host(module) or any(s.host_sync for s in inner)
        out.append(Stage(name, sub.kind, prefix or None, sync))
        out.extend(inner)
    return out


def _module(root: nn.Module, path: str, stage: str) -> nn.Module:
    try:
        return root.get_submodule(path)
    except AttributeError:
        raise StageDeclarationError(
            f"stage {stage!r} names module {path!r}, which {type(root).__name__} does not have"
        ) from None


def _check_disjoint(paths: tuple[str, ...], stage: str) -> None:
    for a in paths:
        for b in paths:
            if a != b and b.startswith(a + "."):
                raise StageDeclarationError(
                    f"stage {stage!r} sums modules {a!r} and {b!r}, one inside the other: "
                    "its calls would count twice")
        if paths.count(a) > 1:
            raise StageDeclarationError(f"stage {stage!r} names module {a!r} twice")
