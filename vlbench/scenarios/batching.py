"""The largest batch that fits, found by trying: how the retrieval scenario sizes a gallery's
batches and a fusion model's pair batches, on any device, without a configured guess."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..failures import is_out_of_memory, release_memory


@dataclass(frozen=True)
class BatchProbe:
    """What ``find_batch_size`` found: ``size`` ran; ``oom_at``, if any, was the smallest size
    that ran out of memory; ``tried`` in order."""

    size: int
    tried: tuple[int, ...]
    oom_at: int | None

    def settings(self) -> dict[str, Any]:
        return {"tried": list(self.tried), "oom_at": self.oom_at}


def find_batch_size(step: Callable[[int], object], limit: int) -> BatchProbe:
    """The largest batch in 1..``limit`` that ``step(batch)`` runs without running out of
    memory, by trying it: doubling from 1 (the last try capped at ``limit``) until ``limit``
    runs or a size runs out of memory, then bisecting between the largest size that ran and
    the smallest that did not, to within an eighth. Out of memory is what
    ``vlbench.failures.is_out_of_memory`` says (a GPU's ``OutOfMemoryError``; on a CPU, an
    allocation refused under the worker's memory budget); memory is released after each
    failure. Any other error propagates, and so does out of memory at size 1, which makes the
    case an ``oom`` record like any other suite's."""
    if limit < 1:
        raise ValueError(f"need a limit of at least 1, got {limit}")
    tried: list[int] = []

    def fits(size: int) -> bool:
        tried.append(size)
        try:
            step(size)
        except Exception as exc:  # noqa: BLE001 - only out of memory is an answer
            if size == 1 or not is_out_of_memory(exc):
                raise
            failed = True
        else:
            failed = False
        release_memory()  # the failed attempt's frames are gone with ``exc``
        return not failed

    good, bad, size = 0, None, 1
    while True:
        if not fits(size):
            bad = size
            break
        good = size
        if size >= limit:
            break
        size = min(2 * size, limit)
    while bad is not None and bad - good > max(1, good // 8):
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return BatchProbe(good, tuple(tried), bad)
