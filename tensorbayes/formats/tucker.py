"""
Tucker format: a core ``G`` of shape ``(R_1..R_d)`` and one factor ``U_k: (I_k, R_k)`` per mode.

:meth:`Tucker.decompose` fits the factors of a dense tensor by a truncated higher-order SVD
(HOSVD) refined by a few sweeps of higher-order orthogonal iteration (HOOI).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..checks import check_int
from .base import TensorFormat, check_dense, einsum, leading_left_singular_vectors, unfold

__all__ = ["Tucker"]


class Tucker(TensorFormat):
    """
    Tucker format: ``T = G x_1 U_1 ... x_d U_d``. The factors are ordered
    ``[G, U_1, ..., U_d]``; bond ``k`` is the rank ``R_k`` of mode ``k``, shared by the core's
    dimension ``k`` and the columns of ``U_k``.

    :param tuple shape: the sizes of the tensor's modes.
    :param ranks: an int, or one rank per mode.
    :param int row_modes: leading modes that index the rows of the matrix view.
    """

    name = "tucker"

    @staticmethod
    def _num_bonds(order):
        return order

    def _layout(self):
        order = len(self.shape)
        return [tuple(f"b{k}" for k in range(order))] + [(f"m{k}", f"b{k}") for k in range(order)]

    def max_ranks(self) -> tuple[int, ...]:
        total = math.prod(self.shape)
        return tuple(min(size, total // size) for size in self.shape)

    @classmethod
    def decompose(
        cls, tensor: torch.Tensor, ranks: int | Sequence[int], n_iter: int = 2, shape: Sequence[int] | None = None
    ) -> list[torch.Tensor]:
        """
        Truncated HOSVD followed by ``n_iter`` sweeps of HOOI.

        The ranks are first clipped to :meth:`max_ranks` (``R_k <= min(I_k, prod_{j != k} I_j)``),
        so the factors may be smaller than asked: read the ranks off their shapes. ``U_k``
        starts as the ``R_k`` leading left singular vectors of the mode-``k`` unfolding; each
        HOOI sweep replaces it by those of the tensor projected on the other factors (completed
        to ``R_k`` orthonormal columns where that projection has lower rank). The core is the
        projection ``G = T x_1 U_1^T ... x_d U_d^T``, so the factors are orthonormal and a tensor
        of multilinear rank at most ``ranks`` is recovered exactly.

        :param torch.Tensor tensor: the dense tensor, any floating dtype and device.
        :param ranks: an int, or one rank per mode.
        :param int n_iter: the number of HOOI sweeps after the HOSVD (0 for the plain HOSVD).
        :param tuple shape: view ``tensor`` as this shape first (same number of entries).
        :returns: the factors ``[G, U_1, ..., U_d]``.
        """
        tensor = check_dense(tensor, shape)
        fmt = cls(tensor.shape, ranks)
        check_int(n_iter, "n_iter", low=0)
        fmt = fmt.with_ranks(tuple(min(r, m) for r, m in zip(fmt.ranks, fmt.max_ranks())))
        order = tensor.dim()
        modes = [f"m{k}" for k in range(order)]
        factors = [leading_left_singular_vectors(unfold(tensor, k), r) for k, r in enumerate(fmt.ranks)]

        def project(skip):
            """``tensor`` times ``U_j^T`` on every mode ``j != skip``."""
            operands = [factors[j] for j in range(order) if j != skip]
            labels = [fmt.labels[1 + j] for j in range(order) if j != skip]
            out = [f"m{k}" if k == skip else f"b{k}" for k in range(order)]
            return einsum(fmt._equation([modes] + labels, out), tensor, *operands)

        for _ in range(n_iter):
            for k in range(order):
                factors[k] = leading_left_singular_vectors(unfold(project(k), k), fmt.ranks[k])
        return [project(None)] + factors
