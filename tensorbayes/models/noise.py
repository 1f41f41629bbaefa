"""The noise of a Normal likelihood, shared by the completion and regression models."""

import math

import torch

__all__ = ["NormalNoise"]


class NormalNoise:
    """
    Mixin for models with a Normal likelihood: the noise standard deviation is either learned
    as a point estimate (the parameter ``log_noise``, which :func:`~tensorbayes.fit` holds
    during its warm-up) or fixed, kept as a Python float so that it is exact in whatever dtype
    the model is cast to.
    """

    def _init_noise(self, noise):
        if noise is None:
            self.log_noise = torch.nn.Parameter(torch.zeros(()))
            self.fixed_noise = None
        elif isinstance(noise, (int, float)) and not isinstance(noise, bool) and 0 < noise < math.inf:
            self.fixed_noise = float(noise)
        else:
            raise ValueError(f"noise must be None (learned) or a positive number, got {noise!r}")

    @property
    def learns_noise(self):
        return self.fixed_noise is None

    @property
    def noise(self):
        """The noise standard deviation (a 0-d tensor)."""
        if self.learns_noise:
            return self.log_noise.exp()
        return torch.tensor(self.fixed_noise, dtype=torch.float64)
