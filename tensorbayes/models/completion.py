"""
Bayesian tensor completion: observed entries of a tensor under a Normal likelihood.

The model of docs/method.md ("Priors", "Models") with the simplest forward model: the observed
value at a multi-index is the low-rank tensor's entry plus Normal noise. The data plate is
subsampled, so that the likelihood of a minibatch is scaled by ``num_data / batch`` and the ELBO
is the full-data ELBO.
"""

import pyro
import torch
from pyro.nn import PyroModule

from .networks import check_num_data
from .noise import NormalNoise
from .tensor import LowRankTensor, map_particles, particle_dims, place_batch

__all__ = ["TensorCompletion"]


class TensorCompletion(PyroModule, NormalNoise):
    """
    ``values[n] ~ Normal(T[index[n]], noise)`` for a low-rank tensor ``T`` with rank priors.

    Usage::

        model = TensorCompletion((20, 30, 40), format="tucker", max_rank=8)
        guide = tb.guides.MeanField(model)
        tb.fit(model, guide, (index, values), epochs=50, batch_size=1024)

    :param tuple shape: the sizes of the tensor's modes.
    :param str format: "cp", "tucker", "tt" or "ttm".
    :param max_rank: upper bound on the ranks (an int or one per bond).
    :param prior: "half_cauchy", "log_uniform" or "gamma" (or a prior object).
    :param noise: the noise standard deviation; ``None`` (default) learns it as a point
        estimate, a positive number fixes it.
    :param kwargs: passed on to :class:`LowRankTensor` (``prior_kwargs``, ``core_scale``, ...).
    """

    def __init__(self, shape, format="tt", max_rank=8, prior="half_cauchy", noise=None, **kwargs):
        super().__init__()
        self.tensor = LowRankTensor(shape, format=format, max_rank=max_rank, prior=prior, **kwargs)
        self._init_noise(noise)

    @property
    def shape(self):
        return self.tensor.layout.shape

    def check_data(self, index, values=None):
        """Validate observed multi-indices (and values); returns them as tensors."""
        index = self.tensor.layout.check_index(index, self.shape, "index")
        if values is not None:
            values = torch.as_tensor(values)
            if not values.is_floating_point():
                raise TypeError(f"values must be a floating point tensor, got dtype {values.dtype}")
            if values.shape != index.shape[:1]:
                raise ValueError(
                    f"values must have shape ({index.shape[0]},) to match index, got {tuple(values.shape)}"
                )
            if not torch.isfinite(values).all():
                raise ValueError("values must be finite: found NaN or infinite observed values")
        return index, values

    @staticmethod
    def _check_batch(index, values):
        """The batch size of ``index``, checked with ``values`` by shape and dtype only (the index's
        range is the layout's to check), as cheap as a training step needs."""
        if not isinstance(index, torch.Tensor):
            raise TypeError(f"index must be an integer tensor of multi-indices, got {type(index).__name__}")
        if index.dim() != 2 or index.shape[0] == 0:
            raise ValueError(f"index must have shape (batch, order) with batch >= 1, got {tuple(index.shape)}")
        batch = index.shape[0]
        if values is None:
            return batch
        if not isinstance(values, torch.Tensor) or not values.is_floating_point():
            got = values.dtype if isinstance(values, torch.Tensor) else type(values).__name__
            raise TypeError(f"values must be a floating point tensor, got {got}")
        if values.shape != (batch,):
            raise ValueError(f"values must have shape ({batch},), one per row of index, got {tuple(values.shape)}")
        return batch

    def forward(self, index, values=None, *, num_data=None):
        """
        :param torch.Tensor index: observed multi-indices, shape ``(batch, order)``.
        :param torch.Tensor values: observed values, shape ``(batch,)``, or ``None`` to sample.
        :param int num_data: the size of the whole data set this batch was drawn from, at least
            the batch (default: the batch itself); it scales the likelihood by ``num_data / batch``.
        :returns: the tensor's entries at ``index`` (the noiseless mean), ``(batch,)``; with
            the particles' dims ``(S, batch)`` when the factors are drawn with them
            (``Predictive(parallel=True)``, ``vectorize_particles=True``).
        """
        batch = self._check_batch(index, values)
        size = check_num_data(num_data, batch)
        factors, _ = self.tensor()
        layout = self.tensor.layout
        lead = particle_dims(layout, factors)  # vectorized particles: each particle's entries, (*lead, batch)
        mean = map_particles(layout.entries, lead, factors, (index,), min_dims=(index.dim() + 1,))
        plate = pyro.plate("data", size=size, subsample=torch.arange(batch, device=index.device))
        with plate:
            mean = place_batch(mean, len(lead), plate.dim)  # (S, 1, batch) -> (S, batch) under the particle plate
            pyro.sample("obs", self.likelihood(mean), obs=values)
        return mean
