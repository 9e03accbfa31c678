"""The model/harness contract (feature_extractors.stages): stage kinds are an enumeration checked
when a model is built, the dict form of ``substages`` keeps working, and a stage can be a named
set of modules, timed as the sum of its calls, counted once for shared parameters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from architectures import VLModel, build_model
from feature_extractors import (
    Stage,
    StageDeclarationError,
    StageKind,
    Substage,
    declared_stages,
    stage_workload,
)
from vlbench import paper
from vlbench.flops import count_flops, count_params
from vlbench.timing import StageHooks, TimingOptions, measure
from vlbench.upgrade import LEGACY_CATEGORIES, OTHER

CPU = torch.device("cpu")


class Interleaved(nn.Module):
    """Three layers, each an attention-like linear then an "expert"; layers 1 and 2 share one
    expert module (as BLIP's text layers serve two paths), so its parameters count once."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        shared = nn.Linear(width, width)
        self.layers = nn.ModuleList(
            nn.ModuleDict({"attn": nn.Linear(width, width),
                           "expert": nn.Linear(width, width) if i == 0 else shared})
            for i in range(3))
        self.substages = {
            "attn": Substage(StageKind.INTERACTION, tuple(f"layers.{i}.attn" for i in range(3))),
            "expert": Substage("single_modality", tuple(f"layers.{i}.expert" for i in range(3))),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer["expert"](layer["attn"](x))
        return x


class Root(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.fusion = inner
        self.substages = {"fusion": "interaction"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fusion(x)


def test_named_set_is_one_stage_summed_over_its_modules() -> None:
    model = Root(Interleaved())
    stages = {s.name: s for s in declared_stages(model)}
    expert = stages["fusion.expert"]
    assert expert.kind is StageKind.SINGLE_MODALITY and expert.parent == "fusion"
    assert expert.modules == ("fusion.layers.0.expert", "fusion.layers.1.expert",
                              "fusion.layers.2.expert")
    assert expert.is_set and not stages["fusion"].is_set
    x = torch.randn(4, 32)
    with StageHooks(model, list(stages.values()), CPU) as hooks, torch.inference_mode():
        model(x)
        per_stage = hooks.collect()
    assert per_stage["fusion.expert"][1] == 3 and per_stage["fusion.attn"][1] == 3
    assert per_stage["fusion"][1] == 1
    # the sets' times add up to (at most) the parent's
    assert per_stage["fusion.expert"][0] + per_stage["fusion.attn"][0] <= per_stage["fusion"][0]
    total, params = count_params(model, list(stages.values()))
    assert params["fusion.expert"] == 2 * (32 * 32 + 32)  # the shared expert once
    assert params["fusion.attn"] == 3 * (32 * 32 + 32)
    assert total == params["fusion"] == 5 * (32 * 32 + 32)
    _, flops = count_flops(model, lambda: model(x), list(stages.values()))
    assert flops["fusion.expert"] == flops["fusion.attn"] == 3 * 2 * 4 * 32 * 32
    assert flops["fusion"] == flops["fusion.expert"] + flops["fusion.attn"]


def test_named_set_times_through_measure() -> None:
    model = Root(Interleaved())
    stages = declared_stages(model)
    x = torch.randn(4, 32)
    measured = measure(lambda: model(x), model, stages, CPU,
                       TimingOptions(warmup=1, min_repeats=3, min_time_s=0.0))
    assert measured.calls["fusion.expert"] == 3
    assert len(measured.stages_ms["fusion.expert"]) == len(measured.end_to_end_ms) == 3


def test_unknown_kind_fails_when_the_model_is_built() -> None:
    class Typo(nn.Module):
        substages = {"encoder": "interactoin"}

        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Identity()

    with pytest.raises(StageDeclarationError, match="unknown stage kind 'interactoin'"):
        declared_stages(Root(Typo()))
    tiny = build_model("vilt-b32-tiny")
    with pytest.raises(StageDeclarationError, match="Typo.substages"):
        VLModel(tiny.visual, tiny.text, Typo(), visual_kind="patch").stages()
    with pytest.raises(StageDeclarationError, match="unknown stage kind 'patches'"):
        VLModel(tiny.visual, tiny.text, tiny.fusion, visual_kind="patches")


def test_declarations_naming_missing_or_nested_modules_are_refused() -> None:
    class Missing(nn.Module):
        substages = {"encoder": StageKind.INTERACTION}

    with pytest.raises(StageDeclarationError, match="names module 'fusion.encoder'"):
        declared_stages(Root(Missing()))
    nested = Interleaved()
    nested.substages = {"bad": Substage(StageKind.HEAD, ("layers.0", "layers.0.attn"))}
    with pytest.raises(StageDeclarationError, match="one inside the other"):
        declared_stages(Root(nested))


def test_dict_form_keeps_working_and_kinds_compare_as_strings() -> None:
    """Plugins declare ``substages = {"stem": "patch", ...}``; stored results keep strings."""
    stages = {s.name: s for s in build_model("uniter-base-tiny").stages()}
    assert stages["visual.nms"].kind == "region_ops" and stages["visual"].kind == "region"
    assert isinstance(stages["visual.nms"].kind, StageKind)
    assert Stage("x", "head").kind is StageKind.HEAD
    assert StageKind.REGION_OPS.category == "region operations"
    assert StageKind.PATCH.category == StageKind.GRID.category == "patch or grid embedding"


def test_host_sync_and_workload_read_through_the_contract() -> None:
    model = build_model("uniter-base-tiny").eval()
    stages = {s.name: s for s in model.stages()}
    assert stages["visual"].host_sync and stages["visual.nms"].host_sync
    assert not stages["fusion"].host_sync
    inputs = model.example_inputs(1, (128, 160), 8)
    with torch.inference_mode():
        model(*inputs)
    work = stage_workload(model, stages["visual.nms"])
    assert work["boxes_in_nms"] > 0 and work["classes"] == 10
    assert stage_workload(model, stages["fusion"]) == {}


def test_stage_categories_are_the_reports_categories() -> None:
    """The model side names each kind's category (``StageKind.category``); the read side, which
    imports no model code, orders and colours the same strings, and reads runs stored before
    categories were with a frozen map that must agree with today's kinds."""
    assert {k.category for k in StageKind} <= {*paper.CATEGORIES, OTHER}
    for kind, category in LEGACY_CATEGORIES.items():
        assert StageKind(kind).category == category
