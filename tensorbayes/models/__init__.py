"""
Pyro models built of low-rank tensors with rank-shrinkage priors.

:class:`LowRankTensor` is the building block; :class:`TensorCompletion` observes entries of one
under a Normal likelihood.
"""

from .completion import TensorCompletion
from .tensor import LowRankTensor, low_rank_tensors

__all__ = ["LowRankTensor", "TensorCompletion", "low_rank_tensors"]

# Tensorized layers (Linear, Conv2d, Embedding) and the conversion of whole networks.
from .layers import (
    FactorizationError,
    TensorizedConv2d,
    TensorizedEmbedding,
    TensorizedLinear,
    budget_rank,
    default_max_rank,
    factorize,
)
from .tensorize import tensorize

__all__ += [
    "FactorizationError",
    "TensorizedConv2d",
    "TensorizedEmbedding",
    "TensorizedLinear",
    "budget_rank",
    "default_max_rank",
    "factorize",
    "tensorize",
]

# Whole networks under a likelihood: classification and regression.
from .networks import BayesianClassifier, BayesianRegressor

__all__ += ["BayesianClassifier", "BayesianRegressor"]

# Recommendation: multi-hot lookups in tensorized tables and the DLRM model.
from .dlrm import DLRM, PAPER_PRESET, DLRMNet
from .embedding_bag import TensorizedEmbeddingBag

__all__ += ["DLRM", "DLRMNet", "PAPER_PRESET", "TensorizedEmbeddingBag"]
