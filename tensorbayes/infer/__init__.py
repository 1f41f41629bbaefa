"""Fitting tensorbayes models by variational inference, and predicting with them."""

from .calibration import calibration_bins, expected_calibration_error
from .elbo import MeanFieldELBO
from .fit import DeadGradientWarning, History, NonFiniteError, fit
from .predict import predict

__all__ = [
    "DeadGradientWarning",
    "History",
    "MeanFieldELBO",
    "NonFiniteError",
    "calibration_bins",
    "expected_calibration_error",
    "fit",
    "predict",
]
