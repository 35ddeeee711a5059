"""Shared test setup: one intra-op thread.

The tests run many tiny tensor ops; on the 2-core CI machine thread handoff costs more than it saves,
and a fixed thread count keeps CPU reductions in the same order on every machine.
"""
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _keep_mkldnn_flag():
    """pipeline.start switches oneDNN off for portable profiles; keep that out of the other tests."""
    enabled = torch.backends.mkldnn.enabled
    yield
    torch.backends.mkldnn.enabled = enabled
