"""
Data for the method: generators of problems with a known answer, and loaders of real data.

- :func:`planted_tensor`: a tensor of known ranks in any format, with a noisy observed subset
  of its entries and the noiseless rest held out (tensor completion, rank recovery).

Nothing here downloads anything at run time.
"""

from .planted import PlantedTensor, planted_tensor

__all__ = ["PlantedTensor", "planted_tensor"]
