"""The Tucker format (:mod:`tensorbayes.formats.tucker`): its dense tensor and HOSVD/HOOI."""

import pytest
import torch

from tensorbayes.formats import Tucker

DT = torch.float64

# Each case: the shape, the ranks, and the dense tensor written as an explicit einsum.
FULL = [
    ((4, 5), (2, 3), "ab,ia,jb->ij"),
    ((3, 4, 5), (2, 3, 2), "abc,ia,jb,kc->ijk"),
    ((2, 3, 4, 3), (2, 2, 3, 1), "abcd,ia,jb,kc,ld->ijkl"),
]


@pytest.mark.parametrize("shape,ranks,equation", FULL)
def test_full_equals_explicit_einsum(shape, ranks, equation):
    factors = [torch.randn(ranks, dtype=DT)] + [torch.randn(n, r, dtype=DT) for n, r in zip(shape, ranks)]
    expected = torch.einsum(equation, *factors)
    torch.testing.assert_close(Tucker(shape, ranks).full(factors), expected, rtol=1e-12, atol=1e-12)


def test_decompose_factors_are_orthonormal_and_core_is_the_projection():
    tensor = torch.randn(4, 5, 6, dtype=DT)
    core, *us = Tucker.decompose(tensor, (2, 3, 4))
    for u in us:
        torch.testing.assert_close(u.T @ u, torch.eye(u.shape[1], dtype=DT), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(core, torch.einsum("ijk,ia,jb,kc->abc", tensor, *us), rtol=1e-10, atol=1e-10)


def test_decompose_clips_ranks_to_the_shape():
    tensor = torch.randn(2, 3, 20, dtype=DT)
    factors = Tucker.decompose(tensor, 10)
    assert [tuple(f.shape) for f in factors] == [(2, 3, 6), (2, 2), (3, 3), (20, 6)]
    torch.testing.assert_close(Tucker((2, 3, 20), (2, 3, 6)).full(factors), tensor, rtol=1e-10, atol=1e-10)


def test_hooi_does_not_do_worse_than_hosvd():
    fmt = Tucker((6, 7, 8), (2, 2, 2))
    signal = fmt.full([torch.randn(s, dtype=DT) for s in fmt.factor_shapes])
    tensor = signal + 0.3 * signal.norm() / signal.numel() ** 0.5 * torch.randn(6, 7, 8, dtype=DT)

    def error(n_iter):
        return (fmt.full(Tucker.decompose(tensor, 2, n_iter=n_iter)) - tensor).norm()

    assert error(3) <= error(0) + 1e-12


def test_decompose_with_a_redundant_rank():
    # R_1 = 4 exceeds R_2 * R_3 = 1: HOOI's projected unfolding has rank 1, completed to 4 columns
    tensor = torch.randn(5, 6, 7, dtype=DT)
    core, *us = Tucker.decompose(tensor, (4, 1, 1))
    assert core.shape == (4, 1, 1)
    torch.testing.assert_close(us[0].T @ us[0], torch.eye(4, dtype=DT), rtol=1e-10, atol=1e-10)
