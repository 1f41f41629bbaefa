"""
The shared algebra of low-rank tensor formats.

A format is described once, by the *labels* of its factors' dimensions: every dimension of
every factor is a tensor mode (``"m<k>"``), a rank bond (``"b<j>"``) or a fixed boundary of
size one (``"e<j>"``). From that description alone this module derives the einsum of the
dense tensor, the contraction of a batch of inputs with the factors, the gather of entries or
rows by mixed-radix indices, parameter counts and truncation to a subset of rank indices.
Contractions are planned once with :func:`opt_einsum.contract_expression` and cached per
operand shapes; the contraction order (and whether the dense tensor is ever formed) is decided
by :func:`path_cost`: FLOPs plus :data:`MEMORY_COST` per entry of the intermediates written.

This module is pure torch: it knows nothing of Pyro, priors or training.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from functools import cached_property, lru_cache
from numbers import Integral
from typing import Any, Self

import opt_einsum
import torch

from ..checks import check_int

__all__ = [
    "MEMORY_COST",
    "TensorFormat",
    "check_dense",
    "check_ranks",
    "check_shape",
    "einsum",
    "leading_left_singular_vectors",
    "path_cost",
    "unfold",
]


def check_shape(shape: Iterable[int], name: str = "shape") -> tuple[int, ...]:
    """Validate a tensor shape: a non-empty sequence of positive ints (NumPy ints too). Returns a tuple of ints."""
    try:
        shape = tuple(shape)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of positive ints, got {shape!r}") from None
    if not shape:
        raise ValueError(f"{name} must have at least one mode, got {shape!r}")
    for size in shape:
        if isinstance(size, bool) or not isinstance(size, Integral) or size < 1:
            raise ValueError(f"{name} must be a sequence of positive ints, got {shape!r}")
    return tuple(int(size) for size in shape)


def check_ranks(ranks: int | Iterable[int], num_bonds: int, name: str = "ranks") -> tuple[int, ...]:
    """
    Validate ranks: an int (the same for every bond) or one positive int per bond (NumPy ints too).
    Returns a tuple of ``num_bonds`` ints.
    """
    if isinstance(ranks, Integral) and not isinstance(ranks, bool):
        if ranks < 1:  # checked here too: a layout with no bonds would drop it unseen
            raise ValueError(f"{name} must be positive ints (a rank is at least 1), got {ranks!r}")
        ranks = (ranks,) * num_bonds
    try:
        ranks = tuple(ranks)
    except TypeError:
        raise TypeError(f"{name} must be an int or a sequence of ints, got {ranks!r}") from None
    if len(ranks) != num_bonds:
        raise ValueError(f"{name} must have one entry per rank bond ({num_bonds}), got {ranks!r}")
    for rank in ranks:
        if isinstance(rank, bool) or not isinstance(rank, Integral) or rank < 1:
            raise ValueError(f"{name} must be positive ints (a rank is at least 1), got {ranks!r}")
    return tuple(int(rank) for rank in ranks)


def check_dense(tensor: torch.Tensor, shape: Sequence[int] | None = None, name: str = "tensor") -> torch.Tensor:
    """
    Validate a dense tensor to decompose: a float32 or float64 :class:`torch.Tensor` with at
    least one mode, every size positive, all entries finite. Returns it, viewed as ``shape`` if given
    (e.g. a weight matrix ``(out, in)`` viewed as its tensorized modes).

    :param torch.Tensor tensor: the dense tensor.
    :param tuple shape: the shape to view it as (same number of entries), or ``None`` for its own.
    :param str name: the argument's name, for error messages.
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in (torch.float32, torch.float64):
        raise TypeError(
            f"{name} must have a floating-point dtype, float32 or float64 (for the SVDs), got {tensor.dtype}"
        )
    if shape is None:
        check_shape(tuple(tensor.shape), name=f"{name}.shape")
    else:
        shape = check_shape(shape, name="shape")
        if math.prod(shape) != tensor.numel():
            raise ValueError(
                f"shape {shape} must have as many entries as {name} of shape {tuple(tensor.shape)} "
                f"({math.prod(shape)} != {tensor.numel()})"
            )
        tensor = tensor.reshape(shape)
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} must have finite entries (no NaN or inf)")
    return tensor


def unfold(tensor: torch.Tensor, mode: int) -> torch.Tensor:
    """The mode-``mode`` unfolding: a matrix ``(tensor.shape[mode], -1)``, other modes in order."""
    return tensor.movedim(mode, 0).reshape(tensor.shape[mode], -1)


def leading_left_singular_vectors(matrix: torch.Tensor, rank: int) -> torch.Tensor:
    """
    The ``rank`` leading left singular vectors of ``matrix`` (orthonormal columns, by
    decreasing singular value). When the matrix has fewer than ``rank`` columns, the
    singular vectors are completed to ``rank`` orthonormal columns (a QR completion, no
    randomness), so ``rank`` may be anything up to ``matrix.shape[0]``.

    :param torch.Tensor matrix: a matrix ``(rows, cols)``.
    :param int rank: how many columns, at most ``rows``.
    :returns: a matrix ``(rows, rank)``.
    """
    rows = matrix.shape[0]
    if not 1 <= rank <= rows:
        raise ValueError(f"rank must be in [1, {rows}] (the number of rows), got {rank!r}")
    u = torch.linalg.svd(matrix, full_matrices=False)[0]
    if u.shape[1] < rank:
        complete = torch.linalg.qr(u, mode="complete")[0]
        u = torch.cat([u, complete[:, u.shape[1] :]], dim=1)
    return u[:, :rank]


def _chain_path(order):
    """
    An opt_einsum path (pairs of positions in the shrinking operand list, each result
    appended at the end) that contracts the operands in ``order``, a permutation of
    ``range(n)``, one after another into one accumulator.
    """
    ops = list(range(len(order)))
    acc, path = order[0], []
    for i in order[1:]:
        path.append(tuple(sorted((ops.index(acc), ops.index(i)))))
        ops = [o for o in ops if o not in (acc, i)] + [("acc", i)]
        acc = ("acc", i)
    return path


def _candidate_paths(num_operands):
    """
    Paths to compare with opt_einsum's own (greedy beyond a few operands, which can miss a
    cheap sweep by an order of magnitude on long trains): chains forward and backward over
    the operands, operand 0 swept from the last one back, and all the others before operand 0
    (for a contraction with an input, forming the dense weight first).
    """
    n = num_operands
    if n < 3:
        return []
    orders = [
        list(range(n)),
        list(range(n - 1, -1, -1)),
        [0] + list(range(n - 1, 0, -1)),
        list(range(1, n)) + [0],
    ]
    return [_chain_path(order) for order in orders]


#: What a contraction pays, in FLOPs, for each entry of the intermediates it writes: an
#: intermediate is written and read back at the memory's speed, not at the arithmetic rate. 50 is
#: a processor's balance of the two: a CPU core's ~100 GFLOP/s over its ~8 GB/s share of memory
#: bandwidth (2 billion float32 entries a second), a GPU's ~50 TFLOP/s over ~3 TB/s. By FLOPs
#: alone, a path whose first product is an outer product looks cheap: on the Fashion-MNIST MLP's
#: 784 x 625 TTM layer at rank 2 such a path (19 MFLOPs, a million entries) ran 2-3x slower than
#: the split product (38 MFLOPs, half a million entries).
MEMORY_COST = 50


def path_cost(flops: int, entries: int) -> int:
    """The cost by which contraction paths are compared: ``flops + MEMORY_COST * entries``."""
    return flops + MEMORY_COST * entries


@lru_cache(maxsize=256)
def _plan(equation, shapes):
    """
    ``(flops, path, entries)``: the cheapest (by :func:`path_cost`, then largest intermediate) of
    opt_einsum's path and the chains, with its FLOP count as opt_einsum counts it and the
    entries of the intermediates it writes.
    """
    best = None
    for optimize in ["auto"] + _candidate_paths(len(shapes)):
        info = opt_einsum.contract_path(equation, *shapes, shapes=True, optimize=optimize)[1]
        flops, entries = int(info.opt_cost), sum(info.size_list)
        key = (path_cost(flops, entries), info.largest_intermediate)
        if best is None or key < best[0]:
            best = key, (flops, optimize, entries)
    return best[1]


def planned_cost(equation, shapes):
    """The FLOP count of the path that :func:`einsum` plans for ``equation`` at ``shapes``."""
    return _plan(equation, tuple(tuple(s) for s in shapes))[0]


def planned_entries(equation, shapes):
    """The entries of the intermediates that the path :func:`einsum` plans writes (its output included)."""
    return _plan(equation, tuple(tuple(s) for s in shapes))[2]


@lru_cache(maxsize=256)
def _expression(equation, shapes, path=None):
    """The contraction expression of ``path``, by default the planned one (:func:`_plan`)."""
    return opt_einsum.contract_expression(equation, *shapes, optimize=path or _plan(equation, shapes)[1])


def einsum(equation: str, *operands: torch.Tensor, path: tuple | None = None) -> torch.Tensor:
    """Contract with a path planned once per (equation, shapes) and reused, or along ``path`` (an
    opt_einsum path, a tuple of pairs)."""
    return _expression(equation, tuple(tuple(op.shape) for op in operands), path)(*operands, backend="torch")


class TensorFormat:
    """
    Base class of the four formats. Subclasses set :attr:`name` and implement
    :meth:`_layout` (the labels of each factor's dimensions) and :meth:`decompose`.

    A format object holds no factors: it is the *layout* of a tensor of a given ``shape`` at
    given ``ranks``, and its methods take the factors as a list of tensors. Its matrix view
    has the first ``row_modes`` modes as rows and the others as columns
    (``W = full().reshape(prod(shape[:row_modes]), -1)``), which is how tensorized layers
    read a weight of shape ``(out, in)``.

    :param tuple shape: the sizes of the tensor's modes.
    :param ranks: an int, or one int per rank bond.
    :param int row_modes: how many leading modes index the rows of the matrix view.
    """

    #: The ``format=`` string of the format ("cp", "tucker", "tt", "ttm").
    name: str | None = None

    def __init__(self, shape: Sequence[int], ranks: int | Sequence[int], row_modes: int | None = None) -> None:
        self.shape: tuple[int, ...] = check_shape(shape)
        self.num_bonds: int = self._num_bonds(len(self.shape))
        self.ranks: tuple[int, ...] = check_ranks(ranks, self.num_bonds)
        if row_modes is None:
            row_modes = self._default_row_modes(len(self.shape))
        if isinstance(row_modes, bool) or not isinstance(row_modes, Integral) or not 0 <= row_modes <= len(self.shape):
            raise ValueError(f"row_modes must be an int in [0, {len(self.shape)}], got {row_modes!r}")
        self.row_modes: int = int(row_modes)
        self.labels: list[tuple[str, ...]] = self._layout()

    # ----- what a subclass defines -----

    @staticmethod
    def _num_bonds(order):
        raise NotImplementedError

    @staticmethod
    def _default_row_modes(order):
        return order // 2

    def _layout(self):
        """One tuple of labels per factor, e.g. ``[("e0", "m0", "b0"), ("b0", "m1", "e1")]``."""
        raise NotImplementedError

    @classmethod
    def decompose(cls, tensor: torch.Tensor, ranks: int | Sequence[int], **kwargs: Any) -> list[torch.Tensor]:
        """
        Factors of a dense ``tensor`` at ``ranks``, in this format's layout and with the
        tensor's dtype and device (an initialization from a dense tensor). Each format
        documents its algorithm and whether ranks beyond what the shape allows are clipped.
        """
        raise NotImplementedError

    # ----- derived layout -----

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape}, ranks={self.ranks})"

    def with_ranks(self, ranks: int | Sequence[int]) -> Self:
        """The same layout at other ranks."""
        return type(self)(self.shape, ranks, row_modes=self.row_modes)

    def label_size(self, label: str) -> int:
        kind, index = label[0], int(label[1:])
        if kind == "m":
            return self.shape[index]
        if kind == "b":
            return self.ranks[index]
        return 1

    @property
    def factor_shapes(self) -> list[tuple[int, ...]]:
        """The shape of every factor, in order."""
        return list(self._factor_shapes)

    @property
    def bonds(self) -> list[list[tuple[int, int]]]:
        """For each rank bond, the ``(factor, dim)`` pairs that carry its index."""
        return [list(pairs) for pairs in self._bonds]

    @cached_property
    def _factor_shapes(self):  # a layout does not change: every training step reads it
        return tuple(tuple(self.label_size(lab) for lab in labels) for labels in self.labels)

    @cached_property
    def _bonds(self):
        found = [[] for _ in range(self.num_bonds)]
        for f, labels in enumerate(self.labels):
            for d, lab in enumerate(labels):
                if lab[0] == "b":
                    found[int(lab[1:])].append((f, d))
        return tuple(tuple(pairs) for pairs in found)

    @property
    def row_shape(self) -> tuple[int, ...]:
        return self.shape[: self.row_modes]

    @property
    def col_shape(self) -> tuple[int, ...]:
        return self.shape[self.row_modes :]

    @property
    def matrix_shape(self) -> tuple[int, int]:
        return math.prod(self.row_shape), math.prod(self.col_shape)

    def num_params(self, ranks: int | Sequence[int] | None = None) -> int:
        """The number of entries in the factors (at ``ranks``, default the format's own)."""
        fmt = self if ranks is None else self.with_ranks(ranks)
        return sum(math.prod(s) for s in fmt.factor_shapes)

    @property
    def dense_size(self) -> int:
        return math.prod(self.shape)

    # ----- einsum equations -----

    def _symbols(self):
        labels = sorted({lab for labels in self.labels for lab in labels})
        labels += ["batch"]
        return {lab: opt_einsum.get_symbol(i) for i, lab in enumerate(labels)}

    def _equation(self, operand_labels, output_labels):
        sym = self._symbols()
        inputs = ",".join("".join(sym[lab] for lab in labels) for labels in operand_labels)
        return inputs + "->" + "".join(sym[lab] for lab in output_labels)

    def check_factors(self, factors: Iterable[torch.Tensor]) -> list[torch.Tensor]:
        """Validate factors: one tensor per factor, each of the layout's shape, all of one dtype and device.
        Returns a list."""
        try:
            factors = list(factors)
        except TypeError:
            raise TypeError(f"factors must be a sequence of tensors, got {type(factors).__name__}") from None
        expected = self.factor_shapes
        if len(factors) != len(expected):
            raise ValueError(f"factors must be {len(expected)} tensors for {self!r}, got {len(factors)}")
        for k, (factor, shape) in enumerate(zip(factors, expected)):
            if not isinstance(factor, torch.Tensor):
                raise TypeError(f"factors[{k}] must be a torch.Tensor, got {type(factor).__name__}")
            if tuple(factor.shape) != shape:
                raise ValueError(f"factors[{k}] must have shape {shape} for {self!r}, got {tuple(factor.shape)}")
            if factor.dtype != factors[0].dtype or factor.device != factors[0].device:
                raise TypeError(
                    f"factors must share one dtype and device: factors[0] is {factors[0].dtype} on "
                    f"{factors[0].device}, factors[{k}] is {factor.dtype} on {factor.device}"
                )
        return factors

    # ----- the algebra -----

    def full(self, factors: Sequence[torch.Tensor]) -> torch.Tensor:
        """The dense tensor, of shape :attr:`shape`."""
        factors = self.check_factors(factors)
        modes = [f"m{k}" for k in range(len(self.shape))]
        return einsum(self._equation(self.labels, modes), *factors)

    def to_matrix(self, factors: Sequence[torch.Tensor]) -> torch.Tensor:
        """The dense matrix view, of shape :attr:`matrix_shape`."""
        return self.full(factors).reshape(self.matrix_shape)

    def contract(self, x: torch.Tensor, factors: Sequence[torch.Tensor]) -> torch.Tensor:
        """
        ``x @ W.T`` for the matrix view ``W`` (rows: out, columns: in), without forming ``W``
        unless that is the cheapest contraction order for this batch size.

        :param torch.Tensor x: inputs of shape ``(..., prod(col_shape))``.
        :returns: outputs of shape ``(..., prod(row_shape))``.
        """
        factors = self.check_factors(factors)
        self._check_contract_input(x)
        batch_shape = x.shape[:-1]
        y = einsum(self._contract_equation(), x.reshape(-1, *self.col_shape), *factors)
        return y.reshape(*batch_shape, self.matrix_shape[0])

    def _check_contract_input(self, x):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        cols = self.matrix_shape[1]
        if x.dim() == 0 or x.shape[-1] != cols:
            raise ValueError(
                f"x must have last dimension {cols} (the product of {self.col_shape}), got {tuple(x.shape)}"
            )

    def _contract_equation(self):
        """The einsum of :meth:`contract`: the input ``(batch, col modes...)`` with the factors."""
        p = self.row_modes
        x_labels = ["batch"] + [f"m{k}" for k in range(p, len(self.shape))]
        out_labels = ["batch"] + [f"m{k}" for k in range(p)]
        return self._equation([x_labels] + self.labels, out_labels)

    def contract_flops(self, batch_size: int) -> int:
        """
        The FLOP count (as opt_einsum counts it: twice the multiply-adds of each pairwise
        contraction with a summed index) of :meth:`contract` on ``batch_size`` rows, for the
        contraction order it actually plans.
        """
        return self._einsum_flops(check_int(batch_size, "batch_size", low=0))

    def _einsum_flops(self, batch_size):
        """The FLOPs of the planned einsum of :meth:`contract` (``batch_size`` already checked)."""
        shapes = ((batch_size,) + self.col_shape,) + tuple(self.factor_shapes)
        return planned_cost(self._contract_equation(), shapes)

    def contract_cost(self, batch_size: int) -> int:
        """
        The :func:`path_cost` of :meth:`contract` on ``batch_size`` rows: the FLOPs of the
        contraction it runs plus :data:`MEMORY_COST` for each entry of the intermediates it writes
        (its output included).
        """
        batch_size = check_int(batch_size, "batch_size", low=0)
        shapes = ((batch_size,) + self.col_shape,) + tuple(self.factor_shapes)
        equation = self._contract_equation()
        return path_cost(planned_cost(equation, shapes), planned_entries(equation, shapes))

    def _gathered(self, factors, index, modes):
        """Index the mode dimensions ``modes`` of every factor by the columns of ``index``."""
        operands, labels = [], []
        for factor, labs in zip(factors, self.labels):
            picked = [d for d, lab in enumerate(labs) if lab[0] == "m" and int(lab[1:]) in modes]
            if picked:
                rest = [d for d in range(factor.dim()) if d not in picked]
                moved = factor.permute(*picked, *rest)
                factor = moved[tuple(index[:, int(labs[d][1:])] for d in picked)]
                labs = ("batch",) + tuple(labs[d] for d in rest)
            operands.append(factor)
            labels.append(labs)
        return operands, labels

    def unravel(self, flat_index: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """Mixed-radix digits of flat indices into ``shape`` (row-major), as columns."""
        if not shape:
            return flat_index.new_zeros(flat_index.shape + (0,))
        digits = []
        for size in reversed(shape):
            digits.append(flat_index % size)
            flat_index = torch.div(flat_index, size, rounding_mode="floor")
        return torch.stack(digits[::-1], dim=-1)

    def entries(self, factors: Sequence[torch.Tensor], index: torch.Tensor) -> torch.Tensor:
        """
        The entries at multi-indices, without forming the dense tensor.

        :param torch.Tensor index: long tensor of shape ``(n, len(shape))``.
        :returns: a tensor of shape ``(n,)``.
        """
        factors = self.check_factors(factors)
        index = self.check_index(index, self.shape, "index")
        operands, labels = self._gathered(factors, index, set(range(len(self.shape))))
        return einsum(self._equation(labels, ["batch"]), *operands)

    def rows(self, factors: Sequence[torch.Tensor], row_index: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """
        Rows of the matrix view for flat row indices (mixed-radix over :attr:`row_shape`),
        without forming the matrix: shape ``(n, prod(col_shape))``.
        """
        factors = self.check_factors(factors)
        row_index = torch.as_tensor(row_index)
        if row_index.dim() == 1 and not row_index.numel():  # no rows (an empty list is float32 to torch)
            row_index = row_index.long()
        if row_index.dtype not in (torch.int32, torch.int64) or row_index.dim() != 1:
            raise TypeError(
                f"row_index must be a 1-d integer tensor, got {row_index.dtype} of shape {tuple(row_index.shape)}"
            )
        rows = self.matrix_shape[0]
        if row_index.numel() and (row_index.min() < 0 or row_index.max() >= rows):
            raise ValueError(
                f"row_index must lie in [0, {rows}), got values in [{int(row_index.min())}, {int(row_index.max())}]"
            )
        p = self.row_modes
        if p == 0:  # a single row: nothing to gather
            return self.to_matrix(factors).expand(len(row_index), -1)
        digits = self.unravel(row_index.long(), self.row_shape)
        operands, labels = self._gathered(factors, digits, set(range(p)))
        out = ["batch"] + [f"m{k}" for k in range(p, len(self.shape))]
        return einsum(self._equation(labels, out), *operands).reshape(len(row_index), self.matrix_shape[1])

    @staticmethod
    def check_index(index: torch.Tensor | Sequence[Sequence[int]], shape: Sequence[int], name: str) -> torch.Tensor:
        index = torch.as_tensor(index)
        if index.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{name} must be an integer tensor, got dtype {index.dtype}")
        if index.dim() != 2 or index.shape[1] != len(shape):
            raise ValueError(f"{name} must have shape (n, {len(shape)}), got {tuple(index.shape)}")
        sizes = torch.tensor(shape, device=index.device)
        if index.numel() and ((index < 0).any() or (index >= sizes).any()):
            raise ValueError(f"{name} must have every column k in [0, shape[k]) for shape {shape}")
        return index.long()

    def truncate(
        self, factors: Sequence[torch.Tensor], keep: Sequence[torch.Tensor | Sequence[int]]
    ) -> tuple[Self, list[torch.Tensor]]:
        """
        Keep a subset of the rank indices of every bond.

        :param list keep: one 1-d long tensor (or list of ints) per bond, the indices to keep.
        :returns: ``(format, factors)``: the format at the new ranks and its factors.
        """
        factors = self.check_factors(factors)
        try:
            keep = list(keep)
        except TypeError:
            raise TypeError(f"keep must be a sequence with one entry per bond, got {type(keep).__name__}") from None
        if len(keep) != self.num_bonds:
            raise ValueError(f"keep must have one entry per bond ({self.num_bonds}), got {len(keep)}")
        keep = [torch.as_tensor(k) for k in keep]
        for b, k in enumerate(keep):
            if k.numel() and k.dtype not in (torch.int32, torch.int64):
                raise TypeError(f"keep[{b}] must hold integer indices, got dtype {k.dtype}")
        keep = [k.to(torch.long).reshape(-1) for k in keep]
        for b, k in enumerate(keep):
            if k.numel() == 0 or k.min() < 0 or k.max() >= self.ranks[b] or k.unique().numel() != k.numel():
                raise ValueError(f"keep[{b}] must be distinct indices in [0, {self.ranks[b]}), at least one")
        new = list(factors)
        for b, pairs in enumerate(self.bonds):
            for f, d in pairs:
                new[f] = new[f].index_select(d, keep[b].to(new[f].device))
        return self.with_ranks(tuple(k.numel() for k in keep)), new

    def max_ranks(self) -> tuple[int, ...]:
        """The largest rank each bond can usefully have for this shape."""
        raise NotImplementedError
