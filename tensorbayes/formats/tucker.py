"""Tucker format: a core ``G`` of shape ``(R_1..R_d)`` and one factor ``U_k: (I_k, R_k)`` per mode."""

import math

from .base import TensorFormat

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

    def max_ranks(self):
        total = math.prod(self.shape)
        return tuple(min(size, total // size) for size in self.shape)
