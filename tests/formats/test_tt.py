"""The tensor-train format (:mod:`tensorbayes.formats.tt`): its dense tensor and TT-SVD."""

import pytest
import torch

from tensorbayes.formats import TT, clip_train_ranks

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
