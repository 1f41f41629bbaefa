"""
Properties of the four formats over random small shapes and ranks (hypothesis), in float64:

- ``contract`` is the product with the dense matrix view, ``x @ full().reshape(rows, cols).T``;
- ``entries`` is indexing the dense tensor;
- ``decompose`` of a tensor built at ranks ``r`` gives that tensor back at ranks ``r``;
- ``truncate`` at indices whose slices are zero leaves the tensor unchanged.

Each test draws a layout (shape, ranks no larger than the shape allows, the matrix view's row
modes) and a seed for its factors; the examples are few and tiny so that the module takes a few
seconds (``max_examples`` below, no deadline: the first einsum plans take longer than later ones).
"""

import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tensorbayes.formats import CP, TT, TTM, Tucker

D = torch.float64
FORMATS = {"cp": CP, "tucker": Tucker, "tt": TT, "ttm": TTM}
EXAMPLES = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,  # the same examples every run
    suppress_health_check=[HealthCheck.too_slow],
)

# Rounding bounds, relative to the size of what is compared. Every comparison is of two float64
# computations of the same sums of products in another order: a few dozen terms of a few
# factors each, so their difference is a small multiple of eps = 2.2e-16 times the sum of the
# terms' magnitudes; 1e-12 leaves a margin of more than 100x.
RTOL = 1e-12


@st.composite
def layouts(draw, name, max_order=4, max_size=4, max_rank=3):
    """A layout of format ``name``: its shape, ranks within what the shape allows, row modes."""
    cls = FORMATS[name]
    order = draw(st.integers(2 if name != "cp" else 1, max_order + (name == "ttm")))
    shape = tuple(draw(st.lists(st.integers(1, max_size), min_size=order, max_size=order)))
    probe = cls(shape, 1)
    ranks = tuple(draw(st.integers(1, max(1, min(max_rank, m)))) for m in probe.max_ranks())
    row_modes = None if name == "ttm" else draw(st.integers(0, order))
    return cls(shape, ranks, row_modes=row_modes)


def _factors(layout, seed):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=generator, dtype=D) for s in layout.factor_shapes]


def _close(got, want, scale):
    """``got`` equals ``want`` to RTOL times ``scale`` (the magnitude the rounding is relative to)."""
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=RTOL * max(float(scale), 1e-300))


def _magnitude(layout, factors):
    """The dense tensor of the factors' absolute values: every entry's sum of |terms|."""
    return layout.full([f.abs() for f in factors])


seeds = st.integers(0, 2**31 - 1)


@pytest.mark.parametrize("name", FORMATS)
@EXAMPLES
@given(data=st.data(), seed=seeds)
def test_contract_is_the_product_with_the_dense_matrix(name, data, seed):
    layout = data.draw(layouts(name), label="layout")
    batch = tuple(data.draw(st.lists(st.integers(1, 3), max_size=2), label="batch shape"))
    factors = _factors(layout, seed)
    rows, cols = math.prod(layout.shape[: layout.row_modes]), math.prod(layout.shape[layout.row_modes :])
    x = torch.randn(*batch, cols, generator=torch.Generator().manual_seed(seed + 1), dtype=D)
    dense = layout.full(factors).reshape(rows, cols)
    y = layout.contract(x, factors)
    # each output is a sum over cols of |x| |W| terms, each entry of W itself a sum of terms
    bound = x.abs().reshape(-1, cols) @ _magnitude(layout, factors).reshape(rows, cols).T
    _close(y, x @ dense.T, bound.max())


@pytest.mark.parametrize("name", FORMATS)
@EXAMPLES
@given(data=st.data(), seed=seeds)
def test_entries_are_the_dense_tensor_indexed(name, data, seed):
    layout = data.draw(layouts(name), label="layout")
    n = data.draw(st.integers(1, 6), label="entries")
    index = torch.stack(
        [
            torch.randint(size, (n,), generator=torch.Generator().manual_seed(seed + k))
            for k, size in enumerate(layout.shape)
        ],
        dim=1,
    )
    factors = _factors(layout, seed)
    got = layout.entries(factors, index)
    want = layout.full(factors)[tuple(index.T)]
    _close(got, want, _magnitude(layout, factors).max())


# decompose at the exact ranks. The SVD-based formats (Tucker's HOSVD/HOOI, TT-SVD, TTM-SVD) cut
# each unfolding at a rank it has exactly, so what they drop is rounding: a relative error of a
# small multiple of eps times the condition of the steps, far below 1e-9 for these sizes. CP-ALS
# is iterative: it stops at a relative error of tol (1e-10 here) or when a sweep improves it by
# less; it is only promised for a well-conditioned tensor of CP rank R (order at least 3, R at most
# every mode size: the unfoldings' leading singular vectors then span the factors, Kruskal's
# condition holds, and ALS converges from that start), which is the domain drawn for CP.
DECOMPOSE_RTOL = {"cp": 1e-6, "tucker": 1e-9, "tt": 1e-9, "ttm": 1e-9}


@pytest.mark.parametrize("name", FORMATS)
@EXAMPLES
@given(data=st.data(), seed=seeds)
def test_decompose_of_full_at_the_exact_ranks_gives_it_back(name, data, seed):
    layout = data.draw(layouts(name), label="layout")
    factors = _factors(layout, seed)
    if name == "cp":
        assume(len(layout.shape) >= 3 and layout.ranks[0] <= min(layout.shape))
        # well-conditioned: orthonormalized factor columns, component weights within [1, 2]
        weights = torch.linspace(1, 2, layout.ranks[0], dtype=D)
        factors = [torch.linalg.qr(f)[0] for f in factors]
        factors[0] = factors[0] * weights
    full = layout.full(factors)
    assume(full.norm() > 0)
    kwargs = dict(n_iter_max=2000, tol=1e-10) if name == "cp" else {}
    found = type(layout).decompose(full, layout.ranks, **kwargs)
    error = (layout.with_ranks(tuple(_bond_sizes(layout, found))).full(found) - full).norm() / full.norm()
    assert error < DECOMPOSE_RTOL[name], (layout, float(error))


def _bond_sizes(layout, factors):
    """The ranks the decomposed factors have (a format may clip ranks beyond what the shape allows)."""
    sizes = []
    for pairs in layout.bonds:
        f, d = pairs[0]
        sizes.append(factors[f].shape[d])
    return sizes


@pytest.mark.parametrize("name", FORMATS)
@EXAMPLES
@given(data=st.data(), seed=seeds)
def test_truncating_indices_whose_slices_are_zero_keeps_the_tensor(name, data, seed):
    layout = data.draw(layouts(name), label="layout")
    assume(layout.ranks and max(layout.ranks) > 1)  # a one-core TTM has no bond
    factors = _factors(layout, seed)
    keep = []
    for b, (rank, pairs) in enumerate(zip(layout.ranks, layout.bonds)):
        kept = data.draw(st.lists(st.integers(0, rank - 1), min_size=1, max_size=rank, unique=True), label=f"keep{b}")
        # zero the slices of the other indices in one of the factors that carry the bond
        f, d = pairs[data.draw(st.integers(0, len(pairs) - 1), label=f"factor{b}")]
        dropped = torch.tensor(sorted(set(range(rank)) - set(kept)), dtype=torch.long)
        factors[f] = factors[f].index_fill(d, dropped, 0.0)
        keep.append(torch.tensor(kept))
    before = layout.full(factors)
    smaller, truncated = layout.truncate(factors, keep)
    assert smaller.ranks == tuple(len(k) for k in keep)
    _close(smaller.full(truncated), before, _magnitude(layout, factors).max())
