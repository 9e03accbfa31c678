"""Shared test tools.

``vlbench run`` measures in worker processes by default. Tests that call ``main(["run", ...])``
in-process and patch the measuring code (``monkeypatch.setattr(vlbench.context, ...)``) need the
patch to be seen, which a spawned worker would not; so the suite runs in-process unless a test
asks for workers (the ``isolated`` fixture of tests/test_worker.py and tests/test_resume.py, and the
subprocess runs of tests/live_runs.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from vlbench.cli import NO_ISOLATION_ENV


@pytest.fixture(scope="session", autouse=True)
def _in_process_runs() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:  # session-wide: module fixtures run too
        patch.setenv(NO_ISOLATION_ENV, "1")
        yield


class HostSyncDetector(TorchDispatchMode):
    """Records ops that read device values on the host (``.item()``, ``bool(t)``, data-dependent
    output shapes): a device-to-host synchronisation on a GPU. Blind under ``inference_mode``
    and to ``.tolist()`` on CPU, hence the monkeypatched ``Tensor`` methods of ``no_host_reads``."""

    SYNC_OPS = frozenset({"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select"})

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name in self.SYNC_OPS:
            self.seen.append(func._schema.name)
        return func(*args, **(kwargs or {}))


@pytest.fixture
def no_host_reads(monkeypatch) -> Callable[[], contextlib.AbstractContextManager]:
    """``with no_host_reads(): stage(...)`` fails if the code inside reads a device value on the
    host (runs under ``no_grad``: a dispatch mode does not see inference tensors' reads)."""

    @contextlib.contextmanager
    def guard() -> Iterator[HostSyncDetector]:
        def forbidden(*args, **kwargs):
            raise AssertionError("device-to-host read inside code that must not synchronise")

        for attr in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
            monkeypatch.setattr(torch.Tensor, attr, forbidden)
        try:
            with torch.no_grad(), HostSyncDetector() as detector:
                yield detector
        finally:
            monkeypatch.undo()
        assert detector.seen == []

    return guard
