r"""Rank-shrinkage hyperpriors on the per-rank-index scales :math:`\lambda`.

Every rank index :math:`j` of a bond carries a scale :math:`\lambda_j > 0`, the
**variance** of the zero-mean Normal prior on the factor entries attached to that
index (docs/method.md, "Priors"): each such entry is :math:`\mathcal N(0, \lambda_j)`. This module
provides the hyperpriors :math:`p(\lambda)` that shrink unneeded rank indices:

========================  ==================================  ======  ===================================
name                      :math:`p(\lambda)`                  proper  closed-form M-step :math:`\lambda^*`
========================  ==================================  ======  ===================================
``"half_cauchy"``         half-Cauchy(:math:`\eta`) on λ      yes     unique positive root of a cubic
``"log_uniform"``         :math:`\propto 1/\lambda`           no      :math:`M/(D+2)`
``"gamma"``               Gamma(a, b) on the precision 1/λ    yes     :math:`(M+2b)/(D+2a+2)`
========================  ==================================  ======  ===================================

Each prior offers

* :meth:`RankPrior.distribution`: a Pyro distribution over λ (support positive, no
  event dims) to use as a ``pyro.sample`` site, e.g. when λ is fitted by gradient as a
  Delta (MAP) site;
* :meth:`RankPrior.log_prob`: :math:`\log p(\lambda)` elementwise;
* :meth:`RankPrior.update` / :meth:`RankPrior.damped_update`: the closed-form M-step.

The M-step maximizes over λ, elementwise, the part of the ELBO that depends on λ,

.. math::

    f(\lambda) = -\frac D2 \log\lambda - \frac{M}{2\lambda} + \log p(\lambda),

where :math:`M = E_q\lVert\text{slice}\rVert^2 = \lVert\text{loc}\rVert^2 +
\lVert\text{scale}\rVert^2` summed over the :math:`D` factor entries attached to the rank
index (the first two terms are :math:`E_q \log \mathcal N(\text{slice}\mid 0, \lambda)` up
to a constant). Writing :math:`\lambda = e^u`, :math:`2\lambda^2 f'(\lambda) = M - D\lambda
+ 2\lambda^2 \tfrac{d}{d\lambda}\log p(\lambda)`, from which each update below follows.

The improper log-uniform prior cannot be sampled, so Pyro's default autoguide
initialization (``init_to_median`` and its fallback ``init_to_feasible``, which both draw
a sample to learn the site's shape) fails on it; pass :func:`init_improper_to_feasible`
as ``init_loc_fn`` to the autoguide instead (it starts such sites at λ = 1 and defers to
``init_to_median`` for every other site).

This module imports only ``torch``, ``pyro`` and ``numpy`` (nothing else from ``tensorbayes``).
"""

import math
import numbers

import numpy as np
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistribution

__all__ = [
    "RankPrior",
    "HalfCauchy",
    "LogUniform",
    "Gamma",
    "ImproperLogUniform",
    "PRIORS",
    "get_prior",
    "init_improper_to_feasible",
]


# ----------------------------------------------------------------------------- helpers


def _check_positive_hyper(value, name):
    """Return ``value`` as a float, or raise ValueError naming ``name``."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a positive finite real number, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite real number, got {value!r}")
    return value


def _as_float(x, like=None):
    """``x`` as a floating tensor (dtype and device of ``like`` when ``x`` is not a tensor)."""
    if isinstance(x, torch.Tensor):
        return x if x.is_floating_point() else x.to(torch.get_default_dtype())
    if like is not None:
        return torch.as_tensor(x, dtype=like.dtype, device=like.device)
    return torch.as_tensor(x, dtype=torch.get_default_dtype())


def _prepare_MD(M, D, check=True):
    """Validate (unless ``check`` is false: the caller computed them) and broadcast the
    sufficient statistics of the M-step."""
    if isinstance(M, torch.Tensor):
        M = _as_float(M)
        D = _as_float(D, like=M)
    elif isinstance(D, torch.Tensor):
        D = _as_float(D)
        M = _as_float(M, like=D)
    else:
        M, D = _as_float(M), _as_float(D)
    dtype = torch.promote_types(M.dtype, D.dtype)
    try:
        M, D = torch.broadcast_tensors(M.to(dtype), D.to(dtype))
    except RuntimeError:
        raise ValueError(f"M and D must broadcast together, got shapes {tuple(M.shape)} and {tuple(D.shape)}") from None
    if not check:
        return M, D
    if not bool(torch.all(torch.isfinite(M) & (M >= 0))):
        raise ValueError("M (the expected squared norm of the slices) must be finite and >= 0")
    if not bool(torch.all(torch.isfinite(D) & (D > 0))):
        raise ValueError("D (the number of entries attached to each rank index) must be finite and > 0")
    return M, D


def _check_lam(lam, new):
    """The current λ of :meth:`RankPrior.damped_update` as a floating tensor: >= 0, not NaN, and
    broadcasting with λ* ``new``."""
    lam = _as_float(lam, like=new)
    if not bool(torch.all(lam >= 0)):
        raise ValueError("lam must be >= 0 (and not NaN)")
    try:
        torch.broadcast_shapes(lam.shape, new.shape)
    except RuntimeError:
        raise ValueError(
            f"lam must broadcast with M and D, got shapes {tuple(lam.shape)} and {tuple(new.shape)}"
        ) from None
    return lam


def _nan_where_nan(lam, lp):
    """``lp`` with NaN where λ is NaN: a log density of NaN is not a number."""
    return torch.where(torch.isnan(lam), lam, lp)


def _float_dtype(dtype):
    """``dtype`` (default: torch's default dtype), once it is seen to be a floating torch dtype."""
    if dtype is None:
        return torch.get_default_dtype()
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch dtype (such as torch.float64), got {dtype!r}")
    return dtype


def _clamp_scale(lam):
    """Keep λ in [tiny, max] of its dtype, so that ``log(λ)`` is finite."""
    finfo = torch.finfo(lam.dtype)
    return lam.clamp(min=finfo.tiny, max=finfo.max)


def _check_step_size(step_size):
    if isinstance(step_size, torch.Tensor):
        ok = step_size.is_floating_point() and bool(torch.all((step_size > 0) & (step_size <= 1)))
    elif isinstance(step_size, bool) or not isinstance(step_size, numbers.Real):
        ok = False
    else:
        ok = 0 < float(step_size) <= 1
    if not ok:
        raise ValueError(f"step_size must satisfy 0 < step_size <= 1, got {step_size!r}")
    return step_size


# ----------------------------------------------------------------------------- base class


class RankPrior:
    r"""Base class of the hyperpriors :math:`p(\lambda)` on a rank index's variance λ.

    Subclasses set :attr:`name` and :attr:`proper` and implement :meth:`distribution`,
    :meth:`log_prob` and :meth:`update`.

    :ivar str name: registry name (a key of :data:`PRIORS`).
    :ivar bool proper: whether :math:`p(\lambda)` is normalizable (and can be sampled).
    """

    name = None
    proper = True

    def distribution(self, batch_shape=(), *, dtype=None, device=None, validate_args=None):
        """A Pyro distribution over λ: support positive, ``batch_shape`` as given, no event dims.

        :param batch_shape: the batch shape (``torch.Size``, tuple or int).
        :param dtype: floating dtype of the hyperparameters (default: torch's default dtype).
        :param device: device of the hyperparameters (default: CPU).
        :param validate_args: as torch distributions' (default: Pyro's global setting).
        :rtype: pyro.distributions.TorchDistribution
        """
        raise NotImplementedError

    def log_prob(self, lam):
        r""":math:`\log p(\lambda)`, elementwise (up to a constant for an improper prior).

        :param torch.Tensor lam: values λ > 0 (λ < 0 gives ``-inf``).
        :rtype: torch.Tensor
        """
        raise NotImplementedError

    def update(self, M, D, *, check=True):
        r"""Closed-form M-step: :math:`\arg\max_\lambda -\frac D2\log\lambda - \frac M{2\lambda} + \log p(\lambda)`.

        Elementwise; ``M`` and ``D`` broadcast. The result is clamped to at least the
        dtype's smallest normal number, so that ``log`` of it is finite even for ``M = 0``.

        :param M: :math:`E_q\lVert\text{slice}\rVert^2` (finite, >= 0), summed over the
            ``D`` entries attached to the rank index; tensor or number.
        :param D: number of entries attached to the rank index (> 0); tensor or number.
        :param bool check: validate ``M`` and ``D`` (each check reads a value to the host; a
            caller that computed them, as the guide's M-step, passes ``False``).
        :return: λ* with the broadcast shape of ``M`` and ``D``.
        :rtype: torch.Tensor
        :raises ValueError: if ``M`` is negative or not finite, or ``D`` is not > 0.
        """
        raise NotImplementedError

    def damped_update(self, lam, M, D, step_size, *, check=True):
        r"""Damped M-step, a geometric interpolation between the current λ and λ*.

        Returns :math:`\exp((1-s)\log\lambda + s\log\lambda^*)` with
        :math:`\lambda^* =` :meth:`update` ``(M, D)`` and :math:`s =` ``step_size``;
        ``step_size = 1`` returns λ* itself.

        :param torch.Tensor lam: current λ (>= 0; 0 is treated as the dtype's tiny).
        :param M: as in :meth:`update`.
        :param D: as in :meth:`update`.
        :param step_size: :math:`0 < s \le 1` (float or tensor broadcasting with λ).
        :param bool check: validate the arguments (see :meth:`update`).
        :rtype: torch.Tensor
        :raises ValueError: if ``step_size`` is outside (0, 1], or ``lam`` is negative, NaN or
            does not broadcast with ``M`` and ``D`` (with ``check``, whatever the step size).
        """
        if check:
            _check_step_size(step_size)
        new = self.update(M, D, check=check)
        lam = _check_lam(lam, new) if check else lam  # checked even where the full step does not read it
        if not isinstance(step_size, torch.Tensor) and float(step_size) == 1.0:
            return new
        lam = _as_float(lam, like=new)
        dtype = torch.promote_types(lam.dtype, new.dtype)
        lam, new = lam.to(dtype), new.to(dtype)
        s = step_size.to(dtype) if isinstance(step_size, torch.Tensor) else float(step_size)
        return _clamp_scale(torch.lerp(torch.log(_clamp_scale(lam)), torch.log(new), s).exp())

    def _hyper_repr(self):
        return ""

    def __repr__(self):
        return f"{type(self).__name__}({self._hyper_repr()})"


# ----------------------------------------------------------------------------- half-Cauchy


class _PositiveHalfCauchy(dist.HalfCauchy):
    """Pyro's HalfCauchy with support ``positive`` (λ is a variance: λ = 0 is excluded).

    Same density; torch's own support is ``nonnegative``. Both map to the unconstrained
    space by ``exp``, so autoguides treat them alike.
    """

    support = constraints.positive

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(_PositiveHalfCauchy, _instance)
        return super().expand(batch_shape, _instance=new)


class HalfCauchy(RankPrior):
    r"""Half-Cauchy(η) prior on the variance λ (the paper's default).

    :math:`p(\lambda) = \frac{2}{\pi\eta}\,\frac{1}{1+\lambda^2/\eta^2}`, so
    :math:`\frac{d}{d\lambda}\log p = -\frac{2\lambda}{\eta^2+\lambda^2}`. Its median is η;
    near 0 it is flat (it does not push λ to exactly 0 by itself, the likelihood of a
    slice with small M does) and its tail decays like :math:`\lambda^{-2}`.

    **M-step.** Multiplying :math:`f'(\lambda) = 0` by :math:`2\lambda^2(\eta^2+\lambda^2)`
    gives the cubic

    .. math:: (D+4)\lambda^3 - M\lambda^2 + D\eta^2\lambda - M\eta^2 = 0 .

    *Exactly one positive root.* Regroup it as :math:`h(\lambda) = M` with

    .. math:: h(\lambda) = \frac{\lambda\,((D+4)\lambda^2 + D\eta^2)}{\lambda^2+\eta^2}
              = \lambda\Bigl(D + \frac{4\lambda^2}{\lambda^2+\eta^2}\Bigr).

    On :math:`(0,\infty)` both factors are positive and increasing, so :math:`h` is
    continuous and strictly increasing from 0 to ∞: for :math:`M > 0` there is exactly
    one positive root λ*. Moreover :math:`2\lambda^2 f'(\lambda) = M - h(\lambda)`, so
    :math:`f` increases before λ* and decreases after it: λ* is the global maximizer.
    Since :math:`D\lambda \le h(\lambda) \le (D+4)\lambda`, the root is bracketed,
    :math:`M/(D+4) \le \lambda^* \le M/D`.

    *Solver.* Write :math:`\lambda = (M/D)\,e^{v}` with :math:`v \in [-\log(1+4/D), 0]`;
    the equation becomes :math:`\varphi(v) = v + \log(1 + 4\sigma/D) = 0` with
    :math:`\sigma = \lambda^2/(\lambda^2+\eta^2) =
    \mathrm{sigmoid}(2(\log M - \log D - \log\eta + v))`, and
    :math:`\varphi'(v) = 1 + 8\sigma(1-\sigma)/(D+4\sigma) \in [1, 3]`. A bracketed
    (bisection-safeguarded) Newton iteration on :math:`v` converges in a few steps for
    any M and D, in float32 and float64, and never forms :math:`M^2` or
    :math:`\lambda^3`, so nothing overflows. Scaling by M/D keeps the relative precision
    of λ* at the dtype's epsilon. The iteration runs on the host in float64 (numpy): it
    is a few dozen operations on one number per rank index, which cost a torch tensor's
    dispatch (or a device's kernel launch) each, more than their arithmetic. One last
    Newton step is taken with autograd on, so that λ* is differentiable in M
    (implicit-function gradient).

    :param float eta: the half-Cauchy scale η > 0 (default 1.0).
    :raises ValueError: if ``eta`` is not a positive finite number.
    """

    name = "half_cauchy"
    proper = True

    #: Newton iterations are capped here (bisection alone would need ~60 in float64).
    max_iter = 100

    def __init__(self, eta=1.0):
        self.eta = _check_positive_hyper(eta, "eta")

    def _hyper_repr(self):
        return f"eta={self.eta!r}"

    def distribution(self, batch_shape=(), *, dtype=None, device=None, validate_args=None):
        eta = torch.tensor(self.eta, dtype=_float_dtype(dtype), device=device)
        return _PositiveHalfCauchy(eta, validate_args=validate_args).expand(torch.Size(_shape(batch_shape)))

    def log_prob(self, lam):
        lam = _as_float(lam)
        safe = torch.where(lam > 0, lam, torch.ones_like(lam))
        # log(1 + (λ/η)^2) = logaddexp(0, 2 log(λ/η)): no overflow for huge λ (and no
        # softplus threshold, which would drop terms ~e^-20)
        x = 2.0 * (torch.log(safe) - math.log(self.eta))
        lp = math.log(2.0 / (math.pi * self.eta)) - torch.logaddexp(torch.zeros_like(x), x)
        lp = torch.where(lam == 0, torch.full_like(lp, math.log(2.0 / (math.pi * self.eta))), lp)
        return _nan_where_nan(lam, torch.where(lam < 0, torch.full_like(lp, -math.inf), lp))

    def _phi(self, v, c, D):
        """φ(v) and φ'(v) of numpy arrays (the iteration) or of tensors (the last, differentiable step)."""
        xp = torch if isinstance(v, torch.Tensor) else np
        sigma = 0.5 * (1.0 + xp.tanh(0.5 * c + v))  # sigmoid(c + 2v), with no overflow for any c
        phi = v + xp.log1p(4.0 * sigma / D)
        dphi = 1.0 + 8.0 * sigma * (1.0 - sigma) / (D + 4.0 * sigma)
        return phi, dphi

    def _root(self, c, D, tol):
        """The root ``v`` of φ, elementwise (numpy arrays): Newton's method from one fixed-point step
        off the upper end of the bracket ``[-log(1 + 4/D), 0]``, kept inside it by bisection, until
        no step exceeds ``tol``."""
        lo = -np.log1p(4.0 / D)
        hi = np.zeros_like(lo)
        v = -np.log1p(2.0 * (1.0 + np.tanh(0.5 * c)) / D)
        for _ in range(self.max_iter):
            phi, dphi = self._phi(v, c, D)
            above = phi > 0
            hi, lo = np.where(above, v, hi), np.where(above, lo, v)
            newton = v - phi / dphi
            step = np.where((newton >= lo) & (newton <= hi), newton, 0.5 * (lo + hi)) - v
            v = v + step
            if not np.any(np.abs(step) > tol):
                break
        return v

    def update(self, M, D, *, check=True):
        M, D = _prepare_MD(M, D, check)
        Md, Dd = (t.detach().cpu().double().numpy() for t in (M, D))
        with np.errstate(divide="ignore"):  # log M = -inf for M = 0: σ = 0 and the root v = 0 (λ* = 0 -> tiny)
            c = 2.0 * (np.log(Md) - np.log(Dd) - math.log(self.eta))
        v = self._root(c, Dd, 4 * torch.finfo(M.dtype).eps)
        if not (M.requires_grad or D.requires_grad):
            return _clamp_scale(torch.as_tensor(Md / Dd * np.exp(v), dtype=M.dtype, device=M.device))
        # one Newton step with autograd on: the gradient is the implicit-function one
        v = torch.as_tensor(v, dtype=M.dtype, device=M.device)
        tiny = torch.finfo(M.dtype).tiny  # keeps the gradient finite (zero) at M = 0
        c = 2.0 * (torch.log(M.clamp(min=tiny)) - torch.log(D) - math.log(self.eta))
        phi, dphi = self._phi(v, c, D)
        return _clamp_scale(M / D * torch.exp(v - phi / dphi))


def _shape(batch_shape):
    """``batch_shape`` (an int, a tuple of ints or a ``torch.Size``) as a tuple of non-negative ints."""
    shape = (batch_shape,) if isinstance(batch_shape, numbers.Integral) else batch_shape
    if not (
        isinstance(shape, (tuple, list, torch.Size))
        and all(isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 0 for n in shape)
    ):
        raise ValueError(
            f"batch_shape must be a torch.Size, a tuple of non-negative ints or an int, got {batch_shape!r}"
        )
    return tuple(int(n) for n in shape)


# ----------------------------------------------------------------------------- log-uniform


class ImproperLogUniform(TorchDistribution):
    r"""The improper log-uniform density :math:`p(\lambda) \propto 1/\lambda` on λ > 0.

    ``log_prob(λ) = -log λ`` (unnormalized). It cannot be sampled: :meth:`sample` raises
    ``NotImplementedError``. Use it only for point estimates (a Delta / MAP guide site, or
    the closed-form M-step); initialize such a site with
    :func:`init_improper_to_feasible` (or an explicit ``init_to_value``).

    :param batch_shape: batch shape.
    :param dtype: dtype of ``log_prob`` results for non-tensor inputs and of the
        initial value chosen by :func:`init_improper_to_feasible`.
    :param device: device, likewise.
    """

    arg_constraints = {}
    support = constraints.positive
    has_rsample = False
    improper = True

    def __init__(self, batch_shape=torch.Size(), *, dtype=None, device=None, validate_args=None):
        self._proto = torch.zeros((), dtype=_float_dtype(dtype), device=device)
        super().__init__(torch.Size(_shape(batch_shape)), torch.Size(), validate_args=validate_args)

    @property
    def dtype(self):
        return self._proto.dtype

    @property
    def device(self):
        return self._proto.device

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(ImproperLogUniform, _instance)
        new._proto = self._proto
        super(ImproperLogUniform, new).__init__(torch.Size(_shape(batch_shape)), torch.Size(), validate_args=False)
        new._validate_args = self._validate_args
        return new

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        value = _as_float(value, like=self._proto)
        value, _ = torch.broadcast_tensors(value, self._proto.expand(self.batch_shape))
        return -torch.log(value)

    def sample(self, sample_shape=torch.Size()):
        raise NotImplementedError(
            "The log-uniform prior p(lambda) ∝ 1/lambda is improper and cannot be sampled; "
            "use it only for point estimates of lambda (a Delta/MAP guide site or the "
            "closed-form M-step), and initialize such a site with "
            "tensorbayes.priors.init_improper_to_feasible (or init_to_value)."
        )

    def rsample(self, sample_shape=torch.Size()):
        return self.sample(sample_shape)


class LogUniform(RankPrior):
    r"""Improper log-uniform (Jeffreys) prior :math:`p(\lambda) \propto 1/\lambda`.

    Scale invariant: it has no hyperparameter. Improper, so only point estimates of λ
    make sense (:attr:`proper` is False; :meth:`distribution` cannot be sampled).

    **M-step.** :math:`\log p = -\log\lambda + \text{const}`, so
    :math:`2\lambda^2 f'(\lambda) = M - D\lambda - 2\lambda`, which is positive below and
    negative above :math:`\lambda^* = M/(D+2)`, the unique maximizer.
    """

    name = "log_uniform"
    proper = False

    def __init__(self):
        pass

    def distribution(self, batch_shape=(), *, dtype=None, device=None, validate_args=None):
        return ImproperLogUniform(batch_shape, dtype=dtype, device=device, validate_args=validate_args)

    def log_prob(self, lam):
        lam = _as_float(lam)
        safe = torch.where(lam > 0, lam, torch.ones_like(lam))
        lp = -torch.log(safe)
        lp = torch.where(lam == 0, torch.full_like(lp, math.inf), lp)
        return _nan_where_nan(lam, torch.where(lam < 0, torch.full_like(lp, -math.inf), lp))

    def update(self, M, D, *, check=True):
        M, D = _prepare_MD(M, D, check)
        return _clamp_scale(M / (D + 2.0))


# ----------------------------------------------------------------------------- Gamma / ARD


class Gamma(RankPrior):
    r"""Gamma(a, b) prior on the precision :math:`1/\lambda` (classical ARD).

    Equivalently :math:`\lambda \sim \mathrm{InverseGamma}(a, b)`:
    :math:`\log p(\lambda) = a\log b - \log\Gamma(a) - (a+1)\log\lambda - b/\lambda`
    (``b`` is the rate of the Gamma on the precision, i.e. the scale of the inverse-gamma
    on λ).

    **M-step.** :math:`2\lambda^2 f'(\lambda) = M + 2b - (D + 2a + 2)\lambda`, so the
    unique maximizer is :math:`\lambda^* = (M + 2b)/(D + 2a + 2)` (conjugacy: the
    posterior of the precision is Gamma(a + D/2, b + M/2), and this is the mode of the
    matching inverse-gamma posterior on λ).

    **Defaults** ``concentration=1.0, rate=1e-3``: with a = 1 the tail of p(λ) decays
    like :math:`\lambda^{-2}`, the same as the half-Cauchy's, so large scales are not
    penalized more than under the default prior; b sets a soft floor and the prior's
    location (mode b/2 = 5e-4, median b/ln 2 ≈ 1.4e-3), below the variances of
    typical factor entries (1e-3 to 1). In the M-step the prior acts as 4 extra
    entries and an extra squared norm of 2e-3: negligible once D is more than a few
    dozen and M/D is above ~1e-4, while a slice with M → 0 is shrunk to
    2b/(D+4) instead of 0. Lower ``rate`` if your factor entries are smaller than
    about 0.03 in magnitude. (The textbook a = b = 1e-6 behaves like the log-uniform
    prior but its samples over- and underflow, which breaks Pyro's default init.)

    :param float concentration: shape a > 0 of the Gamma on the precision.
    :param float rate: rate b > 0 of the Gamma on the precision.
    :raises ValueError: if ``concentration`` or ``rate`` is not a positive finite number.
    """

    name = "gamma"
    proper = True

    def __init__(self, concentration=1.0, rate=1e-3):
        self.concentration = _check_positive_hyper(concentration, "concentration")
        self.rate = _check_positive_hyper(rate, "rate")

    def _hyper_repr(self):
        return f"concentration={self.concentration!r}, rate={self.rate!r}"

    def distribution(self, batch_shape=(), *, dtype=None, device=None, validate_args=None):
        dtype = _float_dtype(dtype)
        a = torch.tensor(self.concentration, dtype=dtype, device=device)
        b = torch.tensor(self.rate, dtype=dtype, device=device)
        return dist.InverseGamma(a, b, validate_args=validate_args).expand(torch.Size(_shape(batch_shape)))

    def log_prob(self, lam):
        lam = _as_float(lam)
        a, b = self.concentration, self.rate
        safe = torch.where(lam > 0, lam, torch.ones_like(lam))
        lp = a * math.log(b) - math.lgamma(a) - (a + 1.0) * torch.log(safe) - b / safe
        return _nan_where_nan(lam, torch.where(lam > 0, lp, torch.full_like(lp, -math.inf)))

    def update(self, M, D, *, check=True):
        M, D = _prepare_MD(M, D, check)
        return _clamp_scale((M + 2.0 * self.rate) / (D + 2.0 * self.concentration + 2.0))


# ----------------------------------------------------------------------------- registry


#: Registry of the rank priors by name.
PRIORS = {"half_cauchy": HalfCauchy, "log_uniform": LogUniform, "gamma": Gamma}

_HYPERPARAMETERS = {"half_cauchy": ("eta",), "log_uniform": (), "gamma": ("concentration", "rate")}


def get_prior(prior, **kwargs):
    """Resolve a rank prior from an instance or a name.

    :param prior: a :class:`RankPrior` instance (returned as is) or one of the names in
        :data:`PRIORS` (``"half_cauchy"``, ``"log_uniform"``, ``"gamma"``; case and ``-``
        vs ``_`` do not matter).
    :param kwargs: hyperparameters for the named prior (``eta`` for half-Cauchy;
        ``concentration``, ``rate`` for Gamma; none for log-uniform).
    :rtype: RankPrior
    :raises ValueError: for an unknown name (naming ``prior`` and listing the valid
        names), an unknown hyperparameter, hyperparameters given together with an
        instance, or an invalid hyperparameter value (naming the argument).
    :raises TypeError: if ``prior`` is neither a string nor a :class:`RankPrior`.
    """
    if isinstance(prior, RankPrior):
        if kwargs:
            raise ValueError(
                f"prior is already a RankPrior instance ({prior!r}); hyperparameters "
                f"{sorted(kwargs)} cannot be applied to it"
            )
        return prior
    if not isinstance(prior, str):
        raise TypeError(f"prior must be a RankPrior or a name in {sorted(PRIORS)}, got {type(prior).__name__}")
    key = prior.strip().lower().replace("-", "_")
    if key not in PRIORS:
        raise ValueError(f"unknown prior {prior!r}; valid names: {', '.join(sorted(PRIORS))}")
    allowed = _HYPERPARAMETERS[key]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown hyperparameter(s) {', '.join(unknown)} for prior {key!r}; "
            f"accepted: {', '.join(allowed) if allowed else 'none'}"
        )
    return PRIORS[key](**kwargs)


# ----------------------------------------------------------------------------- autoguide init


def _find_improper(fn):
    while not getattr(fn, "improper", False):
        base = getattr(fn, "base_dist", None)
        # only shape-preserving wrappers (Independent, Masked, Expanded), not transforms
        if base is None or type(fn).__name__ not in ("Independent", "MaskedDistribution", "ExpandedDistribution"):
            return None
        fn = base
    return fn


def init_improper_to_feasible(site=None, *, fallback=None):
    """Autoguide ``init_loc_fn`` that copes with improper (unsampleable) prior sites.

    Pyro's ``init_to_median`` and ``init_to_feasible`` both call ``site["fn"].sample()``,
    which :class:`ImproperLogUniform` refuses. For a site whose distribution is improper
    (possibly wrapped by ``to_event``, ``mask`` or ``expand``) this returns the feasible
    point ``transform_to(support)(0)`` of the site's shape — λ = 1 for a positive support,
    the value ``init_to_feasible`` would pick; every other site goes to ``fallback``.

    Usage: ``AutoDelta(model, init_loc_fn=init_improper_to_feasible)``.

    :param dict site: a Pyro trace site (``None`` returns the configured function).
    :param callable fallback: init function for proper sites (default:
        ``pyro.infer.autoguide.init_to_median``).
    :rtype: torch.Tensor
    """
    if site is None:
        return lambda s: init_improper_to_feasible(s, fallback=fallback)
    improper = _find_improper(site["fn"])
    if improper is None:
        if fallback is None:
            from pyro.infer.autoguide.initialization import init_to_median as fallback
        return fallback(site)
    fn = site["fn"]
    zeros = torch.zeros(fn.shape(), dtype=improper.dtype, device=improper.device)
    value = torch.distributions.transform_to(fn.support)(zeros)
    value._pyro_custom_init = False
    return value
