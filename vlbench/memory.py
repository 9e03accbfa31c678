"""Peak memory of a case: the CUDA allocator's peak on GPU, peak resident set size on CPU.

On Linux the kernel's resident high-water mark (VmHWM) can be reset by writing ``5`` to
``/proc/self/clear_refs``, which gives a per-case CPU peak inside a long-lived process; where
that is not possible, the process-lifetime peak (``ru_maxrss``) is reported and said so.
"""

from __future__ import annotations

import re
import resource
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peak(device: torch.device) -> bool:
    """Start a new peak window; False when only the process-lifetime peak is available."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_bytes(device: torch.device) -> int:
    """Peak since the last ``reset_peak``: allocated CUDA memory, or resident CPU memory."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        match = re.search(r"VmHWM:\s+(\d+) kB", _STATUS.read_text())
        if match:
            return int(match.group(1)) * 1024
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
