"""
The noise of a Normal likelihood, shared by the completion and regression models.

:class:`NormalNoise` holds the noise standard deviation (learned or fixed) and builds the
likelihood, a :class:`SharedScaleNormal`: torch's Normal with the scale's log and square taken
once rather than once per entry of the broadcast scale (over a ``256 x 4096`` output that cut
Pyro's share of an SVI step of a 4096 TTM layer, over the same step without Pyro, by half).
"""

import math

import pyro.distributions as dist
import torch

from ..checks import check_number

__all__ = ["NormalNoise", "SharedScaleNormal"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class SharedScaleNormal(dist.Normal):
    """
    ``Normal(loc, scale)`` with one ``scale`` for every entry: the distribution of
    :class:`pyro.distributions.Normal` with the scale broadcast to ``loc``'s shape, its
    :meth:`log_prob` in four passes over ``loc`` instead of torch's nine.

    Usage::

        pyro.sample("obs", SharedScaleNormal(mean, noise).to_event(1), obs=y)   # noise: 0-d or a number

    :param torch.Tensor loc: the means.
    :param scale: the standard deviation shared by every entry, a positive number or 0-d tensor.
    """

    def __init__(self, loc, scale, validate_args=None):
        if not isinstance(loc, torch.Tensor) or not loc.is_floating_point():
            got = f"dtype {loc.dtype}" if isinstance(loc, torch.Tensor) else f"a {type(loc).__name__}"
            raise TypeError(f"loc must be a floating point tensor (the scale takes its dtype), got {got}")
        scale = torch.as_tensor(scale, dtype=loc.dtype, device=loc.device)
        if scale.dim() != 0:
            raise ValueError(
                f"scale must be a number or a 0-d tensor, one scale shared by every entry, "
                f"got shape {tuple(scale.shape)}"
            )
        self.shared_scale = scale
        validate = type(self)._validate_args if validate_args is None else validate_args  # torch's default
        super().__init__(loc, scale, validate_args=False)
        self._validate_args = validate
        if validate:  # as torch checks them, but the scale once, not once per entry
            for name, value in (("loc", loc), ("scale", scale)):
                if not bool(self.arg_constraints[name].check(value).all()):
                    raise ValueError(
                        f"Expected parameter {name} (Tensor of shape {tuple(value.shape)}) of "
                        f"distribution {type(self).__name__} to satisfy the constraint "
                        f"{self.arg_constraints[name]}, but found invalid values:\n{value}"
                    )

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(SharedScaleNormal, _instance)
        new.shared_scale = self.shared_scale
        return super().expand(batch_shape, _instance=new)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        scale = self.shared_scale
        return (value - self.loc).square_().mul_(-0.5 / scale.square()) - (scale.log() + _HALF_LOG_2PI)


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
        else:  # any real number, a NumPy scalar (np.std of float32 data) included
            self.fixed_noise = check_number(noise, "noise", "(0, inf)", "None (learned) or a positive number")

    @property
    def learns_noise(self):
        return self.fixed_noise is None

    @property
    def noise(self):
        """The noise standard deviation (a 0-d tensor)."""
        if self.learns_noise:
            return self.log_noise.exp()
        return torch.tensor(self.fixed_noise, dtype=torch.float64)

    def likelihood(self, mean):
        """The Normal likelihood of targets around ``mean``: a :class:`SharedScaleNormal` with the noise."""
        return SharedScaleNormal(mean, self.noise.to(mean))
