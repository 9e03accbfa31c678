"""The Python API (``vlbench.api.time_module``): any module timed per stage, the record the
command line stores, written to a store that ``report`` and ``compare`` read."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from feature_extractors import StageKind, Substage
from vlbench.api import time_module
from vlbench.cli import main
from vlbench.options import TimingOptions
from vlbench.store import Store

FAST = TimingOptions(warmup=1, min_repeats=3, min_time_s=0.0, max_repeats=3)


class Tower(nn.Module):
    """Two blocks called one by one, each a linear then an activation."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(),
                                                  nn.Linear(4 * width, width))
                                    for _ in range(2))
        self.head = nn.Linear(width, 2)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x)
        return self.head(x * scale)


def test_named_modules_are_stages_with_flops_params_and_times(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture
                                                               ) -> None:
    x = torch.randn(8, 16, 64)
    db = tmp_path / "api.db"
    result = time_module(Tower(), (x,), stages=["blocks.0", "blocks.1", "head"], name="tower",
                         timing=FAST, batch_size=8, store=db, label="from python")
    assert result.status == "ok", result.message
    stages = {s.name: s for s in result.stages}
    assert list(stages) == ["blocks.0", "blocks.1", "head"]
    assert {s.kind for s in stages.values()} == {"other"}
    assert stages["blocks.0"].flops == 2 * 8 * 16 * (64 * 256) * 2
    assert stages["head"].params == 64 * 2 + 2
    assert all(s.timing.n == 3 and s.calls == 1 for s in stages.values())
    assert result.flops_total > sum(s.flops for s in stages.values()) - 1
    with Store.open(db) as store:
        (run,) = [store.get_run(i) for i in store.run_ids()]
        (stored,) = store.cases(run.id)
    assert run.status == "finished" and run.label == "from python" and run.suite == "api"
    assert stored.spec.model == "tower" and stored.end_to_end == result.end_to_end
    assert main(["report", "--db", str(db), "--out", str(tmp_path / "r.html")]) == 0
    assert "tower" in (tmp_path / "r.html").read_text()
    assert main(["compare", "1", "1", "--db", str(db)]) == 0
    assert "tower" in capsys.readouterr().out


def test_kinds_named_sets_and_keyword_inputs() -> None:
    stages = {"blocks": Substage(StageKind.SINGLE_MODALITY, ("blocks.0", "blocks.1")),
              "head": "head"}
    result = time_module(Tower(), {"x": torch.randn(2, 4, 64), "scale": 0.5}, stages=stages,
                         timing=FAST)
    assert result.status == "ok", result.message
    by_name = {s.name: s for s in result.stages}
    assert by_name["blocks"].calls == 2 and by_name["blocks"].kind == "single_modality"
    assert by_name["blocks"].category == "single-modality encoders"
    assert by_name["head"].category == "head"
    assert result.spec.model == "Tower"


def test_no_stages_times_end_to_end_only_and_failures_are_records() -> None:
    result = time_module(Tower(), (torch.randn(2, 64),), timing=FAST)
    assert result.status == "ok" and result.stages == () and result.stage_sum_ms is None
    assert result.end_to_end.n == 3
    broken = time_module(Tower(), (torch.randn(2, 3),), stages=["head"], timing=FAST)
    assert broken.status == "error" and "RuntimeError" in broken.message


def test_bad_arguments_fail_before_measuring() -> None:
    with pytest.raises(ValueError, match="unknown precision 'fp64'"):
        time_module(Tower(), (torch.randn(2, 64),), precision="fp64")
    with pytest.raises(ValueError, match="unknown stage kind 'interactoin'"):
        time_module(Tower(), (torch.randn(2, 64),), stages={"head": "interactoin"})
    with pytest.raises(ValueError, match="names module 'nope'"):
        time_module(Tower(), (torch.randn(2, 64),), stages=["nope"])
