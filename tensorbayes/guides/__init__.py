"""
Variational families for tensorbayes models.

- :class:`MeanField`: the hand-written mean-field guide (Normal factors, point-mass or
  LogNormal λ, the closed-form λ M-step), for :class:`pyro.infer.TraceMeanField_ELBO`;
- :func:`auto_mean_field`: the same family assembled from Pyro's autoguides.
"""

from .auto import auto_mean_field, lambda_sites
from .meanfield import MeanField, low_rank_tensors

__all__ = ["MeanField", "auto_mean_field", "lambda_sites", "low_rank_tensors"]
