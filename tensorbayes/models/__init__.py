"""
Pyro models built of low-rank tensors with rank-shrinkage priors.

:class:`LowRankTensor` is the building block; :class:`TensorCompletion` observes entries of one
under a Normal likelihood.
"""

from .completion import TensorCompletion
from .tensor import LowRankTensor

__all__ = ["LowRankTensor", "TensorCompletion"]
