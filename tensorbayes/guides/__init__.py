"""
Variational families for tensorbayes models.

- :class:`TensorGuide`: the contract of a guide over a model's low-rank tensors (what
  :func:`~tensorbayes.fit`, the rank readout, the plots and the export ask of it), a Pyro
  :class:`~pyro.infer.autoguide.AutoGuide`;
- :class:`MeanField`: the mean-field guide (Normal factors, point-mass or LogNormal λ, the
  closed-form λ M-step), for :class:`pyro.infer.TraceMeanField_ELBO` or the library's
  :class:`~tensorbayes.infer.MeanFieldELBO`, in ``tb.fit`` or in Pyro's own SVI;
- :class:`MedianGuide` and :func:`as_tensor_guide`: any Pyro autoguide read through its medians;
- :func:`auto_mean_field`: the same family as :class:`MeanField` assembled from Pyro's autoguides.
"""

from .auto import auto_mean_field, lambda_sites, tensor_sites
from .base import Draw, GuideError, GuideNotReady, MedianGuide, TensorGuide, as_tensor_guide
from .meanfield import MeanField, low_rank_tensors

__all__ = [
    "Draw",
    "GuideError",
    "GuideNotReady",
    "MeanField",
    "MedianGuide",
    "TensorGuide",
    "as_tensor_guide",
    "auto_mean_field",
    "lambda_sites",
    "low_rank_tensors",
    "tensor_sites",
]
