"""Shared test setup: one intra-op thread.

The tests run many tiny tensor ops; on the 2-core CI machine thread handoff costs more than it saves,
and a fixed thread count keeps CPU reductions in the same order on every machine.
"""
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _keep_mkldnn_flag():
    """session.start switches oneDNN off for portable profiles; keep that out of the other tests."""
    enabled = torch.backends.mkldnn.enabled
    yield
    torch.backends.mkldnn.enabled = enabled


@pytest.fixture
def kill_after_epoch(monkeypatch):
    """``kill_after_epoch(n)``: the next varmix.learn.train run stops with a KeyboardInterrupt right after it
    wrote epoch ``n``'s checkpoint (a kill between epochs); ``kill_after_epoch(None)`` undoes it."""
    from varmix.learn import train

    real_save = train._save_checkpoint

    def arm(epoch):
        def save_then_die(path, state):
            real_save(path, state)
            if state["epoch"] == epoch:
                raise KeyboardInterrupt(f"simulated kill after epoch {epoch}")

        monkeypatch.setattr(train, "_save_checkpoint", real_save if epoch is None else save_then_die)

    return arm
