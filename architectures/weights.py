"""``--weights PATH``: trained weights into a native preset, from a transformers
``save_pretrained`` directory or a safetensors / torch state dict of the corresponding reference
model (ViLT, CLIP, LXMERT, VisualBERT, BLIP), through the parity mapping
(``architectures.weight_maps``).

A checkpoint that does not match the preset (missing or unexpected tensors, wrong shapes, another
model type) is a one-line ``ValueError`` listing the first mismatches, raised before any tensor is
copied; ``check_weights`` finds the same on a model built on the meta device, so the command line
refuses it before a run starts. A load records the checkpoint's path, size and SHA-256.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .preset import Preset
from .weight_maps import NAMINGS, ReferenceNaming, Source, reference_family

#: weight files of a save_pretrained directory, by preference (a sharded one has an index)
DIR_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
             "pytorch_model.bin.index.json")
#: index tables some checkpoints carry as buffers; never weights
INDEX_BUFFERS = ("position_ids", "token_type_ids")
SHOWN = 3  # mismatches named per kind in an error


def digest(files: Sequence[Path]) -> dict[str, Any]:
    """Files, total size and SHA-256 (of the one file, or of the files' contents in order)."""
    h = hashlib.sha256()
    size = 0
    for path in files:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
                size += len(block)
    return {"files": [str(p) for p in files], "bytes": size, "sha256": h.hexdigest()}


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint's files, format, ``config.json`` (directories) and tensor shapes."""

    path: Path
    files: tuple[Path, ...]
    format: str  # "safetensors" or "torch"
    config: Mapping[str, Any] | None
    shapes: Mapping[str, tuple[int, ...]]

    def tensors(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for f in self.files:
            out.update(_read(f, self.format))
        return out


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint's layout (safetensors: only the header)."""
    root = Path(path)
    config = None
    if root.is_dir():
        files = weight_files(root)
        if not files:
            raise ValueError(f"--weights {path}: no weights there ({', '.join(DIR_FILES[::2])})")
        if (root / "config.json").is_file():
            config = json.loads((root / "config.json").read_text())
    elif root.is_file():
        files = [root]
    else:
        raise ValueError(f"--weights {path}: no such file or directory")
    fmt = "safetensors" if files[0].suffix == ".safetensors" else "torch"
    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        shapes.update(_shapes(f, fmt))
    return Checkpoint(root.resolve(), tuple(files), fmt, config, shapes)


def weight_files(root: Path) -> list[Path]:
    """The weight files of a ``save_pretrained`` directory (every shard of a sharded one);
    none where it holds only a config."""
    for name in DIR_FILES:
        path = root / name
        if path.is_file():
            if not name.endswith(".index.json"):
                return [path]
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
            return [root / s for s in shards]
    return []


def _shapes(path: Path, fmt: str) -> dict[str, tuple[int, ...]]:
    if fmt == "safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
        except Exception as exc:  # safetensors raises its own error types
            raise ValueError(f"--weights {path}: not a safetensors file ({exc})") from None
    return {k: tuple(t.shape) for k, t in _read(path, fmt).items()}


def _read(path: Path, fmt: str) -> dict[str, torch.Tensor]:
    if fmt == "safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # pickle, zip and format errors alike
        raise ValueError(f"--weights {path}: not a torch state dict ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor)
                                             for v in data.values()):
        raise ValueError(f"--weights {path}: not a state dict (a mapping of names to tensors)")
    return data


def _squeezed(shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


def _plan(model: nn.Module, preset: Preset, ckpt: Checkpoint
          ) -> tuple[ReferenceNaming, dict[str, Source], dict[str, str], list[str]]:
    """Our parameter -> its checkpoint tensor; the checkpoint's names as read -> as mapped;
    the checkpoint tensors left unused. A one-line ``ValueError`` on any mismatch."""
    naming = naming_for(preset, ckpt.path)
    where = f"--weights {ckpt.path} does not match {preset.name}"
    model_type = (ckpt.config or {}).get("model_type")
    if model_type is not None and model_type != naming.model_type:
        raise ValueError(f"{where}: it holds a {model_type!r} model, {preset.name} takes "
                         f"{naming.model_type!r} ({naming.reference}) weights")
    names = {k.removeprefix(naming.base_prefix): k for k in ckpt.shapes}
    plan, missing, wrong = {}, [], []
    for ours, param in model.named_parameters():
        if ours in naming.kept:
            continue
        src = naming.source(ours)
        if src.name not in names:
            missing.append(src.name)
            continue
        shape = ckpt.shapes[names[src.name]]
        if src.chunk is not None:
            shape = (shape[0] // 3, *shape[1:])
        if _squeezed(shape) != _squeezed(param.shape):
            wrong.append(f"{src.name}: {tuple(shape)} in the checkpoint, "
                         f"{tuple(param.shape)} here")
        plan[ours] = src
    used = {s.name for s in plan.values()}
    spare = [n for n in names if n not in used]
    unexpected = [n for n in spare if not _ignorable(n, naming)]
    problems = [_listed(missing, "missing"), _listed(unexpected, "unexpected"),
                _listed(wrong, "of the wrong shape")]
    if any(problems):
        raise ValueError(f"{where} ({naming.reference} names): "
                         + "; ".join(p for p in problems if p))
    return naming, plan, names, spare


def naming_for(preset: Preset, path: str | Path) -> ReferenceNaming:
    """The reference naming of the preset's family; a preset no reference expresses (a
    detector, ALBEF) is refused before the checkpoint is read."""
    try:
        return NAMINGS[reference_family(preset)]
    except ValueError as exc:
        raise ValueError(f"--weights {path}: no reference checkpoint fits {preset.name} "
                         f"({exc})") from None


def _ignorable(name: str, naming: ReferenceNaming) -> bool:
    return (name in naming.ignored or name.startswith(naming.task_heads)
            or name.rsplit(".", 1)[-1] in INDEX_BUFFERS)


def _listed(items: list[str], what: str) -> str:
    if not items:
        return ""
    more = ", ..." if len(items) > SHOWN else ""
    return f"{len(items)} {what} ({', '.join(items[:SHOWN])}{more})"


def check_weights(model: nn.Module, preset: Preset, path: str | Path) -> None:
    """Raise what ``load_weights`` would, reading only the checkpoint's layout; ``model`` may
    be on the meta device."""
    naming_for(preset, path)
    _plan(model, preset, open_checkpoint(path))


#: (path, size, mtime) -> digest: a run's cases load one checkpoint many times
_DIGESTS: dict[tuple[str, int, float], dict[str, Any]] = {}


def _cached_digest(ckpt: Checkpoint) -> dict[str, Any]:
    stats = [f.stat() for f in ckpt.files]
    key = (str(ckpt.path), sum(s.st_size for s in stats), max(s.st_mtime for s in stats))
    if key not in _DIGESTS:
        _DIGESTS[key] = digest(ckpt.files)
    return _DIGESTS[key]


@torch.no_grad()
def load_weights(model: nn.Module, preset: Preset, path: str | Path) -> dict[str, Any]:
    """Copy the checkpoint into ``model`` (built from ``preset``); returns the record a case
    keeps: path, format, size, SHA-256, the reference naming, what was loaded, left unused
    (known task heads, index buffers) and kept at initialisation."""
    naming_for(preset, path)
    ckpt = open_checkpoint(path)
    naming, plan, names, spare = _plan(model, preset, ckpt)
    tensors = ckpt.tensors()
    params = dict(model.named_parameters())
    for ours, src in plan.items():
        tensor = tensors[names[src.name]]
        if src.chunk is not None:
            tensor = tensor.chunk(3, dim=0)[src.chunk]
        params[ours].copy_(tensor.reshape(params[ours].shape))
    record = {"path": str(ckpt.path), "format": ckpt.format, **_cached_digest(ckpt),
              "reference": naming.reference, "loaded": len(plan), "unused": sorted(spare),
              "kept_initialised": [n for n in naming.kept if n in params]}
    if naming.note:
        record["note"] = naming.note
    return record
