"""
Reading the ranks a posterior chose, pruning the rest, and reporting the compression.

The readout is *functional* (docs/method.md, "Reading the ranks"): the posterior-mean factors of
every low-rank tensor are brought to their canonical, balanced gauge
(:func:`~tensorbayes.formats.canonical.canonicalize`), where each rank index of a bond carries a
weight that is a property of the tensor itself (the singular values of the bond's unfolding for
TT, TTM and Tucker; the component norms for CP). Index ``j`` is active when its weight exceeds
``threshold`` times the largest weight of its bond, and no drop by a factor of ``gap`` or more
separates it from the largest (weights are sorted, so the readout keeps the leading indices up
to the first such drop). The gap matters in networks trained by SVI: the minibatch noise leaves
the weights of unneeded indices at a few percent of the largest rather than the 1e-4 a conjugate
fit reaches, yet orders of magnitude below the needed ones (e.g. ``[1, 0.75, 0.5, 0.026, 0.019,
0.009]`` reads as rank 3). Reading the raw λ instead is
fragile: a train or Tucker tensor can spread a rank-3 subspace over all its indices (a gauge
freedom), and every λ then looks alive.

Pruning moves the posterior means into that gauge (which leaves the mean tensor unchanged) and
removes the inactive indices from the factors and from the guide's parameters, so memory and
compute shrink; the mean tensor then changes by the weight of what was removed.
"""

import torch

from .formats.canonical import canonicalize
from .guides.meanfield import low_rank_tensors

__all__ = ["DEFAULT_GAP", "DEFAULT_THRESHOLD", "active_ranks", "bond_weights", "compression_report", "prune", "ranks"]

#: Relative weight below which a rank index is inactive: 1 % of its bond's largest weight.
DEFAULT_THRESHOLD = 1e-2

#: A drop between consecutive (sorted) weights by this factor or more ends the active indices.
DEFAULT_GAP = 10.0


def _check_readout(threshold, gap):
    if not (isinstance(threshold, (int, float)) and 0 < threshold < 1):
        raise ValueError(f"threshold must be a number in (0, 1), got {threshold!r}")
    if not (isinstance(gap, (int, float)) and gap > 1):
        raise ValueError(f"gap must be a number > 1 (a factor between consecutive weights), got {gap!r}")


def active_ranks(weights, threshold=DEFAULT_THRESHOLD, gap=DEFAULT_GAP):
    """
    The number of active indices of every bond, from its non-increasing weights: the leading
    indices whose weight exceeds ``threshold`` times the largest, up to the first drop between
    consecutive weights by a factor of ``gap`` or more (at least 1 per bond).

    :param list weights: one non-increasing, non-negative weight vector per bond.
    """
    _check_readout(threshold, gap)
    counts = []
    for w in weights:
        if w.numel() == 0 or w.max() <= 0:
            counts.append(1)
            continue
        above = w > threshold * w[0]
        steady = torch.ones_like(above)
        steady[1:] = w[1:] * gap > w[:-1]
        counts.append(max(1, int(torch.cumprod((above & steady).long(), 0).sum())))
    return counts


def bond_weights(model, guide):
    """The canonical weight of every rank index, per tensor and bond (non-increasing)."""
    return {name: canonicalize(t.layout, guide.factor_means(t))[1] for name, t in low_rank_tensors(model).items()}


def ranks(model, guide, threshold=DEFAULT_THRESHOLD, gap=DEFAULT_GAP):
    """
    The ranks the posterior chose, per tensor: ``{"tensor": (3, 4, 2), ...}``.

    :param model: a model holding :class:`~tensorbayes.models.LowRankTensor` modules.
    :param guide: its :class:`~tensorbayes.guides.MeanField` guide.
    :param float threshold: relative weight below which an index is inactive.
    :param float gap: a drop by this factor between consecutive weights ends the active indices.
    """
    _check_readout(threshold, gap)
    return {name: tuple(active_ranks(w, threshold, gap)) for name, w in bond_weights(model, guide).items()}


@torch.no_grad()
def prune(model, guide, threshold=DEFAULT_THRESHOLD, gap=DEFAULT_GAP):
    """
    Physically remove the inactive rank indices of every tensor from the model's layout and
    the guide's parameters. The factor means move to the canonical gauge first; because a
    change of gauge mixes entries, each factor's posterior scales are reset to their
    root-mean-square value, and λ to its closed-form value given the pruned factors.

    :returns: the ranks after pruning, as :func:`ranks` gives them.
    """
    _check_readout(threshold, gap)
    found = {}
    for name, tensor in low_rank_tensors(model).items():
        layout = tensor.layout
        means, weights = canonicalize(layout, guide.factor_means(tensor))
        keep = [torch.arange(r, device=means[0].device) for r in active_ranks(weights, threshold, gap)]
        if all(len(k) == r for k, r in zip(keep, layout.ranks)):
            found[name] = layout.ranks
            continue
        scales = [s.pow(2).mean().sqrt().expand_as(s) for s in guide.factor_scales(tensor)]
        new_layout, new_means = layout.truncate(means, keep)
        _, new_scales = layout.truncate(scales, keep)
        guide.truncate(tensor, keep)
        tensor.set_layout(new_layout)
        second = [m**2 + s**2 for m, s in zip(new_means, new_scales)]
        current = guide.lambdas(name)
        lambdas = [tensor.prior.update(m, d) for m, d in tensor.slice_moments(second, current)]
        guide.set_posterior(tensor, new_means, new_scales, lambdas)
        found[name] = new_layout.ranks
    return found


def compression_report(model, guide=None, threshold=DEFAULT_THRESHOLD, gap=DEFAULT_GAP):
    """
    Per tensor: format, shape, the max ranks it started from, the ranks it has (or, with a
    guide, the ranks the posterior chose), parameter counts at both, the dense size and the
    compression ratio against it.

    :returns: a list of dicts, one per tensor.
    """
    chosen = ranks(model, guide, threshold, gap) if guide is not None else None
    rows = []
    for name, tensor in low_rank_tensors(model).items():
        layout = tensor.layout
        now = chosen[name] if chosen is not None else layout.ranks
        params = layout.num_params(now)
        rows.append(
            {
                "tensor": name or "tensor",
                "format": layout.name,
                "shape": layout.shape,
                "max_ranks": tensor.max_ranks,
                "ranks": now,
                "params_max": layout.num_params(tensor.max_ranks),
                "params": params,
                "dense": layout.dense_size,
                "compression": layout.dense_size / params,
            }
        )
    return rows
