"""
Posterior predictions: the model's output averaged over draws from the guide.

:func:`predict` runs the guide, replays the model on its draw and collects what the model
returns (a completion model returns the tensor's entries; a classifier its class
probabilities), ``num_samples`` times, in chunks of inputs so that memory stays bounded. With
``return_sites`` it returns every draw of the named sites instead, as Pyro's
:class:`~pyro.infer.Predictive` does.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import torch

from ..checks import check_int
from ..util import evaluating

__all__ = ["predict"]


@torch.no_grad()
def _draws(model, guide, inputs, num_samples, joined):
    """Mean and sample standard deviation (``n - 1`` in the denominator, as :func:`torch.std`)
    over draws, accumulated by Welford's stable recurrence; NaN from a single draw. ``joined``:
    the chunks are joined after, so the output must have one row per example of the chunk."""
    mean = m2 = None
    for k in range(1, num_samples + 1):
        guide_trace = pyro.poutine.trace(guide).get_trace(*inputs)
        out = pyro.poutine.replay(model, trace=guide_trace)(*inputs)
        if not isinstance(out, torch.Tensor) or not out.is_floating_point():
            got = out.dtype if isinstance(out, torch.Tensor) else type(out).__name__
            raise TypeError(
                f"predict averages the model's return value, which must be a floating point tensor, got {got}: "
                "give return_sites to collect the draws of sample sites instead"
            )
        if joined and (out.dim() == 0 or out.shape[0] != inputs[0].shape[0]):
            raise ValueError(
                f"predict joins the model's outputs over chunks of chunk_size inputs along their first dimension, "
                f"which must then be one per example ({inputs[0].shape[0]}), got shape {tuple(out.shape)}: "
                "give a chunk_size of at least the number of examples"
            )
        if mean is None:
            mean, m2 = out.clone(), torch.zeros_like(out)
            continue
        delta = out - mean
        mean += delta / k
        m2 += delta * (out - mean)
    if num_samples == 1:
        return mean, torch.full_like(mean, float("nan"))
    return mean, (m2 / (num_samples - 1)).sqrt()


def predict(
    model,
    guide,
    *inputs: torch.Tensor,
    num_samples: int = 100,
    chunk_size: int = 4096,
    return_sites: Sequence[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor] | dict[str, torch.Tensor]:
    """
    The posterior predictive mean and standard deviation of the model's return value.

    Usage::

        mean, std = tb.predict(model, guide, test_index, num_samples=200)

    The model and guide run in evaluation mode (dropout off, batch norm on its running
    statistics, which the predictions leave as they were); each module gets its mode back after.

    :param model: a tensorbayes model; it is called as ``model(*inputs)`` with no observations.
    :param guide: its guide.
    :param inputs: tensors sharing their first (example) dimension.
    :param int num_samples: posterior draws.
    :param int chunk_size: examples per chunk (memory grows with it, not with the inputs). The
        chunks' outputs are joined along their first dimension, which must then be one per
        example; an output of another shape (a global quantity) needs a single chunk.
    :param return_sites: names of sample sites of the model (``"_RETURN"`` for its return
        value), as :class:`~pyro.infer.Predictive` takes them: then every draw of each is
        returned instead of the mean and spread. Each draw of the guide is replayed on every
        chunk, so a global site (a factor, a λ) has one value per draw, and a site of the data
        (an observation, the return value) is joined over the chunks along its first dimension;
        the guide's sites must then be global (a tensor guide's are), unless one chunk holds
        every input.
    :returns: ``(mean, std)`` over the draws, each shaped like the model's output: the mean and
        the sample standard deviation (``n - 1`` in the denominator, as :func:`torch.std`, so
        that a few draws do not understate the spread). With ``num_samples=1`` the mean is the
        one draw and the spread is NaN, as :func:`torch.std` of one value: one draw estimates no
        spread, and 0 would claim a certain prediction (``tb.fit(eval_samples=1)`` and the
        Lightning validation step use only the mean; ask for 2 or more draws for a spread). With
        ``return_sites``: ``{site: draws}``, each stacked in a first dimension of
        ``num_samples``.
    """
    check_int(num_samples, "num_samples")
    check_int(chunk_size, "chunk_size")
    if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise TypeError("inputs must be one or more tensors sharing their first dimension")
    if any(t.dim() == 0 for t in inputs):
        raise ValueError(f"inputs must have a first (example) dimension, got shapes {[tuple(t.shape) for t in inputs]}")
    n = inputs[0].shape[0]
    if any(t.shape[0] != n for t in inputs):
        raise ValueError(f"inputs must share their first dimension, got {[tuple(t.shape) for t in inputs]}")
    if n == 0:
        raise ValueError(f"inputs must hold at least one example, got shapes {[tuple(t.shape) for t in inputs]}")
    chunks = [[t[start : start + chunk_size] for t in inputs] for start in range(0, n, chunk_size)]
    with evaluating(model, guide):  # dropout off, batch norm on its running statistics, and left as it was
        if return_sites is not None:
            return _site_draws(model, guide, chunks, num_samples, _check_sites(return_sites))
        means, stds = zip(*(_draws(model, guide, chunk, num_samples, len(chunks) > 1) for chunk in chunks))
    return (torch.cat(means), torch.cat(stds)) if len(chunks) > 1 else (means[0], stds[0])


def _check_sites(return_sites):
    try:  # read once: a generator that the checks had read would leave no sites
        sites = [] if isinstance(return_sites, str) else list(return_sites)
    except TypeError:
        sites = []
    if not sites or not all(isinstance(site, str) for site in sites):
        raise TypeError(f"return_sites must be a list of site names, got {return_sites!r}")
    return sites


@torch.no_grad()
def _site_draws(model, guide, chunks, num_samples, sites):
    """``{site: (num_samples, ...) draws}``: each draw of the guide replayed on every chunk."""
    draws = {site: [] for site in sites}
    for _ in range(num_samples):
        guide_trace = pyro.poutine.trace(guide).get_trace(*chunks[0])
        parts = {site: [] for site in sites}
        for chunk in chunks:
            trace = pyro.poutine.trace(pyro.poutine.replay(model, trace=guide_trace)).get_trace(*chunk)
            for site in sites:
                if site not in trace.nodes:
                    known = sorted(name for name, node in trace.nodes.items() if node["type"] == "sample")
                    raise KeyError(f"return_sites: the model has no site {site!r} (its sample sites: {known})")
                parts[site].append(trace.nodes[site]["value"])
        for site, values in parts.items():  # a replayed global site is the guide's own value in every chunk
            draws[site].append(values[0] if all(v is values[0] for v in values) else torch.cat(values))
    return {site: torch.stack(values) for site, values in draws.items()}
