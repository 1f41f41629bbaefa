"""
Calibration of predicted class probabilities.

A classifier is *calibrated* when, among the examples it predicts with confidence ``p`` (the
largest class probability), a fraction ``p`` is right. :func:`calibration_bins` groups the
examples into ``num_bins`` equal-width confidence bins ``(b/n, (b+1)/n]`` (a confidence of
exactly 0 falls in the first) and gives each bin's mean confidence, accuracy and count;
:func:`expected_calibration_error` is their count-weighted mean gap,

    ECE = Σ_b (n_b / N) |accuracy_b − confidence_b|,

0 for a perfectly calibrated classifier, at most 1. :func:`tensorbayes.plots.reliability`
draws the same bins.

Usage::

    probs, _ = tb.predict(model, guide, x_test)           # (N, C) posterior predictive
    ece = tb.infer.expected_calibration_error(probs, y_test)
"""

import torch

from ..checks import check_int

__all__ = ["calibration_bins", "expected_calibration_error"]


def _check_num_bins(num_bins):
    check_int(num_bins, "num_bins")


def _as_tensor(value, name):
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):  # None, a string, ragged lists: torch's own words name nothing
        raise TypeError(f"{name} must be a tensor (or array) of numbers, got {type(value).__name__}") from None


def check_probs(probs, labels):
    """
    Validate class probabilities and labels; returns them as ``(float64 (N, C), int64 (N,))``.

    :param probs: ``(N, C)`` rows of class probabilities (each row non-negative, summing to
        1), or ``(N,)`` probabilities of the positive class of a binary problem.
    :param labels: ``(N,)`` integer class labels in ``[0, C)``.
    """
    probs, labels = _as_tensor(probs, "probs"), _as_tensor(labels, "labels")
    if not probs.is_floating_point():
        raise TypeError(f"probs must be a floating point tensor of probabilities, got dtype {probs.dtype}")
    probs = probs.detach().to(torch.float64)
    if probs.dim() == 1:
        probs = torch.stack([1 - probs, probs], dim=-1)
    if probs.dim() != 2 or probs.shape[0] == 0 or probs.shape[1] < 2:
        raise ValueError(
            f"probs must have shape (N, C) with N >= 1 and C >= 2 (or (N,) for binary), got {tuple(probs.shape)}"
        )
    if not torch.isfinite(probs).all() or (probs < 0).any() or (probs > 1).any():
        raise ValueError("probs must be finite probabilities in [0, 1]")
    if ((probs.sum(-1) - 1).abs() > 1e-3).any():
        raise ValueError("probs must have rows that sum to 1 (class probabilities, not logits)")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor of class labels, got dtype {labels.dtype}")
    if labels.shape != probs.shape[:1]:
        raise ValueError(f"labels must have shape ({probs.shape[0]},), one per row of probs, got {tuple(labels.shape)}")
    labels = labels.detach().long()
    if labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise ValueError(
            f"labels must be class indices in [0, {probs.shape[1]}), "
            f"got values in [{int(labels.min())}, {int(labels.max())}]"
        )
    return probs, labels


def calibration_bins(probs, labels, num_bins=15):
    """
    The equal-width confidence bins of a reliability diagram.

    :param probs: ``(N, C)`` class probabilities (or ``(N,)`` for a binary problem).
    :param labels: ``(N,)`` integer labels.
    :param int num_bins: bins of width ``1 / num_bins`` over ``[0, 1]``.
    :returns: ``(confidence, accuracy, count)``, float64 tensors of length ``num_bins``: the mean
        confidence and the accuracy of the examples in each bin (0 in an empty bin) and how many
        there are.
    """
    _check_num_bins(num_bins)
    probs, labels = check_probs(probs, labels)
    confidence, predicted = probs.max(-1)
    correct = (predicted == labels).double()
    index = (torch.ceil(confidence * num_bins).long() - 1).clamp(0, num_bins - 1)
    count = confidence.new_zeros(num_bins).index_add_(0, index, torch.ones_like(confidence))
    conf_sum = confidence.new_zeros(num_bins).index_add_(0, index, confidence)
    acc_sum = confidence.new_zeros(num_bins).index_add_(0, index, correct)
    safe = count.clamp_min(1)
    return conf_sum / safe, acc_sum / safe, count


def expected_calibration_error(probs, labels, num_bins=15):
    """
    The expected calibration error: the count-weighted mean of ``|accuracy - confidence|``
    over equal-width confidence bins (see the module docs).

    Usage::

        ece = expected_calibration_error(probs, y_test)     # a float in [0, 1]

    :param probs: ``(N, C)`` class probabilities (or ``(N,)`` for a binary problem).
    :param labels: ``(N,)`` integer labels in ``[0, C)``.
    :param int num_bins: the number of equal-width bins over ``[0, 1]`` (default 15).
    :returns: the ECE, a float.
    """
    confidence, accuracy, count = calibration_bins(probs, labels, num_bins)
    return float((count * (accuracy - confidence).abs()).sum() / count.sum())
