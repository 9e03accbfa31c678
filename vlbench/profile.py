"""Parameters and FLOPs per stage without timing.

Models whose stages are all static run on the meta device: full published sizes cost no memory
and no initialisation time, so tests can check them too. A model with data-dependent stages (a
region detector's RPN and NMS, whose output sizes depend on the values) cannot run on meta; it
runs once on the CPU, and its workload record (proposals, boxes entering NMS, ...) comes with it.
So do ``hf-`` models (transformers' classes): their mask helpers read tensor values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from architectures import HFPreset, build_model, case_preset, check_input
from architectures import region_backend as backend_of
from feature_extractors import stage_workload

from .flops import count_flops, count_params
from .results import FLOP_CONVENTION


def profile_model(
    name: str,
    *,
    image_size: tuple[int, int] | None = None,
    text_len: int | None = None,
    batch_size: int = 1,
    head: bool = False,
    seed: int = 0,
    region_backend: str | None = None,
    d2_config: str | None = None,
    d2_weights: str | None = None,
) -> dict[str, Any]:
    """The export schema's field names: params_total, flops_total, stages {name: {...}}.
    ``region_backend`` "detectron2": a detector on detectron2's modules (or the user's
    ``d2_config`` / ``d2_weights``)."""
    if (d2_config or d2_weights) and region_backend != "detectron2":
        raise ValueError("--d2-config and --d2-weights need --region-backend detectron2")
    preset = case_preset(name, region_backend, d2_config, d2_weights)
    image_size = image_size or preset.image_size
    text_len = text_len or preset.text_len
    check_input(preset, image_size)  # one line, not an error deep in the model
    device = "cpu"
    if not isinstance(preset, HFPreset):
        with torch.device("meta"):
            model = build_model(preset, head=head).eval()
        device = "cpu" if any(s.host_sync for s in model.stages()) else "meta"
    if device == "cpu":
        torch.manual_seed(seed)
        model = build_model(preset, head=head).eval()
    stages = model.stages()
    inputs = model.example_inputs(batch_size, image_size, text_len, device=device, seed=seed)
    params_total, params = count_params(model, stages)
    with torch.inference_mode():
        flops_total, flops = count_flops(model, lambda: _call(model, inputs), stages)
    return {
        "model": name,
        "region_backend": backend_of(preset),
        "batch_size": batch_size,
        "image_size": list(image_size),
        "text_len": text_len,
        "tokens": model.num_tokens(image_size, text_len),
        "flop_convention": FLOP_CONVENTION,
        "profiled_on": device,
        "params_total": params_total,
        "flops_total": flops_total,
        "stages": {
            s.name: {"kind": s.kind, "parent": s.parent, "params": params[s.name],
                     "flops": flops[s.name], "host_sync": s.host_sync,
                     "workload": stage_workload(model, s)}
            for s in stages
        },
    }


def _call(model: Any, inputs: Any) -> Any:
    return model(**inputs) if isinstance(inputs, Mapping) else model(*inputs)
