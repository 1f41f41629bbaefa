"""The CP format (:mod:`tensorbayes.formats.cp`): its dense tensor and CP-ALS."""

import pytest
import torch

from tensorbayes.formats import CP

DT = torch.float64

# Each case: the shape, R, and the dense tensor written as an explicit einsum.
FULL = [
    ((4, 5), 3, "ir,jr->ij"),
    ((3, 4, 5), 2, "ir,jr,kr->ijk"),
    ((2, 3, 4, 3), 3, "ir,jr,kr,lr->ijkl"),
]


@pytest.mark.parametrize("shape,rank,equation", FULL)
def test_full_equals_explicit_einsum(shape, rank, equation):
    factors = [torch.randn(size, rank, dtype=DT) for size in shape]
    torch.testing.assert_close(CP(shape, rank).full(factors), torch.einsum(equation, *factors), rtol=1e-12, atol=1e-12)


def planted(shape, rank):
    fmt = CP(shape, rank)
    return fmt, fmt.full([torch.randn(size, rank, dtype=DT) for size in shape])


def test_decompose_balances_and_sorts_the_weights():
    fmt, tensor = planted((6, 7, 8), 3)
    factors = CP.decompose(tensor, 3)
    norms = torch.stack([u.norm(dim=0) for u in factors])  # (mode, component)
    torch.testing.assert_close(norms, norms[:1].expand_as(norms), rtol=1e-10, atol=0.0)
    assert (norms[0, :-1] >= norms[0, 1:]).all()


def test_decompose_rank_above_mode_sizes_pads_the_initialization():
    fmt, tensor = planted((2, 3, 4), 2)
    factors = CP.decompose(tensor, 5, n_iter_max=20)
    assert [tuple(u.shape) for u in factors] == [(2, 5), (3, 5), (4, 5)]
    assert all(torch.isfinite(u).all() for u in factors)
    assert (CP((2, 3, 4), 5).full(factors) - tensor).norm() / tensor.norm() < 1e-3
    assert all(torch.equal(a, b) for a, b in zip(factors, CP.decompose(tensor, 5, n_iter_max=20)))
    other_seed = CP.decompose(tensor, 5, n_iter_max=20, seed=1)
    assert not all(torch.equal(a, b) for a, b in zip(factors, other_seed))


def test_decompose_zero_and_order_one():
    assert all((u == 0).all() for u in CP.decompose(torch.zeros(3, 4, dtype=DT), 2))
    vector = torch.randn(5, dtype=DT)
    (u,) = CP.decompose(vector, 2)
    torch.testing.assert_close(u.sum(dim=1), vector, rtol=1e-12, atol=1e-12)


def test_decompose_n_iter_max_zero_is_the_svd_initialization():
    fmt, tensor = planted((4, 5, 6), 2)
    factors = CP.decompose(tensor, 2, n_iter_max=0)
    for u in factors:
        torch.testing.assert_close(u.T @ u, torch.eye(2, dtype=DT), rtol=1e-10, atol=1e-10)


def test_contract_cost_of_the_khatri_rao_path_counted_by_hand():
    # rows (2, 3), columns (4, 5), R = 3, 256 rows: the Khatri-Rao path runs (fewer FLOPs than the
    # einsum); it writes the two Khatri-Rao products (2 * 3 and 4 * 5 rows of R), x @ B (256 x R)
    # and the output (256 x 6), and does 2 R (256 (6 + 20) + 6 + 20) FLOPs
    from tensorbayes.formats.base import MEMORY_COST, TensorFormat

    layout = CP((2, 3, 4, 5), 3, row_modes=2)
    flops = 2 * 3 * (256 * (6 + 20) + 6 + 20)
    assert layout.contract_flops(256) == flops < TensorFormat.contract_flops(layout, 256)
    entries = 3 * (6 + 20 + 256) + 256 * 6
    assert layout.contract_cost(256) == flops + MEMORY_COST * entries
    # one row: the einsum has fewer FLOPs, and its cost is the planned path's
    assert layout.contract_cost(1) == TensorFormat.contract_cost(layout, 1)
