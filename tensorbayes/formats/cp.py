"""
CP (canonical polyadic) format: ``T[i_1..i_d] = sum_r U_1[i_1, r] ... U_d[i_d, r]``.

:meth:`CP.decompose` fits the factors of a dense tensor by alternating least squares (CP-ALS).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..checks import check_int, check_number
from .base import TensorFormat, check_dense, einsum, leading_left_singular_vectors, path_cost, unfold

__all__ = ["CP"]


def _khatri_rao(factors):
    """The column-wise Kronecker product of ``factors`` (each ``(I_k, R)``, at least one):
    ``(prod I_k, R)``, its rows in the row-major order of the modes."""
    out = factors[0]
    for u in factors[1:]:
        out = (out[:, None, :] * u[None, :, :]).reshape(-1, u.shape[1])
    return out


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

    def max_ranks(self) -> tuple[int, ...]:
        return (max(1, math.prod(self.shape) // max(self.shape)),)

    def contract(self, x: torch.Tensor, factors: Sequence[torch.Tensor]) -> torch.Tensor:
        """
        ``x @ W.T`` for the matrix view ``W = A B^T``, where ``A`` and ``B`` are the Khatri-Rao
        products of the row and of the column factors (``(prod(row_shape), R)`` and
        ``(prod(col_shape), R)``): two matrix products, ``(x @ B) @ A.T``, where that costs no more
        FLOPs than the planned einsum of the base class (which then runs). The einsum over all
        the factors carries the rank index through every intermediate (a batch of ``R`` small
        products each): for the same FLOPs many times slower on a CPU (at 784 x 625 and ``R =
        583``, 87x in one measurement).

        :param torch.Tensor x: inputs of shape ``(..., prod(col_shape))``.
        :returns: outputs of shape ``(..., prod(row_shape))``.
        """
        factors = self.check_factors(factors)
        self._check_contract_input(x)
        if not self._by_khatri_rao(max(1, math.prod(x.shape[:-1]))):
            return super().contract(x, factors)
        rows, cols = _khatri_rao(factors[: self.row_modes]), _khatri_rao(factors[self.row_modes :])
        y = (x.reshape(-1, cols.shape[0]) @ cols) @ rows.T
        return y.reshape(*x.shape[:-1], self.matrix_shape[0])

    def contract_flops(self, batch_size: int) -> int:
        """The FLOPs of :meth:`contract`: the cheaper of the Khatri-Rao path and the planned einsum."""
        batch_size = check_int(batch_size, "batch_size", low=0)
        return min(self._khatri_rao_flops(batch_size), self._einsum_flops(batch_size))

    def contract_cost(self, batch_size: int) -> int:
        """The :func:`~.base.path_cost` of :meth:`contract`: of the Khatri-Rao path where it runs
        (the Khatri-Rao products, ``x @ B`` and the output written), else of the planned einsum."""
        batch_size = check_int(batch_size, "batch_size", low=0)
        if not self._by_khatri_rao(batch_size):
            return super().contract_cost(batch_size)
        (rank,) = self.ranks
        sides = (self.row_shape, self.col_shape)
        products = sum(math.prod(side[:j]) for side in sides for j in range(2, len(side) + 1))
        entries = rank * (products + batch_size) + batch_size * self.matrix_shape[0]
        return path_cost(self._khatri_rao_flops(batch_size), entries)

    def _by_khatri_rao(self, batch_size):
        """Whether :meth:`contract` takes the Khatri-Rao path: where it costs no more FLOPs."""
        return self._khatri_rao_flops(batch_size) <= self._einsum_flops(batch_size)

    def _khatri_rao_flops(self, batch_size):
        """Twice the multiply-adds of the two Khatri-Rao products and the two matrix products
        (infinite where a side of the matrix view has no modes)."""
        if not 0 < self.row_modes < len(self.shape):
            return math.inf
        (rank,) = self.ranks
        rows, cols = self.matrix_shape
        return 2 * rank * (batch_size * (rows + cols) + rows + cols)

    @classmethod
    def decompose(
        cls,
        tensor: torch.Tensor,
        ranks: int | Sequence[int],
        n_iter_max: int = 500,
        tol: float = 1e-10,
        seed: int = 0,
        shape: Sequence[int] | None = None,
    ) -> list[torch.Tensor]:
        """
        CP-ALS: the factors of a rank-``R`` CP approximation of a dense tensor.

        Factor ``k`` starts as the ``R`` leading left singular vectors of the mode-``k``
        unfolding (padded with random columns, from a generator seeded by ``seed``, where
        ``R`` exceeds the mode size), so the result is deterministic. Each sweep then solves
        the least-squares problem of every factor in turn, the others fixed, keeping the
        columns normalized. It stops after ``n_iter_max`` sweeps, or once the relative error
        ``||T - T_hat|| / ||T||`` drops below ``tol`` or improves by less than ``tol`` in a
        sweep (``tol`` is raised to ten times the dtype's machine epsilon, below which changes
        are rounding noise). A well-conditioned tensor of CP rank ``R`` is typically recovered
        to a relative error near ``tol`` in tens to a few hundred sweeps.

        The weights of the components are then spread evenly over the factors (each column of
        every factor gets the ``d``-th root of its component's weight) and the components are
        sorted by decreasing weight. The rank is never clipped.

        :param torch.Tensor tensor: the dense tensor, any floating dtype and device.
        :param ranks: ``R``, as an int or a one-element tuple.
        :param int n_iter_max: the most ALS sweeps.
        :param float tol: the tolerance on the relative error and on its decrease per sweep.
        :param int seed: the seed of the random padding columns.
        :param tuple shape: view ``tensor`` as this shape first (same number of entries).
        :returns: the factors ``[U_1, ..., U_d]``, each ``(I_k, R)``.
        """
        tensor = check_dense(tensor, shape)
        fmt = cls(tensor.shape, ranks)
        (rank,) = fmt.ranks
        check_int(n_iter_max, "n_iter_max", low=0)
        seed = check_int(seed, "seed", low=0)
        tol = max(check_number(tol, "tol", "[0, inf)"), 10 * torch.finfo(tensor.dtype).eps)  # below: rounding noise
        order = tensor.dim()
        if order == 1:  # a vector: R equal columns that sum to it
            return [(tensor / rank).unsqueeze(1).repeat(1, rank)]
        generator = torch.Generator().manual_seed(seed)

        factors = []
        for k, size in enumerate(tensor.shape):
            u = leading_left_singular_vectors(unfold(tensor, k), min(rank, size))
            if rank > size:
                pad = torch.randn(size, rank - size, generator=generator, dtype=torch.float64)
                pad = pad / pad.norm(dim=0)
                u = torch.cat([u, pad.to(dtype=tensor.dtype, device=tensor.device)], dim=1)
            factors.append(u)

        norm = tensor.norm()
        if norm == 0:
            return [torch.zeros_like(u) for u in factors]
        weights = torch.ones(rank, dtype=tensor.dtype, device=tensor.device)
        modes = [f"m{k}" for k in range(order)]
        full_eq = fmt._equation(fmt.labels, modes)
        mttkrp_eqs = [  # the tensor times every factor but U_k: (I_k, R)
            fmt._equation([modes] + [fmt.labels[j] for j in range(order) if j != k], fmt.labels[k])
            for k in range(order)
        ]
        grams = [u.T @ u for u in factors]
        error = None
        for _ in range(n_iter_max):
            for k in range(order):
                others = [factors[j] for j in range(order) if j != k]
                gram = torch.ones(rank, rank, dtype=tensor.dtype, device=tensor.device)
                for j in range(order):
                    if j != k:
                        gram = gram * grams[j]
                mttkrp = einsum(mttkrp_eqs[k], tensor, *others)
                u = mttkrp @ torch.linalg.pinv(gram, hermitian=True)
                weights = u.norm(dim=0)
                factors[k] = u / torch.where(weights > 0, weights, torch.ones_like(weights))
                grams[k] = factors[k].T @ factors[k]
            approx = einsum(full_eq, *factors[:-1], factors[-1] * weights)
            previous, error = error, float((tensor - approx).norm() / norm)
            if error < tol or (previous is not None and previous - error < tol):
                break

        order_desc = torch.argsort(weights, descending=True, stable=True)
        scale = weights[order_desc] ** (1.0 / order)
        return [u[:, order_desc] * scale for u in factors]
