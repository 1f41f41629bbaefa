"""
Tensor-train matrix format: cores ``G_k`` of shape ``(r_{k-1}, m_k, n_k, r_k)``.

:meth:`TTM.decompose` fits the cores of a dense tensor by TT-SVD over the merged modes of each
core (:func:`.tt.tt_svd`).

:meth:`TTM.contract` multiplies a batch of inputs by the matrix view with a *split* product
when that costs the fewest FLOPs: the train is cut at one bond ``s``, the cores on each side
are merged (cheap: they are small), and the input meets the two halves in two matrix
products, ``x (batch, I_left, I_right)`` with the right half ``(s, I_right, O_right)``, then
with the left half ``(O_left, s, I_left)`` (or the mirror image, left half first):
``batch * s * (N_in * O_right + I_left * N_out)`` multiply-adds against the dense product's
``batch * N_in * N_out``, where ``N_in = I_left * I_right`` and ``N_out = O_left * O_right``.
So the split is cheap when the in modes left of the cut and the out modes right of it are
small: a 4096 x 4096 matrix with modes ``(8, 8, 8, 8)`` on both sides, cut in the middle at
rank 16, costs ``16 * (64 + 64) / 4096 = 0.5`` of the dense product; in modes ``(4, 4, 16,
16)`` with out modes ``(16, 16, 4, 4)`` cost ``16 * (16 + 16) / 4096 = 0.125``. The cut and the
direction, and whether the split or the planned einsum runs, are chosen by cost: FLOPs plus
:data:`~.base.MEMORY_COST` per entry of the intermediates (:meth:`TTM.split`). The split runs on
its own kernel (:class:`_SplitProduct`) where the side the input meets first has at least
:data:`KERNEL_MIN_COLUMNS` out entries: its products run over chunks of the batch so that their
intermediate (``s * I_left * O_right`` entries per row) stays in cache, in layouts that need no
permuted copy of it, forward or backward. With fewer columns those products run far below a
matrix product's rate, and the split runs as an einsum along the same path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from numbers import Integral
from typing import NamedTuple

import opt_einsum
import torch
from torch.autograd.function import once_differentiable

from ..checks import check_int
from .base import TensorFormat, check_dense, check_shape, einsum, path_cost
from .tt import tt_svd

__all__ = ["Split", "TTM"]

#: The number of entries of the intermediate that one chunk of a split product makes (1 MiB
#: in float32): small enough to stay in cache between the products that make and use it.
CHUNK_ENTRIES = 2**18

#: The fewest columns (out entries of the side the input meets first) at which a split product
#: runs on its own kernel, whose first product is a batch of ``s`` matrix products with that
#: many columns; a matrix product runs at a fraction of its rate on fewer than 16 (its register
#: blocks are 16 or more wide), and the split then runs as an einsum along the same path, one
#: product with ``s`` times the columns and a permuted copy. On the Fashion-MNIST MLP's 784 x 625
#: layer (25 columns) the kernel took 0.5-0.8x the einsum's time; on 784 x 512, 512 x 256 and
#: 3136 x 256 layers (8 columns), 1.2-2.5x.
KERNEL_MIN_COLUMNS = 16

#: The most entries of the intermediate, over the whole batch, that a split product keeps for
#: its backward pass (16 MiB in float32); a larger one is recomputed there chunk by chunk. On
#: the Fashion-MNIST MLP's TTM layer at rank 8 (256 rows, 1.4 million entries) the recomputation
#: was a fifth of the layer's forward and backward time.
KEEP_ENTRIES = 2**22


def _num_cores(order):
    return (order + 1) // 2


class Split(NamedTuple):
    """A split product: the train cut at ``bond``; ``reverse``: the input meets the left cores
    first; ``flops``: its FLOP count as opt_einsum counts it, the merges included."""

    flops: int
    bond: int
    reverse: bool


def _tree_path(tree, num_operands):
    """
    The opt_einsum path (pairs of positions in the shrinking operand list, each result
    appended at the end) of a binary contraction tree whose leaves are operand positions,
    e.g. ``((0, (3, 4)), (1, 2))``.
    """
    ops, path = list(range(num_operands)), []

    def visit(node):
        if isinstance(node, int):
            return node
        left, right = visit(node[0]), visit(node[1])
        path.append(tuple(sorted((ops.index(left), ops.index(right)))))
        ops[:] = [o for o in ops if o != left and o != right] + [node]
        return node

    visit(tree)
    return path


def _chain(operands):
    """A contraction tree that merges ``operands`` one after another, left to right."""
    tree = operands[0]
    for op in operands[1:]:
        tree = (tree, op)
    return tree


@lru_cache(maxsize=256)
def _best_split(shape, ranks, batch_size):
    """
    ``(split, entries, path)``: the cheapest :class:`Split` of a TTM layout for ``batch_size``
    rows by :func:`~.base.path_cost`, the entries of the intermediates its contraction path
    writes and that path (opt_einsum's pairs); ``None`` for a single core.
    """
    fmt = TTM(shape, ranks)
    cores = _num_cores(len(shape))
    equation = fmt._contract_equation()
    shapes = [(batch_size,) + fmt.col_shape] + list(fmt.factor_shapes)
    best = None
    for bond in range(cores - 1):
        left, right = _chain(list(range(1, bond + 2))), _chain(list(range(bond + 2, cores + 1)))
        for reverse in (False, True):
            tree = ((0, left), right) if reverse else ((0, right), left)
            path = tuple(_tree_path(tree, cores + 1))
            info = opt_einsum.contract_path(equation, *shapes, shapes=True, optimize=list(path))[1]
            flops, entries = int(info.opt_cost), sum(info.size_list)
            if best is None or path_cost(flops, entries) < path_cost(best[0].flops, best[1]):
                best = Split(flops, bond, reverse), entries, path
    return best


class _Contraction(NamedTuple):
    """What :meth:`TTM.contract` runs for a batch: ``split`` (``None``: the planned einsum), its
    :func:`~.base.path_cost`, the split's opt_einsum path and whether it runs on the kernel."""

    split: Split | None
    cost: int
    path: tuple | None
    kernel: bool


@lru_cache(maxsize=256)
def _contraction(shape, ranks, batch_size):
    """The :class:`_Contraction` of a TTM layout for ``batch_size`` rows (see :meth:`TTM.split`),
    decided once per shape, ranks and batch size: every forward pass reads it."""
    fmt = TTM(shape, ranks)
    planned = TensorFormat.contract_cost(fmt, batch_size)
    best = _best_split(shape, ranks, batch_size)
    if best is not None:
        split, entries, path = best
        own, kernel = path_cost(split.flops, entries), fmt.on_kernel(split)
        if own < planned or (own == planned and kernel):
            return _Contraction(split, own, path, kernel)
    return _Contraction(None, planned, None, False)


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

    def __init__(self, shape: Sequence[int], ranks: int | Sequence[int], row_modes: int | None = None) -> None:
        shape = check_shape(shape)
        cores = _num_cores(len(shape))
        if row_modes is not None and (
            isinstance(row_modes, bool) or not isinstance(row_modes, Integral) or row_modes != cores
        ):
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

    def max_ranks(self) -> tuple[int, ...]:
        sizes = [math.prod(self.shape[m] for m in self._core_modes(k)) for k in range(_num_cores(len(self.shape)))]
        return tuple(min(math.prod(sizes[: k + 1]), math.prod(sizes[k + 1 :])) for k in range(self.num_bonds))

    def _side_labels(self, cores):
        """The out-mode labels and the in-mode labels of ``cores``, in order."""
        c = _num_cores(len(self.shape))
        modes = [lab for k in cores for lab in self.labels[k] if lab[0] == "m"]
        return [lab for lab in modes if int(lab[1:]) < c], [lab for lab in modes if int(lab[1:]) >= c]

    def _merge(self, factors, cores, labels):
        """The cores ``cores`` contracted into one tensor with dimensions ``labels``, flattened to
        one dimension per group of ``labels`` (a list of lists)."""
        flat = [lab for group in labels for lab in group]
        merged = einsum(self._equation([self.labels[k] for k in cores], flat), *[factors[k] for k in cores])
        return merged.reshape([self._size(group) for group in labels])

    def split(self, batch_size: int) -> Split | None:
        """
        The :class:`Split` product that :meth:`contract` uses for ``batch_size`` rows, or
        ``None`` when the planned einsum (:meth:`TensorFormat.contract
        <.base.TensorFormat.contract>`) costs less. Paths are compared by
        :func:`~.base.path_cost`: their FLOPs, plus :data:`~.base.MEMORY_COST` for each entry of
        the intermediates they write. On a tie the split is used where it runs on the kernel
        (:meth:`on_kernel`), else the planned einsum.

        :param int batch_size: the number of input rows.
        """
        return _contraction(self.shape, self.ranks, check_int(batch_size, "batch_size", low=0)).split

    def on_kernel(self, split: Split) -> bool:
        """
        Whether ``split`` runs on the split product's own kernel (:class:`_SplitProduct`): when
        the side the input meets first has at least :data:`KERNEL_MIN_COLUMNS` out entries.
        Otherwise it runs as an einsum along the same path.
        """
        cores = _num_cores(len(self.shape))
        first = range(split.bond + 1) if split.reverse else range(split.bond + 1, cores)
        return self._size(self._side_labels(first)[0]) >= KERNEL_MIN_COLUMNS

    def split_row_cost(self) -> int | None:
        """
        The multiply-adds per input row of the cheapest split product, by the closed form of
        the module docs (``s * (N_in * O_right + I_left * N_out)``, or its mirror image), over
        every cut; the merges of the cores, which do not grow with the batch, are left out.
        ``None`` for a single core. A size for comparing mode shapes before any batch is seen
        (:meth:`split` counts the FLOPs of one batch exactly).
        """
        cores = _num_cores(len(self.shape))
        n_out, n_in = self.matrix_shape
        costs = []
        for bond in range(cores - 1):
            out_left, in_left = (self._size(labels) for labels in self._side_labels(range(bond + 1)))
            out_right, in_right = (self._size(labels) for labels in self._side_labels(range(bond + 1, cores)))
            rank = self.ranks[bond]
            costs += [rank * (n_in * out_right + in_left * n_out), rank * (n_in * out_left + in_right * n_out)]
        return min(costs, default=None)

    def contract_flops(self, batch_size: int) -> int:
        batch_size = check_int(batch_size, "batch_size", low=0)
        split = self.split(batch_size)
        return self._einsum_flops(batch_size) if split is None else split.flops

    contract_flops.__doc__ = TensorFormat.contract_flops.__doc__

    def contract_cost(self, batch_size: int) -> int:
        return _contraction(self.shape, self.ranks, check_int(batch_size, "batch_size", low=0)).cost

    contract_cost.__doc__ = TensorFormat.contract_cost.__doc__

    def contract(self, x: torch.Tensor, factors: Sequence[torch.Tensor]) -> torch.Tensor:
        """
        ``x @ W.T`` for the matrix view ``W`` (rows: out, columns: in): a split product (see
        the module docs) or the planned einsum of the base class, whichever costs less for this
        batch size (:meth:`split`).

        :param torch.Tensor x: inputs of shape ``(..., prod(col_shape))``.
        :returns: outputs of shape ``(..., prod(row_shape))``.
        """
        factors = self.check_factors(factors)
        self._check_contract_input(x)
        batch_size = max(1, math.prod(x.shape[:-1]))
        split = self.split(batch_size)
        if split is None:
            return super().contract(x, factors)
        choice = _contraction(self.shape, self.ranks, batch_size)
        if choice.kernel:
            return self._contract_split(x, factors, split.bond, split.reverse)
        y = einsum(self._contract_equation(), x.reshape(-1, *self.col_shape), *factors, path=choice.path)
        return y.reshape(*x.shape[:-1], self.matrix_shape[0])

    def _contract_split(self, x, factors, bond, reverse, chunk_entries=CHUNK_ENTRIES):
        """
        :meth:`contract` by the split product cut at ``bond`` (``reverse``: the input meets
        the left cores first), in chunks of the batch whose intermediate has at most
        ``chunk_entries`` entries (at least one row).
        """
        cores = _num_cores(len(self.shape))
        out_left, in_left = self._side_labels(range(bond + 1))
        out_right, in_right = self._side_labels(range(bond + 1, cores))
        left, right, rank = list(range(bond + 1)), list(range(bond + 1, cores)), [f"b{bond}"]
        xs = x.reshape(-1, self._size(in_left), self._size(in_right))
        if reverse:  # the mirror image: y^T = sum_s B_s^T x^T A_s^T per row
            a = self._merge(factors, right, [out_right, rank + in_right])
            c = self._merge(factors, left, [rank, in_left, out_left])
            xs = xs.transpose(1, 2)
        else:
            a = self._merge(factors, left, [out_left, rank + in_left])
            c = self._merge(factors, right, [rank, in_right, out_right])
        chunk = max(1, chunk_entries // (c.shape[0] * xs.shape[1] * c.shape[2]))
        y = _SplitProduct.apply(xs, a, c, chunk)
        if reverse:
            y = y.transpose(1, 2)
        return y.reshape(*x.shape[:-1], self.matrix_shape[0])

    def _size(self, labels):
        """The product of the sizes of ``labels``."""
        return math.prod(self.label_size(lab) for lab in labels)

    @classmethod
    def decompose(
        cls, tensor: torch.Tensor, ranks: int | Sequence[int], shape: Sequence[int] | None = None
    ) -> list[torch.Tensor]:
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


class _SplitProduct(torch.autograd.Function):
    """
    ``y[b, o, p] = sum_{s, i, j} a[o, (s, i)] x[b, i, j] c[s, j, p]`` for ``x (B, I, J)``,
    ``a (O, S * I)`` and ``c (S, J, P)``: ``y (B, O, P)``, over chunks of ``chunk`` rows.

    Per chunk of ``n`` rows, the intermediate ``t[s, (i, b), p] = sum_j x[b, i, j] c[s, j, p]``
    (one batched product over ``s``, the input shared) is laid out so that both its uses are
    single matrix products with no permuted copy: ``y[o, (b, p)] = a @ t[(s, i), (b, p)]`` and
    ``grad a = grad y[o, (b, p)] @ t[(s, i), (b, p)]^T``. The forward pass keeps ``t`` for the
    backward pass when the whole batch's holds at most :data:`KEEP_ENTRIES` entries; a larger
    one (``S * I * P`` per row) is recomputed there, chunk by chunk.
    """

    @staticmethod
    def forward(ctx, x, a, c, chunk):
        batch, i, _ = x.shape
        y = x.new_empty(batch, a.shape[0], c.shape[2])
        keep = ctx.needs_input_grad[1] and batch * c.shape[0] * i * c.shape[2] <= KEEP_ENTRIES
        ctx.kept = []
        for start in range(0, batch, chunk):
            xt, t = _intermediate(x[start : start + chunk], c)
            n = xt.shape[0] // i
            y[start : start + n] = torch.mm(a, t.view(-1, n * c.shape[2])).view(-1, n, c.shape[2]).transpose(0, 1)
            if keep:
                ctx.kept.append((xt, t))
        ctx.save_for_backward(x, a, c)
        ctx.chunk = chunk
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        x, a, c = ctx.saved_tensors
        need_x, need_a, need_c = ctx.needs_input_grad[:3]
        batch, i, j = x.shape
        s, p = c.shape[0], c.shape[2]
        grad_x = torch.empty_like(x) if need_x else None
        grad_a = torch.zeros_like(a) if need_a else None
        grad_c = torch.zeros_like(c) if need_c else None
        c_t = c.transpose(1, 2).reshape(s * p, j) if need_x else None  # [(s, p), j]
        for k, start in enumerate(range(0, batch, ctx.chunk)):
            xc = x[start : start + ctx.chunk]
            n = xc.shape[0]
            g = grad_y[start : start + n].transpose(0, 1).reshape(-1, n * p)  # [o, (b, p)]
            if ctx.kept:
                xt, t = ctx.kept[k]
            else:
                xt, t = _intermediate(xc, c) if need_a else (xc.transpose(0, 1).reshape(i * n, j), None)
            if need_a:
                grad_a.addmm_(g, t.view(s * i, n * p).t())
            if need_x or need_c:
                grad_t = torch.mm(a.t(), g).view(s, i * n, p)  # [s, (i, b), p]
                if need_c:
                    grad_c.baddbmm_(xt.t().expand(s, j, i * n), grad_t)
                if need_x:  # one product over (s, p), not s products and their sum
                    grad_xt = torch.mm(grad_t.transpose(0, 1).reshape(i * n, s * p), c_t)  # [(i, b), j]
                    grad_x[start : start + n] = grad_xt.view(i, n, j).transpose(0, 1)
        return grad_x, grad_a, grad_c, None


def _intermediate(x, c):
    """``(xt, t)`` of a chunk ``x (n, I, J)``: ``xt[(i, b), j]`` and ``t[s, (i, b), p]``."""
    n, i, j = x.shape
    xt = x.transpose(0, 1).reshape(i * n, j)
    return xt, torch.bmm(xt.expand(c.shape[0], i * n, j), c)
