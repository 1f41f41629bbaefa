"""
Gaps that mutation testing (``python -m benchmarks.mutation``) found in the formats' tests: the
TTM bond limits of unbalanced cores and its product with an empty batch, CP's padded
initialization and when its ALS stops.
"""

import pytest
import torch

from tensorbayes.formats import CP, TTM
from tensorbayes.formats import cp as cp_module
from tensorbayes.formats.base import TensorFormat

DT = torch.float64


@pytest.mark.parametrize(
    "shape, limits",
    [
        # core sizes (rows times columns of each core): (16, 2), (2, 16), (10, 18, 28)
        ((4, 2, 4, 1), (2,)),
        ((2, 4, 1, 4), (2,)),
        ((2, 3, 4, 5, 6, 7), (10, 28)),
    ],
)
def test_ttm_max_ranks_are_the_smaller_side_of_each_bond(shape, limits):
    # bond k joins cores 0..k to cores k+1..: its rank is at most the smaller of their sizes
    assert TTM(shape, 1).max_ranks() == limits


def test_cp_decompose_pads_the_initialization_with_unit_columns():
    # n_iter_max=0 returns the initialization: the leading singular vectors of each unfolding
    # and, past a mode's size, random columns of norm one
    tensor = CP((2, 3, 4), 2).full([torch.randn(size, 2, dtype=DT) for size in (2, 3, 4)])
    factors = CP.decompose(tensor, 5, n_iter_max=0)
    for u in factors:
        torch.testing.assert_close(u.norm(dim=0), torch.ones(5, dtype=DT), rtol=1e-12, atol=1e-12)


def _sweeps(monkeypatch, tensor, rank, n_iter_max):
    """CP.decompose's factors and the number of ALS sweeps it took (one product with every factor each)."""
    calls = []
    real = cp_module.einsum
    monkeypatch.setattr(cp_module, "einsum", lambda eq, *ops: calls.append(eq) or real(eq, *ops))
    factors = CP.decompose(tensor, rank, n_iter_max=n_iter_max)
    monkeypatch.undo()
    return factors, len(calls) // (tensor.dim() + 1)


def test_cp_als_stops_on_the_relative_error_or_its_improvement_whatever_the_scale(monkeypatch):
    # a tensor of full rank: the error never reaches tol, so ALS stops when it stops improving;
    # the relative error does not see the scale, so 1024 times the tensor takes the same sweeps
    gen = torch.Generator().manual_seed(0)
    tensor = torch.randn(3, 4, 5, generator=gen, dtype=DT)
    factors, sweeps = _sweeps(monkeypatch, tensor, 2, 5000)
    scaled, scaled_sweeps = _sweeps(monkeypatch, 1024 * tensor, 2, 5000)
    assert 1 < sweeps < 5000 and scaled_sweeps == sweeps
    for u, v in zip(factors, scaled):
        torch.testing.assert_close(v, u * 1024 ** (1 / 3), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("batch", [(0,), (2, 0), (1,)])
def test_ttm_contracts_an_empty_batch_or_a_batch_of_one(batch):
    layout = TTM((2, 3, 4, 5), (3,))
    gen = torch.Generator().manual_seed(0)
    factors = [torch.randn(s, generator=gen, dtype=DT) for s in layout.factor_shapes]
    x = torch.randn(*batch, 4 * 5, generator=gen, dtype=DT)
    y = layout.contract(x, factors)
    assert y.shape == (*batch, 2 * 3)
    torch.testing.assert_close(y, x @ layout.full(factors).reshape(6, 20).T if x.numel() else y)


@pytest.mark.parametrize("batch", [(0,), (3, 0), (1,)])
def test_ttm_contracts_an_empty_batch_on_a_split_run_as_an_einsum(batch):
    # a split off the kernel ran its einsum on the input viewed as one row, not as none
    layout = TTM((2,) * 8, 50)
    split = layout.split(1)
    assert split is not None and not layout.on_kernel(split)
    gen = torch.Generator().manual_seed(0)
    factors = [torch.randn(s, generator=gen, dtype=DT) for s in layout.factor_shapes]
    x = torch.randn(*batch, 16, generator=gen, dtype=DT)
    y = layout.contract(x, factors)
    assert y.shape == (*batch, 16)
    torch.testing.assert_close(y, x @ layout.full(factors).reshape(16, 16).T, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("batch, rows", [((2, 3), 6), ((5,), 5), ((0,), 1), ((), 1)])
def test_ttm_contract_chooses_its_split_for_the_rows_of_the_batch(batch, rows, monkeypatch):
    # the cheapest split depends on the number of rows (at least one) the product runs over
    layout = TTM((2, 3, 4, 5), (3,))
    seen = []
    real = TTM.split
    monkeypatch.setattr(TTM, "split", lambda self, n: seen.append(n) or real(self, n))
    factors = [torch.randn(s, dtype=DT) for s in layout.factor_shapes]
    y = layout.contract(torch.randn(*batch, 20, dtype=DT), factors)
    assert y.shape == (*batch, 6) and seen == [rows]


@pytest.mark.parametrize("shape, rank, row_modes, batch", [((8, 8, 8, 8), 4, 1, 256), ((3, 3, 3, 3, 3, 3), 1, 2, 8)])
def test_cp_contract_by_its_khatri_rao_path_is_the_matrix_product(shape, rank, row_modes, batch):
    # shapes where the Khatri-Rao path is the cheaper one (so it is the one taken), with three or
    # more factors on a side (so the product's loop runs): float64, rounding only
    layout = CP(shape, rank, row_modes=row_modes)
    assert layout._khatri_rao_flops(batch) <= TensorFormat.contract_flops(layout, batch)
    gen = torch.Generator().manual_seed(0)
    factors = [torch.randn(s, generator=gen, dtype=DT) for s in layout.factor_shapes]
    x = torch.randn(batch, layout.matrix_shape[1], generator=gen, dtype=DT)
    torch.testing.assert_close(layout.contract(x, factors), x @ layout.to_matrix(factors).T, rtol=1e-10, atol=1e-10)
