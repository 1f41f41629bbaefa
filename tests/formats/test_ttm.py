"""The tensor-train matrix format (:mod:`tensorbayes.formats.ttm`): its dense tensor and TTM-SVD."""

import opt_einsum
import pytest
import torch

from tensorbayes.formats import TTM
from tensorbayes.formats.base import MEMORY_COST, TensorFormat, path_cost, planned_entries

DT = torch.float64

# Each case: the shape (row modes m_k, then column modes n_k), the ranks, the core shapes and
# the dense tensor written as an explicit einsum (i, j, k index rows; p, q columns).
FULL = [
    ((3, 4, 2), (2,), [(1, 3, 2, 2), (2, 4, 1)], "aipb,bjc->ijp"),
    ((3, 4, 2, 5), (3,), [(1, 3, 2, 3), (3, 4, 5, 1)], "aipb,bjqc->ijpq"),
    ((2, 3, 2, 3, 2), (2, 3), [(1, 2, 3, 2), (2, 3, 2, 3), (3, 2, 1)], "aipb,bjqc,ckd->ijkpq"),
]


@pytest.mark.parametrize("shape,ranks,core_shapes,equation", FULL)
def test_full_equals_explicit_einsum(shape, ranks, core_shapes, equation):
    cores = [torch.randn(s, dtype=DT) for s in core_shapes]
    fmt = TTM(shape, ranks)
    torch.testing.assert_close(fmt.full(cores), torch.einsum(equation, *cores), rtol=1e-12, atol=1e-12)
    rows = 1
    for size in shape[: len(core_shapes)]:
        rows *= size
    torch.testing.assert_close(fmt.to_matrix(cores), torch.einsum(equation, *cores).reshape(rows, -1))


def test_row_modes_are_fixed():
    assert TTM((3, 4, 2), 2).row_modes == 2
    with pytest.raises(ValueError, match="row_modes of a TTM with 4 modes must be 2"):
        TTM((3, 4, 2, 5), 2, row_modes=1)


def test_decompose_a_weight_matrix():
    fmt = TTM((4, 5, 3, 2), 3)
    weight = fmt.to_matrix([torch.randn(s, dtype=DT) for s in fmt.factor_shapes])  # (20, 6)
    cores = TTM.decompose(weight, 3, shape=(4, 5, 3, 2))
    assert [tuple(g.shape) for g in cores] == [(1, 4, 3, 3), (3, 5, 2, 1)]
    torch.testing.assert_close(fmt.to_matrix(cores), weight, rtol=1e-10, atol=1e-10)


def test_decompose_clips_ranks_odd_order():
    tensor = torch.randn(2, 3, 4, 3, 2, dtype=DT)  # cores pair (2, 3), (3, 2), (4,)
    cores = TTM.decompose(tensor, 100)
    assert [tuple(g.shape) for g in cores] == [(1, 2, 3, 6), (6, 3, 2, 4), (4, 4, 1)]
    torch.testing.assert_close(TTM(tensor.shape, (6, 4)).full(cores), tensor, rtol=1e-10, atol=1e-10)


def test_decompose_matches_tt_over_merged_modes():
    tensor = torch.randn(3, 4, 2, 5, dtype=DT)
    cores = TTM.decompose(tensor, 2)
    # rank-2 truncation of the (m_1 n_1) x (m_2 n_2) matricization is optimal: compare errors
    merged = tensor.permute(0, 2, 1, 3).reshape(6, 20)
    s = torch.linalg.svdvals(merged)
    error = (TTM(tensor.shape, 2).full(cores) - tensor).norm()
    torch.testing.assert_close(error, s[2:].norm(), rtol=1e-10, atol=1e-10)


# ----- the split product of TTM.contract -----

# (shape, ranks): even and odd orders (an odd order's last core has no column mode), 2 to 4 cores
SPLIT_CASES = [
    ((3, 4, 2, 5), (3,)),
    ((2, 3, 2, 3, 2), (2, 3)),
    ((2, 3, 4, 3, 2, 2), (2, 3)),
    ((3, 2, 4, 2, 3, 2, 2), (2, 3, 2)),
    ((2, 3, 2, 4, 2, 3, 2, 2), (3, 2, 4)),
]


def _cuts(shape):
    """Every (bond, reverse) a split product of a TTM of this shape may take."""
    cores = (len(shape) + 1) // 2
    return [(bond, reverse) for bond in range(cores - 1) for reverse in (False, True)]


@pytest.mark.parametrize("keep_entries", [None, 0], ids=["kept", "recomputed"])
@pytest.mark.parametrize("chunk_entries", [1, 10**9], ids=["row_chunks", "one_chunk"])
@pytest.mark.parametrize("batch_shape", [(), (5,), (2, 3)], ids=["nobatch", "batch", "batch2d"])
@pytest.mark.parametrize("shape,ranks", SPLIT_CASES)
def test_split_contract_equals_dense_with_gradients(
    shape, ranks, batch_shape, chunk_entries, keep_entries, monkeypatch
):
    # the backward pass reads the intermediate the forward kept, or (above KEEP_ENTRIES) recomputes it
    import tensorbayes.formats.ttm as ttm

    if keep_entries is not None:
        monkeypatch.setattr(ttm, "KEEP_ENTRIES", keep_entries)
    fmt = TTM(shape, ranks)
    cores = [torch.randn(s, dtype=DT, requires_grad=True) for s in fmt.factor_shapes]
    x = torch.randn(*batch_shape, fmt.matrix_shape[1], dtype=DT, requires_grad=True)
    dense = x @ fmt.to_matrix(cores).T
    grad_y = torch.randn_like(dense)
    expected = torch.autograd.grad(dense, [x] + cores, grad_y)
    for bond, reverse in _cuts(shape):
        y = fmt._contract_split(x, cores, bond, reverse, chunk_entries=chunk_entries)
        assert y.shape == dense.shape
        torch.testing.assert_close(y, dense, rtol=1e-12, atol=1e-12)
        for got, want in zip(torch.autograd.grad(y, [x] + cores, grad_y), expected):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10 * want.abs().max().item())


def test_split_contract_without_input_gradient():
    fmt = TTM((2, 3, 2, 4, 2, 3, 2, 2), (3, 2, 4))
    cores = [torch.randn(s, dtype=DT, requires_grad=True) for s in fmt.factor_shapes]
    x = torch.randn(7, fmt.matrix_shape[1], dtype=DT)
    grad_y = torch.randn(7, fmt.matrix_shape[0], dtype=DT)
    expected = torch.autograd.grad(x @ fmt.to_matrix(cores).T, cores, grad_y)
    # chunks of 2 rows (the intermediate has 2 * 6 * 8 entries a row), the last one ragged
    got = torch.autograd.grad(fmt._contract_split(x, cores, 1, False, chunk_entries=192), cores, grad_y)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("input_grad", [True, False], ids=["x_grad", "x_frozen"])
@pytest.mark.parametrize("chunk_entries", [1, 10**9], ids=["row_chunks", "one_chunk"])
@pytest.mark.parametrize("shape,ranks", SPLIT_CASES)
def test_split_contract_with_frozen_left_cores(shape, ranks, chunk_entries, input_grad, monkeypatch):
    # the left cores need no gradient: left of the cut they are the merged ``a`` of the forward
    # direction (the backward's branch that skips the intermediate), and ``c`` of the reverse one
    import tensorbayes.formats.ttm as ttm

    fmt = TTM(shape, ranks)
    for bond, reverse in _cuts(shape):
        left = bond + 1
        cores = [torch.randn(s, dtype=DT, requires_grad=k >= left) for k, s in enumerate(fmt.factor_shapes)]
        x = torch.randn(4, fmt.matrix_shape[1], dtype=DT, requires_grad=input_grad)
        wanted = ([x] if input_grad else []) + cores[left:]
        dense = x @ fmt.to_matrix(cores).T
        grad_y = torch.randn_like(dense)
        expected = torch.autograd.grad(dense, wanted, grad_y)
        y = fmt._contract_split(x, cores, bond, reverse, chunk_entries=chunk_entries)
        torch.testing.assert_close(y, dense, rtol=1e-12, atol=1e-12)
        calls = []
        real = ttm._intermediate
        # the patch is undone within this iteration, two lines below
        monkeypatch.setattr(ttm, "_intermediate", lambda *args: calls.append(1) or real(*args))  # noqa: B023
        got = torch.autograd.grad(y, wanted, grad_y)
        monkeypatch.setattr(ttm, "_intermediate", real)
        if not reverse:
            assert not calls  # the branch under test: no intermediate when ``a`` needs no gradient
        assert all(core.grad is None for core in cores)
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10 * e.abs().max().item())


def test_split_is_the_cheapest_by_cost_not_by_flops_and_contract_uses_it(monkeypatch):
    import tensorbayes.formats.ttm as ttm

    # the Fashion-MNIST MLP's 784 x 625 layer at rank 2: the path of fewest FLOPs (its first
    # product is an outer product) writes about twice the entries of the split
    fmt = TTM((5, 5, 5, 5, 4, 7, 4, 7), 2)
    batch = 256
    split = fmt.split(batch)
    assert split is not None and fmt.contract_flops(batch) == split.flops
    equation = fmt._contract_equation()
    shapes = [(batch,) + fmt.col_shape] + fmt.factor_shapes
    fewest_flops = opt_einsum.contract_path(equation, *shapes, shapes=True, optimize="optimal")[1]
    assert fewest_flops.opt_cost < split.flops
    # the split's entries by hand: the right half (2, 5 * 5, 4 * 7), x with it (256, 4 * 7, 2, 5 * 5),
    # the left half (5 * 5, 4 * 7, 2) and the output (256, 625)
    entries = ttm._best_split(fmt.shape, fmt.ranks, batch)[1]
    assert entries == 1400 + batch * 28 * 2 * 25 + 1400 + batch * 625
    cost = path_cost(split.flops, entries)
    assert cost == split.flops + MEMORY_COST * entries
    assert fmt.contract_cost(batch) == cost
    assert cost < path_cost(int(fewest_flops.opt_cost), sum(fewest_flops.size_list))
    planned = TensorFormat.contract_flops(fmt, batch), planned_entries(equation, shapes)
    assert cost <= path_cost(*planned)  # the einsum plans by the same cost: at best a tie
    calls = []
    real = ttm._SplitProduct.apply
    monkeypatch.setattr(ttm._SplitProduct, "apply", lambda *args: calls.append(1) or real(*args))
    cores = [torch.randn(s, dtype=DT) for s in fmt.factor_shapes]
    x = torch.randn(batch, fmt.matrix_shape[1], dtype=DT)
    y = fmt.contract(x, cores)
    assert calls  # 25 out entries on the side the input meets first: the kernel
    torch.testing.assert_close(y, x @ fmt.to_matrix(cores).T, rtol=1e-12, atol=1e-12)
    assert fmt.contract(x[:0], cores).shape == (0, fmt.matrix_shape[0])  # an empty batch
    # one core: nothing to split
    assert TTM((4, 6), ()).split(10) is None


@pytest.mark.parametrize(
    "shape, ranks, kernel",
    [
        ((4,) * 8, 2, True),
        ((8, 8, 2, 2, 2, 4, 8, 8), 4, False),
        ((2, 2, 8, 8, 8, 8, 2, 2), 2, False),
        ((2, 8, 4, 2, 16, 4), 2, True),
    ],
)
def test_a_split_runs_on_the_kernel_only_with_enough_columns(shape, ranks, kernel, monkeypatch):
    # the out entries of the side the input meets first: 4 * 4 = 16 (right side), 2 * 2 = 4 (right
    # side), 2 * 2 = 4 and 2 * 8 = 16 (the left side, cores 0 and 1, in the reverse direction);
    # either way the result is the dense one
    import tensorbayes.formats.ttm as ttm

    fmt = TTM(shape, ranks)
    batch = 64
    split = fmt.split(batch)
    assert split is not None and split.reverse == (shape[0] == 2)
    assert fmt.on_kernel(split) == kernel
    calls = []
    real = ttm._SplitProduct.apply
    monkeypatch.setattr(ttm._SplitProduct, "apply", lambda *args: calls.append(1) or real(*args))
    cores = [torch.randn(s, dtype=DT, requires_grad=True) for s in fmt.factor_shapes]
    x = torch.randn(batch, fmt.matrix_shape[1], dtype=DT, requires_grad=True)
    y = fmt.contract(x, cores)
    assert bool(calls) == kernel
    dense = x @ fmt.to_matrix(cores).T
    torch.testing.assert_close(y, dense, rtol=1e-12, atol=1e-12)
    grad_y = torch.randn_like(dense)
    for got, want in zip(torch.autograd.grad(y, [x] + cores, grad_y), torch.autograd.grad(dense, [x] + cores, grad_y)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10 * want.abs().max().item())


def test_split_flops_of_a_balanced_4096_layer_counted_by_hand():
    fmt = TTM((8,) * 8, 16)  # 4096 x 4096, cores (16, 8, 8, 16): cut in the middle, 64 | 64
    batch, rank = 256, 16
    merges = 2 * (2 * 8 * 8 * 16 * 8 * 8 * 16)  # two cores into each half
    products = 2 * batch * rank * (4096 * 64 + 64 * 4096)  # x with the right half, then the left
    assert fmt.split(batch) == (merges + products, 1, False)
    assert fmt.contract_flops(batch) == merges + products < 2 * batch * 4096 * 4096 / 1.9


@pytest.mark.parametrize("shape, ranks", [((8,) * 8, 16), ((16, 16, 4, 4, 4, 4, 16, 16), 16), ((4,) * 8, (3, 2, 4))])
def test_split_row_cost_is_what_each_further_row_adds(shape, ranks):
    # opt_einsum counts a multiply-add as 2 FLOPs; the merges do not grow with the batch
    fmt = TTM(shape, ranks)
    batch = 64
    assert fmt.split(batch)[1:] == fmt.split(2 * batch)[1:]  # the same cut and direction
    assert fmt.contract_flops(2 * batch) - fmt.contract_flops(batch) == 2 * batch * fmt.split_row_cost()
    assert TTM((4, 6), ()).split_row_cost() is None


def test_the_split_product_keeps_its_intermediate_only_when_small_and_needed(monkeypatch):
    """The forward pass keeps ``t`` (S * I * P entries a row) for the backward pass when the merged
    left cores need a gradient and the whole batch's fits in KEEP_ENTRIES; else nothing."""
    import tensorbayes.formats.ttm as ttm

    x = torch.randn(4, 3, 5, dtype=DT)  # (B, I, J)
    a = torch.randn(2, 2 * 3, dtype=DT, requires_grad=True)  # (O, S * I)
    c = torch.randn(2, 5, 7, dtype=DT, requires_grad=True)  # (S, J, P)
    entries = 4 * 2 * 3 * 7
    for keep_entries, a_grad, kept in ((entries, True, 2), (entries - 1, True, 0), (10**9, False, 0)):
        monkeypatch.setattr(ttm, "KEEP_ENTRIES", keep_entries)
        y = ttm._SplitProduct.apply(x, a if a_grad else a.detach(), c, 2)  # chunks of 2 rows
        assert len(y.grad_fn.kept) == kept
