"""The matmul yardstick: a plausible FLOP rate that a tiny stage does not exceed."""

from __future__ import annotations

import time

import torch

from vlbench.calibrate import matmul_peak_flops


def test_peak_is_a_rate_that_real_work_does_not_beat():
    peak = matmul_peak_flops("cpu", "fp32", min_time_s=0.2, size=512)
    assert 1e8 < peak < 1e14  # between a slow core and a GPU: a rate, not a time
    # a deliberately poor workload (many tiny products) achieves well below the peak
    a = torch.randn(8, 8)
    t0 = time.perf_counter()
    for _ in range(2000):
        a @ a
    achieved = 2000 * 2 * 8**3 / (time.perf_counter() - t0)
    assert achieved < peak


def test_bf16_peak_runs():
    assert matmul_peak_flops("cpu", "bf16", min_time_s=0.05, size=256) > 0
