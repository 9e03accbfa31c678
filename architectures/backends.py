"""The region backend of a preset: vlbench's detector (torchvision parts) or detectron2's.

``with_region_backend(preset, "detectron2")`` swaps a preset's ``RegionFeaturesConfig`` for the
same detector built on detectron2 (same boxes, classes, width and embedding style), or for a
user's own detectron2 config and weights. Presets without a detector (patch, grid, precomputed
regions) are returned unchanged, so one backend choice applies to a whole suite of mixed models.
The preset keeps its name; a case on detectron2 says so in its ``region_backend`` (and its key).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from feature_extractors import Detectron2RegionsConfig, RegionFeaturesConfig, require_detectron2

from .compose import resolve_preset
from .hf import HFPreset
from .presets import Preset

BACKENDS = ("vlbench", "detectron2")
_D2_SUFFIX = " [detectron2 backend]"


def with_region_backend(preset: Preset, backend: str, d2_config: str | None = None,
                        d2_weights: str | None = None) -> Preset:
    """``preset`` with its region detector on ``backend`` ("vlbench" or "detectron2").

    ``d2_config`` / ``d2_weights`` (local files) are a user's own detectron2 network; they need
    the detectron2 backend. Errors are one line: an unknown backend, files without the backend,
    a missing file, or detectron2 not installed (with the pip command).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown region backend {backend!r}; valid: {', '.join(BACKENDS)}")
    given = [flag for flag, value in (("--d2-config", d2_config), ("--d2-weights", d2_weights))
             if value is not None]
    if backend == "vlbench":
        if given:
            raise ValueError(f"{' and '.join(given)} need --region-backend detectron2")
        return _to_vlbench(preset)
    require_detectron2()
    for what, path in (("config", d2_config), ("weights", d2_weights)):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"detectron2 {what} file {path!r} does not exist")
    visual = preset.visual
    if isinstance(visual, Detectron2RegionsConfig):
        visual = visual.to_regions()
    if not isinstance(visual, RegionFeaturesConfig):
        return preset
    d2 = Detectron2RegionsConfig.from_regions(visual, d2_config=d2_config, d2_weights=d2_weights)
    return replace(preset, visual=d2,
                   description=preset.description.removesuffix(_D2_SUFFIX) + _D2_SUFFIX)


def case_preset(name: str, backend: str | None = None, d2_config: str | None = None,
                d2_weights: str | None = None) -> Preset | HFPreset:
    """The preset a case builds: ``name`` with its detector on ``backend`` (None: vlbench's);
    the detectron2 files apply on that backend only."""
    preset = resolve_preset(name)
    if backend is None or isinstance(preset, HFPreset):
        return preset
    if backend == "vlbench":
        return with_region_backend(preset, backend)
    return with_region_backend(preset, backend, d2_config, d2_weights)


def region_backend(preset: Preset | HFPreset) -> str | None:
    """The backend of a preset's detector; None for a preset without one."""
    if isinstance(preset, HFPreset):
        return None
    if isinstance(preset.visual, Detectron2RegionsConfig):
        return "detectron2"
    return "vlbench" if isinstance(preset.visual, RegionFeaturesConfig) else None


def _to_vlbench(preset: Preset) -> Preset:
    if not isinstance(preset.visual, Detectron2RegionsConfig):
        return preset
    return replace(preset, visual=preset.visual.to_regions(),
                   description=preset.description.removesuffix(_D2_SUFFIX))
