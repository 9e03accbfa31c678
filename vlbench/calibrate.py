"""A machine's attainable FLOP rate, measured in the same run: the yardstick for "achieved
share of peak". A large matrix product at the run's precision is about the best any stage can
hope for on that device, so a stage's achieved FLOP/s divided by it says how well the stage uses
the hardware (a region detector's NMS: almost nothing; a transformer's matmuls: most of it)."""

from __future__ import annotations

import time

import torch

from .precision import autocast_dtype

#: square matrix size per device type: large enough to reach the GEMM plateau
SIZES = {"cpu": 1024, "cuda": 8192}
#: seconds of the calibration repeated after every case (``vlbench.contention``): short, since
#: it runs per case, yet a few products on a CPU (about 20 ms each on two cores) and dozens on a
#: GPU, so that its best is comparable with the run's first, longer calibration
RECHECK_S = 0.1


def matmul_peak_flops(device: str | torch.device, precision: str = "fp32",
                      min_time_s: float = 0.5, size: int | None = None) -> float:
    """FLOP/s of an n x n matrix product at ``precision`` (best of repeated products; one
    multiply-add = 2 FLOPs) under the precision flags in force: the case context applies the
    case's flags first (``vlbench.context``), so the yardstick runs as the case does."""
    device = torch.device(device)
    n = size or SIZES.get(device.type, 1024)
    dtype = autocast_dtype(precision) or torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    flops = 2.0 * n**3
    best = float("inf")
    began = time.perf_counter()
    with torch.inference_mode():
        torch.mm(a, b)  # warm-up
        while True:
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(
                    enable_timing=True)
                start.record()
                torch.mm(a, b)
                end.record()
                torch.cuda.synchronize()
                seconds = start.elapsed_time(end) / 1e3
            else:
                t0 = time.perf_counter()
                torch.mm(a, b)
                seconds = time.perf_counter() - t0
            best = min(best, seconds)
            if time.perf_counter() - began >= min_time_s:
                break
    return flops / best
