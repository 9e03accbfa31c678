"""How vlbench times a transformers model it did not write: a ``StageMap`` per library class,
from the library's submodule names to vlbench's stage vocabulary.

A map names each stage (``visual``, ``text``, ``fusion``, ``fusion.vision_tower``, ``head``, ...;
a dotted name is a child of the stage it extends) and the library modules whose calls make it up,
as a ``Substage(kind, modules=(...))``: a *named set* summed over its calls, since library
forwards call layers one by one from the top (BridgeTower), so a hook on their container would
never fire. A module path that names a ``ModuleList`` or ``ModuleDict`` stands for its children
for the same reason. Work that lives in a method rather than a module (ViLT's
``ViltEmbeddings.visual_embed``) is declared in ``methods``: the model makes the method a
module at the same path (``MethodStage``) so that a hook can time it.

``STAGE_MAPS`` holds the maps by class name; a plugin adds one with ``register_stage_map``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from feature_extractors import Registry, StageKind, Substage, stage_kind


@dataclass(frozen=True)
class InputShape:
    """The input of one case: ``regions`` is the region-feature count of models that take
    features instead of images (LXMERT, VisualBERT; ``image_size`` is then the image the boxes
    lie in)."""

    batch: int
    image_size: tuple[int, int]
    text_len: int
    regions: int = 0


#: (config, input shape, generator) -> the library's keyword inputs
InputBuilder = Callable[[Any, InputShape, torch.Generator], dict[str, Any]]


@dataclass(frozen=True)
class StageMap:
    """What vlbench needs to time one transformers class.

    ``stages``: stage name -> ``Substage(kind, modules)`` with module paths of the library
    model; top-level names (no dot) must not share a module, so their times add up to the
    forward, and a child's modules lie inside its parent's. ``inputs`` builds random inputs
    of the right form (no tokenizer, no processor); ``image_tokens(config, shape)`` is the
    number of visual tokens the fusion sees. ``methods``: library methods timed as modules,
    each with the owner's members (submodules or parameters) whose parameters the stage counts.
    ``host_sync``: stages that synchronise with the host by design (they cannot run on the
    meta device or under CUDA graphs)."""

    stages: Mapping[str, Substage]
    inputs: InputBuilder
    image_tokens: Callable[[Any, InputShape], int]
    methods: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    host_sync: frozenset[str] = frozenset()
    note: str = ""

    def __post_init__(self) -> None:
        if "visual" not in self.stages:
            raise ValueError("a stage map needs a 'visual' stage (its kind is the model's "
                             "visual kind)")
        for name, sub in self.stages.items():
            stage_kind(sub.kind, f"stage map[{name!r}]")  # a misspelt kind fails here
            if not sub.modules:
                raise ValueError(f"stage {name!r} names no module")
        unknown = set(self.host_sync) - set(self.stages)
        if unknown:
            raise ValueError(f"host_sync names unknown stages: {', '.join(sorted(unknown))}")

    @property
    def visual_kind(self) -> StageKind:
        return stage_kind(self.stages["visual"].kind)

    def parent(self, name: str) -> str | None:
        """The declared stage ``name`` extends: the longest declared prefix before a dot."""
        head = name
        while "." in head:
            head = head.rsplit(".", 1)[0]
            if head in self.stages:
                return head
        return None


STAGE_MAPS: Registry[StageMap] = Registry("transformers stage map")


def register_stage_map(class_name: str, stage_map: StageMap) -> StageMap:
    """Time the transformers class ``class_name`` (e.g. ``"GitModel"``) with ``stage_map``."""
    return STAGE_MAPS.register(class_name, stage_map)


def prefixed(base: StageMap, prefix: str, extra: Mapping[str, Substage] | None = None
             ) -> StageMap:
    """``base`` for a class that wraps the base model under ``prefix`` (ViLT's task classes hold
    ``ViltModel`` as ``vilt``), plus ``extra`` stages (the task head)."""
    stages = {name: Substage(sub.kind, tuple(prefix + m for m in sub.modules))
              for name, sub in base.stages.items()}
    stages.update(extra or {})
    methods = {prefix + path: members for path, members in base.methods.items()}
    return StageMap(stages, base.inputs, base.image_tokens, methods, base.host_sync, base.note)


class MethodStage(nn.Module):
    """A library method made a module so that a hook can time it; the method runs unchanged.

    Installed at the method's own path (the owner's ``_modules`` for FLOP attribution, its
    instance ``__dict__`` so the library's ``self.method(...)`` calls it): it owns no tensors, so
    state dicts do not change. ``parameters()`` yields the owner's ``members`` the method uses,
    so the stage's parameter count is the visual embedding's (nothing is counted twice in the
    model's total, which reads each module's own parameters)."""

    def __init__(self, owner: nn.Module, method: str, members: tuple[str, ...],
                 host_sync: bool) -> None:
        super().__init__()
        self.call = getattr(type(owner), method).__get__(owner)  # a bound method: no child
        self.members = members
        self.host_sync = host_sync

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.call(*args, **kwargs)

    def parameters(self, recurse: bool = True) -> Any:
        owner = self.call.__self__
        seen: dict[int, nn.Parameter] = {}
        for name in self.members:
            member = getattr(owner, name)
            params = [member] if isinstance(member, nn.Parameter) else member.parameters()
            seen.update((id(p), p) for p in params)
        return iter(seen.values())

    @staticmethod
    def install(root: nn.Module, path: str, members: tuple[str, ...], host_sync: bool) -> None:
        """Make the method at ``path`` (``"embeddings.visual_embed"``) a ``MethodStage``."""
        owner_path, _, method = path.rpartition(".")
        owner = root.get_submodule(owner_path)
        if isinstance(owner.__dict__.get(method), MethodStage):
            return
        if not callable(getattr(type(owner), method, None)):
            raise AttributeError(f"{type(owner).__name__} has no method {method!r}")
        stage = MethodStage(owner, method, members, host_sync)
        owner._modules[method] = stage
        owner.__dict__[method] = stage
