"""Precisions, set explicitly for every case.

torch's defaults run GPU convolutions in TF32 but matmuls in IEEE fp32, which silently favours
CNN embedders in an "fp32" comparison, exactly the region/patch ratio vlbench measures. So every
precision sets matmul *and* cuDNN precision itself and records the flags it leaves in force.
Names are checked where a run's options are read (``vlbench.results.PRECISIONS``); this module
only applies them, once per case (``vlbench.context``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from .results import PRECISIONS

#: precision -> (fp32 math for matmul and convolution, autocast dtype or None)
SETTINGS: dict[str, tuple[str, torch.dtype | None]] = {
    "fp32": ("ieee", None),
    "tf32": ("tf32", None),
    "bf16": ("ieee", torch.bfloat16),
    "fp16": ("ieee", torch.float16),
}
assert tuple(SETTINGS) == PRECISIONS


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The dtype a precision computes in under autocast; None for fp32 and tf32."""
    return SETTINGS[precision][1]


def _set_fp32_math(math: str) -> None:
    b = torch.backends
    if hasattr(b, "fp32_precision"):  # torch >= 2.9: per-backend precision controls
        b.fp32_precision = math
        b.cuda.matmul.fp32_precision = math
        b.cudnn.fp32_precision = math
        b.cudnn.conv.fp32_precision = math
        b.cudnn.rnn.fp32_precision = math
    else:  # older torch: the allow_tf32 switches
        b.cuda.matmul.allow_tf32 = math == "tf32"
        b.cudnn.allow_tf32 = math == "tf32"
        torch.set_float32_matmul_precision("high" if math == "tf32" else "highest")


def precision_flags() -> dict[str, Any]:
    """The precision-relevant switches in force now, for the record."""
    b = torch.backends
    flags: dict[str, Any] = {
        "cudnn_benchmark": b.cudnn.benchmark,
        "cudnn_deterministic": b.cudnn.deterministic,
        "matmul_allow_bf16_reduced_precision_reduction":
            b.cuda.matmul.allow_bf16_reduced_precision_reduction,
        "matmul_allow_fp16_reduced_precision_reduction":
            b.cuda.matmul.allow_fp16_reduced_precision_reduction,
    }
    if hasattr(b, "fp32_precision"):
        flags.update(
            fp32_precision=b.fp32_precision,
            cuda_matmul_fp32_precision=b.cuda.matmul.fp32_precision,
            cudnn_fp32_precision=b.cudnn.fp32_precision,
            cudnn_conv_fp32_precision=b.cudnn.conv.fp32_precision,
        )
    else:
        flags.update(
            cuda_matmul_allow_tf32=b.cuda.matmul.allow_tf32,
            cudnn_allow_tf32=b.cudnn.allow_tf32,
            float32_matmul_precision=torch.get_float32_matmul_precision(),
        )
    return flags


def apply_precision(precision: str) -> dict[str, Any]:
    """Set the global flags for ``precision`` (cuDNN autotuning off, so runs are comparable)
    and return them with the precision and its autocast dtype."""
    math, dtype = SETTINGS[precision]
    _set_fp32_math(math)
    torch.backends.cudnn.benchmark = False
    return {"precision": precision, "autocast_dtype": str(dtype) if dtype else None,
            **precision_flags()}


@contextlib.contextmanager
def autocast(precision: str, device_type: str) -> Iterator[None]:
    """Autocast for the reduced precisions; nothing for fp32 and tf32."""
    dtype = SETTINGS[precision][1]
    if dtype is None:
        yield
    else:
        with torch.autocast(device_type=device_type, dtype=dtype):
            yield
