"""
Reading the ranks a posterior chose, pruning the rest, and reporting the compression.

The readout is *functional* (METHOD.md §4-5): the posterior-mean factors of every low-rank
tensor are brought to their canonical, balanced gauge
(:func:`~tensorbayes.formats.canonical.canonicalize`), where each rank index of a bond carries
a weight that is a property of the tensor itself (the singular values of the bond's unfolding
for TT, TTM and Tucker; the component norms for CP). Index ``j`` is active when its weight
exceeds ``threshold`` times the largest weight of its bond. Reading the raw λ instead is
fragile: a train or Tucker tensor can spread a rank-3 subspace over all its indices (a gauge
freedom), and every λ then looks alive.

Pruning moves the posterior means into that gauge (which leaves the mean tensor unchanged) and
removes the inactive indices from the factors and from the guide's parameters, so memory and
compute shrink; the mean tensor then changes by the weight of what was removed.
"""

import torch

from .formats.canonical import canonicalize
from .guides.meanfield import low_rank_tensors

__all__ = ["DEFAULT_THRESHOLD", "bond_weights", "compression_report", "prune", "ranks"]

#: Relative weight below which a rank index is inactive: 1 % of its bond's largest weight.
DEFAULT_THRESHOLD = 1e-2


def _check_threshold(threshold):
    if not (isinstance(threshold, (int, float)) and 0 < threshold < 1):
        raise ValueError(f"threshold must be a number in (0, 1), got {threshold!r}")


def bond_weights(model, guide):
    """The canonical weight of every rank index, per tensor and bond (non-increasing)."""
    return {name: canonicalize(t.layout, guide.factor_means(t))[1] for name, t in low_rank_tensors(model).items()}


def _active(weights, threshold):
    return [int((w > threshold * w.max()).sum()) if w.max() > 0 else 1 for w in weights]


def ranks(model, guide, threshold=DEFAULT_THRESHOLD):
    """
    The ranks the posterior chose, per tensor: ``{"tensor": (3, 4, 2), ...}``.

    :param model: a model holding :class:`~tensorbayes.models.LowRankTensor` modules.
    :param guide: its :class:`~tensorbayes.guides.MeanField` guide.
    :param float threshold: relative weight below which an index is inactive.
    """
    _check_threshold(threshold)
    return {name: tuple(max(1, r) for r in _active(w, threshold)) for name, w in bond_weights(model, guide).items()}


@torch.no_grad()
def prune(model, guide, threshold=DEFAULT_THRESHOLD):
    """
    Physically remove the inactive rank indices of every tensor from the model's layout and
    the guide's parameters. The factor means move to the canonical gauge first; because a
    change of gauge mixes entries, each factor's posterior scales are reset to their
    root-mean-square value, and λ to its closed-form value given the pruned factors.

    :returns: the ranks after pruning, as :func:`ranks` gives them.
    """
    _check_threshold(threshold)
    found = {}
    for name, tensor in low_rank_tensors(model).items():
        layout = tensor.layout
        means, weights = canonicalize(layout, guide.factor_means(tensor))
        keep = [torch.arange(max(1, r)) for r in _active(weights, threshold)]
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


def compression_report(model, guide=None, threshold=DEFAULT_THRESHOLD):
    """
    Per tensor: format, shape, the max ranks it started from, the ranks it has (or, with a
    guide, the ranks the posterior chose), parameter counts at both, the dense size and the
    compression ratio against it.

    :returns: a list of dicts, one per tensor.
    """
    chosen = ranks(model, guide, threshold) if guide is not None else None
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
