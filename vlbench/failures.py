"""How a case fails, as data: out of memory, a case that cannot run as asked, any other error.
A case's failure is recorded as its result and the run goes on."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import traceback

import torch

from .results import CaseResult, CaseSpec


class UnsupportedCase(ValueError):  # noqa: N818 - a case's verdict, recorded as its message
    """A case that cannot run as asked (CUDA graphs on a CPU); its message is recorded as is."""


def is_out_of_memory(exc: BaseException) -> bool:
    """A GPU's ``OutOfMemoryError``, Python's ``MemoryError``, or an allocation refused under a
    worker's memory budget (``DefaultCPUAllocator: can't allocate memory``)."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return any(s in text for s in ("out of memory", "can't allocate memory", "not enough memory"))


def failure(spec: CaseSpec, exc: Exception) -> CaseResult:
    """The record of a case that raised: ``oom`` or ``error``, with a one-line message (and,
    for an error, the function it came from)."""
    if isinstance(exc, UnsupportedCase):
        return CaseResult(spec=spec, status="error", message=str(exc))
    status = "oom" if is_out_of_memory(exc) else "error"
    message = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
    if status == "error":
        message += f" [{traceback.extract_tb(exc.__traceback__)[-1].name}]"
    return CaseResult(spec=spec, status=status, message=message)


def release_memory() -> None:
    """Hand a finished case's memory back: CUDA's cache, and glibc's free lists, which otherwise
    keep a reused worker's resident set high and inflate the next case's CPU peak (VmHWM is
    reset to the current RSS, not to zero)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
