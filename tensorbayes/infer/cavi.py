"""
Conjugate coordinate updates for tensor completion (a fast initializer for SVI).

With a Normal likelihood, every entry of a low-rank tensor is linear in each single factor given
the others, so the mean-field posterior of one factor given the others is available in closed
form (docs/method.md, "Closed-form coordinate ascent"): for each slice of the factor along its
tensor modes, a small ridge regression whose penalties are the rank-shrinkage prior's
precisions. :func:`coordinate_ascent` sweeps these updates over the factors of a
:class:`~tensorbayes.models.TensorCompletion`, then takes the closed-form λ and noise updates,
and writes the result into a :class:`~tensorbayes.guides.MeanField` guide, so that the same
model and guide go on with :func:`~tensorbayes.fit` (SVI).

The update of a factor holds the other factors at their posterior means (their variances are
not propagated), which makes it a variational EM in the spirit of Bayesian ALS; the variance it
writes for each entry is the mean-field one, ``1 / Λ_ii``.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from ..checks import check_int, check_number
from ..formats.base import einsum
from ..formats.canonical import canonicalize
from ..guides.meanfield import MeanField
from ..models.completion import TensorCompletion
from ..rank import prune

__all__ = ["closed_form_start", "coordinate_ascent", "factor_design", "supports_closed_form"]

#: Coordinate-ascent sweeps of a fresh fit, per format: CP's extra components die more slowly.
DEFAULT_SWEEPS = {"cp": 100, "tucker": 40, "tt": 40, "ttm": 40}


def factor_design(layout, factors, index, f):
    """
    Write the entries at ``index`` as linear in factor ``f``:
    ``entries[n] = design[n] @ blocks[slices[n]]`` where ``blocks`` is factor ``f`` with its
    tensor-mode dimensions moved first and flattened (one row per slice) and the others
    flattened into columns.

    :returns: ``(design, slices, num_slices)``: ``design`` of shape ``(n, block)``, ``slices``
        a long tensor of shape ``(n,)``.
    """
    labels = layout.labels[f]
    mode_dims = [d for d, lab in enumerate(labels) if lab[0] == "m"]
    block_labels = [lab for lab in labels if lab[0] == "b"]
    operands, op_labels = layout._gathered(factors, index, set(range(len(layout.shape))))
    others = [(op, lab) for g, (op, lab) in enumerate(zip(operands, op_labels)) if g != f]
    if others:
        equation = layout._equation([lab for _, lab in others], ["batch"] + block_labels)
        design = einsum(equation, *[op for op, _ in others]).reshape(index.shape[0], -1)
    else:
        design = index.new_ones((index.shape[0], 1), dtype=factors[f].dtype)
    slices = torch.zeros(index.shape[0], dtype=torch.long, device=index.device)
    num_slices = 1
    for d in mode_dims:
        size = layout.label_size(labels[d])
        slices = slices * size + index[:, int(labels[d][1:])]
        num_slices *= size
    return design, slices, num_slices


def _to_blocks(tensor, labels):
    mode_dims = [d for d, lab in enumerate(labels) if lab[0] == "m"]
    rest = [d for d in range(tensor.dim()) if d not in mode_dims]
    moved = tensor.permute(*mode_dims, *rest)
    return moved.reshape(-1, moved[(0,) * len(mode_dims)].numel() if mode_dims else tensor.numel())


def _from_blocks(blocks, labels, shape):
    mode_dims = [d for d, lab in enumerate(labels) if lab[0] == "m"]
    rest = [d for d in range(len(shape)) if d not in mode_dims]
    order = mode_dims + rest
    moved = blocks.reshape([shape[d] for d in order])
    return moved.permute(*[order.index(d) for d in range(len(shape))])


def _solve_blocks(gram, rhs, precision, noise_var):
    """Per slice: ``Λ = diag(precision) + G / σ²``, mean ``Λ⁻¹ r / σ²``; returns (mean, 1/diag Λ)."""
    gram = gram / noise_var + torch.diag_embed(precision)
    jitter = torch.finfo(gram.dtype).eps * torch.diagonal(gram, dim1=-2, dim2=-1).amax(-1, keepdim=True)
    gram = gram + torch.diag_embed(jitter.expand_as(precision))  # a slice with no observation
    mean = torch.linalg.solve(gram, (rhs / noise_var).unsqueeze(-1)).squeeze(-1)
    return mean, 1.0 / torch.diagonal(gram, dim1=-2, dim2=-1)


def _slice_grams(design, slices, num_slices):
    """``Σ_{n in slice} A_n A_nᵀ`` for every slice: rows grouped by slice, zero-padded, one bmm."""
    order = torch.argsort(slices)
    counts = torch.bincount(slices, minlength=num_slices)
    starts = torch.cumsum(counts, 0) - counts
    sorted_slices = slices[order]
    position = torch.arange(len(order), device=slices.device) - starts[sorted_slices]
    padded = design.new_zeros(num_slices, int(counts.max()), design.shape[1])
    padded[sorted_slices, position] = design[order]
    return padded.transpose(1, 2) @ padded


def _slice_statistics(layout, locs, second_moments, index, values, f):
    """
    Per slice of factor ``f``: ``Σ_n E[A_n A_nᵀ]`` and ``Σ_n E[A_n] y_n``. With
    ``second_moments`` (CP only, whose design entries are single products of independent
    entries) the Gram's diagonal gets ``Σ_n E[A_n²] - E[A_n]²``, the other factors' variance.
    """
    design, slices, num_slices = factor_design(layout, locs, index, f)
    rhs = design.new_zeros(num_slices, design.shape[1]).index_add_(0, slices, design * values.unsqueeze(-1))
    gram = _slice_grams(design, slices, num_slices)
    if second_moments is not None:
        expected_square = factor_design(layout, second_moments, index, f)[0]
        excess = design.new_zeros(num_slices, design.shape[1]).index_add_(0, slices, expected_square - design**2)
        gram = gram + torch.diag_embed(excess)
    return gram, rhs, design, slices


#: Tucker cores with more entries than this are solved matrix-free (conjugate gradients): their
#: Gram matrix would have ``block²`` entries and its solve ``block³`` operations.
MATRIX_FREE_BLOCK = 1024


def _tucker_core_update(layout, locs, index, values, precision, noise_var, iterations=50):
    """
    The core's mean-field update without its Gram matrix: conjugate gradients on
    ``(AᵀA / σ² + diag(precision)) g = Aᵀy / σ²`` from the current core, where ``A g`` is the
    tensor's entries with core ``g`` and ``Aᵀr`` its adjoint (autograd through the same einsum).
    The design of a Tucker core is a product of factor entries, so ``diag(AᵀA)`` and each
    entry's variance through the core are the same contractions with squared factors.

    :returns: ``(mean, var, spread)``: the core's mean and variance as ``(1, block)`` rows and the
        variance of every observed entry through the core.
    """
    shape = layout.factor_shapes[0]
    precision = precision.reshape(shape)

    def entries(core, factors=locs):
        return layout.entries([core] + list(factors[1:]), index)

    def adjoint(residual, factors=locs):
        with torch.enable_grad():
            probe = torch.zeros(shape, dtype=residual.dtype, device=residual.device, requires_grad=True)
            (grad,) = torch.autograd.grad(entries(probe, factors) @ residual, probe)
        return grad

    def operator(core):
        return adjoint(entries(core)) / noise_var + precision * core

    rhs = adjoint(values) / noise_var
    x = locs[0].clone()
    r = rhs - operator(x)
    p = r.clone()
    rr = (r * r).sum()
    tolerance = 100 * torch.finfo(rhs.dtype).eps ** 2 * (rhs * rhs).sum()  # residual at rounding level
    for _ in range(iterations):
        if rr <= tolerance:
            break
        q = operator(p)
        alpha = rr / (p * q).sum()
        x = x + alpha * p
        r = r - alpha * q
        rr_next = (r * r).sum()
        p = r + (rr_next / rr) * p
        rr = rr_next
    squares = [f**2 for f in locs]
    diagonal = adjoint(torch.ones_like(values), squares) / noise_var + precision
    var = 1.0 / diagonal
    spread = entries(var, squares)
    return x.reshape(1, -1), var.reshape(1, -1), spread


def spectral_factors(shape, rank, index, values):
    """
    CP factors from the observed entries alone: for every mode, the leading left singular
    vectors of the sparse mode unfolding of the zero-filled data scaled by the inverse of the
    observed fraction (a randomized SVD of a sparse matrix: the dense tensor is never formed).
    Columns beyond what a mode's unfolding offers are small random vectors.

    :returns: one ``(shape[k], rank)`` factor per mode.
    """
    total = math.prod(shape)
    scaled = values * (total / values.shape[0])
    factors = []
    for k, size in enumerate(shape):
        columns = torch.zeros_like(index[:, 0])
        stride = 1
        for j in reversed(range(len(shape))):
            if j != k:
                columns = columns + index[:, j] * stride
                stride *= shape[j]
        unfolding = torch.sparse_coo_tensor(
            torch.stack([index[:, k], columns]), scaled, (size, stride), check_invariants=True
        ).coalesce()
        q = min(rank, size, stride)
        u, s, _ = torch.svd_lowrank(unfolding, q=q, niter=4)
        factor = 0.01 * torch.randn(size, rank, dtype=values.dtype, device=values.device)
        factor[:, :q] = u * s[0] ** (1.0 / len(shape))
        factors.append(factor)
    return factors


@torch.no_grad()
def coordinate_ascent(
    model,
    guide,
    index,
    values,
    *,
    sweeps=30,
    warmup=4,
    warmup_noise=0.5,
    noise_decay=0.5,
    noise_floor=1e-4,
    propagate_variance=None,
    progress=False,
):
    """
    Closed-form mean-field updates of ``guide`` for a
    :class:`~tensorbayes.models.TensorCompletion` ``model`` on all of its data.

    Each sweep updates every factor given the others, then every λ (closed form, undamped) and,
    if the model learns its noise, the noise variance (the mean squared residual, floored at
    ``noise_floor`` times the data's variance).

    :param model: a :class:`~tensorbayes.models.TensorCompletion`.
    :param guide: a :class:`~tensorbayes.guides.MeanField` guide of ``model``.
    :param torch.Tensor index: observed multi-indices ``(n, order)``, at least one.
    :param torch.Tensor values: observed values ``(n,)``; if the model learns its noise, not all
        equal (the warm-up's noise and the noise floor are relative to their variance).
    :param int sweeps: passes over the factors, at least one.
    :param int warmup: sweeps with λ held (learning λ and the noise from the start collapses
        every rank while the fit is still poor, docs/method.md); with a learned noise, the number
        of times the warm-up lowers it (see ``noise_decay``); 0 continues from the current state.
        The warm-up never takes more than half of the sweeps.
    :param float warmup_noise: the noise during the warm-up, relative to the data's spread (positive).
    :param float noise_decay: in ``(0, 1]``; during the warm-up a learned noise is annealed: it starts at
        ``warmup_noise`` times the data's spread and is multiplied by ``noise_decay`` after
        every sweep whose mean squared residual is within twice its variance (the fit has
        caught up), so that the dominant structure is fitted first (a small noise from the
        start lets every index fit noise; learning it at once collapses every rank). After the
        warm-up it is the expected squared residual under the posterior (the squared residual
        of the mean plus each entry's variance through every factor, given the others' means),
        and never rises.
    :param float noise_floor: lower bound on the learned noise variance, relative to the data's
        (positive: a zero noise would divide the updates by zero).
    A fresh CP fit (``warmup > 0``) starts from :func:`spectral_factors`: from random factors
    an over-factored CP fit forms near-cancelling pairs of components that never separate.

    :param bool propagate_variance: use the other factors' variances in each update (exact
        mean-field coordinate ascent; CP only, and its default, where it is what removes
        over-factored, near-cancelling pairs of components). Otherwise (Tucker, TT and TTM,
        whose design entries are sums of products and would need whole second-moment cores) the other
        factors enter at their means and the factor means are moved to the canonical gauge
        (:func:`~tensorbayes.formats.canonical.canonicalize`) before every sweep, which is what
        lets the rank scales separate there.
    :returns: the noise standard deviation after each sweep (a list).
    """
    _check_pair(model, guide)
    _check_schedule(sweeps, warmup, warmup_noise, noise_decay, noise_floor)
    index, values = model.check_data(index, values)
    if index.shape[0] == 0:
        raise ValueError("index must hold at least one observed multi-index, got none")
    if model.learns_noise and not bool(values.max() > values.min()):
        raise ValueError(
            "values must not all be equal when the model learns its noise: its warm-up and floor are "
            "relative to their variance (fix the noise, TensorCompletion(..., noise=...), or fit with init='none')"
        )
    tensor = model.tensor
    if propagate_variance is None:
        propagate_variance = tensor.layout.name == "cp"
    elif propagate_variance and tensor.layout.name != "cp":
        raise ValueError("propagate_variance=True is implemented for CP only")

    layout = tensor.layout
    name = next(name for name, t in guide.tensors().items() if t is tensor)
    locs = [loc.clone() for loc in guide.factor_means(tensor)]
    dtype = locs[0].dtype
    values = values.to(dtype)
    data_var = values.var().clamp_min(torch.finfo(dtype).tiny)
    fresh = model.learns_noise and warmup > 0
    noise_var = warmup_noise**2 * data_var if fresh else model.noise.to(dtype) ** 2
    lambdas = [lam.to(dtype) for lam in guide.lambdas(name)]
    scales = [s.clone() for s in guide.factor_scales(tensor)]
    if layout.name == "cp" and warmup > 0:
        locs = spectral_factors(layout.shape, layout.ranks[0], index, values)
    noises = []
    spread = {}
    annealed = 0  # how often a fresh warm-up has lowered the noise
    warming = warmup > 0
    for sweep in tqdm(range(sweeps), disable=not progress, desc="coordinate ascent", leave=False):
        if not warming and not propagate_variance:
            locs = canonicalize(layout, locs)[0]
        for f in list(range(len(locs))) + list(range(len(locs) - 2, 0, -1)):
            variance = tensor.prior_variance(f, lambdas).expand(layout.factor_shapes[f])
            precision = 1.0 / _to_blocks(variance, layout.labels[f])
            if layout.name == "tucker" and f == 0 and precision.numel() > MATRIX_FREE_BLOCK:
                mean, var, spread[f] = _tucker_core_update(layout, locs, index, values, precision, noise_var)
            else:
                second = [m**2 + sc**2 for m, sc in zip(locs, scales)] if propagate_variance else None
                gram, rhs, design, slices = _slice_statistics(layout, locs, second, index, values, f)
                mean, var = _solve_blocks(gram, rhs, precision, noise_var)
                spread[f] = (design**2 * var[slices]).sum(-1)  # Var of each entry through factor f
            locs[f] = _from_blocks(mean, layout.labels[f], layout.factor_shapes[f])
            scales[f] = _from_blocks(var.sqrt(), layout.labels[f], layout.factor_shapes[f])
        if warming:
            noises.append(float(noise_var.sqrt()))
            if fresh and (values - layout.entries(locs, index)).pow(2).mean() <= 2 * noise_var:
                noise_var = noise_var * noise_decay**2  # the fit has caught up with the noise: lower it
                annealed += 1
            warming = (annealed if fresh else sweep + 1) < warmup and sweep + 1 < sweeps // 2
            continue
        second = [loc**2 + s**2 for loc, s in zip(locs, scales)]
        for b in range(len(lambdas)):
            ((m, d),) = tensor.slice_moments(second, lambdas, bonds=[b])  # this bond's only
            lambdas[b] = tensor.prior.update(m, d)
        if model.learns_noise:
            residual = values - layout.entries(locs, index)
            expected = residual.pow(2) + sum(spread.values())
            # never up: a noise that rises with a poor fit strengthens the shrinkage, which
            # worsens the fit, until every rank collapses
            noise_var = torch.minimum(expected.mean(), noise_var).clamp_min(noise_floor * data_var)
        noises.append(float(noise_var.sqrt()))
    guide.set_posterior(tensor, locs, scales, lambdas)
    if model.learns_noise:
        model.log_noise.data.fill_(float(noise_var.sqrt().log()))
    return noises


def _check_pair(model, guide):
    if not isinstance(model, TensorCompletion):
        raise TypeError(f"model must be a TensorCompletion, got {type(model).__name__}")
    if not isinstance(guide, MeanField):
        raise TypeError(f"guide must be a MeanField guide, got {type(guide).__name__}")
    if not any(t is model.tensor for t in guide.tensors().values()):
        raise ValueError("guide must be the MeanField guide of this model (built as MeanField(model))")


def _check_schedule(sweeps, warmup, warmup_noise, noise_decay, noise_floor):
    check_int(sweeps, "sweeps")
    check_int(warmup, "warmup", low=0)
    check_number(warmup_noise, "warmup_noise", "(0, inf)", "a positive number")
    check_number(noise_decay, "noise_decay", "(0, 1]")
    check_number(noise_floor, "noise_floor", "(0, inf)", "a positive number")


def supports_closed_form(model, guide) -> bool:
    """Whether ``model`` and ``guide`` have the closed-form start of :func:`closed_form_start`: a
    :class:`~tensorbayes.models.TensorCompletion` under a :class:`~tensorbayes.guides.MeanField`
    guide whose λ is updated in closed form."""
    return isinstance(model, TensorCompletion) and isinstance(guide, MeanField) and guide.has_closed_form_lambdas


def closed_form_start(
    model, guide, *data: torch.Tensor, sweeps: int | None = None, progress: bool = False, required: bool = False
) -> bool:
    """
    Start ``model`` and ``guide`` where SVI would take long to get: coordinate ascent on all of the
    data (:func:`coordinate_ascent`, ``sweeps`` sweeps, default :data:`DEFAULT_SWEEPS` of the
    format), prune the rank indices it switched off (:func:`tensorbayes.prune`) and re-fit at the
    pruned ranks (half as many sweeps). :func:`~tensorbayes.fit` calls it with ``init="auto"``.

    Usage::

        if tb.infer.closed_form_start(model, guide, index, values):
            tb.fit(model, guide, (index, values), init="none", lr=1e-3, warmup=0, ramp=0)

    :param data: the model's data, ``(index, values)`` for a completion model.
    :param int sweeps: a positive int, or ``None`` for the format's default.
    :returns: whether it ran (``False`` where the pair offers no closed form, see
        :func:`supports_closed_form`; with ``required=True`` that raises a :class:`ValueError`).
    """
    if not supports_closed_form(model, guide):
        if required:
            raise ValueError("init='cavi' needs a TensorCompletion model and a MeanField guide with closed-form λ")
        return False
    if len(data) != 2:
        raise ValueError(f"data must be (index, values) for a completion model, got {len(data)} tensors")
    index, values = data
    sweeps = DEFAULT_SWEEPS[model.tensor.layout.name] if sweeps is None else check_int(sweeps, "sweeps")
    coordinate_ascent(model, guide, index, values, sweeps=sweeps, progress=progress)
    prune(model, guide)
    coordinate_ascent(model, guide, index, values, sweeps=max(1, sweeps // 2), warmup=0, progress=progress)
    return True
