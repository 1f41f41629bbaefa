"""Tensor-train matrix format: cores ``G_k`` of shape ``(r_{k-1}, m_k, n_k, r_k)``."""

import math

from .base import TensorFormat

__all__ = ["TTM"]


def _num_cores(order):
    return (order + 1) // 2


class TTM(TensorFormat):
    """
    Tensor-train matrix format. A tensor of shape ``(m_1..m_c, n_1..n_c)`` (the matrix view's
    row modes, then its column modes) is a train of ``c`` cores, core ``k`` of shape
    ``(r_{k-1}, m_k, n_k, r_k)`` with ``r_0 = r_c = 1``: core ``k`` pairs row mode ``k`` with
    column mode ``k``. For a tensor of odd order ``2c - 1`` the last core has no column mode,
    shape ``(r_{c-1}, m_c, 1)``. The matrix view always has ``c`` row modes.

    :param tuple shape: the row modes, then the column modes.
    :param ranks: an int, or one rank per internal bond (``c - 1`` of them).
    :param int row_modes: must be ``c`` (``ceil(len(shape) / 2)``) if given.
    """

    name = "ttm"

    def __init__(self, shape, ranks, row_modes=None):
        cores = _num_cores(len(tuple(shape)))
        if row_modes is not None and row_modes != cores:
            raise ValueError(f"row_modes of a TTM with {len(tuple(shape))} modes must be {cores}, got {row_modes!r}")
        super().__init__(shape, ranks, row_modes=cores)

    @staticmethod
    def _num_bonds(order):
        return _num_cores(order) - 1

    @staticmethod
    def _default_row_modes(order):
        return _num_cores(order)

    def _core_modes(self, k):
        cores, order = _num_cores(len(self.shape)), len(self.shape)
        return (k,) if cores + k >= order else (k, cores + k)

    def _layout(self):
        cores = _num_cores(len(self.shape))
        return [
            ("e0" if k == 0 else f"b{k - 1}",)
            + tuple(f"m{m}" for m in self._core_modes(k))
            + ("e1" if k == cores - 1 else f"b{k}",)
            for k in range(cores)
        ]

    def max_ranks(self):
        sizes = [math.prod(self.shape[m] for m in self._core_modes(k)) for k in range(_num_cores(len(self.shape)))]
        return tuple(min(math.prod(sizes[: k + 1]), math.prod(sizes[k + 1 :])) for k in range(self.num_bonds))
