"""Fitting tensorbayes models by variational inference, and predicting with them."""

from .fit import History, NonFiniteError, fit
from .predict import predict

__all__ = ["History", "NonFiniteError", "fit", "predict"]
