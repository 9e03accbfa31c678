"""Energy per forward on a GPU, from NVML's total-energy counter (millijoules since the driver
loaded), read through ``ctypes`` so that no NVML binding needs installing.

The counter updates only every so often (tens of milliseconds on recent GPUs), so a case's
window must span many updates: the window is the case's whole timing loop (seconds), and a window
under ``MIN_WINDOW_S`` is recorded as too short rather than as a figure. Energy above idle
subtracts the GPU's idle power, measured over ``IDLE_S`` with nothing running, once per process.
Where NVML, the counter or a GPU is missing (a CPU run, a virtualised GPU that hides it), the
record says "not available" and why: never a zero.
"""

from __future__ import annotations

import contextlib
import ctypes
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

#: seconds the window must span for the counter's updates to average out
MIN_WINDOW_S = 1.0
#: seconds of idle sampling before the window
IDLE_S = 1.0
_NVML = ("libnvidia-ml.so.1", "libnvidia-ml.so")
T = TypeVar("T")


@dataclass
class EnergyMeter:
    """One GPU's energy counter."""

    lib: Any
    handle: ctypes.c_void_p

    def read_mj(self) -> int:
        value = ctypes.c_ulonglong()
        if self.lib.nvmlDeviceGetTotalEnergyConsumption(self.handle, ctypes.byref(value)):
            raise OSError("nvmlDeviceGetTotalEnergyConsumption failed")
        return int(value.value)


def open_meter(device: torch.device) -> EnergyMeter | str:
    """The counter of ``device``'s GPU, or why there is none."""
    if device.type != "cuda":
        return "not available: not a GPU run"
    lib = _load()
    if lib is None:
        return "not available: NVML (libnvidia-ml) not found"
    if lib.nvmlInit_v2():
        return "not available: NVML did not initialise"
    props = torch.cuda.get_device_properties(device)
    bus = f"{props.pci_domain_id:08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
    handle = ctypes.c_void_p()
    if lib.nvmlDeviceGetHandleByPciBusId_v2(bus.encode(), ctypes.byref(handle)):
        return f"not available: NVML has no GPU at PCI {bus}"
    meter = EnergyMeter(lib, handle)
    try:
        meter.read_mj()
    except OSError:
        return "not available: this GPU does not expose its total-energy counter"
    return meter


def _load() -> Any:
    for name in _NVML:
        with contextlib.suppress(OSError):
            return ctypes.CDLL(name)
    return None


@contextlib.contextmanager
def energy_window(device: torch.device, forwards: Callable[[], int]) -> Iterator[dict[str, Any]]:
    """Around a case's timing loop: yields the record, filled when the block ends with joules per
    forward (``forwards()``: how many forwards the block ran), above idle too, or why not."""
    record: dict[str, Any] = {}
    meter = open_meter(device)
    if isinstance(meter, str):
        record["status"] = meter
        yield record
        return
    idle_w = _idle_watts(meter, device)
    torch.cuda.synchronize(device)
    began, start_mj = time.perf_counter(), meter.read_mj()
    yield record
    torch.cuda.synchronize(device)
    seconds, used_j = time.perf_counter() - began, (meter.read_mj() - start_mj) / 1e3
    count = forwards()
    if seconds < MIN_WINDOW_S or count <= 0:
        record["status"] = f"not available: a {seconds:.2f} s window is too short for the counter"
        return
    record.update(status="measured", window_s=round(seconds, 3), forwards=count,
                  joules_per_forward=used_j / count, idle_watts=idle_w,
                  joules_above_idle_per_forward=(used_j - idle_w * seconds) / count)


#: idle power per GPU, measured once per process (a second of every case would add up)
_IDLE: dict[str, float] = {}


def _idle_watts(meter: EnergyMeter, device: torch.device) -> float:
    key = str(device)
    if key not in _IDLE:
        _IDLE[key] = _measure_idle(meter, device)
    return _IDLE[key]


def _measure_idle(meter: EnergyMeter, device: torch.device) -> float:
    torch.cuda.synchronize(device)
    began, start = time.perf_counter(), meter.read_mj()
    time.sleep(IDLE_S)
    return (meter.read_mj() - start) / 1e3 / (time.perf_counter() - began)


def with_energy(device: torch.device, run: Callable[[], T],
                forwards: Callable[[T], int]) -> tuple[T, dict[str, Any]]:
    """``run()`` inside an energy window, and its record; ``forwards(result)``: how many
    forwards (queries, for a retrieval step) the run timed, warm-up included."""
    done: list[T] = []
    with energy_window(device, lambda: forwards(done[0]) if done else 0) as energy:
        done.append(run())
    return done[0], energy
