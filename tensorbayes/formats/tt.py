"""
Tensor-train format: cores ``G_k`` of shape ``(r_{k-1}, I_k, r_k)`` with ``r_0 = r_d = 1``.

:meth:`TT.decompose` fits the cores of a dense tensor by TT-SVD (:func:`tt_svd`), which the
tensor-train matrix format (:mod:`.ttm`) reuses over its merged modes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .base import TensorFormat, check_dense

__all__ = ["TT", "clip_train_ranks", "tt_svd"]


def clip_train_ranks(sizes: Sequence[int], ranks: Sequence[int]) -> tuple[int, ...]:
    """
    Clip the internal ranks of a train with mode sizes ``sizes`` to what the shape allows:
    ``r_k <= r_{k-1} * sizes[k]`` and ``r_k <= sizes[k + 1] * r_{k+1}`` (with ``r_0 = r_d = 1``),
    which also bounds ``r_k`` by the sizes of the two sides of bond ``k``.

    :param tuple sizes: the size of each core's mode (``d`` of them).
    :param tuple ranks: the requested ranks (``d - 1`` positive ints).
    :returns: a tuple of ``d - 1`` ranks.
    """
    ranks = list(ranks)
    for k in reversed(range(len(ranks))):
        ranks[k] = min(ranks[k], sizes[k + 1] * (ranks[k + 1] if k + 1 < len(ranks) else 1))
    for k in range(len(ranks)):
        ranks[k] = min(ranks[k], (ranks[k - 1] if k > 0 else 1) * sizes[k])
    return tuple(ranks)


def tt_svd(tensor: torch.Tensor, ranks: Sequence[int]) -> list[torch.Tensor]:
    """
    TT-SVD: sequential truncated SVDs, left to right. Core ``k`` holds the ``r_k`` leading
    left singular vectors of the remainder unfolded as ``(r_{k-1} * I_k, -1)``; the singular
    values pass on to the remainder, so every core but the last is left-orthonormal and the
    last carries the norm. A tensor of TT ranks at most ``ranks`` is recovered exactly.

    :param torch.Tensor tensor: a dense tensor of order ``d``.
    :param tuple ranks: ``d - 1`` positive ints, clipped by :func:`clip_train_ranks`.
    :returns: the cores, core ``k`` of shape ``(r_{k-1}, I_k, r_k)``.
    """
    sizes = tuple(tensor.shape)
    ranks = clip_train_ranks(sizes, ranks)
    cores, rest, left = [], tensor.reshape(1, -1), 1
    for k, rank in enumerate(ranks):
        u, s, vh = torch.linalg.svd(rest.reshape(left * sizes[k], -1), full_matrices=False)
        cores.append(u[:, :rank].reshape(left, sizes[k], rank))
        rest, left = s[:rank, None] * vh[:rank], rank
    cores.append(rest.reshape(left, sizes[-1], 1))
    return cores


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
        return [("e0" if k == 0 else f"b{k - 1}", f"m{k}", "e1" if k == order - 1 else f"b{k}") for k in range(order)]

    def max_ranks(self) -> tuple[int, ...]:
        return tuple(min(math.prod(self.shape[: k + 1]), math.prod(self.shape[k + 1 :])) for k in range(self.num_bonds))

    @classmethod
    def decompose(
        cls, tensor: torch.Tensor, ranks: int | Sequence[int], shape: Sequence[int] | None = None
    ) -> list[torch.Tensor]:
        """
        TT-SVD (:func:`tt_svd`). The ranks are clipped to what the shape allows
        (:func:`clip_train_ranks`), so the cores may be smaller than asked: read the ranks off
        their shapes.

        :param torch.Tensor tensor: the dense tensor, any floating dtype and device.
        :param ranks: an int, or one rank per internal bond.
        :param tuple shape: view ``tensor`` as this shape first (same number of entries).
        :returns: the cores ``[G_1, ..., G_d]``, core ``k`` of shape ``(r_{k-1}, I_k, r_k)``.
        """
        tensor = check_dense(tensor, shape)
        fmt = cls(tensor.shape, ranks)
        return tt_svd(tensor, fmt.ranks)
