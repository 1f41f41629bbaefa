"""
Posterior predictions: the model's output averaged over draws from the guide.

:func:`predict` runs the guide, replays the model on its draw and collects what the model
returns (a completion model returns the tensor's entries; a classifier its class
probabilities), ``num_samples`` times, in chunks of inputs so that memory stays bounded.
"""

from __future__ import annotations

import pyro
import torch

from ..checks import check_int

__all__ = ["predict"]


@torch.no_grad()
def _draws(model, guide, inputs, num_samples):
    """Mean and sample standard deviation (``n - 1`` in the denominator, as :func:`torch.std`)
    over draws, accumulated by Welford's stable recurrence; NaN from a single draw."""
    mean = m2 = None
    for k in range(1, num_samples + 1):
        guide_trace = pyro.poutine.trace(guide).get_trace(*inputs)
        out = pyro.poutine.replay(model, trace=guide_trace)(*inputs)
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
    model, guide, *inputs: torch.Tensor, num_samples: int = 100, chunk_size: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    The posterior predictive mean and standard deviation of the model's return value.

    Usage::

        mean, std = tb.predict(model, guide, test_index, num_samples=200)

    :param model: a tensorbayes model; it is called as ``model(*inputs)`` with no observations.
    :param guide: its guide.
    :param inputs: tensors sharing their first (example) dimension.
    :param int num_samples: posterior draws.
    :param int chunk_size: examples per chunk (memory grows with it, not with the inputs).
    :returns: ``(mean, std)`` over the draws, each shaped like the model's output: the mean and
        the sample standard deviation (``n - 1`` in the denominator, as :func:`torch.std`, so
        that a few draws do not understate the spread; NaN when ``num_samples`` is 1).
    """
    check_int(num_samples, "num_samples")
    check_int(chunk_size, "chunk_size")
    if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise TypeError("inputs must be one or more tensors sharing their first dimension")
    n = inputs[0].shape[0]
    if any(t.shape[0] != n for t in inputs):
        raise ValueError(f"inputs must share their first dimension, got {[tuple(t.shape) for t in inputs]}")
    means, stds = [], []
    for start in range(0, n, chunk_size):
        mean, std = _draws(model, guide, [t[start : start + chunk_size] for t in inputs], num_samples)
        means.append(mean)
        stds.append(std)
    return torch.cat(means), torch.cat(stds)
