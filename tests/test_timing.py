"""The timing engine on a model whose stages do known, real work (milliseconds of matmuls)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

from vlbench.stats import summarize
from vlbench.timing import (
    StageHooks,
    StageNotFiredError,
    TimingOptions,
    check_fired,
    measure,
)


class MatmulWork(nn.Module):
    """``rounds`` products of a (256, 256) matrix with a (256, 256) weight."""

    def __init__(self, rounds: int) -> None:
        super().__init__()
        self.rounds = rounds
        self.weight = nn.Parameter(torch.randn(256, 256) / 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.rounds):
            x = torch.tanh(x @ self.weight)
        return x


class TwoStageModel(nn.Module):
    """``light`` does N rounds, ``heavy`` 2N; ``shared`` runs twice per forward."""

    def __init__(self, rounds: int = 40) -> None:
        super().__init__()
        self.light = MatmulWork(rounds)
        self.heavy = MatmulWork(2 * rounds)
        self.shared = MatmulWork(rounds // 4)
        self.unused = MatmulWork(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.light(x)
        x = self.heavy(x)
        return self.shared(self.shared(x))


@pytest.fixture(scope="module")
def measured():
    torch.manual_seed(0)
    model = TwoStageModel().eval()
    x = torch.randn(256, 256)

    def forward() -> object:
        with torch.inference_mode():
            return model(x)

    options = TimingOptions(warmup=2, min_repeats=12, min_time_s=0.0, max_repeats=12,
                            cpu_share_above_s=1e9)  # always separate iterations
    return measure(forward, model, ["light", "heavy", "shared"], torch.device("cpu"), options)


def test_counts_and_calls(measured):
    assert len(measured.end_to_end_ms) == 12
    assert all(len(v) == 12 for v in measured.stages_ms.values())
    assert measured.calls == {"light": 1, "heavy": 1, "shared": 2}


def test_stage_sum_tracks_end_to_end(measured):
    e2e = np.median(measured.end_to_end_ms)
    stage_sum = sum(np.median(v) for v in measured.stages_ms.values())
    assert e2e > 2.0, "the stages must do milliseconds of real work for this check to mean much"
    # the fastest iterations estimate the intrinsic cost whatever else the machine is doing
    per_iteration = [sum(s) for s in zip(*measured.stages_ms.values(), strict=True)]
    fastest = min(measured.end_to_end_ms)
    assert abs(min(per_iteration) - fastest) / fastest < 0.25
    assert abs(stage_sum - e2e) / e2e < 0.5


def test_twice_the_work_takes_longer(measured):
    # the fastest samples: another process on the machine cannot make a stage look faster
    assert min(measured.stages_ms["heavy"]) > 1.3 * min(measured.stages_ms["light"])


def test_summary_of_raw_samples_matches_numpy(measured):
    summary = summarize(measured.end_to_end_ms)
    assert summary.median_ms == pytest.approx(np.median(measured.end_to_end_ms))
    assert summary.n == 12


def test_a_declared_stage_that_never_fires_is_an_error():
    model = TwoStageModel(rounds=4)
    x = torch.randn(256, 256)
    with StageHooks(model, ["light", "unused"], torch.device("cpu")) as hooks:
        model(x)
        per_stage = hooks.collect()
    assert per_stage["unused"] == (0.0, 0)
    with pytest.raises(StageNotFiredError, match="unused"):
        check_fired(per_stage)
    options = TimingOptions(warmup=0, min_repeats=1, min_time_s=0.0, max_repeats=1)
    with pytest.raises(StageNotFiredError):
        measure(lambda: model(x), model, ["unused"], torch.device("cpu"), options)


def test_hooks_are_removed_after_use():
    model = TwoStageModel(rounds=1)
    with StageHooks(model, ["light"], torch.device("cpu")):
        assert model.light._forward_pre_hooks and model.light._forward_hooks
    assert not model.light._forward_pre_hooks and not model.light._forward_hooks


def test_repetitions_stop_on_count_and_time():
    model = TwoStageModel(rounds=1)
    x = torch.randn(256, 256)
    few = measure(lambda: model(x), model, ["light"], torch.device("cpu"),
                  TimingOptions(warmup=0, min_repeats=3, min_time_s=0.0, max_repeats=100))
    assert len(few.end_to_end_ms) == 3  # fast case, no minimum time: stops at the count
    began = time.perf_counter()
    timed = measure(lambda: model(x), model, ["light"], torch.device("cpu"),
                    TimingOptions(warmup=0, min_repeats=3, min_time_s=0.2, max_repeats=100000))
    assert time.perf_counter() - began >= 0.2  # kept going until the minimum time had passed
    assert len(timed.end_to_end_ms) >= 3
    capped = measure(lambda: model(x), model, ["light"], torch.device("cpu"),
                     TimingOptions(warmup=0, min_repeats=2, min_time_s=60.0, max_repeats=4))
    assert len(capped.end_to_end_ms) == 4  # the cap wins over the minimum time


@pytest.mark.parametrize("bad", [dict(min_repeats=0), dict(warmup=-1), dict(min_time_s=-1.0),
                                 dict(min_repeats=5, max_repeats=2)])
def test_timing_options_reject_impossible_settings(bad):
    with pytest.raises(ValueError):
        TimingOptions(**bad)


def test_a_slow_case_stops_at_the_time_cap_with_a_floor_of_samples():
    model = TwoStageModel(rounds=1)
    x = torch.randn(256, 256)
    options = TimingOptions(warmup=0, min_repeats=50, min_time_s=0.0, max_repeats=100,
                            max_time_s=1e-6)
    slow = measure(lambda: model(x), model, ["light"], torch.device("cpu"), options)
    assert len(slow.end_to_end_ms) == 3  # MIN_SAMPLES, not min_repeats


def test_slow_cpu_cases_share_iterations_and_fast_ones_do_not():
    model = TwoStageModel(rounds=2)
    x = torch.randn(256, 256)
    calls = []

    def forward() -> object:
        calls.append(1)
        return model(x)

    never = TimingOptions(warmup=3, min_repeats=2, min_time_s=0.0, max_repeats=2,
                          cpu_share_above_s=1e9)
    fast = measure(forward, model, ["light", "heavy"], torch.device("cpu"), never)
    assert not fast.shared and len(calls) == 3 + 2 * 2  # all warm-ups, two forwards a sample
    calls.clear()
    options = TimingOptions(warmup=3, min_repeats=2, min_time_s=0.0, max_repeats=2,
                            cpu_share_above_s=0.0)
    slow = measure(forward, model, ["light", "heavy"], torch.device("cpu"), options)
    assert slow.shared
    # one warm-up (not three), then one forward per sample (not two)
    assert len(calls) == 1 + 2
    assert len(slow.end_to_end_ms) == 2
    for e2e, light, heavy in zip(slow.end_to_end_ms, slow.stages_ms["light"],
                                 slow.stages_ms["heavy"], strict=True):
        assert e2e >= light + heavy  # the end-to-end sample encloses the hooked stages


def test_nvtx_ranges_wrap_each_stage_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--nvtx``: every hooked stage call is one NVTX range named after the stage, pushed and
    popped in order (Nsight cannot run here; the ranges can be checked)."""
    events: list[str] = []
    monkeypatch.setattr(torch.cuda.nvtx, "range_push", lambda name: events.append(f"+{name}"))
    monkeypatch.setattr(torch.cuda.nvtx, "range_pop", lambda: events.append("-"))
    model = TwoStageModel(rounds=2).eval()
    x = torch.randn(8, 256)
    measured = measure(lambda: model(x), model, ["light", "heavy"], torch.device("cpu"),
                       TimingOptions(warmup=0, min_repeats=2, max_repeats=2, min_time_s=0.0,
                                     cpu_share_above_s=1e9), nvtx=True)
    assert measured.forwards == 4  # two hooked and two plain iterations
    assert events.count("+light") == events.count("+heavy") == 2
    depth = 0
    for event in events:
        depth += 1 if event.startswith("+") else -1
        assert depth >= 0
    assert depth == 0
