"""The tensor-train format (:mod:`tensorbayes.formats.tt`): its dense tensor and TT-SVD."""

import pytest
import torch

import tensorbayes as tb
from tensorbayes.formats import TT, clip_train_ranks
from tensorbayes.formats.tt import interleaved_train, layout_options

DT = torch.float64

# Each case: the shape, the ranks, and the dense tensor written as an explicit einsum over
# cores (r_{k-1}, I_k, r_k) whose outer dimensions have size one.
FULL = [
    ((4, 5), (3,), "aib,bjc->ij"),
    ((3, 4, 5), (2, 3), "aib,bjc,ckd->ijk"),
    ((2, 3, 4, 3), (2, 3, 2), "aib,bjc,ckd,dle->ijkl"),
]


@pytest.mark.parametrize("shape,ranks,equation", FULL)
def test_full_equals_explicit_einsum(shape, ranks, equation):
    bonds = (1,) + ranks + (1,)
    cores = [torch.randn(bonds[k], n, bonds[k + 1], dtype=DT) for k, n in enumerate(shape)]
    torch.testing.assert_close(TT(shape, ranks).full(cores), torch.einsum(equation, *cores), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "sizes,ranks,expected",
    [
        ((2, 2, 2, 2), (1, 4, 1), (1, 2, 1)),
        ((4, 4, 4), (4, 1), (4, 1)),
        ((3, 4, 5), (100, 100), (3, 5)),
        ((10, 2, 10), (8, 8), (8, 8)),
        ((10, 2, 10), (20, 20), (10, 10)),
    ],
)
def test_clip_train_ranks(sizes, ranks, expected):
    assert clip_train_ranks(sizes, ranks) == expected


def test_decompose_clips_ranks_and_is_exact():
    tensor = torch.randn(3, 4, 5, dtype=DT)
    cores = TT.decompose(tensor, 100)
    assert [tuple(g.shape) for g in cores] == [(1, 3, 3), (3, 4, 5), (5, 5, 1)]
    torch.testing.assert_close(TT((3, 4, 5), (3, 5)).full(cores), tensor, rtol=1e-10, atol=1e-10)


def test_decompose_cores_are_left_orthonormal():
    cores = TT.decompose(torch.randn(3, 4, 5, 2, dtype=DT), 3)
    for g in cores[:-1]:
        mat = g.reshape(-1, g.shape[-1])
        torch.testing.assert_close(mat.T @ mat, torch.eye(g.shape[-1], dtype=DT), rtol=1e-10, atol=1e-10)


def test_decompose_truncates_to_the_best_rank_one_of_a_matrix():
    matrix = torch.randn(5, 6, dtype=DT)
    cores = TT.decompose(matrix, 1)
    u, s, vh = torch.linalg.svd(matrix)
    torch.testing.assert_close(TT((5, 6), 1).full(cores), s[0] * torch.outer(u[:, 0], vh[0]), rtol=1e-10, atol=1e-10)


def test_decompose_order_one():
    vector = torch.randn(7, dtype=DT)
    (core,) = TT.decompose(vector, ())
    torch.testing.assert_close(core.reshape(-1), vector)


# ----- a train over the modes in another order -----


def test_interleaved_train_alternates_rows_and_columns():
    assert interleaved_train(8, 4) == (0, 4, 1, 5, 2, 6, 3, 7)
    assert interleaved_train(5, 2) == (0, 2, 1, 3, 4)  # the longer side's last modes at the end
    assert interleaved_train(5, 3) == (0, 3, 1, 4, 2)
    assert layout_options("tt", 4, 2) == {"train": (0, 2, 1, 3)}
    assert layout_options("tt", 4, 2, interleave=False) == {} == layout_options("ttm", 4, 2)


def test_a_train_in_another_order_is_the_explicit_product():
    # cores over modes (0, 2, 1, 3) of a (2, 3, 4, 5) tensor: G0[a, i] G1[a, k, b] G2[b, j, c] G3[c, l]
    fmt = TT((2, 3, 4, 5), (2, 3, 2), row_modes=2, train=(0, 2, 1, 3))
    assert fmt.factor_shapes == [(1, 2, 2), (2, 4, 3), (3, 3, 2), (2, 5, 1)]
    assert fmt.max_ranks() == (2, 8, 5)  # sizes along the train: 2 | 4 3 5, 2 4 | 3 5, 2 4 3 | 5
    cores = [torch.randn(s, dtype=DT) for s in fmt.factor_shapes]
    want = torch.einsum("xia,akb,bjc,cly->ijkl", *cores)
    torch.testing.assert_close(fmt.full(cores), want, rtol=1e-12, atol=1e-12)
    x = torch.randn(3, 20, dtype=DT)
    torch.testing.assert_close(fmt.contract(x, cores), x @ want.reshape(6, 20).T, rtol=1e-12, atol=1e-12)
    assert fmt.with_ranks(1).train == fmt.train and "train=(0, 2, 1, 3)" in repr(fmt)
    # TT-SVD along the same train recovers the tensor at its ranks
    got = TT.decompose(want, (2, 3, 2), train=(0, 2, 1, 3))
    assert [tuple(c.shape) for c in got] == fmt.factor_shapes
    torch.testing.assert_close(fmt.full(got), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("train", [(0, 1, 2), (0, 1, 1, 3), (1, 2, 3, 4), "0123", (0, 1, 2, True)])
def test_a_bad_train_is_refused(train):
    with pytest.raises((ValueError, TypeError), match="train must be a permutation of range"):
        TT((2, 3, 4, 5), 2, train=train)


def test_a_linear_layer_interleaves_its_tt_train():
    # out modes, then in modes, would bound the weight's rank by the middle bond: the layer alternates them
    layer = tb.models.TensorizedLinear(784, 625, format="tt")
    assert layer.layout.train == (0, 4, 1, 5, 2, 6, 3, 7)
    assert layer.layout.ranks == layer.weight.max_ranks
    assert max(layer.layout.ranks) <= max(layer.layout.max_ranks())


def test_a_linear_layer_keeps_its_tt_in_order_when_asked():
    layer = tb.models.TensorizedLinear(784, 625, format="tt", interleave=False)
    assert layer.layout.train == tuple(range(8))
    # in order, the middle bond bounds the weight's rank: 5 * 5 * 5 * 5 = 625 at most, and the budget's
    assert layer.layout.max_ranks()[3] == 625
    with pytest.raises(TypeError, match="interleave must be True or False"):
        tb.models.TensorizedLinear(784, 625, format="tt", interleave="yes")
