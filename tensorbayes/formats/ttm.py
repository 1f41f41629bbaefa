"""
Tensor-train matrix format: cores ``G_k`` of shape ``(r_{k-1}, m_k, n_k, r_k)``.

:meth:`TTM.decompose` fits the cores of a dense tensor by TT-SVD over the merged modes of each
core (:func:`.tt.tt_svd`).
"""

import math

from .base import TensorFormat, check_dense, check_shape
from .tt import tt_svd

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
        shape = check_shape(shape)
        cores = _num_cores(len(shape))
        if row_modes is not None and row_modes != cores:
            raise ValueError(f"row_modes of a TTM with {len(shape)} modes must be {cores}, got {row_modes!r}")
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

    @classmethod
    def decompose(cls, tensor, ranks, shape=None):
        """
        TTM-SVD: the tensor's modes are permuted so that each core's modes (row mode ``k``,
        then column mode ``k``) are adjacent and merged, TT-SVD (:func:`~.tt.tt_svd`) runs over
        the merged modes, and each core is unmerged to ``(r_{k-1}, m_k, n_k, r_k)`` (the last
        core of an odd-order tensor to ``(r_{c-1}, m_c, 1)``). The ranks are clipped to what
        the shape allows, as in :meth:`TT.decompose <.tt.TT.decompose>`.

        :param torch.Tensor tensor: the dense tensor ``(m_1..m_c, n_1..n_c)``, any floating
            dtype and device; a weight matrix ``(out, in)`` needs ``shape=``.
        :param ranks: an int, or one rank per internal bond.
        :param tuple shape: view ``tensor`` as this shape first (same number of entries).
        :returns: the cores ``[G_1, ..., G_c]``.
        """
        tensor = check_dense(tensor, shape)
        fmt = cls(tensor.shape, ranks)
        groups = [fmt._core_modes(k) for k in range(_num_cores(tensor.dim()))]
        merged = tensor.permute(*[m for group in groups for m in group])
        merged = merged.reshape([math.prod(fmt.shape[m] for m in group) for group in groups])
        cores = tt_svd(merged, fmt.ranks)
        return [
            core.reshape(core.shape[0], *[fmt.shape[m] for m in group], core.shape[-1])
            for core, group in zip(cores, groups)
        ]
