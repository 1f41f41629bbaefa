"""CP (canonical polyadic) format: ``T[i_1..i_d] = sum_r U_1[i_1, r] ... U_d[i_d, r]``."""

import math

from .base import TensorFormat

__all__ = ["CP"]


class CP(TensorFormat):
    """
    CP format: one factor ``U_k`` of shape ``(I_k, R)`` per mode and one rank bond of size
    ``R`` shared by all of them.

    :param tuple shape: the sizes of the tensor's modes.
    :param ranks: ``R``, as an int or a one-element tuple.
    :param int row_modes: leading modes that index the rows of the matrix view.
    """

    name = "cp"

    @staticmethod
    def _num_bonds(order):
        return 1

    def _layout(self):
        return [(f"m{k}", "b0") for k in range(len(self.shape))]

    def max_ranks(self):
        return (max(1, math.prod(self.shape) // max(self.shape)),)
