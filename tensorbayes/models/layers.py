"""
Tensorized neural-network layers whose weight is a :class:`~.tensor.LowRankTensor` with
rank-shrinkage priors.

:class:`TensorizedLinear`, :class:`TensorizedConv2d` and :class:`TensorizedEmbedding` are the
Bayesian, low-rank counterparts of :class:`torch.nn.Linear`, :class:`torch.nn.Conv2d` and
:class:`torch.nn.Embedding` (docs/method.md, "Formats" and "Priors"). Each holds its weight as a
child module ``weight``, a :class:`~.tensor.LowRankTensor` whose factors and rank scales are
Pyro sample sites (``<layer>.weight.factor<k>``, ``<layer>.weight.lambda<b>``), so that a
:class:`~tensorbayes.guides.MeanField` guide finds it like any other low-rank tensor. Every
forward pass draws the factors once (from the prior, or from the guide under SVI) and uses them:

- :class:`TensorizedLinear` computes ``x @ W.T + b`` either by contracting the input with the
  factors or by reconstructing ``W`` and calling :func:`torch.nn.functional.linear`, whichever
  costs less for the batch at hand (:meth:`TensorizedLinear.choose_path`: FLOPs, plus
  :data:`~tensorbayes.formats.base.MEMORY_COST` per entry of the intermediates written);
- :class:`TensorizedConv2d` reconstructs the kernel and calls
  :func:`torch.nn.functional.conv2d` (the kernel is small next to the activations);
- :class:`TensorizedEmbedding` gathers only the rows it is asked for, by mixed-radix indexing
  into the factors, so a table of 10¹² virtual rows is never formed.

The biases are plain :class:`torch.nn.Parameter` s: point estimates fitted by SVI alongside
the guide's parameters, not Bayesian sample sites.

A size ``n`` is tensorized by :func:`factorize` into ``d`` balanced factors (``784 -> (4, 7,
4, 7)``); a size that does not factor well raises :class:`FactorizationError` (a
:class:`ValueError`) that suggests explicit shapes or a padded size. A TTM linear layer then
re-pairs its in and out modes, keeping each core's size, where that makes its contraction
cheaper (``4096 x 4096``: ``(4, 4, 16, 16) -> (16, 16, 4, 4)``, see :class:`TensorizedLinear`).

Initialization: the guide's initial factor locs (``MeanField``, through
:meth:`LowRankTensor.init_loc_scale <.tensor.LowRankTensor.init_loc_scale>`) are scaled so that
the reconstructed weight has the variance of a Kaiming (fan_in, gain 1) initialization of
the dense layer, ``Var W = 1 / fan_in`` (``fan_in = in_features`` for a linear layer,
``in_channels * kh * kw`` for a convolution), and ``Var W = 1`` for an embedding (as
:class:`torch.nn.Embedding`'s ``N(0, 1)``). Draws from the prior (and autoguides initialized
from it) are not scaled: the prior's scales are the rank scales λ.

Export: each layer's :meth:`~TensorizedLinear.export` returns its deterministic counterpart at the
guide's posterior-mean factors, :class:`CompactLinear`, :class:`CompactConv2d` or
:class:`CompactEmbedding` (plain torch, no Pyro), which :func:`tensorbayes.export` asks every
tensorized layer of a network for. Those classes run the Bayesian layer's own forward pass
(its methods are borrowed, not copied) on a :class:`~.tensor.CompactTensor` weight.
"""

import math
from functools import lru_cache
from numbers import Integral, Real

import torch
import torch.nn.functional as F
from pyro.nn import PyroModule

from ..checks import check_int
from ..formats import get_format
from ..formats.base import check_shape, path_cost, planned_cost, planned_entries
from ..formats.tt import layout_options
from .tensor import CompactTensor, LowRankTensor, clip_ranks, map_particles, particle_dims

__all__ = [
    "CompactConv2d",
    "CompactEmbedding",
    "CompactLinear",
    "FactorizationError",
    "DEFAULT_BUDGET",
    "EMBEDDING_MAX_RANK",
    "MAX_RATIO",
    "MIN_SEARCH_RANK",
    "TensorizedConv2d",
    "TensorizedEmbedding",
    "TensorizedLinear",
    "auto_order",
    "budget_rank",
    "default_max_rank",
    "factorize",
    "padded_shape",
]

#: The default bound on ``largest / smallest`` factor accepted by :func:`factorize`.
MAX_RATIO = 4.0

#: The share of the dense weight's entries that a tensorized linear or convolution layer holds at
#: its default maximum ranks (``max_rank=None``, :func:`budget_rank`): room enough for a format to
#: hold the layer (it can at a few percent), while the rank search of :func:`tensorbayes.fit`
#: decides how much of it to keep.
DEFAULT_BUDGET = 1 / 20

#: The default maximum rank of a tensorized embedding (``max_rank=None``): a table is compressed
#: by orders of magnitude, so a share of its dense size is no bound.
EMBEDDING_MAX_RANK = 8

#: The orders (modes per side) tried, largest first, when a layer picks its own.
AUTO_ORDERS = (4, 3, 2)

#: The rank per bond that a layer's default budget must allow at the order it picks by itself
#: (:func:`auto_order`): at fewer indices a bond leaves the rank search little room, each index
#: it cuts a large share of the layer. A Tucker core grows as ``r ** (2 d)``, so at four modes a
#: side a ``784 x 625`` weight's budget holds rank 3 (6,687 entries), at two modes rank 12.
MIN_SEARCH_RANK = 8

#: The share of a small layer's dense entries that its default maximum ranks may take to reach
#: :data:`MIN_SEARCH_RANK` (:func:`default_max_rank`). A layer is small for a format when no order
#: lets :data:`DEFAULT_BUDGET` hold that rank: a 64 x 288 convolution kernel's twentieth holds TTM
#: rank 6 at four modes a side, 3 at two. Such a layer is a small part of a network's weights, and
#: cut to a twentieth it cost the Fashion-MNIST CNN most of its gap to dense (docs/method.md).
SMALL_LAYER_BUDGET = 1 / 4

_PATHS = ("auto", "contract", "dense")


class FactorizationError(ValueError):
    """A size that cannot be split into balanced factors (a :class:`ValueError`)."""


# ----- factoring sizes -----


@lru_cache(maxsize=1024)
def _prime_factors(n):
    """The prime factors of ``n``, with multiplicity, ascending (trial division)."""
    primes, p = [], 2
    while p * p <= n:
        while n % p == 0:
            primes.append(p)
            n //= p
        p += 1 if p == 2 else 2
    if n > 1:
        primes.append(n)
    return tuple(primes)


def _divisors(primes):
    divisors = {1}
    for p in primes:
        divisors |= {d * p for d in divisors}
    return sorted(divisors)


def _iroot_ceil(n, d):
    """The smallest int ``f`` with ``f ** d >= n``."""
    f = max(1, int(round(n ** (1.0 / d))))
    while f**d < n:
        f += 1
    while f > 1 and (f - 1) ** d >= n:
        f -= 1
    return f


def _interleave(factors):
    """Ascending factors reordered small, large, small, large, ... (see :func:`factorize`)."""
    s = sorted(factors)
    out, lo, hi = [], 0, len(s) - 1
    while lo <= hi:
        out.append(s[lo])
        if lo != hi:
            out.append(s[hi])
        lo, hi = lo + 1, hi - 1
    return tuple(out)


def _most_balanced_factors(n, d, divisors):
    """The non-decreasing ``d``-tuple of divisors with product ``n`` and the least max/min ratio
    (ties: the least spread of log-sizes), every factor at least 2; ``None`` if there is none."""
    best = [None, None]  # key, factors

    def search(rest, k, lo, prefix):
        if k == 1:
            if rest >= lo:
                factors = prefix + (rest,)
                key = (factors[-1] / factors[0], sum(math.log(f) ** 2 for f in factors))
                if best[0] is None or key < best[0]:
                    best[:] = key, factors
            return
        first = prefix[0] if prefix else None
        for f in divisors:
            if f < lo:
                continue
            if f**k > rest:
                break
            if rest % f:
                continue
            # the largest factor is at least ceil((rest / f) ** (1 / (k - 1))): bound the ratio
            if best[0] is not None:
                smallest = first if first is not None else f
                if _iroot_ceil(rest // f, k - 1) / smallest > best[0][0]:
                    continue
            search(rest // f, k - 1, f, prefix + (f,))

    search(n, d, 2, ())
    return best[1]


def padded_shape(n, d):
    """
    The near-balanced shape of ``d`` factors whose product is the smallest of its kind at
    least ``n``: every factor is ``f`` or ``f - 1`` for ``f = ceil(n ** (1/d))``, as many
    ``f - 1`` as the product allows, and at least 2 when ``d > 1`` (ordered as by
    :func:`factorize`). The padding
    ``prod(shape) - n`` is at most a fraction of about ``d / f`` of ``n``.

    :param int n: the size to cover.
    :param int d: the number of factors.
    """
    n = check_int(n, "n")
    d = check_int(d, "d")
    if d == 1:
        return (n,)
    f = max(2, _iroot_ceil(n, d))
    shape = [f] * d
    for i in range(d):
        if f > 2 and math.prod(shape[:i] + [f - 1] + shape[i + 1 :]) >= n:
            shape[i] = f - 1
    return _interleave(shape)


def factorize(n, d, max_ratio=MAX_RATIO, name="n"):
    """
    ``n`` as a product of ``d`` balanced factors, e.g. ``factorize(784, 4) == (4, 7, 4, 7)``
    and ``factorize(625, 4) == (5, 5, 5, 5)``.

    Of all the ways to write ``n`` as ``d`` factors of at least 2, the one with the least ratio
    ``largest / smallest`` is chosen (ties: the factors' log-sizes closest to equal). The
    factors are returned alternating small and large (ascending ``s_1..s_d`` as ``s_1, s_d,
    s_2, s_{d-1}, ...``), which keeps the products of leading and of trailing modes close,
    and so the largest ranks a tensor train allows (``min(prod left, prod right)``) high.

    :param int n: the size to split.
    :param int d: the number of factors (``d = 1`` returns ``(n,)``).
    :param float max_ratio: the largest ``largest / smallest`` accepted.
    :param str name: the argument's name in error messages (e.g. ``"in_features"``).
    :raises FactorizationError: (a :class:`ValueError`) when ``n`` is prime, has fewer than
        ``d`` prime factors, or only splits with a ratio above ``max_ratio``; the message
        suggests explicit shapes or a padded size.
    """
    n = check_int(n, name)
    d = check_int(d, "d")
    if isinstance(max_ratio, bool) or not isinstance(max_ratio, Real) or not max_ratio >= 1:
        raise ValueError(f"max_ratio must be a number >= 1, got {max_ratio!r}")
    if d == 1:
        return (n,)
    pad = padded_shape(n, d)
    advice = (
        f"pass an explicit shape (in_shape/out_shape, row_shape/col_shape) whose product is {name}, "
        f"or pad {name} to {math.prod(pad)} = {' x '.join(map(str, pad))}"
    )
    primes = _prime_factors(n)
    if len(primes) < d:
        if not primes:
            what = f"{name}=1 has no prime factors"
        elif len(primes) == 1:
            what = f"{name}={n} is prime"
        else:
            what = f"{name}={n} = {' x '.join(map(str, primes))} has only {len(primes)} prime factors"
        raise FactorizationError(f"{what}: it cannot be split into {d} factors of at least 2; {advice}")
    split = _most_balanced_factors(n, d, _divisors(primes))
    ratio = split[-1] / split[0]
    if ratio > max_ratio:
        raise FactorizationError(
            f"{name}={n} factors too unevenly into {d} modes: the most balanced split is "
            f"{' x '.join(map(str, split))} (largest/smallest = {ratio:.3g} > max_ratio={max_ratio:g}); {advice}"
        )
    return _interleave(split)


def _check_shape_arg(shape, size, name, size_name, at_least=False):
    """Validate an explicit shape against the size it factors (equal, or at least with padding)."""
    try:
        shape = tuple(shape)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of positive ints, got {shape!r}") from None
    if not shape or any(isinstance(s, bool) or not isinstance(s, Integral) or s < 1 for s in shape):
        raise ValueError(f"{name} must be a non-empty sequence of positive ints, got {shape!r}")
    shape = tuple(int(s) for s in shape)
    prod = math.prod(shape)
    if at_least and prod < size:
        raise ValueError(f"{name}={shape} must have a product of at least {size_name}={size}, got {prod}")
    if not at_least and prod != size:
        raise ValueError(f"{name}={shape} must have a product equal to {size_name}={size}, got {prod}")
    return shape


def _auto_shapes(sizes, order, pad=()):
    """
    Factor every size of ``sizes`` (``{name: n}``) into the same number of modes: ``order`` if
    given, else the largest of :data:`AUTO_ORDERS` for which all of them factor. Sizes named
    in ``pad`` may be padded (:func:`padded_shape`) when they do not factor at any order
    tried (an exact split at a lower order is preferred to a padded one at a higher order).
    """
    orders = AUTO_ORDERS if order is None else (check_int(order, "order"),)
    errors = []
    for allow_pad in (False, True) if pad else (False,):
        for d in orders:
            try:
                shapes = {}
                for name, n in sizes.items():
                    try:
                        shapes[name] = factorize(n, d, name=name)
                    except FactorizationError:
                        if not (allow_pad and name in pad):
                            raise
                        shapes[name] = padded_shape(n, d)
                return shapes
            except FactorizationError as e:
                errors.append(str(e))
    if order is None:
        raise FactorizationError(
            f"could not factor {', '.join(f'{k}={v}' for k, v in sizes.items())} into the same number of "
            f"balanced modes (tried {AUTO_ORDERS}): {errors[-1]}"
        )
    raise FactorizationError(errors[-1])


def _within_ratio(factors, max_ratio=MAX_RATIO):
    """Whether every factor is at least 2 and ``largest / smallest <= max_ratio``."""
    return min(factors) >= 2 and max(factors) <= max_ratio * min(factors)


def _ordered_factorizations(n, d, max_ratio=MAX_RATIO):
    """Every ``d``-tuple of factors of at least 2 with product ``n`` and ``largest / smallest <=
    max_ratio``, in every order (ascending tuples first)."""
    divisors = [f for f in _divisors(_prime_factors(n)) if f >= 2]
    found = []

    def search(rest, k, prefix):
        if k == 1:
            factors = prefix + (rest,)
            if _within_ratio(factors, max_ratio):
                found.append(factors)
            return
        for f in divisors:
            if f > rest:
                break
            if rest % f == 0:
                search(rest // f, k - 1, prefix + (f,))

    search(n, d, ())
    return found


@lru_cache(maxsize=256)
def _cheapest_ttm_pairing(in_shape, out_shape, ranks):
    """
    The in and out modes of a TTM weight whose split product costs the fewest multiply-adds
    per input row (:meth:`TTM.split_row_cost <tensorbayes.formats.TTM.split_row_cost>`) among
    those that keep every core's size ``m_k * n_k`` of ``(in_shape, out_shape)`` (and so its
    parameter count and rank limits), every side's factors within :data:`MAX_RATIO`, at the
    (clipped) ``ranks``. The given modes are kept unless another pairing is cheaper than both
    them and the dense product. For ``4096 x 4096`` at rank 16 the balanced ``(8, 8, 8, 8)``
    on both sides cost half the dense product; in ``(4, 4, 16, 16)`` with out ``(16, 16, 4,
    4)``, an eighth.
    """
    fmt = get_format("ttm")
    core_sizes = [m * n for m, n in zip(out_shape, in_shape)]

    def row_cost(ins, outs):  # the same core sizes, so the same rank limits and clipped ranks
        return fmt(outs + ins, ranks).split_row_cost()

    dense = math.prod(core_sizes)  # N_in * N_out, the dense product's multiply-adds per row
    best, best_cost = (in_shape, out_shape), min(row_cost(in_shape, out_shape), dense)
    for ins in _ordered_factorizations(math.prod(in_shape), len(in_shape)):
        if any(size % n for size, n in zip(core_sizes, ins)):
            continue
        outs = tuple(size // n for size, n in zip(core_sizes, ins))  # the core sizes fix the out modes
        if not _within_ratio(outs):
            continue
        cost = row_cost(ins, outs)
        if cost < best_cost:
            best, best_cost = (ins, outs), cost
    return best


def check_init_variance(value, default):
    """``init_variance`` as a float, ``default`` for ``None``; anything but a positive number is refused."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, Real) or not (0 < value < math.inf):
        raise ValueError(f"init_variance must be a positive number or None, got {value!r}")
    return float(value)


def budget_rank(format, shape, row_modes, budget=DEFAULT_BUDGET, interleave=False):
    """
    The largest rank ``r``, the same on every bond (each clipped to what the shape allows), at
    which a tensor of ``shape`` in ``format`` holds at most ``budget`` of the dense tensor's
    entries (at least 1): the default ``max_rank`` of :class:`TensorizedLinear` and
    :class:`TensorizedConv2d`.

    Usage::

        budget_rank("ttm", (5, 5, 5, 5, 4, 7, 4, 7), row_modes=4)   # 20: 23,100 of 490,000 entries

    :param format: "cp", "tucker", "tt" or "ttm" (or a format class).
    :param tuple shape: the tensor's modes.
    :param int row_modes: the leading modes that index the rows of the matrix view.
    :param float budget: the share of the dense entries, in (0, 1].
    :param bool interleave: a TT's train alternates the row and column modes (:func:`layout_options`).
    """
    if isinstance(budget, bool) or not isinstance(budget, Real) or not 0 < budget <= 1:
        raise ValueError(f"budget must be a share in (0, 1], got {budget!r}")
    shape = check_shape(shape)
    fmt = get_format(format)
    probe = fmt(shape, 1, row_modes=row_modes, **layout_options(fmt, len(shape), row_modes, interleave))
    limits, allowed = probe.max_ranks(), budget * math.prod(shape)
    if not limits:  # no rank bond (a TTM of one core): nothing to bound
        return 1
    rank = 1
    while rank < max(limits) and probe.num_params(tuple(min(rank + 1, lim) for lim in limits)) <= allowed:
        rank += 1
    return rank


def default_max_rank(format, shape, row_modes, interleave=False):
    """
    The maximum rank a tensorized linear or convolution layer takes by default
    (``max_rank=None``): :func:`budget_rank` at :data:`DEFAULT_BUDGET`; where that is below
    :data:`MIN_SEARCH_RANK` (a small layer), the largest rank up to :data:`MIN_SEARCH_RANK` within
    :data:`SMALL_LAYER_BUDGET` of the dense entries.

    Usage::

        default_max_rank("ttm", (5, 5, 5, 5, 4, 7, 4, 7), row_modes=4)   # 20: the budget's rank
        default_max_rank("ttm", (8, 8, 1, 4, 8, 9), row_modes=3)         # 8 (a 64 x 288 kernel; the budget's: 3)

    :param format: "cp", "tucker", "tt" or "ttm" (or a format class).
    :param tuple shape: the tensor's modes.
    :param int row_modes: the leading modes that index the rows of the matrix view.
    :param bool interleave: a TT's train alternates the row and column modes (:func:`layout_options`).
    """
    rank = budget_rank(format, shape, row_modes, interleave=interleave)
    if rank >= MIN_SEARCH_RANK:
        return rank
    small = budget_rank(format, shape, row_modes, SMALL_LAYER_BUDGET, interleave=interleave)
    return max(rank, min(small, MIN_SEARCH_RANK))


def _low_rank_weight(shape, row_modes, format, max_rank, prior, prior_kwargs, init_variance, interleave=False):
    options = layout_options(format, len(shape), row_modes, interleave)
    weight = LowRankTensor(
        shape, format=format, max_rank=max_rank, prior=prior, prior_kwargs=prior_kwargs, row_modes=row_modes,
        layout_options=options,
    )  # fmt: skip
    weight.init_variance = init_variance
    return weight


def _factors_like(factors, x):
    """The factors in ``x``'s dtype and device (a draw from the prior is in the module's dtype)."""
    return [f.to(dtype=x.dtype, device=x.device) for f in factors]


# ----- FLOP counts -----


def contract_flops(layout, batch_size):
    """FLOPs of ``layout.contract`` on a batch, for the contraction it actually runs
    (:meth:`~tensorbayes.formats.TensorFormat.contract_flops`: the planned einsum, or for TTM
    the split product when that is cheaper)."""
    return layout.contract_flops(batch_size)


def dense_flops(layout, batch_size):
    """FLOPs of reconstructing ``W`` (the planned einsum of the layout's
    :meth:`~tensorbayes.formats.TensorFormat.full`) plus ``F.linear`` counted as opt_einsum counts
    a matrix product, ``2 * batch * out * in``."""
    rows, cols = layout.matrix_shape
    return planned_cost(*_full_plan(layout)) + 2 * batch_size * rows * cols


def _full_plan(layout):
    """The einsum of ``layout.full`` and its operand shapes."""
    modes = [f"m{k}" for k in range(len(layout.shape))]
    return layout._equation(layout.labels, modes), tuple(layout.factor_shapes)


def linear_path(layout, batch_size):
    """
    ``"contract"`` when contracting ``batch_size`` rows with the factors costs less than
    reconstructing ``W`` and multiplying, else ``"dense"`` (on a tie: ``"dense"``, one BLAS
    call). Costs are :func:`~tensorbayes.formats.base.path_cost`: the FLOPs of each path plus
    :data:`~tensorbayes.formats.base.MEMORY_COST` per entry of what it writes (the
    intermediates, ``W`` and the output). They depend only on the shapes and are cached.
    """
    rows, cols = layout.matrix_shape
    equation, shapes = _full_plan(layout)
    dense = path_cost(planned_cost(equation, shapes), planned_entries(equation, shapes))
    dense += path_cost(2 * batch_size * rows * cols, batch_size * rows)
    return "contract" if layout.contract_cost(batch_size) < dense else "dense"


# ----- layers -----


class _Exports:
    """
    A tensorized layer's ``export(guide)``: itself as its plain, deterministic counterpart
    (:attr:`compact_class`) at the guide's posterior-mean factors ``guide.factor_means(self.weight)``,
    at the ranks the weight has now and in its training mode (what :func:`tensorbayes.export`
    makes of the layer).
    """

    #: The deterministic counterpart, set below each class's definition.
    compact_class = None

    def export(self, guide):
        """:param guide: anything with ``factor_means(tensor)``, e.g. :class:`~tensorbayes.guides.MeanField`."""
        if not callable(getattr(guide, "factor_means", None)):
            raise TypeError(
                "guide must offer factor_means(tensor), as a tb.guides.MeanField does, got "
                f"{type(guide).__name__} (export an autoguide, or an AutoGuideList, with tb.export(model, guide))"
            )
        return self.compact_class(self, guide.factor_means(self.weight)).train(self.training)


class TensorizedLinear(PyroModule, _Exports):
    """
    A Bayesian linear layer ``y = x W^T + b`` whose weight ``W`` (``out_features x
    in_features``) is a low-rank tensor with rank-shrinkage priors.

    ``W`` is the matrix view of a :class:`~.tensor.LowRankTensor` of shape ``out_shape +
    in_shape`` (the out modes are its rows): for TTM, core ``k`` pairs out mode ``k`` with in
    mode ``k`` (so ``len(in_shape) == len(out_shape)``); for CP, Tucker and TT the ``2d``
    modes are the out modes, then the in modes, and a TT's cores run over them alternately, out 1,
    in 1, out 2, ... (:func:`~tensorbayes.formats.tt.layout_options`), so that no bond bounds the
    weight's rank.

    The forward pass draws the factors once and computes the output on the cheaper of two
    paths (:meth:`choose_path`, by FLOPs and memory written): ``"contract"``, the input contracted with the
    factors (:meth:`~tensorbayes.formats.TensorFormat.contract`, its path planned once per
    batch size by opt_einsum and cached; for TTM, a split product of two matrix products
    when that is cheaper, :meth:`TTM.split <tensorbayes.formats.TTM.split>`), or ``"dense"``,
    ``W`` reconstructed and
    :func:`torch.nn.functional.linear`. The attribute :attr:`path` forces one of them.

    The bias is a plain :class:`torch.nn.Parameter` (a point estimate, not a sample site),
    initialized as :class:`torch.nn.Linear`'s, uniform on ``±1/sqrt(in_features)``. The
    guide's initial weight has the variance of a Kaiming (fan_in, gain 1) dense layer,
    ``Var W = 1 / in_features`` (see the module docs).

    Usage::

        layer = TensorizedLinear(784, 625, format="ttm", max_rank=20)   # (4,7,4,7) -> (5,5,5,5)
        y = layer(x)                          # inside a Pyro model: samples layer.weight's sites

    :param int in_features: the width of the input.
    :param int out_features: the width of the output.
    :param str format: "cp", "tucker", "tt" or "ttm".
    :param max_rank: an int or one int per rank bond (clipped to what the shape allows);
        ``None`` (default): :func:`default_max_rank`, a twentieth of the dense weight's entries
        (up to a quarter for a small layer, to reach rank :data:`MIN_SEARCH_RANK`).
    :param prior: the hyperprior on λ: "half_cauchy", "log_uniform" or "gamma" (or an object).
    :param tuple in_shape: the in modes (product ``in_features``); default :func:`factorize`.
    :param tuple out_shape: the out modes (product ``out_features``); default :func:`factorize`.
        When neither shape is given, a TTM weight pairs its in and out modes so that the
        contraction is cheapest: each core keeps the size ``m_k * n_k`` of the balanced shapes
        (so the same parameters and rank limits), and the modes are split between the cores
        to cost the fewest multiply-adds per row (``4096 x 4096`` at rank 16: in ``(4, 4, 16,
        16)``, out ``(16, 16, 4, 4)``, an eighth of the dense product's against half for
        ``(8, 8, 8, 8)``). Sizes where no pairing beats the dense product keep the balanced
        shapes (``784 -> 625``: ``(4, 7, 4, 7) -> (5, 5, 5, 5)``).
    :param bool bias: whether to add a bias.
    :param int order: the number of modes each side is split into when a shape is not given
        (default: that of the given shape, else :func:`auto_order`: the largest of 4, 3, 2 at
        which both sizes factor with ``largest/smallest <= MAX_RATIO`` and the default budget
        allows a rank of :data:`MIN_SEARCH_RANK` a bond; ``784 x 625``: 4 for TTM, TT and
        CP, 2 for Tucker).
    :param dict prior_kwargs: hyperparameters of the prior (e.g. ``{"eta": 1.0}``).
    :param float init_variance: the variance of the guide's initial ``W`` (default
        ``1 / in_features``).
    :param bool interleave: a TT weight's cores run over the out and in modes alternately
        (default), so that no bond bounds the weight's rank; ``False`` keeps them in order (out
        modes, then in modes): a cheaper contraction (the 4096 x 4096 layer at rank 32, batch
        1024: 129 ms in order, 715 ms interleaved, one thread) but a weight of rank at most the
        middle bond's (on the deep Fashion-MNIST MLP 86.81 % in order, 88.27 % interleaved).
        Other formats ignore it.
    """

    def __init__(
        self,
        in_features,
        out_features,
        format="ttm",
        max_rank=None,
        prior="half_cauchy",
        in_shape=None,
        out_shape=None,
        bias=True,
        order=None,
        prior_kwargs=None,
        init_variance=None,
        interleave=True,
    ):
        super().__init__()
        self.in_features = check_int(in_features, "in_features")
        self.out_features = check_int(out_features, "out_features")
        if not isinstance(interleave, bool):
            raise TypeError(f"interleave must be True or False, got {interleave!r}")
        fmt = get_format(format)
        pair_for_speed = fmt.name == "ttm" and in_shape is None and out_shape is None
        sizes = {"in_features": self.in_features, "out_features": self.out_features}
        if order is None and in_shape is None and out_shape is None:
            order = auto_order(
                fmt, sizes, lambda s: (s["out_features"] + s["in_features"], len(s["out_features"])), interleave
            )
        in_shape, out_shape = _side_shapes(
            sizes, {"in_features": ("in_shape", in_shape), "out_features": ("out_shape", out_shape)}, order
        )
        if fmt.name == "ttm" and len(in_shape) != len(out_shape):
            raise ValueError(
                f"a TTM weight pairs out mode k with in mode k: in_shape={in_shape} and out_shape={out_shape} "
                "must have the same number of modes"
            )
        if max_rank is None:
            max_rank = default_max_rank(fmt, out_shape + in_shape, len(out_shape), interleave=interleave)
        if pair_for_speed and len(in_shape) > 1:
            ranks = clip_ranks(max_rank, fmt(out_shape + in_shape, 1))
            in_shape, out_shape = _cheapest_ttm_pairing(in_shape, out_shape, ranks)
        self.in_shape, self.out_shape = in_shape, out_shape
        self.weight = _low_rank_weight(
            out_shape + in_shape,
            len(out_shape),
            fmt,
            max_rank,
            prior,
            prior_kwargs,
            check_init_variance(init_variance, 1.0 / self.in_features),
            interleave=interleave,
        )
        if bias:
            bound = 1.0 / math.sqrt(self.in_features)
            self.bias = torch.nn.Parameter(torch.empty(self.out_features).uniform_(-bound, bound))
        else:
            self.bias = None
        self.path = "auto"

    @property
    def path(self):
        """``"auto"`` (by :meth:`choose_path`), ``"contract"`` or ``"dense"``."""
        return self.__dict__["_path"]

    @path.setter
    def path(self, value):
        if value not in _PATHS:
            raise ValueError(f"path must be one of {_PATHS}, got {value!r}")
        self.__dict__["_path"] = value

    @property
    def layout(self):
        return self.weight.layout

    def flop_counts(self, batch_size):
        """``{"contract": ..., "dense": ...}``: the FLOPs of either path for ``batch_size`` rows
        (opt_einsum's count of the contractions each path runs, :meth:`contract_flops
        <tensorbayes.formats.TensorFormat.contract_flops>` for ``"contract"``; ``F.linear`` as
        ``2 * batch * out * in``;
        the bias, added on both paths, is left out)."""
        batch_size = check_int(batch_size, "batch_size")
        return {"contract": contract_flops(self.layout, batch_size), "dense": dense_flops(self.layout, batch_size)}

    def choose_path(self, batch_size):
        """The path of ``batch_size`` rows, ``"contract"`` or ``"dense"``, by :func:`linear_path`."""
        return linear_path(self.layout, check_int(batch_size, "batch_size"))

    def _check_input(self, x):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating point tensor, got dtype {x.dtype}")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"x must have shape (..., in_features={self.in_features}), got {tuple(x.shape)}")

    def forward(self, x):
        """
        :param torch.Tensor x: inputs of shape ``(..., in_features)``, floating point.
        :returns: outputs of shape ``(..., out_features)`` in ``x``'s dtype. When the weight's
            factors carry leading particle dims ``lead`` (:func:`~.tensor.particle_dims`), the
            output is ``(*lead, ..., out_features)``: one pass per particle, on ``x`` itself, or on
            ``x[p]`` when ``x`` is ``(*lead, batch, in_features)`` (a previous layer's output).
        """
        self._check_input(x)
        factors, _ = self.weight()
        factors = _factors_like(factors, x)
        # vectorized particles: x is (..., in), or (*lead, batch, in) from a previous layer
        return map_particles(self._linear, particle_dims(self.layout, factors), factors, (x,), min_dims=(2,))

    def _linear(self, factors, x):
        bias = None if self.bias is None else self.bias.to(dtype=x.dtype, device=x.device)
        path = self.path
        if path == "auto":
            path = self.choose_path(max(1, math.prod(x.shape[:-1])))
        if path == "contract":
            y = self.layout.contract(x, factors)
            return y if bias is None else y + bias
        return F.linear(x, self.layout.to_matrix(factors), bias)

    def extra_repr(self):
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, in_shape={self.in_shape}, "
            f"out_shape={self.out_shape}, format={self.layout.name!r}, ranks={self.layout.ranks}, "
            f"bias={self.bias is not None}"
        )


def _side_shapes(sizes, given, order, pad=()):
    """
    The shapes of several sizes: explicit ones validated, the others factored into as many
    modes as ``order`` (default: as many as an explicit shape has, else chosen).
    ``given`` maps each size's name to ``(shape argument's name, shape or None)``.
    """
    shapes = {}
    for size_name, (arg, shape) in given.items():
        if shape is not None:
            shapes[size_name] = _check_shape_arg(shape, sizes[size_name], arg, size_name, at_least=size_name in pad)
    missing = {k: v for k, v in sizes.items() if k not in shapes}
    if missing:
        if order is None and shapes:
            order = len(next(iter(shapes.values())))
        shapes.update(_auto_shapes(missing, order, pad=pad))
    return tuple(shapes[k] for k in sizes)


def auto_order(format, sizes, modes, interleave=False):
    """
    The number of modes a side that a layer picks when neither its order nor a shape is given:
    the largest of :data:`AUTO_ORDERS` at which every size factors (:func:`factorize`) and the
    default budget's rank (:func:`budget_rank`) is at least :data:`MIN_SEARCH_RANK`; where no
    order allows that (a small layer), the fewest modes that factor, where a bond holds the
    most rank per entry (:func:`default_max_rank` then lets it reach :data:`MIN_SEARCH_RANK`). It
    depends on the format and the sizes only, not on ``max_rank``, so a layer built at a fixed
    rank has the layout of the one built at its default. ``None`` when no order factors.

    Usage::

        matrix = lambda s: (s["out"] + s["in"], len(s["out"]))   # a linear layer's (out, in) weight
        auto_order("tucker", {"in": 784, "out": 625}, matrix)    # 2: rank 12 (rank 3 at order 4)
        auto_order("ttm", {"in": 784, "out": 625}, matrix)       # 4: rank 20

    :param format: "cp", "tucker", "tt" or "ttm" (or a format class).
    :param dict sizes: ``{name: size}`` of the sides, as :func:`factorize` takes them.
    :param modes: ``modes(shapes) -> (tensor shape, row modes)`` of the layer's weight, given
        ``{name: shape}``.
    :param bool interleave: a TT's train alternates the row and column modes (:func:`layout_options`).
    """
    fmt = get_format(format)
    fewest = None
    for d in AUTO_ORDERS:
        try:
            shape, row_modes = modes(_auto_shapes(sizes, d))
        except FactorizationError:
            continue
        if budget_rank(fmt, shape, row_modes, interleave=interleave) >= MIN_SEARCH_RANK:
            return d
        fewest = d
    return fewest


def _pair(value, name):
    if isinstance(value, Integral) and not isinstance(value, bool):
        value = (value, value)
    try:
        value = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}") from None
    if len(value) != 2 or any(isinstance(v, bool) or not isinstance(v, Integral) for v in value):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return tuple(int(v) for v in value)


def _kernel_modes(fmt, in_shape, out_shape, window):
    """``(shape, row modes)`` of a convolution kernel's tensor: the out modes, then the in modes
    and the window (a TTM pairs the window with an out mode of size 1)."""
    if window == 1:
        return out_shape + in_shape, len(out_shape)
    rows = out_shape + (1,) if fmt.name == "ttm" else out_shape
    return rows + in_shape + (window,), len(rows)


def _image_shape_error(x, in_channels):
    return ValueError(
        f"x must have shape (batch, in_channels={in_channels}, H, W) or (in_channels, H, W), got {tuple(x.shape)}"
    )


class TensorizedConv2d(PyroModule, _Exports):
    """
    A Bayesian 2-d convolution whose kernel ``(out_channels, in_channels, kh, kw)`` is a
    low-rank tensor with rank-shrinkage priors.

    The kernel is the matrix view ``(out_channels, in_channels * kh * kw)`` of a
    :class:`~.tensor.LowRankTensor` whose columns flatten ``(in modes..., window)`` row-major,
    the kernel window ``kh * kw`` being one extra mode (left out when ``kh * kw == 1``):

    - CP, Tucker, TT: shape ``out_shape + in_shape + (kh * kw,)``, the out modes as rows;
    - TTM: shape ``out_shape + (1,) + in_shape + (kh * kw,)``: the window is a core of its own,
      ``(r, 1, kh * kw, 1)``, pairing it with an out mode of size 1, so the channel cores
      keep their shapes and the window gets a rank bond of its own (rather than folding the
      window into the last in mode, which would multiply that core's size by ``kh * kw``).

    The forward pass reconstructs the kernel from the factors and calls
    :func:`torch.nn.functional.conv2d`: the kernel is small next to the activations, so the
    dense-kernel path is always taken. The bias is a plain :class:`torch.nn.Parameter`; the
    guide's initial kernel has ``Var = 1 / (in_channels * kh * kw)``, Kaiming (fan_in, gain 1).

    Usage::

        conv = TensorizedConv2d(64, 128, 3, padding=1, format="tucker", max_rank=16)

    :param int in_channels: input channels.
    :param int out_channels: output channels.
    :param kernel_size: an int or ``(kh, kw)``.
    :param stride: as :func:`torch.nn.functional.conv2d`.
    :param padding: as :func:`torch.nn.functional.conv2d` (ints, a pair, "same" or "valid").
    :param dilation: as :func:`torch.nn.functional.conv2d`.
    :param bool bias: whether to add a bias.
    :param str format: "cp", "tucker", "tt" or "ttm".
    :param max_rank: an int or one int per rank bond (clipped to what the shape allows);
        ``None`` (default): :func:`default_max_rank`, a twentieth of the dense weight's entries
        (up to a quarter for a small layer, to reach rank :data:`MIN_SEARCH_RANK`).
    :param prior: the hyperprior on λ.
    :param tuple in_shape: the modes of ``in_channels`` (default :func:`factorize`).
    :param tuple out_shape: the modes of ``out_channels`` (default :func:`factorize`).
    :param int order: modes per side when a shape is not given (as :class:`TensorizedLinear`).
    :param dict prior_kwargs: hyperparameters of the prior.
    :param float init_variance: the variance of the guide's initial kernel (default
        ``1 / (in_channels * kh * kw)``).
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        bias=True,
        format="ttm",
        max_rank=None,
        prior="half_cauchy",
        in_shape=None,
        out_shape=None,
        order=None,
        prior_kwargs=None,
        init_variance=None,
    ):
        super().__init__()
        self.in_channels = check_int(in_channels, "in_channels")
        self.out_channels = check_int(out_channels, "out_channels")
        self.kernel_size = _pair(kernel_size, "kernel_size")
        if min(self.kernel_size) < 1:
            raise ValueError(f"kernel_size must be positive, got {kernel_size!r}")
        self.stride = _pair(stride, "stride")
        if min(self.stride) < 1:
            raise ValueError(f"stride must be positive, got {stride!r}")
        self.padding = padding if isinstance(padding, str) else _pair(padding, "padding")
        if isinstance(padding, str) and padding not in ("same", "valid"):
            raise ValueError(f"padding must be an int, a pair of ints, 'same' or 'valid', got {padding!r}")
        if padding == "same" and self.stride != (1, 1):
            raise ValueError(f"padding='same' needs stride=1 (as torch.nn.Conv2d), got stride={stride!r}")
        if not isinstance(padding, str) and min(self.padding) < 0:
            raise ValueError(f"padding must be non-negative, got {padding!r}")
        self.dilation = _pair(dilation, "dilation")
        if min(self.dilation) < 1:
            raise ValueError(f"dilation must be positive, got {dilation!r}")
        fmt = get_format(format)
        window = self.kernel_size[0] * self.kernel_size[1]
        sizes = {"in_channels": self.in_channels, "out_channels": self.out_channels}
        if order is None and in_shape is None and out_shape is None:
            order = auto_order(fmt, sizes, lambda s: _kernel_modes(fmt, s["in_channels"], s["out_channels"], window))
        in_shape, out_shape = _side_shapes(
            sizes, {"in_channels": ("in_shape", in_shape), "out_channels": ("out_shape", out_shape)}, order
        )
        if fmt.name == "ttm" and len(in_shape) != len(out_shape):
            raise ValueError(
                f"a TTM kernel pairs out mode k with in mode k: in_shape={in_shape} and out_shape={out_shape} "
                "must have the same number of modes"
            )
        self.in_shape, self.out_shape = in_shape, out_shape
        shape, row_modes = _kernel_modes(fmt, in_shape, out_shape, window)
        fan_in = self.in_channels * window
        self.weight = _low_rank_weight(
            shape,
            row_modes,
            fmt,
            default_max_rank(fmt, shape, row_modes) if max_rank is None else max_rank,
            prior,
            prior_kwargs,
            check_init_variance(init_variance, 1.0 / fan_in),
        )
        if bias:
            bound = 1.0 / math.sqrt(fan_in)
            self.bias = torch.nn.Parameter(torch.empty(self.out_channels).uniform_(-bound, bound))
        else:
            self.bias = None

    @property
    def layout(self):
        return self.weight.layout

    def kernel(self, factors):
        """The dense kernel ``(out_channels, in_channels, kh, kw)`` of given factors."""
        return self.layout.to_matrix(factors).reshape(self.out_channels, self.in_channels, *self.kernel_size)

    def forward(self, x):
        """
        :param torch.Tensor x: images ``(batch, in_channels, H, W)`` or ``(in_channels, H, W)``.
        :returns: :func:`torch.nn.functional.conv2d` of ``x`` with the sampled kernel; with
            ``(*lead, ...)`` in front when the factors carry leading particle dims ``lead`` (then
            ``x`` may also be ``(*lead, batch, in_channels, H, W)``, a previous layer's output).
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating point tensor, got dtype {x.dtype}")
        if x.dim() < 3 or x.shape[-3] != self.in_channels:  # before the draw (random stream, sample sites)
            raise _image_shape_error(x, self.in_channels)
        factors, _ = self.weight()
        factors = _factors_like(factors, x)
        lead = particle_dims(self.layout, factors)
        carries = lead and x.dim() == len(lead) + 4 and tuple(x.shape[: len(lead)]) == tuple(lead)
        if x.dim() not in (3, 4) and not carries:
            raise _image_shape_error(x, self.in_channels)
        # vectorized particles: x shared, or (*lead, batch, C, H, W) from a previous layer
        return map_particles(self._conv, lead, factors, (x,), min_dims=(4,))

    def _conv(self, factors, x):
        kernel = self.kernel(factors)
        bias = None if self.bias is None else self.bias.to(dtype=x.dtype, device=x.device)
        return F.conv2d(x, kernel, bias, self.stride, self.padding, self.dilation)

    def extra_repr(self):
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, in_shape={self.in_shape}, out_shape={self.out_shape}, "
            f"format={self.layout.name!r}, ranks={self.layout.ranks}, bias={self.bias is not None}"
        )


class TensorizedEmbedding(PyroModule, _Exports):
    """
    A Bayesian embedding table ``(num_embeddings, embedding_dim)`` held as a low-rank tensor
    with rank-shrinkage priors; a lookup gathers only the rows it needs.

    The table is the matrix view of a :class:`~.tensor.LowRankTensor` of shape ``row_shape +
    col_shape`` (TTM: core ``k`` pairs row mode ``k`` with column mode ``k``). Row ``i`` is
    the mixed-radix multi-index of ``i`` over ``row_shape``, and a lookup indexes each factor
    by its digit (:meth:`~tensorbayes.formats.TensorFormat.rows`), so the cost is linear in the
    number of indices and the table is never formed: ``10**12`` virtual rows are fine.

    When ``num_embeddings`` does not factor into balanced modes it is padded up to the next
    near-balanced product (:func:`padded_shape`), or an explicit ``row_shape`` may have a
    product larger than ``num_embeddings``: the extra rows are never indexed (a lookup checks
    ``0 <= index < num_embeddings``). The guide's initial table has entries of variance 1, as
    :class:`torch.nn.Embedding`'s ``N(0, 1)``.

    Usage::

        emb = TensorizedEmbedding(10_000_000, 128, format="ttm", max_rank=16)
        vectors = emb(torch.tensor([[1, 5], [7, 9_999_999]]))     # (2, 2, 128)

    :param int num_embeddings: the number of rows.
    :param int embedding_dim: the width of a row.
    :param str format: "cp", "tucker", "tt" or "ttm".
    :param max_rank: an int or one int per rank bond (clipped to what the shape allows;
        default :data:`EMBEDDING_MAX_RANK`).
    :param prior: the hyperprior on λ.
    :param tuple row_shape: the row modes (product at least ``num_embeddings``).
    :param tuple col_shape: the column modes (product ``embedding_dim``).
    :param bool padding: pad ``num_embeddings`` when it does not factor (default); ``False``
        raises :class:`FactorizationError` instead. (Not :class:`torch.nn.Embedding`'s
        ``padding_idx``: there is no row kept at zero.)
    :param int order: modes per side when a shape is not given (as :class:`TensorizedLinear`).
    :param dict prior_kwargs: hyperparameters of the prior.
    :param float init_variance: the variance of the guide's initial entries (default 1).
    """

    def __init__(
        self,
        num_embeddings,
        embedding_dim,
        format="ttm",
        max_rank=None,
        prior="half_cauchy",
        row_shape=None,
        col_shape=None,
        padding=True,
        order=None,
        prior_kwargs=None,
        init_variance=None,
    ):
        super().__init__()
        self.num_embeddings = check_int(num_embeddings, "num_embeddings")
        self.embedding_dim = check_int(embedding_dim, "embedding_dim")
        if not isinstance(padding, bool):
            raise TypeError(f"padding must be a bool, got {padding!r}")
        fmt = get_format(format)
        row_shape, col_shape = _side_shapes(
            {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim},
            {"num_embeddings": ("row_shape", row_shape), "embedding_dim": ("col_shape", col_shape)},
            order,
            pad=("num_embeddings",) if padding else (),
        )
        if fmt.name == "ttm" and len(row_shape) != len(col_shape):
            raise ValueError(
                f"a TTM table pairs row mode k with column mode k: row_shape={row_shape} and col_shape={col_shape} "
                "must have the same number of modes"
            )
        self.row_shape, self.col_shape = row_shape, col_shape
        max_rank = EMBEDDING_MAX_RANK if max_rank is None else max_rank
        self.weight = _low_rank_weight(
            row_shape + col_shape,
            len(row_shape),
            fmt,
            max_rank,
            prior,
            prior_kwargs,
            check_init_variance(init_variance, 1.0),
        )

    @property
    def layout(self):
        return self.weight.layout

    @property
    def num_padding_rows(self):
        """Rows of the tensor beyond ``num_embeddings`` (never indexed)."""
        return math.prod(self.row_shape) - self.num_embeddings

    def _check_indices(self, indices):
        if not isinstance(indices, torch.Tensor):
            raise TypeError(f"indices must be a torch.Tensor of integers, got {type(indices).__name__}")
        if indices.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"indices must be an integer tensor (int64 or int32), got dtype {indices.dtype}")
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.num_embeddings):
            raise ValueError(
                f"indices must lie in [0, num_embeddings={self.num_embeddings}), "
                f"got values in [{int(indices.min())}, {int(indices.max())}]"
            )

    def forward(self, indices):
        """
        :param torch.Tensor indices: row indices of any shape, int64 or int32.
        :returns: the rows, of shape ``(*indices.shape, embedding_dim)``; ``(*lead, *indices.shape,
            embedding_dim)`` when the factors carry leading particle dims ``lead``.
        """
        self._check_indices(indices)
        factors, _ = self.weight()
        lead = particle_dims(self.layout, factors)  # vectorized particles: the same indices in every table
        return map_particles(self._lookup, lead, factors, (indices,), min_dims=(indices.dim() + 1,))

    def _lookup(self, factors, indices):
        flat = indices.reshape(-1).long()
        rows = self.layout.rows(factors, flat)
        return rows.reshape(*indices.shape, self.embedding_dim)

    def extra_repr(self):
        return (
            f"{self.num_embeddings}, {self.embedding_dim}, row_shape={self.row_shape}, col_shape={self.col_shape}, "
            f"format={self.layout.name!r}, ranks={self.layout.ranks}"
        )


# ----- the deterministic counterparts (tensorbayes.export) -----


def _copy_bias(layer):
    bias = layer._parameters.get("bias")
    return None if bias is None else torch.nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)


def _check_layer(layer, cls):
    if not isinstance(layer, cls):
        raise TypeError(f"layer must be a {cls.__name__}, got {type(layer).__name__}")


class CompactLinear(torch.nn.Module):
    """
    ``y = x W^T + b`` with ``W`` a low-rank tensor fixed at given factors: a
    :class:`TensorizedLinear` without its priors. The forward pass is the Bayesian layer's: by
    cost (:meth:`choose_path`), the input is contracted with the factors or ``W`` is
    reconstructed once; :attr:`path` forces either.

    Usage::

        layer = CompactLinear(model.fc, guide.factor_means(model.fc.weight))   # = model.fc.export(guide)
        y = layer(x)

    :param layer: the :class:`TensorizedLinear` whose sizes, shapes, path and bias (copied) to take.
    :param list factors: the factors of ``layer.weight``'s layout (copied).
    """

    def __init__(self, layer, factors):
        super().__init__()
        _check_layer(layer, TensorizedLinear)
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.in_shape, self.out_shape = layer.in_shape, layer.out_shape
        self.weight = CompactTensor(layer.layout, factors)
        self.bias = _copy_bias(layer)
        self.path = layer.path

    def choose_path(self, batch_size):
        """:meth:`TensorizedLinear.choose_path`; under :func:`torch.jit.trace` the batch size is a
        0-d integer tensor, read as its int (the traced module keeps the path chosen at tracing)."""
        if isinstance(batch_size, torch.Tensor) and batch_size.dim() == 0 and not batch_size.is_floating_point():
            batch_size = int(batch_size)
        return TensorizedLinear.choose_path(self, batch_size)

    path = TensorizedLinear.path
    layout = TensorizedLinear.layout
    flop_counts = TensorizedLinear.flop_counts
    _check_input = TensorizedLinear._check_input
    forward = TensorizedLinear.forward
    _linear = TensorizedLinear._linear
    extra_repr = TensorizedLinear.extra_repr


class CompactConv2d(torch.nn.Module):
    """
    A 2-d convolution whose kernel is a low-rank tensor fixed at given factors: a
    :class:`TensorizedConv2d` without its priors (the kernel is reconstructed and
    :func:`torch.nn.functional.conv2d` called, as there).

    Usage::

        conv = CompactConv2d(model.conv, guide.factor_means(model.conv.weight))   # = model.conv.export(guide)

    :param layer: the :class:`TensorizedConv2d` whose sizes, shapes, stride, padding, dilation
        and bias (copied) to take.
    :param list factors: the factors of ``layer.weight``'s layout (copied).
    """

    def __init__(self, layer, factors):
        super().__init__()
        _check_layer(layer, TensorizedConv2d)
        for name in (
            "in_channels",
            "out_channels",
            "kernel_size",
            "stride",
            "padding",
            "dilation",
            "in_shape",
            "out_shape",
        ):
            setattr(self, name, getattr(layer, name))
        self.weight = CompactTensor(layer.layout, factors)
        self.bias = _copy_bias(layer)

    layout = TensorizedConv2d.layout
    kernel = TensorizedConv2d.kernel
    forward = TensorizedConv2d.forward
    _conv = TensorizedConv2d._conv
    extra_repr = TensorizedConv2d.extra_repr


class CompactEmbedding(torch.nn.Module):
    """
    An embedding table held as a low-rank tensor fixed at given factors: a
    :class:`TensorizedEmbedding` without its priors (a lookup gathers only the rows it needs, by
    mixed-radix indexing into the factors).

    Usage::

        emb = CompactEmbedding(model.emb, guide.factor_means(model.emb.weight))   # = model.emb.export(guide)

    :param layer: the :class:`TensorizedEmbedding` whose sizes and shapes to take.
    :param list factors: the factors of ``layer.weight``'s layout (copied).
    """

    def __init__(self, layer, factors):
        super().__init__()
        _check_layer(layer, TensorizedEmbedding)
        for name in ("num_embeddings", "embedding_dim", "row_shape", "col_shape"):
            setattr(self, name, getattr(layer, name))
        self.weight = CompactTensor(layer.layout, factors)

    layout = TensorizedEmbedding.layout
    num_padding_rows = TensorizedEmbedding.num_padding_rows
    _check_indices = TensorizedEmbedding._check_indices
    forward = TensorizedEmbedding.forward
    _lookup = TensorizedEmbedding._lookup
    extra_repr = TensorizedEmbedding.extra_repr


TensorizedLinear.compact_class = CompactLinear
TensorizedConv2d.compact_class = CompactConv2d
TensorizedEmbedding.compact_class = CompactEmbedding
