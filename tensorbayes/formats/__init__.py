"""
Low-rank tensor formats as pure tensor algebra (torch only, no Pyro).

Each format is a layout (shape, ranks) whose methods take the factors as a list of tensors:
:meth:`~TensorFormat.full`, :meth:`~TensorFormat.contract`, :meth:`~TensorFormat.entries`,
:meth:`~TensorFormat.rows`, :meth:`~TensorFormat.num_params`, :meth:`~TensorFormat.truncate`
and :meth:`~TensorFormat.decompose`. :func:`get_format` maps the ``format=`` strings used across
the package ("cp", "tucker", "tt", "ttm") to their classes.
"""

from .base import TensorFormat, check_ranks, check_shape
from .cp import CP
from .tt import TT
from .ttm import TTM
from .tucker import Tucker

FORMATS = {"cp": CP, "tucker": Tucker, "tt": TT, "ttm": TTM}


def get_format(name):
    """The format class for a ``format=`` string ("cp", "tucker", "tt" or "ttm")."""
    if isinstance(name, type) and issubclass(name, TensorFormat):
        return name
    if not isinstance(name, str) or name.lower() not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {name!r}")
    return FORMATS[name.lower()]


__all__ = ["CP", "FORMATS", "TT", "TTM", "TensorFormat", "Tucker", "check_ranks", "check_shape", "get_format"]
