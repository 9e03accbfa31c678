"""The guard the no-synchronisation tests rely on must itself catch host reads."""

import pytest
import torch


@pytest.mark.parametrize("read", [
    lambda: torch.ones(3).sum().item(),  # a scalar read
    lambda: torch.ones(3).nonzero(),  # a data-dependent output shape
    lambda: bool(torch.ones(1)),
    lambda: torch.ones(2).tolist(),
])
def test_no_host_reads_catches_a_read(no_host_reads, read):
    with pytest.raises(AssertionError), no_host_reads():
        read()


def test_no_host_reads_lets_device_work_through(no_host_reads):
    with no_host_reads():
        y = torch.ones(4, 4) @ torch.ones(4, 4)
    assert y[0, 0] == 4
