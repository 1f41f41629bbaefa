"""
Conjugate coordinate updates for tensor completion (a fast initializer for SVI).

With a Normal likelihood, every entry of a low-rank tensor is linear in each single factor
given the others, so the mean-field posterior of one factor given the others is available in
closed form (METHOD.md §5): for each slice of the factor along its tensor modes, a small ridge
regression whose penalties are the rank-shrinkage prior's precisions. :func:`coordinate_ascent`
sweeps these updates over the factors of a :class:`~tensorbayes.models.TensorCompletion`,
then takes the closed-form λ and noise updates, and writes the result into a
:class:`~tensorbayes.guides.MeanField` guide, so that the same model and guide go on with
:func:`~tensorbayes.fit` (SVI).

The update of a factor holds the other factors at their posterior means (their variances are
not propagated), which makes it a variational EM in the spirit of Bayesian ALS; the variance it
writes for each entry is the mean-field one, ``1 / Λ_ii``.
"""

import torch
from tqdm.auto import tqdm

from ..formats.base import _einsum
from ..formats.canonical import canonicalize

__all__ = ["coordinate_ascent", "factor_design"]

#: Largest number of entries of the (n, block, block) outer products formed at once.
_OUTER_PRODUCT_BUDGET = 2**24


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
        design = _einsum(equation, *[op for op, _ in others]).reshape(index.shape[0], -1)
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


def _solve_blocks(design, slices, num_slices, values, precision, noise_var):
    """Per slice: ``Λ = diag(precision) + AᵀA / σ²``, mean ``Λ⁻¹ Aᵀy / σ²``; returns (mean, 1/diag Λ)."""
    block = design.shape[1]
    rhs = design.new_zeros(num_slices, block).index_add_(0, slices, design * values.unsqueeze(-1))
    if design.shape[0] * block * block <= _OUTER_PRODUCT_BUDGET:
        outer = design.unsqueeze(-1) * design.unsqueeze(-2)
        gram = design.new_zeros(num_slices, block, block).index_add_(0, slices, outer)
    else:  # one Gram matrix per slice, without the (n, block, block) outer products
        gram = design.new_zeros(num_slices, block, block)
        order = torch.argsort(slices)
        start = 0
        for s, count in enumerate(torch.bincount(slices, minlength=num_slices).tolist()):
            rows = order[start : start + count]
            gram[s] = design[rows].T @ design[rows]
            start += count
    gram = gram / noise_var + torch.diag_embed(precision)
    rhs = rhs / noise_var
    mean = torch.linalg.solve(gram, rhs.unsqueeze(-1)).squeeze(-1)
    return mean, 1.0 / torch.diagonal(gram, dim1=-2, dim2=-1)


@torch.no_grad()
def coordinate_ascent(model, guide, index, values, *, sweeps=30, warmup=3, warmup_noise=0.1, noise_floor=1e-4,
                      progress=False):
    """
    Closed-form mean-field updates of ``guide`` for a
    :class:`~tensorbayes.models.TensorCompletion` ``model`` on all of its data.

    Each sweep updates every factor given the others, then every λ (closed form, undamped) and,
    if the model learns its noise, the noise variance (the mean squared residual, floored at
    ``noise_floor`` times the data's variance).

    :param model: a :class:`~tensorbayes.models.TensorCompletion`.
    :param guide: a :class:`~tensorbayes.guides.MeanField` guide of ``model``.
    :param torch.Tensor index: observed multi-indices ``(n, order)``.
    :param torch.Tensor values: observed values ``(n,)``.
    :param int sweeps: passes over the factors.
    :param int warmup: first sweeps with λ held and a learned noise held at ``warmup_noise``
        times the data's standard deviation (learning both from the start collapses every
        rank while the fit is still poor, METHOD.md §5); 0 continues from the current state.
    :param float warmup_noise: the noise during the warm-up, relative to the data's spread.
    :param float noise_floor: lower bound on the learned noise variance, relative to the data's.
    :returns: the noise standard deviation after each sweep (a list).
    """
    index, values = model.check_data(index, values)
    tensor = model.tensor
    layout = tensor.layout
    post = guide._posterior(tensor)
    locs = [loc.detach().clone() for loc in post.locs]
    dtype = locs[0].dtype
    values = values.to(dtype)
    data_var = values.var().clamp_min(torch.finfo(dtype).tiny)
    fresh = model.learns_noise and warmup > 0
    noise_var = warmup_noise**2 * data_var if fresh else model.noise.to(dtype) ** 2
    lambdas = [post.log_lambda(b).exp().to(dtype) for b in range(len(layout.ranks))]
    scales = [s.detach().clone() for s in post.scales()]
    noises = []
    for sweep in tqdm(range(sweeps), disable=not progress, desc="coordinate ascent", leave=False):
        if sweep >= warmup and layout.name != "cp":  # CP has no rotation gauge to fix
            locs = canonicalize(layout, locs)[0]
        for f in list(range(len(locs))) + list(range(len(locs) - 2, 0, -1)):
            design, slices, num_slices = factor_design(layout, locs, index, f)
            variance = tensor.prior_variances(lambdas)[f].expand(layout.factor_shapes[f])
            precision = 1.0 / _to_blocks(variance, layout.labels[f])
            mean, var = _solve_blocks(design, slices, num_slices, values, precision, noise_var)
            locs[f] = _from_blocks(mean, layout.labels[f], layout.factor_shapes[f])
            scales[f] = _from_blocks(var.sqrt(), layout.labels[f], layout.factor_shapes[f])
        if sweep < warmup:
            noises.append(float(noise_var.sqrt()))
            continue
        second = [loc**2 + s**2 for loc, s in zip(locs, scales)]
        for b in range(len(lambdas)):
            m, d = tensor.slice_moments(second, lambdas)[b]
            lambdas[b] = tensor.prior.update(m, d)
        if model.learns_noise:
            residual = values - layout.entries(locs, index)
            noise_var = (residual.pow(2).mean()).clamp_min(noise_floor * data_var)
        noises.append(float(noise_var.sqrt()))
    guide.set_posterior(tensor, locs, scales, lambdas)
    if model.learns_noise:
        model.log_noise.data.fill_(float(noise_var.sqrt().log()))
    return noises
