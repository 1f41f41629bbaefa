"""
Fitting tensorbayes models by variational inference, and predicting with them.

:class:`SVIEngine` takes one SVI step at a time (in the manner of :class:`pyro.infer.SVI`);
:func:`fit` is a short loop around it; :class:`MeanFieldELBO` is its ELBO.
"""

from ..rank import held_out_metric
from .calibration import calibration_bins, expected_calibration_error
from .cavi import closed_form_start, supports_closed_form
from .checkpoint import load, load_checkpoint, save, save_checkpoint
from .diagnostics import DeadGradientWarning, NonFiniteError
from .elbo import MeanFieldELBO
from .engine import SCALE_LR, KLScale, Schedule, SVIEngine, make_optimizer, sparse_tables
from .fit import History, fit
from .predict import predict

__all__ = [
    "SCALE_LR",
    "DeadGradientWarning",
    "History",
    "KLScale",
    "MeanFieldELBO",
    "NonFiniteError",
    "SVIEngine",
    "Schedule",
    "calibration_bins",
    "closed_form_start",
    "expected_calibration_error",
    "fit",
    "held_out_metric",
    "load",
    "load_checkpoint",
    "make_optimizer",
    "predict",
    "save",
    "save_checkpoint",
    "sparse_tables",
    "supports_closed_form",
]
