"""
The formats' public entry points as a PyTorch user calls them: NumPy ints taken as ints, bad
arguments (a float train, a bool row_modes, a negative or float batch size, factors of mixed
dtypes, a format name for a layout) refused by name, an empty list of rows an empty batch.
"""

import numpy as np
import pytest
import torch

from tensorbayes.formats import CP, TT, TTM, Tucker, tt_svd
from tensorbayes.formats.canonical import canonicalize

D = torch.float64
LAYOUTS = [CP((3, 4, 2), 2), Tucker((3, 4, 2), 2), TT((3, 4, 2), 2), TTM((3, 4, 2, 5), 3)]


def random_factors(layout, dtype=D):
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(shape, dtype=dtype, generator=generator) for shape in layout.factor_shapes]


@pytest.mark.parametrize("cls", [CP, Tucker, TT, TTM])
def test_numpy_ints_are_ints(cls):
    """A shape, ranks and row_modes of NumPy ints (``np.array(shape)``, a rank read off an array)
    make the same layout as Python ints, holding Python ints."""
    shape = (3, 4, 2, 5)
    layout = cls(shape, 2, row_modes=2)
    for ranks in (np.int64(2), [np.int64(2)] * layout.num_bonds):
        got = cls(np.array(shape), ranks, row_modes=np.int64(2))
        assert got.shape == layout.shape and got.ranks == layout.ranks and got.row_modes == layout.row_modes
        assert got.factor_shapes == layout.factor_shapes
        assert all(type(n) is int for n in got.shape + got.ranks) and type(got.row_modes) is int


@pytest.mark.parametrize("train", [(0.0, 1.0, 2.0), (2, 0, 1.0)])
def test_tt_train_of_floats_is_refused(train):
    with pytest.raises(ValueError, match="train must be a permutation of range"):
        TT((3, 4, 2), 2, train=train)
    with pytest.raises(ValueError, match="train must be a permutation of range"):
        TT.decompose(torch.randn(3, 4, 2, dtype=D), 2, train=train)


@pytest.mark.parametrize("row_modes", [True, 1.0])
def test_ttm_row_modes_must_be_an_int(row_modes):
    """A TTM of two modes has one row mode: ``True`` and ``1.0`` equal 1 but are no int."""
    with pytest.raises(ValueError, match="row_modes of a TTM with 2 modes must be 1"):
        TTM((3, 4), (), row_modes=row_modes)


@pytest.mark.parametrize("layout", ["tt", TT], ids=["name", "class"])
def test_canonicalize_needs_a_layout_object(layout):
    factors = random_factors(TT((3, 4, 2), 2))
    with pytest.raises(TypeError, match="layout must be a TensorFormat"):
        canonicalize(layout, factors)


@pytest.mark.parametrize("layout", LAYOUTS, ids=repr)
@pytest.mark.parametrize("batch_size", [-1, 2.5, True, "8"])
def test_flop_counts_refuse_a_bad_batch_size(layout, batch_size):
    """A negative or float batch size gave a negative or fractional count, with no error."""
    methods = [layout.contract_flops, layout.contract_cost] + ([layout.split] if isinstance(layout, TTM) else [])
    for method in methods:
        with pytest.raises(ValueError, match="batch_size must be a non-negative int"):
            method(batch_size)


@pytest.mark.parametrize("layout", LAYOUTS, ids=repr)
def test_flop_counts_of_numpy_and_empty_batches(layout):
    assert layout.contract_flops(np.int64(5)) == layout.contract_flops(5) > 0
    assert layout.contract_cost(np.int64(5)) == layout.contract_cost(5) > 0
    assert layout.contract_flops(0) == 0


@pytest.mark.parametrize("layout", LAYOUTS, ids=repr)
def test_factors_of_mixed_dtypes_are_refused(layout):
    """CP promoted a float32 factor among float64 ones without a word; the others failed deep in einsum."""
    factors = random_factors(layout)
    factors[-1] = factors[-1].float()
    x = torch.randn(2, layout.matrix_shape[1], dtype=D)
    for call in (lambda: layout.full(factors), lambda: layout.contract(x, factors), lambda: layout.rows(factors, [0])):
        with pytest.raises(TypeError, match=r"factors must share one dtype and device.*factors\[\d\] is torch.float32"):
            call()


@pytest.mark.parametrize("layout", LAYOUTS, ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rows_of_an_empty_list(layout, dtype):
    """No rows is an empty batch, whether a long tensor or a Python list (float32 to torch)."""
    factors = random_factors(layout, dtype)
    for row_index in ([], torch.zeros(0, dtype=torch.long)):
        rows = layout.rows(factors, row_index)
        assert rows.shape == (0, layout.matrix_shape[1]) and rows.dtype == dtype


@pytest.mark.parametrize(("kwargs", "name"), [({"tol": float("nan")}, "tol"), ({"tol": "1e-6"}, "tol")])
def test_cp_decompose_refuses_a_bad_tolerance(kwargs, name):
    """A NaN tolerance never stopped the sweeps early (every comparison with it is false)."""
    with pytest.raises(ValueError, match=f"{name} must be a number in"):
        CP.decompose(torch.randn(3, 4, dtype=D), 2, **kwargs)


@pytest.mark.parametrize("seed", [1.5, True, -1])
def test_cp_decompose_refuses_a_bad_seed(seed):
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        CP.decompose(torch.randn(3, 4, dtype=D), 5, seed=seed)


@pytest.mark.parametrize("ranks", [(0, 2), (2.5, 2), (2,)])
def test_tt_svd_refuses_bad_ranks(ranks):
    with pytest.raises(ValueError, match="ranks must"):
        tt_svd(torch.randn(3, 4, 2, dtype=D), ranks)


def test_get_format_refuses_the_abstract_base_class():
    # it was returned as a format, and failed only when a layout was built from it
    from tensorbayes.formats import TensorFormat, get_format

    with pytest.raises(ValueError, match="format must be one of"):
        get_format(TensorFormat)
    assert get_format(get_format("tt")) is get_format("tt")
