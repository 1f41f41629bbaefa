"""
A low-rank tensor with rank-shrinkage priors, as a Pyro model.

:class:`LowRankTensor` is the building block of every tensorbayes model: a tensor in one of the
four formats whose factors are Pyro sample sites. Every rank index ``j`` of bond ``b`` has a
scale ``λ_bj > 0`` (itself a sample site under a :mod:`~tensorbayes.priors` hyperprior), and
each factor entry is Normal with a variance that is the product of the scales of the rank
indices it touches (docs/method.md, "Priors"):

- CP: ``U_k[i, j] ~ N(0, λ_j)`` (one λ vector for all modes);
- Tucker: ``U_k[i, j] ~ N(0, λ_kj)`` and the core in the same product form,
  ``G[j_1..j_d] ~ N(0, Π_k λ_{k j_k})``. (A fixed, wide prior on the core over-fits: at a
  max rank where the core alone has more entries than there are observations, nothing shrinks
  the core's unneeded entries.)
- TT / TTM (the *product form*): ``G_k[i, ..., j] ~ N(0, λ_{k-1,i} λ_kj)``, so that the trailing
  slice of core ``k`` and the leading slice of core ``k + 1`` both shrink with ``λ_kj``, and
  pruning index ``j`` removes both together.

The module knows nothing of guides or training: calling it samples ``(factors, lambdas)``.
:class:`CompactTensor` is its deterministic, Pyro-free counterpart fixed at given (posterior-mean)
factors: the weight of the tensorized layers' exports (:func:`tensorbayes.export`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Integral

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from ..formats import TensorFormat, get_format
from ..priors import get_prior

__all__ = [
    "CompactTensor",
    "LowRankTensor",
    "TENSOR_KEY",
    "low_rank_tensors",
    "map_particles",
    "particle_dims",
    "place_batch",
    "prior_from",
    "traced_tensors",
]

#: The key of a :class:`LowRankTensor`'s sample sites' ``infer`` dict that holds the tensor itself,
#: so that a trace of a model written as a function finds its tensors (:func:`traced_tensors`).
TENSOR_KEY = "low_rank_tensor"


class _LayoutNames:
    """``format`` and ``ranks``, read from the module's ``layout``."""

    @property
    def format(self):
        return self.layout.name

    @property
    def ranks(self):
        return self.layout.ranks


def prior_from(prior, prior_kwargs=None):
    """The :class:`~tensorbayes.priors.RankPrior` of a ``prior`` argument and its ``prior_kwargs`` (a dict
    of hyperparameters, or ``None``), as a tensor's constructor takes them."""
    if prior_kwargs is not None and not isinstance(prior_kwargs, Mapping):
        raise TypeError(f"prior_kwargs must be a dict of the prior's hyperparameters or None, got {prior_kwargs!r}")
    return get_prior(prior, **(prior_kwargs or {}))


class LowRankTensor(PyroModule, _LayoutNames):
    """
    A tensor of shape ``shape`` in a low-rank ``format`` whose ranks are bounded by
    ``max_rank`` and decided by the posterior.

    Usage::

        tensor = LowRankTensor((10, 12, 14), format="tt", max_rank=8, prior="half_cauchy")
        factors, lambdas = tensor()          # one draw from the prior (inside a model)
        values = tensor.layout.entries(factors, index)

    :param tuple shape: the sizes of the tensor's modes.
    :param str format: "cp", "tucker", "tt" or "ttm".
    :param max_rank: an int, or one int per rank bond; each is clipped to what the shape
        allows (:meth:`~tensorbayes.formats.TensorFormat.max_ranks`).
    :param prior: the hyperprior on λ: "half_cauchy", "log_uniform", "gamma" or a
        :class:`~tensorbayes.priors.RankPrior`.
    :param dict prior_kwargs: hyperparameters of the prior (e.g. ``{"eta": 1.0}``).
    :param int row_modes: leading modes that index the rows of the matrix view.
    :param dict layout_options: further arguments of the format (e.g. a TT's ``train``).
    """

    def __init__(
        self,
        shape,
        format="tt",
        max_rank=8,
        prior="half_cauchy",
        prior_kwargs=None,
        row_modes=None,
        layout_options=None,
    ):
        super().__init__()
        cls = get_format(format)
        options = dict(layout_options or {})
        probe = cls(shape, 1, row_modes=row_modes, **options)
        ranks = clip_ranks(max_rank, probe)
        self.layout = cls(shape, ranks, row_modes=row_modes, **options)
        self.max_ranks = ranks
        self.prior = prior_from(prior, prior_kwargs)
        # no parameters of its own: a 0-d buffer carries the device and floating dtype that .to()
        # (or .double()) gives the module, so that draws from the prior are made there, in that
        # dtype (not in the state dict)
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    # ----- site names -----

    def _site(self, name):
        prefix = self.__dict__["_pyro_name"]
        return f"{prefix}.{name}" if prefix else name

    def lambda_site(self, bond):
        """The name of the sample site of bond ``bond``'s scales."""
        return self._site(f"lambda{bond}")

    def factor_site(self, k):
        """The name of the sample site of factor ``k``."""
        return self._site(f"factor{k}")

    @property
    def device(self):
        """The device the module was moved to (where draws from the prior are made)."""
        return self._anchor.device

    @property
    def dtype(self):
        """The floating dtype the module was given (default: torch's): its prior's draws and densities are in it."""
        return self._anchor.dtype

    def set_layout(self, layout):
        """
        Replace the layout by the same one at other ranks (used by pruning, which shrinks the
        ranks): the same format and shape, matrix view (``row_modes``) and factor labels (a TT's
        train), as ``self.layout.with_ranks(ranks)`` or ``self.layout.truncate(...)`` give it.
        """
        old = self.layout
        same = type(layout) is type(old) and layout.shape == old.shape and layout.row_modes == old.row_modes
        if not same or layout.labels != old.labels:
            raise ValueError(
                f"layout must be the tensor's {old!r} with row_modes={old.row_modes} at other ranks (as layout."
                f"with_ranks(ranks) gives it), got {layout!r} with row_modes={getattr(layout, 'row_modes', None)}"
            )
        self.layout = layout

    # ----- the prior -----

    def prior_variances(self, lambdas):
        """
        The prior variance of every factor, broadcastable to its shape: the product of the
        scales of the rank indices each entry touches (one for a factor with no rank bond,
        such as the single core of a one-core train).
        """
        self._check_lambdas(lambdas)
        return [self._variance(f, lambdas) for f in range(len(self.layout.labels))]

    def prior_variance(self, f, lambdas, skip=None):
        """
        The prior variance of factor ``f`` alone (:meth:`prior_variances`), without bond ``skip``'s
        scales. λ values with leading dims ``(*lead, rank)`` (vectorized particles) give a variance
        of shape ``(*lead, *ones or ranks)``.
        """
        self._check_lambdas(lambdas)
        return self._variance(f, lambdas, skip)

    def _variance(self, f, lambdas, skip=None):
        labels = self.layout.labels[f]
        var = self._anchor.new_ones([1] * len(labels)) if not lambdas else lambdas[0].new_ones([1] * len(labels))
        for d, lab in enumerate(labels):
            if lab[0] == "b" and int(lab[1:]) != skip:
                view = [1] * len(labels)
                view[d] = -1
                lam = lambdas[int(lab[1:])]  # (*lead, rank): leading (particle) dims broadcast
                var = var * lam.reshape(*lam.shape[:-1], *view)
        return var

    def _check_lambdas(self, lambdas, lead=True):
        """Refuse ``lambdas`` that are not one tensor ``(..., rank)`` per bond at the layout's ranks (a
        guide's scales at other ranks, say, as after :meth:`set_layout` without the guide's truncate)."""
        ranks = self.layout.ranks
        if not isinstance(lambdas, (list, tuple)) or not all(isinstance(lam, torch.Tensor) for lam in lambdas):
            raise TypeError(f"lambdas must be a list of tensors, one per bond (ranks {ranks}), got {lambdas!r:.120}")
        shapes = [tuple(lam.shape) for lam in lambdas]
        fits = [len(s) >= 1 and s[-1] == r and (lead or len(s) == 1) for s, r in zip(shapes, ranks)]
        if len(lambdas) != len(ranks) or not all(fits):
            form = "(..., rank)" if lead else "(rank,)"
            raise ValueError(f"lambdas must be one tensor {form} per bond at the ranks {ranks}, got shapes {shapes}")

    def _check_moments(self, second_moments, bonds):
        """``bonds`` as bond indices (all by default), checked, and ``second_moments`` checked: a list with
        one tensor of its factor's shape for every factor those bonds touch (the others are not read)."""
        num = len(self.layout.bonds)
        bonds = range(num) if bonds is None else list(bonds)
        if any(isinstance(b, bool) or not isinstance(b, Integral) or not 0 <= b < num for b in bonds):
            raise ValueError(f"bonds must be bond indices in [0, {num}), got {list(bonds)}")
        shapes = self.layout.factor_shapes
        if not isinstance(second_moments, (list, tuple)):
            raise TypeError(f"second_moments must be a list of tensors, got {type(second_moments).__name__}")
        if len(second_moments) != len(shapes):
            raise ValueError(
                f"second_moments must hold {len(shapes)} tensors, one per factor, got {len(second_moments)}"
            )
        for f in sorted({f for b in bonds for f, _ in self.layout.bonds[b]}):
            m = second_moments[f]
            if not isinstance(m, torch.Tensor) or tuple(m.shape) != shapes[f]:
                got = tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__
                raise ValueError(f"second_moments[{f}] must be a tensor of factor {f}'s shape {shapes[f]}, got {got}")
        return bonds

    def slice_moments(self, second_moments, lambdas, bonds=None, *, check=True):
        """
        For every bond, ``(M, D)``: ``M[j]`` is the expected squared norm of the entries
        attached to rank index ``j``, each divided by the other scales in its variance
        (so that ``E log p(factors | λ) = Σ_j -D[j]/2 log λ_j - M[j]/(2 λ_j) + const``), and
        ``D[j]`` the number of those entries.

        :param list second_moments: ``E[factor²]`` for every factor, elementwise, each of its factor's
            shape (a factor no bond of ``bonds`` touches is not read).
        :param list lambdas: the current scales, one vector per bond.
        :param bonds: the bonds to compute (default: all), in the order returned.
        :param bool check: check the arguments' forms (``False``: the caller made them, as the
            guide's λ step does at every training step).
        """
        if check:
            self._check_lambdas(lambdas, lead=False)
            bonds = self._check_moments(second_moments, bonds)
        moments = []
        for b in range(len(self.layout.bonds)) if bonds is None else bonds:
            m = torch.zeros_like(lambdas[b])
            count = 0
            for f, d in self.layout.bonds[b]:  # only the factors bond b touches
                scaled = second_moments[f] / self._variance(f, lambdas, skip=b)
                dims = [i for i in range(scaled.dim()) if i != d]
                m = m + scaled.sum(dims) if dims else m + scaled
                count += second_moments[f].numel() // self.layout.ranks[b]
            moments.append((m, count))
        return moments

    def forward(self):
        """
        Sample ``(factors, lambdas)`` from the prior (or from a guide, under Pyro).

        The sites skip torch's argument and support checks (``validate_args=False``): their
        parameters are λ > 0 and products of λ, their values a guide's draws, and each check
        is a host synchronization per site and step (on a GPU, a stall). A NaN still stops
        :func:`~tensorbayes.fit` with a message that names where it began.
        """
        infer = {TENSOR_KEY: self}  # a trace of any model then finds the tensor behind its sites
        lambdas = [
            pyro.sample(self.lambda_site(b), self._lambda_prior(r), infer=dict(infer))
            for b, r in enumerate(self.layout.ranks)
        ]
        factors = []
        for k, (shape, var) in enumerate(zip(self.layout.factor_shapes, self.prior_variances(lambdas))):
            # λ drawn with leading (particle) dims gives the prior those dims as its batch shape
            scale = var.sqrt().expand(*var.shape[: var.dim() - len(shape)], *shape)
            prior = dist.Normal(torch.zeros_like(scale), scale, validate_args=False).to_event(len(shape))
            factors.append(pyro.sample(self.factor_site(k), prior, infer=dict(infer)))
        return factors, lambdas

    def _lambda_prior(self, rank):
        """The hyperprior of ``rank`` scales (made once per rank, device and dtype: it does not change)."""
        cache = self.__dict__.setdefault("_lambda_priors", {})
        key = (rank, self.device, self.dtype)
        if key not in cache:
            cache[key] = self.prior.distribution(
                (rank,), dtype=self.dtype, device=self.device, validate_args=False
            ).to_event(1)
        return cache[key]

    def extra_repr(self):
        return (
            f"format={self.layout.name!r}, shape={self.layout.shape}, ranks={self.layout.ranks}, "
            f"max_ranks={self.max_ranks}, prior={self.prior!r}"
        )

    #: The variance :meth:`init_loc_scale` aims the tensor's entries at (1 by default; a
    #: tensorized layer sets its own, e.g. ``1 / fan_in`` for Kaiming (fan_in, gain 1)).
    init_variance = 1.0

    def init_loc_scale(self):
        """
        The standard deviation ``s`` that makes a tensor of i.i.d. ``N(0, s²)`` factors have
        entries of variance :attr:`init_variance`: an entry is a sum over every bond's index
        of products of one entry of each of the ``F`` factors, so its variance is
        ``s^(2F) Π_b R_b``, and ``s = (init_variance / Π_b R_b) ** (1 / (2F))``.
        """
        return (self.init_variance / math.prod(self.layout.ranks)) ** (0.5 / len(self.layout.labels))


def clip_ranks(max_rank, probe):
    limits = probe.max_ranks()
    if isinstance(max_rank, bool) or not isinstance(max_rank, (Integral, tuple, list)):
        raise TypeError(f"max_rank must be an int or a tuple of ints, got {max_rank!r}")
    wanted = (max_rank,) * probe.num_bonds if isinstance(max_rank, Integral) else tuple(max_rank)
    if len(wanted) != probe.num_bonds:
        raise ValueError(f"max_rank must be an int or one int per bond ({probe.num_bonds}), got {max_rank!r}")
    for r in wanted:
        if isinstance(r, bool) or not isinstance(r, Integral) or r < 1:
            raise ValueError(f"max_rank must be positive ints (a rank is at least 1), got {max_rank!r}")
    return tuple(min(int(r), lim) for r, lim in zip(wanted, limits))


def particle_dims(layout, factors) -> tuple[int, ...]:
    """
    The leading (particle) dims that ``factors`` carry beyond ``layout``'s factor shapes: ``()``
    for a plain draw, ``(S, 1)`` for ``S`` particles of Pyro's vectorized plate at dim -2 (as
    ``Predictive(parallel=True)`` or ``vectorize_particles=True`` with ``max_plate_nesting=1``
    draw them). Every factor must carry the same ones.
    """
    if factors[0].dim() <= len(layout.factor_shapes[0]):
        return ()  # the plain path: its checks are the layout's own
    lead = None
    for k, (f, shape) in enumerate(zip(factors, layout.factor_shapes)):
        n = f.dim() - len(shape)
        if n < 0 or tuple(f.shape[n:]) != tuple(shape):
            raise ValueError(
                f"factor {k} must have shape (..., {', '.join(map(str, shape))}) for the layout, got {tuple(f.shape)}"
            )
        if lead is None:
            lead = tuple(f.shape[:n])
        elif tuple(f.shape[:n]) != lead:
            raise ValueError(
                f"the factors must share their leading (particle) dims, got {lead} and {tuple(f.shape[:n])}"
            )
    return lead or ()


def map_particles(fn, lead, factors, inputs=(), min_dims=()):
    """
    ``fn(factors, *inputs)`` once per particle of the factors' leading dims ``lead``
    (:func:`particle_dims`), the results stacked to ``(*lead, *result.shape)``; for a plain draw
    (``lead`` empty), ``fn(factors, *inputs)`` itself.

    An input whose leading dims are ``lead`` and that has at least ``len(lead) + min_dims[i]``
    dims (a previous layer's per-particle output) is sliced per particle; any other input (the
    data) is shared by every particle.
    """
    if not lead:
        return fn(factors, *inputs)
    n = math.prod(lead)
    flat = [f.reshape(n, *f.shape[len(lead) :]) for f in factors]
    sliced = []
    for i, x in enumerate(inputs):
        need = len(lead) + (min_dims[i] if i < len(min_dims) else 1)
        carries = isinstance(x, torch.Tensor) and x.dim() >= need and tuple(x.shape[: len(lead)]) == tuple(lead)
        sliced.append(x.reshape(n, *x.shape[len(lead) :]) if carries else None)
    outs = [fn([f[p] for f in flat], *[x if c is None else c[p] for x, c in zip(inputs, sliced)]) for p in range(n)]
    out = torch.stack(outs)
    return out.reshape(*lead, *out.shape[1:])


def place_batch(value, lead_ndim, dim):
    """
    ``value`` of shape ``(*lead, batch, *rest)`` (a per-example output computed per particle,
    :func:`map_particles`) reshaped so that ``batch`` takes the data plate's dim ``dim`` (negative,
    counted in ``lead``) as Pyro's plates expect: ``(S, 1, batch, ...)`` becomes ``(S, batch, ...)``
    for the particle plate at -2 and the data plate at -1. ``lead[dim]`` must be 1 (the particle
    plate left of the data plate); a ``value`` without leading dims is returned as it is.
    """
    if lead_ndim == 0:
        return value
    # particles drawn without the model's plate slots (Predictive(parallel=True) draws a guide that has no
    # plates at dim -1): they sit left of the plates, as if padded with ones on the right
    lead = tuple(value.shape[:lead_ndim])
    if -dim > len(lead) or lead[dim] != 1:
        lead = lead + (1,) * -dim
    if dim >= 0 or lead[dim] != 1:
        raise ValueError(
            f"leading (particle) dims {lead} leave no place at dim {dim} for the data plate: draw the particles "
            "left of the model's plates (max_plate_nesting=1, as vectorize_particles and Predictive(parallel=True) do)"
        )
    shape = list(lead)
    shape[dim] = value.shape[lead_ndim]  # a size-1 dim moves freely: a reshape, no copy
    return value.reshape(*shape, *value.shape[lead_ndim + 1 :])


def traced_tensors(trace) -> dict[str, LowRankTensor]:
    """The :class:`LowRankTensor` modules behind the sample sites of a Pyro trace, by their site
    prefix (the name :func:`low_rank_tensors` gives them in a module model)."""
    found = {}
    for site in trace.nodes.values():
        tensor = site.get("infer", {}).get(TENSOR_KEY) if site["type"] == "sample" else None
        if tensor is not None:
            found.setdefault(tensor.__dict__["_pyro_name"], tensor)
    return found


def low_rank_tensors(model: torch.nn.Module) -> dict[str, LowRankTensor]:
    """The :class:`LowRankTensor` modules of a model (a :class:`torch.nn.Module`), by their path in it."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module holding LowRankTensor modules, got {type(model).__name__}")
    return {name: m for name, m in model.named_modules() if isinstance(m, LowRankTensor)}


class CompactTensor(torch.nn.Module, _LayoutNames):
    """
    A low-rank tensor fixed at given factors: the deterministic counterpart of a
    :class:`LowRankTensor`. Calling it returns ``(factors, None)``, as a draw of a
    :class:`LowRankTensor` returns ``(factors, lambdas)``, so that the tensorized layers' forward
    passes run on it unchanged.

    Usage::

        weight = CompactTensor(model.tensor.layout, guide.factor_means(model.tensor))
        dense = weight.full()

    :param layout: the :class:`~tensorbayes.formats.TensorFormat` of the factors.
    :param list factors: the factors, one tensor per factor of ``layout`` (copied).
    """

    def __init__(self, layout, factors):
        if not isinstance(layout, TensorFormat):
            raise TypeError(
                "layout must be a tb.formats.TensorFormat (a LowRankTensor's .layout, or one built as "
                f"tb.formats.get_format('tt')(shape, ranks)), got {type(layout).__name__}"
            )
        super().__init__()
        factors = layout.check_factors(factors)
        self.layout = layout
        self.factors = torch.nn.ParameterList([torch.nn.Parameter(f.detach().clone()) for f in factors])

    def full(self):
        """The dense tensor."""
        return self.layout.full(list(self.factors))

    def forward(self):
        """``(factors, None)``: the factors, and no rank scales."""
        return list(self.factors), None

    def extra_repr(self):
        return f"format={self.layout.name!r}, shape={self.layout.shape}, ranks={self.layout.ranks}"
