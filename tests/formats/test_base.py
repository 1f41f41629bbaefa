"""
The algebra shared by every format (:mod:`tensorbayes.formats.base`), tested across all four.

Expected values are computed independently of the formats' labels: factor shapes from the
formats' definitions, the matrix view from ``full()`` (itself checked against explicit einsum
strings in the per-format files), entries of huge tensors from explicit products of slices.
"""

import math

import pytest
import torch

from tensorbayes.formats import CP, FORMATS, TT, TTM, Tucker, decompose, get_format

DT = torch.float64

# (format class, shape, ranks, row_modes): orders 2 to 4 (TTM: 2 to 5, odd orders included).
CASES = [
    (CP, (3, 4), (2,), None),
    (CP, (3, 4, 5), (3,), None),
    (CP, (2, 3, 4, 3), (2,), 1),
    (Tucker, (3, 4), (2, 3), None),
    (Tucker, (3, 4, 5), (2, 3, 2), None),
    (Tucker, (2, 3, 4, 3), (2, 2, 3, 2), 3),
    (TT, (3, 4), (2,), None),
    (TT, (3, 4, 5), (2, 3), None),
    (TT, (2, 3, 4, 3), (2, 3, 2), 1),
    (TTM, (3, 4), (), None),
    (TTM, (3, 4, 2), (2,), None),
    (TTM, (3, 4, 2, 5), (3,), None),
    (TTM, (2, 3, 2, 3, 2), (2, 3), None),
]


def case_id(case):
    cls, shape, ranks, row_modes = case
    return f"{cls.name}-{'x'.join(map(str, shape))}-r{'.'.join(map(str, ranks))}-p{row_modes}"


def expected_factor_shapes(name, shape, ranks):
    """The factor shapes, from the formats' definitions (docs/method.md, "Formats")."""
    order, bonds = len(shape), (1,) + tuple(ranks) + (1,)
    if name == "cp":
        return [(size, ranks[0]) for size in shape]
    if name == "tucker":
        return [tuple(ranks)] + [(size, rank) for size, rank in zip(shape, ranks)]
    if name == "tt":
        return [(bonds[k], shape[k], bonds[k + 1]) for k in range(order)]
    cores = (order + 1) // 2
    return [
        (bonds[k], shape[k], shape[cores + k], bonds[k + 1]) if cores + k < order else (bonds[k], shape[k], 1)
        for k in range(cores)
    ]


def one_side(name, bond):
    """A (factor, dim) that carries rank bond ``bond``: zeroing its slices removes the index."""
    return {"cp": (0, 1), "tucker": (0, bond), "tt": (bond, 2), "ttm": (bond, -1)}[name]


@pytest.fixture(params=CASES, ids=case_id)
def case(request):
    cls, shape, ranks, row_modes = request.param
    fmt = cls(shape, ranks, row_modes=row_modes)
    factors = [torch.randn(s, dtype=DT) for s in expected_factor_shapes(cls.name, shape, ranks)]
    return fmt, factors


def test_factor_shapes_and_num_params(case):
    fmt, factors = case
    shapes = expected_factor_shapes(fmt.name, fmt.shape, fmt.ranks)
    assert fmt.factor_shapes == shapes
    assert fmt.num_params() == sum(math.prod(s) for s in shapes)
    other = tuple(r + 1 for r in fmt.ranks)
    assert fmt.num_params(other) == sum(math.prod(s) for s in expected_factor_shapes(fmt.name, fmt.shape, other))
    assert fmt.full(factors).shape == fmt.shape
    assert fmt.to_matrix(factors).shape == (math.prod(fmt.row_shape), math.prod(fmt.col_shape))


@pytest.mark.parametrize("batch_shape", [(), (5,), (2, 3)], ids=["nobatch", "batch", "batch2d"])
def test_contract_equals_matmul(case, batch_shape):
    fmt, factors = case
    w = fmt.to_matrix(factors)
    x = torch.randn(*batch_shape, w.shape[1], dtype=DT)
    y = fmt.contract(x, factors)
    assert y.shape == (*batch_shape, w.shape[0])
    torch.testing.assert_close(y, x @ w.T, rtol=1e-12, atol=1e-12)


def test_rows_equal_rows_of_matrix(case):
    fmt, factors = case
    w = fmt.to_matrix(factors)
    for dtype in (torch.int64, torch.int32):
        index = torch.tensor([0, w.shape[0] - 1, w.shape[0] // 2, 0], dtype=dtype)
        torch.testing.assert_close(fmt.rows(factors, index), w[index.long()], rtol=1e-12, atol=1e-12)


def test_entries_equal_indexing_full(case):
    fmt, factors = case
    index = torch.stack([torch.randint(size, (7,)) for size in fmt.shape], dim=1)
    expected = fmt.full(factors)[tuple(index.T)]
    torch.testing.assert_close(fmt.entries(factors, index), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fmt.entries(factors, index.int()), expected, rtol=1e-12, atol=1e-12)


def test_truncate_equals_zeroing_removed_slices(case):
    fmt, factors = case
    keep = [torch.randperm(r)[: max(1, r - 1)] for r in fmt.ranks]
    zeroed = [f.clone() for f in factors]
    for bond, (k, r) in enumerate(zip(keep, fmt.ranks)):
        removed = [j for j in range(r) if j not in k.tolist()]
        f, dim = one_side(fmt.name, bond)
        zeroed[f].index_fill_(dim % zeroed[f].dim(), torch.tensor(removed, dtype=torch.long), 0.0)
    new_fmt, new_factors = fmt.truncate(factors, keep)
    new_ranks = tuple(len(k) for k in keep)
    assert new_fmt.ranks == new_ranks and new_fmt.shape == fmt.shape and new_fmt.row_modes == fmt.row_modes
    assert [tuple(f.shape) for f in new_factors] == expected_factor_shapes(fmt.name, fmt.shape, new_ranks)
    assert new_fmt.num_params() == sum(f.numel() for f in new_factors)
    torch.testing.assert_close(new_fmt.full(new_factors), fmt.full(zeroed), rtol=1e-12, atol=1e-12)
    # keeping every index, in any order, changes nothing
    same_fmt, same = fmt.truncate(factors, [torch.randperm(r) for r in fmt.ranks])
    torch.testing.assert_close(same_fmt.full(same), fmt.full(factors), rtol=1e-12, atol=1e-12)


# ----- decomposition of planted low-rank tensors -----

PLANTED = [
    (CP, (6, 7, 8), (3,)),
    (CP, (5, 6), (2,)),
    (CP, (4, 5, 6, 3), (4,)),
    (CP, (3, 8, 9), (4,)),  # rank above a mode size: the initialization is padded
    (Tucker, (5, 6, 7), (2, 3, 4)),
    (Tucker, (4, 5, 3, 6), (2, 3, 3, 2)),
    (TT, (4, 5, 6, 3), (3, 4, 2)),
    (TT, (6, 7), (3,)),
    (TTM, (3, 4, 2, 5), (3,)),
    (TTM, (2, 3, 4, 3, 2, 2), (3, 4)),
    (TTM, (2, 3, 4, 3, 2), (2, 3)),
]


def planted(cls, shape, ranks, dtype=DT):
    fmt = cls(shape, ranks)
    return fmt, fmt.full([torch.randn(s, dtype=dtype) for s in fmt.factor_shapes])


@pytest.mark.parametrize("cls,shape,ranks", PLANTED, ids=lambda v: getattr(v, "name", None))
def test_decompose_recovers_planted_tensor(cls, shape, ranks):
    fmt, tensor = planted(cls, shape, ranks)
    factors = cls.decompose(tensor, ranks)
    assert [tuple(f.shape) for f in factors] == fmt.factor_shapes
    error = (fmt.full(factors) - tensor).norm() / tensor.norm()
    assert error < 1e-8


@pytest.mark.parametrize("cls", list(FORMATS.values()), ids=list(FORMATS))
def test_decompose_keeps_dtype_device_and_is_deterministic(cls):
    fmt, tensor = planted(cls, (3, 4, 2, 3), 2, dtype=torch.float32)
    first, second = cls.decompose(tensor, 2), cls.decompose(tensor, 2)
    for a, b in zip(first, second):
        assert a.dtype == torch.float32 and a.device == tensor.device
        assert torch.equal(a, b)
    assert ((fmt.full(first) - tensor).norm() / tensor.norm()) < 1e-4


@pytest.mark.parametrize("name", list(FORMATS))
def test_module_decompose_views_a_matrix_as_shape(name):
    fmt = get_format(name)((3, 4, 2, 5), 2)
    weight = fmt.to_matrix([torch.randn(s, dtype=DT) for s in fmt.factor_shapes])
    factors = decompose(weight, name, 2, shape=(3, 4, 2, 5))
    torch.testing.assert_close(fmt.to_matrix(factors), weight, rtol=1e-8, atol=1e-8)


# ----- bad input -----


def test_get_format():
    assert get_format("TT") is TT and get_format(Tucker) is Tucker
    with pytest.raises(ValueError, match="format must be one of"):
        get_format("svd")
    with pytest.raises(ValueError, match="format must be one of"):
        get_format(3)
    with pytest.raises(ValueError, match="format must be one of"):
        decompose(torch.ones(2, 2), "svd", 1)


@pytest.mark.parametrize("cls", list(FORMATS.values()), ids=list(FORMATS))
def test_bad_layout(cls):
    for ranks in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="ranks must be positive ints"):
            cls((3, 4, 5), (ranks,) * cls((3, 4, 5), 1).num_bonds)
    with pytest.raises(ValueError, match="ranks must have one entry per rank bond"):
        cls((3, 4, 5, 6), (2,) * 7)
    with pytest.raises(TypeError, match="ranks must be an int or a sequence"):
        cls((3, 4, 5), 2.5)
    for shape in [(3, 0, 4), (3, -1), (3, 2.0)]:
        with pytest.raises(ValueError, match="shape must be a sequence of positive ints"):
            cls(shape, 2)
    with pytest.raises(ValueError, match="shape must have at least one mode"):
        cls((), 2)
    with pytest.raises(TypeError, match="shape must be a sequence"):
        cls(5, 2)
    with pytest.raises(ValueError, match="row_modes"):
        cls((3, 4, 5), 2, row_modes=7)


@pytest.mark.parametrize("cls, shape", [(TT, (5,)), (TTM, (5,)), (TTM, (5, 4))])
def test_a_bad_int_rank_is_refused_with_no_bonds(cls, shape):
    # no bond to give it to: the int was dropped unchecked
    for ranks in (0, -3):
        with pytest.raises(ValueError, match="ranks must be positive ints"):
            cls(shape, ranks)
    assert cls(shape, 2).ranks == ()


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_rows_of_no_indices(case):
    cls, shape, ranks, row_modes = case
    fmt = cls(shape, ranks, row_modes=row_modes)
    factors = [torch.randn(s, dtype=DT) for s in fmt.factor_shapes]
    rows = fmt.rows(factors, torch.zeros(0, dtype=torch.long))
    assert rows.shape == (0, fmt.matrix_shape[1]) and rows.dtype == DT


@pytest.fixture
def tt():
    fmt = TT((3, 4, 5), (2, 3))
    return fmt, [torch.randn(s, dtype=DT) for s in fmt.factor_shapes]


def test_bad_factors(tt):
    fmt, factors = tt
    with pytest.raises(ValueError, match=r"factors\[1\] must have shape \(2, 4, 3\)"):
        fmt.full([factors[0], factors[1][:, :, :2], factors[2]])
    with pytest.raises(ValueError, match="factors must be 3 tensors"):
        fmt.full(factors[:2])
    with pytest.raises(TypeError, match=r"factors\[0\] must be a torch.Tensor"):
        fmt.full([factors[0].tolist()] + factors[1:])
    with pytest.raises(TypeError, match="factors must be a sequence"):
        fmt.full(factors[0].sum())


def test_bad_contract_input(tt):
    fmt, factors = tt
    with pytest.raises(ValueError, match="x must have last dimension 20"):
        fmt.contract(torch.randn(2, 19, dtype=DT), factors)
    with pytest.raises(ValueError, match="x must have last dimension"):
        fmt.contract(torch.tensor(1.0, dtype=DT), factors)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        fmt.contract([[0.0] * 20], factors)
    cp = CP((3, 4, 5), 2)  # its own contract: the input checked before its shape is read
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        cp.contract([[0.0] * 20], [torch.randn(s, dtype=DT) for s in cp.factor_shapes])


def test_bad_index(tt):
    fmt, factors = tt
    with pytest.raises(ValueError, match="index must have every column k in"):
        fmt.entries(factors, torch.tensor([[0, 4, 0]]))
    with pytest.raises(ValueError, match="index must have every column k in"):
        fmt.entries(factors, torch.tensor([[0, -1, 0]]))
    with pytest.raises(TypeError, match="index must be an integer tensor"):
        fmt.entries(factors, torch.tensor([[0.0, 1.0, 2.0]]))
    with pytest.raises(ValueError, match=r"index must have shape \(n, 3\)"):
        fmt.entries(factors, torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match=r"row_index must lie in \[0, 3\)"):
        fmt.rows(factors, torch.tensor([3]))
    with pytest.raises(TypeError, match="row_index must be a 1-d integer tensor"):
        fmt.rows(factors, torch.tensor([1.0]))
    with pytest.raises(TypeError, match="row_index must be a 1-d integer tensor"):
        fmt.rows(factors, torch.tensor([[1]]))


def test_bad_keep(tt):
    fmt, factors = tt
    with pytest.raises(ValueError, match="keep must have one entry per bond"):
        fmt.truncate(factors, [[0]])
    with pytest.raises(ValueError, match=r"keep\[1\] must be distinct indices in \[0, 3\)"):
        fmt.truncate(factors, [[0], [0, 3]])
    with pytest.raises(ValueError, match=r"keep\[0\] must be distinct indices"):
        fmt.truncate(factors, [[1, 1], [0]])
    with pytest.raises(ValueError, match=r"keep\[0\] must be distinct indices"):
        fmt.truncate(factors, [[], [0]])
    with pytest.raises(TypeError, match=r"keep\[0\] must hold integer indices"):
        fmt.truncate(factors, [[0.5], [0]])


@pytest.mark.parametrize("name", list(FORMATS))
def test_bad_decompose_input(name):
    cls = get_format(name)
    with pytest.raises(TypeError, match="tensor must be a torch.Tensor"):
        cls.decompose([[1.0, 2.0], [3.0, 4.0]], 1)
    for dtype in (torch.long, torch.float16, torch.complex64):
        with pytest.raises(TypeError, match="tensor must have a floating-point dtype, float32 or float64"):
            cls.decompose(torch.ones(2, 3, dtype=dtype), 1)
    with pytest.raises(ValueError, match="tensor.shape must be a sequence of positive ints"):
        cls.decompose(torch.ones(2, 0, 3), 1)
    with pytest.raises(ValueError, match="tensor.shape must have at least one mode"):
        cls.decompose(torch.tensor(1.0), 1)
    with pytest.raises(ValueError, match="tensor must have finite entries"):
        cls.decompose(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), 1)
    with pytest.raises(ValueError, match=r"shape \(3, 5\) must have as many entries as tensor"):
        cls.decompose(torch.ones(4, 4), 1, shape=(3, 5))
    with pytest.raises(ValueError, match="ranks must be positive ints"):
        cls.decompose(torch.ones(2, 3, 4, 5), 0)
    with pytest.raises(ValueError, match="ranks must have one entry per rank bond"):
        cls.decompose(torch.ones(2, 3, 4, 5), (2,) * 9)
    if name == "cp":
        with pytest.raises(ValueError, match="n_iter_max must be a non-negative int"):
            cls.decompose(torch.ones(2, 3), 1, n_iter_max=-1)
    if name == "tucker":
        with pytest.raises(ValueError, match="n_iter must be a non-negative int"):
            cls.decompose(torch.ones(2, 3), 1, n_iter=1.5)


# ----- huge tensors: never formed -----


def slice_product(name, factors, index):
    """One entry of a format's tensor by explicit products of factor slices (an independent path)."""
    if name == "cp":
        return math.prod(u[i] for u, i in zip(factors, index)).sum()
    if name == "tucker":
        core = factors[0]
        for u, i in zip(factors[1:], index):
            core = torch.tensordot(u[i], core, dims=([0], [0]))
        return core
    if name == "tt":
        chain = torch.ones(1, 1, dtype=DT)
        for g, i in zip(factors, index):
            chain = chain @ g[:, i, :]
        return chain[0, 0]
    cores = len(factors)
    chain = torch.ones(1, 1, dtype=DT)
    for k, g in enumerate(factors):
        chain = chain @ (g[:, index[k], index[cores + k], :] if g.dim() == 4 else g[:, index[k], :])
    return chain[0, 0]


HUGE = [  # about 1e12 entries, or a 2**20 x 2**20 matrix view
    (CP, (10_000,) * 3, 3, 2),
    (Tucker, (10_000,) * 3, 2, 2),
    (TT, (100,) * 6, 2, 4),
    (TTM, (1000, 1000, 1000, 100, 10), 2, None),
    (CP, (4,) * 20, 2, 10),
    (Tucker, (32,) * 8, 2, 4),
    (TT, (4,) * 20, 2, 10),
    (TTM, (4,) * 20, 2, None),
]


@pytest.mark.parametrize("cls,shape,ranks,row_modes", HUGE, ids=lambda v: getattr(v, "name", None))
def test_huge_tensor_never_formed(cls, shape, ranks, row_modes):
    fmt = cls(shape, ranks, row_modes=row_modes)
    factors = [torch.randn(s, dtype=DT) for s in fmt.factor_shapes]
    rows, cols = fmt.matrix_shape
    assert fmt.dense_size >= 10**12
    index = torch.stack([torch.randint(size, (3,)) for size in shape], dim=1)
    expected = torch.stack([slice_product(cls.name, factors, i.tolist()) for i in index])
    torch.testing.assert_close(fmt.entries(factors, index), expected, rtol=1e-10, atol=1e-10)

    # the entries, as rows of the matrix view and as the response to one-hot inputs
    flat_rows = torch.zeros(3, dtype=torch.long)
    flat_cols = torch.zeros(3, dtype=torch.long)
    for k, size in enumerate(shape):
        if k < fmt.row_modes:
            flat_rows = flat_rows * size + index[:, k]
        else:
            flat_cols = flat_cols * size + index[:, k]
    got = fmt.rows(factors, flat_rows)
    assert got.shape == (3, cols)
    torch.testing.assert_close(got[torch.arange(3), flat_cols], expected, rtol=1e-10, atol=1e-10)
    if rows <= 2**20 and cols <= 2**20:  # the input and output of a contraction fit in memory
        x = torch.zeros(2, cols, dtype=DT)
        x[0, flat_cols[0]] = 1.0
        x[1, flat_cols[1]] = 2.0
        y = fmt.contract(x, factors)
        assert y.shape == (2, rows)
        torch.testing.assert_close(y[[0, 1], flat_rows[:2]], expected[:2] * torch.tensor([1.0, 2.0], dtype=DT))
