"""
Minibatches of tensors for the SVI loop: the checks on data given as tensors, and batches
reshuffled every epoch by a seeded generator (sharded across processes by
:mod:`~tensorbayes.infer.distributed`).
"""

import math

import torch

from ..checks import check_int
from ..util import module_device, to_device

__all__ = ["TensorBatches", "as_tensors", "module_device", "to_device"]


def as_tensors(data, name="data"):
    if isinstance(data, torch.Tensor):
        data = (data,)
    if not isinstance(data, (tuple, list)) or not all(isinstance(t, torch.Tensor) for t in data):
        raise TypeError(f"{name} must be a tensor, a tuple of tensors with the same first dimension, or a DataLoader")
    if not data or any(t.dim() == 0 for t in data):
        raise ValueError(
            f"{name} must be one or more tensors with a first (example) dimension, got {[tuple(t.shape) for t in data]}"
        )
    n = data[0].shape[0]
    if any(t.shape[0] != n for t in data):
        raise ValueError(f"{name} must be tensors with the same first dimension, got {[tuple(t.shape) for t in data]}")
    if n == 0:
        raise ValueError(f"{name} must hold at least one example")
    return tuple(data), n


class TensorBatches:
    """Minibatches of a tuple of tensors, reshuffled every epoch by a seeded generator."""

    def __init__(self, data, batch_size, generator):
        self.data, self.num_data = as_tensors(data)
        self.batch_size = min(check_int(batch_size, "batch_size"), self.num_data)  # a NumPy int as an int
        self.generator = generator

    def __len__(self):
        return math.ceil(self.num_data / self.batch_size)

    def indices(self):
        """The example indices of every batch of one epoch (a fresh permutation each call)."""
        order = torch.randperm(self.num_data, generator=self.generator)
        return order.split(self.batch_size)

    def __iter__(self):
        for idx in self.indices():
            yield [t[idx] for t in self.data]
