"""Fitting tensorbayes models by stochastic variational inference."""

from .fit import History, NonFiniteError, fit

__all__ = ["History", "NonFiniteError", "fit"]
