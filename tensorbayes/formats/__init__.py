"""
Low-rank tensor formats as pure tensor algebra (torch only, no Pyro).

Each format is a layout (shape, ranks) whose methods take the factors as a list of tensors:
:meth:`~TensorFormat.full`, :meth:`~TensorFormat.contract`, :meth:`~TensorFormat.entries`,
:meth:`~TensorFormat.rows`, :meth:`~TensorFormat.num_params`, :meth:`~TensorFormat.truncate`
and :meth:`~TensorFormat.decompose`. :func:`get_format` maps the ``format=`` strings used across
the package ("cp", "tucker", "tt", "ttm") to their classes, and :func:`decompose` fits the
factors of a dense tensor in any of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .base import TensorFormat, check_dense, check_ranks, check_shape
from .cp import CP
from .tt import TT, clip_train_ranks, tt_svd
from .ttm import TTM
from .tucker import Tucker

FORMATS: dict[str, type[TensorFormat]] = {"cp": CP, "tucker": Tucker, "tt": TT, "ttm": TTM}


def get_format(name: str | type[TensorFormat]) -> type[TensorFormat]:
    """The format class for a ``format=`` string ("cp", "tucker", "tt" or "ttm"), or a format class
    given as it is (a subclass of one of them; not the abstract :class:`TensorFormat`)."""
    if isinstance(name, type) and issubclass(name, TensorFormat) and name is not TensorFormat:
        return name
    if not isinstance(name, str) or name.lower() not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {name!r}")
    return FORMATS[name.lower()]


def decompose(
    tensor: torch.Tensor, format: str | type[TensorFormat], ranks: int | Sequence[int], **kwargs: Any
) -> list[torch.Tensor]:
    """
    The factors of a dense tensor in a format: ``get_format(format).decompose(tensor, ranks)``.

    Usage::

        factors = decompose(weight, "ttm", 8, shape=(4, 7, 4, 7, 5, 5, 5, 5))

    :param torch.Tensor tensor: the dense tensor.
    :param format: "cp", "tucker", "tt" or "ttm" (or a format class).
    :param ranks: an int, or one rank per bond.
    :param kwargs: passed to the format's ``decompose`` (e.g. ``shape=``, ``n_iter_max=``).
    :returns: the list of factors.
    """
    return get_format(format).decompose(tensor, ranks, **kwargs)


__all__ = [
    "CP",
    "FORMATS",
    "TT",
    "TTM",
    "TensorFormat",
    "Tucker",
    "check_dense",
    "check_ranks",
    "check_shape",
    "clip_train_ranks",
    "decompose",
    "get_format",
    "tt_svd",
]
