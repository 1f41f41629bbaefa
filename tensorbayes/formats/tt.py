"""Tensor-train format: cores ``G_k`` of shape ``(r_{k-1}, I_k, r_k)`` with ``r_0 = r_d = 1``."""

import math

from .base import TensorFormat

__all__ = ["TT"]


class TT(TensorFormat):
    """
    Tensor-train (matrix product state) format: ``T[i_1..i_d] = G_1[:, i_1, :] ... G_d[:, i_d, :]``.
    Bond ``k`` (``k = 0..d-2``) joins core ``k`` and core ``k + 1``; the outer dimensions of the
    first and last cores have size one.

    :param tuple shape: the sizes of the tensor's modes.
    :param ranks: an int, or one rank per internal bond (``d - 1`` of them).
    :param int row_modes: leading modes that index the rows of the matrix view.
    """

    name = "tt"

    @staticmethod
    def _num_bonds(order):
        return order - 1

    def _layout(self):
        order = len(self.shape)
        return [
            ("e0" if k == 0 else f"b{k - 1}", f"m{k}", "e1" if k == order - 1 else f"b{k}")
            for k in range(order)
        ]

    def max_ranks(self):
        return tuple(
            min(math.prod(self.shape[: k + 1]), math.prod(self.shape[k + 1 :])) for k in range(self.num_bonds)
        )
