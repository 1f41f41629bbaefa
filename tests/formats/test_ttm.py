"""The tensor-train matrix format (:mod:`tensorbayes.formats.ttm`): its dense tensor and TTM-SVD."""

import pytest
import torch

from tensorbayes.formats import TTM

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
