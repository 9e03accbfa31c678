"""``HFModel``: a transformers model as the harness reads a model (``VLModel``'s interface).

It owns the library model as ``hf`` and calls its forward unchanged; its stages are the stage
map's, with module paths checked against the built model: a stage whose modules are missing is a
``StageDeclarationError`` naming the transformers version, never a stage that silently times
nothing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from feature_extractors import Stage, StageDeclarationError, StageKind, Substage, stage_kind

from .stage_map import InputShape, MethodStage, StageMap

ROOT = "hf"  # the library model's name inside the wrapper: stage paths start "hf."


class HFModel(nn.Module):
    """``hf``: the library model. ``embedder_name`` is the preset's name (``hf-vilt``),
    ``fusion_name`` the library class (``transformers:ViltModel``)."""

    def __init__(self, library: nn.Module, stage_map: StageMap, *, name: str,
                 regions: int = 0) -> None:
        super().__init__()
        self.hf = library
        self.regions = regions  # region-feature models: features per image
        #: what it was built from (``build_hf_model`` fills it; recorded with each case)
        self.sources: dict[str, Any] = {}
        self.stage_map = stage_map
        self.embedder_name = name
        self.fusion_name = f"transformers:{type(library).__name__}"
        self.visual_kind = stage_map.visual_kind
        synced = {p for s in stage_map.host_sync for p in stage_map.stages[s].modules}
        for path, members in stage_map.methods.items():
            try:
                MethodStage.install(library, path, members, host_sync=path in synced)
            except AttributeError:
                raise _missing(library, "method", path) from None
        self._stages = _resolve(library, stage_map)

    @property
    def substages(self) -> dict[str, Substage]:
        """The top-level stages (named sets of library modules): their times add up to the
        forward."""
        return {s.name: Substage(s.kind, s.modules) for s in self._stages if s.parent is None}

    def stages(self) -> list[Stage]:
        """Every mapped stage, each top-level stage followed by its children."""
        return list(self._stages)

    def forward(self, **inputs: Any) -> Any:
        return self.hf(**inputs)

    @torch.no_grad()
    def example_inputs(self, batch_size: int, image_size: tuple[int, int], text_len: int, *,
                       device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                       seed: int = 0) -> dict[str, Any]:
        """The library's keyword inputs (``pixel_values``, ``input_ids``, ``visual_feats``, ...),
        random, every token real; floating tensors in ``dtype``."""
        gen = torch.Generator().manual_seed(seed)
        shape = InputShape(batch_size, tuple(image_size), text_len, self.regions)
        raw = self.stage_map.inputs(self.hf.config, shape, gen)
        return {k: _to(v, device, dtype) for k, v in raw.items()}

    def example_images(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{self.embedder_name}: hf- models are timed on their forward; "
                                  "retrieval ranks with native presets")

    example_texts = example_images

    def num_tokens(self, image_size: tuple[int, int], text_len: int) -> dict[str, int]:
        """Token counts the fusion sees for one image-text pair."""
        shape = InputShape(1, tuple(image_size), text_len, self.regions)
        return {"text": text_len, "image": self.stage_map.image_tokens(self.hf.config, shape)}

    @property
    def attn_implementation(self) -> str:
        """The attention implementation each (sub-)config runs: ``eager``, ``sdpa``, or e.g.
        ``text: eager, vision: sdpa`` where they differ."""
        return attn_implementation(self.hf.config)


def attn_implementation(config: Any) -> str:
    found = {"": getattr(config, "_attn_implementation", None)}
    for key in ("text_config", "vision_config"):
        sub = getattr(config, key, None)
        if sub is not None:
            found[key.removesuffix("_config")] = getattr(sub, "_attn_implementation", None)
    values = {v for v in found.values() if v}
    if len(values) <= 1:
        return values.pop() if values else "unknown"
    return ", ".join(f"{k or 'model'}: {v}" for k, v in found.items() if v)


def _to(value: Any, device: torch.device | str, dtype: torch.dtype) -> Any:
    if not isinstance(value, torch.Tensor):
        return value
    return value.to(device, dtype) if value.is_floating_point() else value.to(device)


def _missing(library: nn.Module, what: str, path: str, stage: str = "") -> StageDeclarationError:
    import transformers

    cls = type(library).__name__
    where = f"stage {stage!r} names {what}" if stage else f"its stage map names {what}"
    return StageDeclarationError(
        f"{cls}: {where} {path!r}, which {cls} of transformers {transformers.__version__} does "
        "not have; the stage map (architectures.hf) needs updating for this version")


def _expand(library: nn.Module, path: str, stage: str) -> list[str]:
    """``path`` itself, or the children of a container (a hook on a container never fires)."""
    try:
        module = library.get_submodule(path)
    except AttributeError:
        raise _missing(library, "module", path, stage) from None
    if not isinstance(module, nn.ModuleList | nn.ModuleDict):
        return [path]
    out = [p for name, _ in module.named_children() for p in _expand(library, f"{path}.{name}",
                                                                      stage)]
    if not out:
        raise _missing(library, "a non-empty container", path, stage)
    return out


def _within(path: str, prefixes: set[str]) -> bool:
    return any(path == p or path.startswith(p + ".") for p in prefixes)


def _resolve(library: nn.Module, stage_map: StageMap) -> list[Stage]:
    """The map's stages as ``Stage``s with paths from the wrapper, checked: modules exist, a
    set's modules do not nest, top-level stages share none, children lie inside parents."""
    paths = {name: [p for m in sub.modules for p in _expand(library, m, name)]
             for name, sub in stage_map.stages.items()}
    taken: set[str] = set()
    for name, mods in paths.items():
        for p in mods:
            if _within(p, set(mods) - {p}) or mods.count(p) > 1:
                raise StageDeclarationError(f"stage {name!r}: module {p!r} is named twice or "
                                            "inside another of its modules (counted twice)")
        parent = stage_map.parent(name)
        if parent is None:
            if any(_within(p, taken) or _within(q, set(mods)) for p in mods for q in taken):
                raise StageDeclarationError(f"top-level stage {name!r} shares modules with "
                                            "another: the stage sum would count them twice")
            taken.update(mods)
        elif not all(_within(p, set(paths[parent])) for p in mods):
            raise StageDeclarationError(f"stage {name!r} has modules outside its parent "
                                        f"{parent!r}")
    out: list[Stage] = []
    for top in (n for n in stage_map.stages if stage_map.parent(n) is None):
        branch = [top] + [n for n in stage_map.stages if _descends(stage_map, n, top)]
        for name in branch:
            synced = any(n == name or _descends(stage_map, n, name) for n in stage_map.host_sync)
            out.append(Stage(name, _kind(stage_map, name), stage_map.parent(name),
                             synced or _syncs(library, paths[name]),
                             tuple(f"{ROOT}.{p}" for p in paths[name])))
    return out


def _descends(stage_map: StageMap, name: str, top: str) -> bool:
    parent = stage_map.parent(name)
    while parent is not None:
        if parent == top:
            return True
        parent = stage_map.parent(parent)
    return False


def _kind(stage_map: StageMap, name: str) -> StageKind:
    return stage_kind(stage_map.stages[name].kind, f"stage map[{name!r}]")


def _syncs(library: nn.Module, paths: list[str]) -> bool:
    return any(getattr(library.get_submodule(p), "host_sync", False) is True for p in paths)
