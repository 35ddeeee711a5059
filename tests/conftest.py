"""Shared test setup: one intra-op thread.

The tests run many tiny tensor ops; on the 2-core CI machine thread handoff costs more than it saves,
and a fixed thread count keeps CPU reductions in the same order on every machine.
"""
import torch

torch.set_num_threads(1)
