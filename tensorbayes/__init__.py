"""
tensorbayes: compact neural networks trained from scratch as Bayesian low-rank tensors.

Every large weight is a low-rank tensor (CP, Tucker, TT or TTM) whose rank indices carry
shrinkage priors; stochastic variational inference in Pyro decides the ranks during training.

Usage::

    import tensorbayes as tb
    model = tb.models.TensorCompletion(shape=(20, 30, 40), format="tucker", max_rank=8)
    guide = tb.guides.MeanField(model)
    history = tb.fit(model, guide, (index, values), epochs=20, batch_size=1024)
    tb.ranks(model, guide)      # {"tensor": (3, 4, 2)}
    tb.prune(model, guide)

``tb.plots`` (matplotlib figures) is imported on first use; ``tb.tensorize`` is
:func:`tb.models.tensorize <tensorbayes.models.tensorize>`.
"""

from . import data, formats, guides, infer, models, priors
from .compact import export
from .infer import expected_calibration_error, fit, load, predict, save
from .models import tensorize
from .rank import compression_report, prune, ranks

__version__ = "0.1.0"

__all__ = [
    "compression_report",
    "data",
    "expected_calibration_error",
    "export",
    "fit",
    "formats",
    "guides",
    "infer",
    "load",
    "models",
    "plots",
    "predict",
    "priors",
    "prune",
    "ranks",
    "save",
    "tensorize",
]

#: Submodules imported on first use (PEP 562): ``tb.plots`` needs matplotlib, which
#: ``import tensorbayes`` does not import.
_LAZY = ("plots",)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
