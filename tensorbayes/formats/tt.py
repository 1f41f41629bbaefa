"""
Tensor-train format: cores ``G_k`` of shape ``(r_{k-1}, I_k, r_k)`` with ``r_0 = r_d = 1``.

:meth:`TT.decompose` fits the cores of a dense tensor by TT-SVD (:func:`tt_svd`), which the
tensor-train matrix format (:mod:`.ttm`) reuses over its merged modes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral

import torch

from .base import TensorFormat, check_dense, check_ranks, check_shape

__all__ = ["TT", "clip_train_ranks", "interleaved_train", "layout_options", "tt_svd"]


def interleaved_train(order: int, row_modes: int) -> tuple[int, ...]:
    """
    The train order that alternates the matrix view's row modes ``0..row_modes-1`` with its column
    modes ``row_modes..order-1``, row mode first, the longer side's last modes at the end.

    Usage::

        interleaved_train(8, 4)   # (0, 4, 1, 5, 2, 6, 3, 7)
    """
    rows, cols = list(range(row_modes)), list(range(row_modes, order))
    train = [m for pair in zip(rows, cols) for m in pair]
    return tuple(train + rows[len(cols) :] + cols[len(rows) :])


def layout_options(format, order, row_modes, interleave=True):
    """
    The options a weight's layout takes beyond its shape and ranks (``format``: a name or a
    format class; ``order``: its number of modes): with ``interleave``, a TT weight runs its
    cores over the out and in modes alternately (:func:`interleaved_train`), so that no bond
    bounds the matrix's rank. In order (out modes, then in modes) the bond between them does: on
    the deep Fashion-MNIST MLP (784-512-512-256-10, three TT layers) the rank search's network
    scored 86.81 % at 131x in order and 88.12 % at 127x interleaved (dense: 88.63 %). ``{}``
    for the other formats.
    """
    if getattr(format, "name", format) != "tt" or not interleave:
        return {}
    return {"train": interleaved_train(order, row_modes)}


def _check_train(train, order):
    try:
        train = tuple(train)
    except TypeError:
        raise TypeError(f"train must be a permutation of range({order}), got {train!r}") from None
    if any(isinstance(m, bool) or not isinstance(m, Integral) for m in train) or sorted(train) != list(range(order)):
        raise ValueError(f"train must be a permutation of range({order}) (the mode each core carries), got {train!r}")
    return tuple(int(m) for m in train)


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
    ranks = clip_train_ranks(sizes, check_ranks(ranks, len(sizes) - 1))
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

    The cores may run over the modes in another order, ``train``: core ``k`` then carries mode
    ``train[k]``. A weight matrix's modes in the order out, in (the matrix view's rows, then its
    columns) make every bond between the out and the in modes bound the matrix's rank;
    :func:`interleaved_train` alternates them (out 1, in 1, out 2, in 2, ...), as a tensor-train
    matrix pairs them, and lets the train carry a matrix of full rank.

    :param tuple shape: the sizes of the tensor's modes.
    :param ranks: an int, or one rank per internal bond (``d - 1`` of them).
    :param int row_modes: leading modes that index the rows of the matrix view.
    :param tuple train: the mode each core carries, a permutation of ``range(d)`` (default: in order).
    """

    name = "tt"

    def __init__(
        self,
        shape: Sequence[int],
        ranks: int | Sequence[int],
        row_modes: int | None = None,
        train: Sequence[int] | None = None,
    ) -> None:
        order = len(check_shape(shape))
        self.train = tuple(range(order)) if train is None else _check_train(train, order)
        super().__init__(shape, ranks, row_modes=row_modes)

    def __repr__(self) -> str:
        if self.train == tuple(range(len(self.shape))):
            return super().__repr__()
        return f"TT(shape={self.shape}, ranks={self.ranks}, train={self.train})"

    def with_ranks(self, ranks: int | Sequence[int]) -> TT:
        return TT(self.shape, ranks, row_modes=self.row_modes, train=self.train)

    @staticmethod
    def _num_bonds(order):
        return order - 1

    def _layout(self):
        order = len(self.shape)
        return [
            ("e0" if k == 0 else f"b{k - 1}", f"m{mode}", "e1" if k == order - 1 else f"b{k}")
            for k, mode in enumerate(self.train)
        ]

    def max_ranks(self) -> tuple[int, ...]:
        sizes = [self.shape[mode] for mode in self.train]
        return tuple(min(math.prod(sizes[: k + 1]), math.prod(sizes[k + 1 :])) for k in range(self.num_bonds))

    @classmethod
    def decompose(
        cls,
        tensor: torch.Tensor,
        ranks: int | Sequence[int],
        shape: Sequence[int] | None = None,
        train: Sequence[int] | None = None,
    ) -> list[torch.Tensor]:
        """
        TT-SVD (:func:`tt_svd`) over the modes in ``train`` order. The ranks are clipped to what the shape allows
        (:func:`clip_train_ranks`), so the cores may be smaller than asked: read the ranks off
        their shapes.

        :param torch.Tensor tensor: the dense tensor, any floating dtype and device.
        :param ranks: an int, or one rank per internal bond.
        :param tuple shape: view ``tensor`` as this shape first (same number of entries).
        :param tuple train: the mode each core carries (default: in order).
        :returns: the cores ``[G_1, ..., G_d]``, core ``k`` of shape ``(r_{k-1}, I_{train[k]}, r_k)``.
        """
        tensor = check_dense(tensor, shape)
        fmt = cls(tensor.shape, ranks, train=train)
        return tt_svd(tensor.permute(*fmt.train), fmt.ranks)
