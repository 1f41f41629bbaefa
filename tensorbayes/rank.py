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

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral

import pyro
import torch

from .checks import check_int, check_number
from .formats.canonical import canonicalize
from .guides.base import as_tensor_guide
from .models.tensor import low_rank_tensors
from .util import evaluating

__all__ = [
    "CUT_SCALE",
    "DEFAULT_GAP",
    "DEFAULT_THRESHOLD",
    "DEFAULT_TOLERANCE",
    "active_ranks",
    "bond_weights",
    "compression_report",
    "held_out_metric",
    "held_out_score",
    "mean_score",
    "min_held_out",
    "prune",
    "ranks",
    "search_ranks",
]

#: Relative weight below which a rank index is inactive: 1 % of its bond's largest weight.
DEFAULT_THRESHOLD = 1e-2

#: A drop between consecutive (sorted) weights by this factor or more ends the active indices.
DEFAULT_GAP = 10.0

#: The posterior standard deviation of a factor entry after a cut (:func:`prune`), relative to
#: the root-mean-square of the factor's means.
CUT_SCALE = 1e-3

#: The held-out score the rank search may give up for smaller ranks: half a point of accuracy
#: for a classifier, 0.005 of relative error otherwise (:func:`search_ranks`).
DEFAULT_TOLERANCE = 0.005
#: Sweeps of the closed-form λ step that set λ after a cut (:func:`prune`), from λ = 1. The joint
#: optimum is approached slowly only along directions that trade λ between neighbouring bonds and
#: keep every prior variance; on fitted Fashion-MNIST layers (Tucker, TT, TTM) ten sweeps come
#: within 30 nats of its objective, where the λ held before the cut, taken by position, were up to
#: 7,000 nats off (Tucker: its core's prior variances 60,000 times too large).
CUT_SWEEPS = 10


def min_held_out(tolerance: float) -> int:
    """
    The fewest held-out examples a rank search of ``tolerance`` (a non-negative number) scores
    on: ``2 / tolerance`` rounded up (400 at :data:`DEFAULT_TOLERANCE`), so that one example
    weighs at most half the tolerance. A tolerance of 0 gives nothing up (a cut that lowers the
    score at all is refused), whatever the number of examples: it asks for one.
    :func:`search_ranks` refuses fewer; :func:`~tensorbayes.fit` runs no search on fewer.
    """
    return 1 if tolerance == 0 else max(1, math.ceil(2 / tolerance))


def _check_readout(threshold, gap):
    """``(threshold, gap)`` as floats (numpy scalars included), or a ValueError naming the one out of range."""
    return (
        check_number(threshold, "threshold", "(0, 1)"),
        check_number(gap, "gap", "(1, inf]", "a number > 1 (a factor between consecutive weights)"),
    )


def active_ranks(
    weights: Sequence[torch.Tensor], threshold: float = DEFAULT_THRESHOLD, gap: float = DEFAULT_GAP
) -> list[int]:
    """
    The number of active indices of every bond, from its non-increasing weights: the leading
    indices whose weight exceeds ``threshold`` times the largest, up to the first drop between
    consecutive weights by a factor of ``gap`` or more (at least 1 per bond).

    :param list weights: one non-increasing, non-negative weight vector per bond.
    """
    threshold, gap = _check_readout(threshold, gap)
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


def bond_weights(model: torch.nn.Module, guide) -> dict[str, list[torch.Tensor]]:
    """The canonical weight of every rank index, per tensor and bond (non-increasing)."""
    guide = as_tensor_guide(model, guide)
    return {name: _canonical(name, t, guide)[1] for name, t in guide.tensors().items()}


def _canonical(name, tensor, guide):
    """:func:`~tensorbayes.formats.canonical.canonicalize` of ``tensor``'s posterior means in ``guide``
    (``(means, weights)``), once they are seen to be finite: a fit that diverged leaves NaN, whose
    weights would read as rank 1 or fail inside the SVD."""
    means = guide.factor_means(tensor)
    if not all(bool(torch.isfinite(m).all()) for m in means):
        raise ValueError(
            f"guide holds non-finite (NaN or infinite) factor means for tensor {name!r}: the fit diverged, "
            "and no ranks can be read from it"
        )
    return canonicalize(tensor.layout, means)


def ranks(
    model: torch.nn.Module, guide, threshold: float = DEFAULT_THRESHOLD, gap: float = DEFAULT_GAP
) -> dict[str, tuple[int, ...]]:
    """
    The ranks the posterior chose, per tensor: ``{"tensor": (3, 4, 2), ...}``.

    :param model: a model holding :class:`~tensorbayes.models.LowRankTensor` modules.
    :param guide: its :class:`~tensorbayes.guides.MeanField` guide.
    :param float threshold: relative weight below which an index is inactive.
    :param float gap: a drop by this factor between consecutive weights ends the active indices.
    :raises ValueError: for a threshold or gap out of range, or factor means that are not finite.
    """
    threshold, gap = _check_readout(threshold, gap)
    return {name: tuple(active_ranks(w, threshold, gap)) for name, w in bond_weights(model, guide).items()}


@torch.no_grad()
def prune(
    model: torch.nn.Module,
    guide,
    threshold: float = DEFAULT_THRESHOLD,
    gap: float = DEFAULT_GAP,
    ranks: dict[str, Sequence[int]] | None = None,
) -> dict[str, tuple[int, ...]]:
    """
    Physically remove the inactive rank indices of every tensor from the model's layout and
    the guide's parameters. The factor means move to the canonical gauge first; because a
    change of gauge mixes entries, each factor's posterior scales are reset to
    :data:`CUT_SCALE` times the root-mean-square of its means: the cut network starts from
    its posterior mean, nearly noise-free, and the ELBO's gradient grows the spread back where
    the data allow (a spread carried over from the old gauge, or the guide's initial one,
    injects noise the fitted network never had, and its accuracy falls for epochs), and λ to
    its closed-form value given the pruned factors.

    :param float threshold: relative weight below which an index is inactive (as :func:`ranks`).
    :param float gap: a drop by this factor between consecutive weights ends the active indices.
    :param dict ranks: ``{tensor name: ranks}`` to cut to instead of reading them: the leading
        indices of every bond in the canonical order are kept (each rank at most the current
        one; tensors not named are read as usual).
    :returns: the ranks after pruning, as :func:`ranks` gives them.
    :raises ValueError: for an argument out of range, or factor means that are not finite; nothing
        is cut then (every tensor is read before any is cut).
    """
    threshold, gap = _check_readout(threshold, gap)
    guide = as_tensor_guide(model, guide)
    tensors = guide.tensors()
    ranks = _check_target_ranks(ranks or {}, tensors)
    plan = {}
    for name, tensor in tensors.items():
        means, weights = _canonical(name, tensor, guide)
        plan[name] = means, ranks.get(name) or active_ranks(weights, threshold, gap)
    return {name: _cut(name, tensors[name], guide, means, counts) for name, (means, counts) in plan.items()}


def _check_target_ranks(ranks, tensors):
    if not isinstance(ranks, dict):
        raise TypeError(f"ranks must be a dict {{tensor name: tuple of ranks}}, got {type(ranks).__name__}")
    checked = {}
    for name, wanted in ranks.items():
        if name not in tensors:
            raise ValueError(f"ranks names a tensor the model does not hold: {name!r} (it holds {sorted(tensors)})")
        current = tensors[name].layout.ranks
        try:
            wanted = tuple(wanted)
        except TypeError:
            raise TypeError(
                f"ranks[{name!r}] must be a tuple of {len(current)} ints in [1, current rank] {current}, got {wanted!r}"
            ) from None
        if len(wanted) != len(current) or not all(
            isinstance(r, Integral) and not isinstance(r, bool) and 1 <= r <= c for r, c in zip(wanted, current)
        ):
            raise ValueError(
                f"ranks[{name!r}] must be {len(current)} ints in [1, current rank] {current}, got {wanted}"
            )
        checked[name] = tuple(int(r) for r in wanted)
    return checked


def _cut(name, tensor, guide, means, counts):
    """
    Cut ``tensor`` (called ``name`` in the model) and its posterior in ``guide`` to the leading
    ``counts`` indices of every bond of its canonical factor means ``means``
    (:func:`~tensorbayes.formats.canonical.canonicalize`).
    The scales are reset to :data:`CUT_SCALE` times each factor's root-mean-square mean (see
    :func:`prune`) and λ to its closed-form value given the cut factors. Returns the new ranks.
    """
    layout = tensor.layout
    if tuple(counts) == layout.ranks:
        return layout.ranks
    keep = [torch.arange(r, device=means[0].device) for r in counts]
    new_layout, new_means = layout.truncate(means, keep)
    new_scales = [CUT_SCALE * m.pow(2).mean().sqrt().expand_as(m) for m in new_means]
    guide.truncate(tensor, keep)
    tensor.set_layout(new_layout)
    second = [m**2 + s**2 for m, s in zip(new_means, new_scales)]
    guide.set_posterior(tensor, new_means, new_scales, _closed_form_lambdas(tensor, second))
    return new_layout.ranks


def _closed_form_lambdas(tensor, second):
    """
    λ maximizing ``E log p(factors | λ) + log p(λ)`` given the factors' second moments ``second``:
    :data:`CUT_SWEEPS` sweeps of every bond's closed-form step, bond after bond, from λ = 1. The
    λ held before a cut belong to the old gauge's indices, not to the canonical ones kept.
    """
    lambdas = [second[0].new_ones(r) for r in tensor.layout.ranks]
    for _ in range(CUT_SWEEPS if len(lambdas) > 1 else 1):  # one bond: one step is the optimum
        for b in range(len(lambdas)):
            ((m, d),) = tensor.slice_moments(second, lambdas, bonds=[b])
            lambdas[b] = tensor.prior.update(m, d)
    return lambdas


def compression_report(
    model: torch.nn.Module, guide=None, threshold: float = DEFAULT_THRESHOLD, gap: float = DEFAULT_GAP
) -> list[dict]:
    """
    Per tensor: format, shape, the max ranks it started from, the ranks it has (or, with a
    guide, the ranks the posterior chose), parameter counts at both, the dense size and the
    compression ratio against it.

    :returns: a list of dicts, one per tensor.
    """
    chosen = ranks(model, guide, threshold, gap) if guide is not None else None
    tensors = as_tensor_guide(model, guide).tensors() if guide is not None else low_rank_tensors(model)
    rows = []
    for name, tensor in tensors.items():
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


# ----- the rank search: the smallest ranks within a tolerance on held-out data -----


def held_out_metric(mean: torch.Tensor, target: torch.Tensor) -> tuple[str, torch.Tensor]:
    """
    ``("accuracy", value)`` for class probabilities ``(n, classes)`` against integer labels ``(n,)``
    in ``[0, classes)``, else ``("error", value)``, the relative error ``||mean - target|| / ||target||``
    of values shaped like ``mean``.

    :raises TypeError: if ``mean`` or ``target`` is not a tensor.
    :raises ValueError: for a target of neither form, or labels outside ``[0, classes)``.
    """
    if not isinstance(mean, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise TypeError(f"mean and target must be tensors, got {type(mean).__name__} and {type(target).__name__}")
    labels = not target.is_floating_point()
    if labels and mean.dim() == 2 and target.shape == mean.shape[:1]:
        if not bool(((target >= 0) & (target < mean.shape[1])).all()):
            raise ValueError(f"target's class labels must be in [0, {mean.shape[1]}), one per column of mean")
        return "accuracy", (mean.argmax(-1) == target).double().mean()
    if mean.shape != target.shape:
        raise ValueError(
            f"target must be integer class labels (n,) for class probabilities (n, classes), or values shaped like "
            f"the model's output {tuple(mean.shape)}; got a {target.dtype} target of shape {tuple(target.shape)}"
        )
    if labels and mean.is_floating_point():  # integer values (counts) against a real-valued output
        target = target.to(mean.dtype)
    return "error", (mean - target).norm() / target.norm()


def held_out_score(output: torch.Tensor, target: torch.Tensor) -> float:
    """
    The score of a model's output on held-out data, higher is better: the accuracy of class
    probabilities ``(n, classes)`` against integer labels, else minus the relative error
    (:func:`held_out_metric`).
    """
    name, value = held_out_metric(output, target)
    return float(value) if name == "accuracy" else -float(value)


def _cuts(tensors, canon, tau):
    """Every tensor's canonical means cut to the indices whose weight is at least ``tau`` times
    its bond's largest: ``{name: (layout, factors)}``."""
    cut = {}
    for name, tensor in tensors.items():
        means, weights = canon[name]
        counts = [max(1, int((w / w[0] >= tau).sum())) if w[0] > 0 else 1 for w in weights]
        keep = [torch.arange(r, device=means[0].device) for r in counts]
        cut[name] = tensor.layout.truncate(means, keep)
    return cut


def _held_out(inputs, target, chunk_size):
    """``inputs`` as a tuple of tensors with as many (at least one) examples as ``target``."""
    check_int(chunk_size, "chunk_size")
    inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    if not isinstance(target, torch.Tensor) or target.dim() == 0 or len(target) == 0:
        raise ValueError(f"target must be a tensor of at least one held-out example, got {target!r:.80}")
    for t in inputs:
        if not isinstance(t, torch.Tensor) or t.dim() == 0 or len(t) != len(target):
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"inputs must be tensors with target's {len(target)} examples along dim 0, got {shape}")
    return inputs


def _check_reference(reference):
    """``reference`` as a float (``None`` kept), or a ValueError: a NaN would silently be ignored."""
    if isinstance(reference, torch.Tensor) and reference.numel() == 1:
        reference = reference.item()
    if reference is None:
        return None
    return check_number(reference, "reference", "[-inf, inf]", "a number (a held-out score, not NaN) or None")


@torch.no_grad()
def _score(model, tensors, cut, inputs, target, chunk_size):
    """The held-out score of ``model`` with every tensor fixed at the factors of ``cut``."""
    layouts = {name: t.layout for name, t in tensors.items()}
    sites = {}
    try:
        for name, tensor in tensors.items():
            layout, factors = cut[name]
            tensor.set_layout(layout)
            sites.update({tensor.factor_site(k): f for k, f in enumerate(factors)})
        conditioned = pyro.poutine.condition(model, data=sites)
        with torch.random.fork_rng(devices=[]), evaluating(model):  # training's random stream and modes stay
            outputs = [conditioned(*[t[i : i + chunk_size] for t in inputs]) for i in range(0, len(target), chunk_size)]
    finally:
        for name, tensor in tensors.items():
            tensor.set_layout(layouts[name])
    return held_out_score(torch.cat(outputs), target)


@torch.no_grad()
def mean_score(model: torch.nn.Module, guide, inputs, target: torch.Tensor, chunk_size: int = 2048) -> float:
    """
    The :func:`held_out_score` of ``model`` at its posterior-mean factors on held-out data.

    :param inputs: the held-out inputs, a tensor or a tuple of tensors (the model's arguments).
    :param torch.Tensor target: the held-out targets (class labels, or values).
    """
    inputs = _held_out(inputs, target, chunk_size)
    guide = as_tensor_guide(model, guide)
    tensors = guide.tensors()
    means = {name: (t.layout, guide.factor_means(t)) for name, t in tensors.items()}
    return _score(model, tensors, means, inputs, target, chunk_size)


@torch.no_grad()
def search_ranks(
    model: torch.nn.Module,
    guide,
    inputs,
    target: torch.Tensor,
    tolerance: float = DEFAULT_TOLERANCE,
    reference: float | None = None,
    chunk_size: int = 2048,
) -> tuple[dict[str, tuple[int, ...]], dict[str, float]]:
    """
    The smallest ranks, along the posterior's own ordering of the rank indices, whose
    posterior-mean network scores within ``tolerance`` of the current ranks on held-out data.

    Every tensor's posterior means are brought to the canonical gauge
    (:func:`~tensorbayes.formats.canonical.canonicalize`), whose bond weights order the rank
    indices. One relative threshold ``τ`` cuts every bond of every tensor to the indices whose
    weight is at least ``τ`` times its bond's largest; the search bisects over the thresholds
    that change the ranks for the largest ``τ`` (the smallest network) whose
    :func:`held_out_score` stays at least the current ranks' score minus ``tolerance``. The
    network is scored in evaluation mode (dropout off, batch norm on its running statistics). The
    model and guide are not changed: cut them with ``prune(model, guide, ranks=found)``.

    Usage::

        found, scores = tb.rank.search_ranks(model, guide, x_val, y_val, tolerance=0.005)
        tb.prune(model, guide, ranks=found)

    :param inputs: the held-out inputs, a tensor or a tuple of tensors (the model's arguments).
    :param torch.Tensor target: the held-out targets (class labels, or values): at least
        :func:`min_held_out` of ``tolerance`` examples (``2 / tolerance``, 400 at the default), so
        that one example weighs at most half the tolerance.
    :param float tolerance: the score the cut may give up (accuracy, or relative error).
    :param float reference: the score to stay within ``tolerance`` of (default: the current
        ranks' score; a number, not NaN); where the current ranks already score below
        ``reference - tolerance``, they are kept.
    :param int chunk_size: held-out examples per forward pass.
    :returns: ``({tensor name: ranks}, {"full": score, "found": score})``.
    :raises ValueError: for held-out data of the wrong form, or fewer examples than
        :func:`min_held_out` asks (named after those of the wrong form), before anything changes.
    """
    check_number(tolerance, "tolerance", "[0, inf)", "a non-negative number")
    reference = _check_reference(reference)
    inputs = _held_out(inputs, target, chunk_size)
    guide = as_tensor_guide(model, guide)
    tensors = guide.tensors()
    canon = {name: _canonical(name, t, guide) for name, t in tensors.items()}
    relative = sorted(
        {float(r) for _, ws in canon.values() for w in ws if w[0] > 0 for r in w / w[0]}, reverse=True
    )  # τ from the largest (smallest ranks) down
    full = _score(model, tensors, _cuts(tensors, canon, 0.0), inputs, target, chunk_size)  # checks target's form
    if len(target) < min_held_out(tolerance):
        raise ValueError(
            f"target must hold at least {min_held_out(tolerance)} held-out examples at tolerance={tolerance} "
            f"(2 / tolerance: one example then weighs at most half the tolerance), got {len(target)}: "
            "hold more out, or raise the tolerance"
        )
    lo, hi = 0, len(relative) - 1  # relative[hi] keeps every index with a nonzero weight
    best = _cuts(tensors, canon, relative[hi]) if relative else _cuts(tensors, canon, 0.0)
    best_score = full
    floor = (full if reference is None else max(full, reference)) - tolerance
    if full < floor:
        lo = hi
    while lo < hi:  # the first τ (largest) whose cut scores within tolerance
        mid = (lo + hi) // 2
        cut = _cuts(tensors, canon, relative[mid])
        score = _score(model, tensors, cut, inputs, target, chunk_size)
        if score >= floor:
            hi, best, best_score = mid, cut, score
        else:
            lo = mid + 1
    found = {name: tuple(min(r, c) for r, c in zip(best[name][0].ranks, t.layout.ranks)) for name, t in tensors.items()}
    return found, {"full": full, "found": best_score}
