"""
canonicalize(layout, factors): the balanced gauge of the same tensor and the weight of every
rank index, checked against singular values computed here from the dense tensor.
"""

import math

import pytest
import torch

from tensorbayes.formats import CP, TT, TTM, Tucker
from tensorbayes.formats.canonical import canonicalize

D = torch.float64


def _random_factors(layout, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=D) for s in layout.factor_shapes]


def _ttm_groups(layout):
    """The modes of each TTM core: (k, c + k), the last core of an odd order only (c - 1,)."""
    order = len(layout.shape)
    cores = (order + 1) // 2
    return [tuple(m for m in (k, cores + k) if m < order) for k in range(cores)]


def _expected_weights(layout, full, factors):
    """One vector of singular values per bond, computed from the dense tensor (or CP norms)."""
    shape = layout.shape
    if layout.name == "tt":
        return [torch.linalg.svdvals(full.reshape(math.prod(shape[: k + 1]), -1)) for k in range(layout.num_bonds)]
    if layout.name == "ttm":
        groups = _ttm_groups(layout)
        out = []
        for k in range(layout.num_bonds):
            left = [m for g in groups[: k + 1] for m in g]
            right = [m for m in range(len(shape)) if m not in left]
            mat = full.permute(*left, *right).reshape(math.prod(shape[m] for m in left), -1)
            out.append(torch.linalg.svdvals(mat))
        return out
    if layout.name == "tucker":
        return [torch.linalg.svdvals(full.movedim(k, 0).reshape(shape[k], -1)) for k in range(len(shape))]
    norms = torch.stack([f.norm(dim=0) for f in factors]).prod(0)
    return [norms.sort(descending=True).values]


def _check_weights(weights, expected, ranks):
    assert len(weights) == len(expected)
    for b, (w, e) in enumerate(zip(weights, expected)):
        assert w.shape == (ranks[b],)
        n = min(len(e), ranks[b])
        scale = e[0]
        torch.testing.assert_close(w[:n], e[:n], atol=1e-10 * scale, rtol=1e-10)
        # the tensor's rank at the bond is at most the bond's size: nothing is lost by the cut
        assert (e[n:] <= 1e-10 * scale).all()
        # beyond what the unfolding holds, the bond's weights are zero (padded)
        assert (w[n:].abs() <= 1e-10 * scale).all()
        assert (w >= 0).all()
        assert (w[1:] <= w[:-1] + 1e-12 * scale).all(), f"bond {b} weights are not non-increasing: {w}"


LAYOUTS = [
    pytest.param(TT((3, 4, 5, 2), (2, 4, 2)), id="tt"),
    pytest.param(TTM((2, 3, 4, 3, 2, 2), (3, 4)), id="ttm-even"),
    pytest.param(TTM((2, 3, 4, 3, 2), (3, 4)), id="ttm-odd"),
    pytest.param(Tucker((4, 5, 6), (2, 3, 4)), id="tucker"),
    pytest.param(CP((4, 5, 6), 3), id="cp"),
]

# bond ranks beyond what the neighbours allow: the extra weights must come out as zeros
OVERSIZED = [
    pytest.param(TT((2, 3, 4), (5, 5)), id="tt"),
    pytest.param(TTM((2, 3, 2, 2, 3), (6, 4)), id="ttm-odd"),
    pytest.param(Tucker((2, 3, 4), (2, 3, 5)), id="tucker"),
    pytest.param(CP((2, 3, 2), 7), id="cp"),
]


@pytest.mark.parametrize("layout", LAYOUTS + OVERSIZED)
def test_full_unchanged_and_weights_are_singular_values(layout):
    factors = _random_factors(layout)
    full = layout.full(factors)
    new, weights = canonicalize(layout, factors)
    assert [tuple(f.shape) for f in new] == layout.factor_shapes
    assert all(f.dtype == D for f in new)
    torch.testing.assert_close(layout.full(new), full, atol=1e-10 * full.abs().max(), rtol=1e-10)
    _check_weights(weights, _expected_weights(layout, full, factors), layout.ranks)


@pytest.mark.parametrize("layout", OVERSIZED)
def test_oversized_bonds_get_zero_weights(layout):
    factors = _random_factors(layout, seed=3)
    _, weights = canonicalize(layout, factors)
    limits = layout.max_ranks()
    if layout.name in ("tt", "ttm", "tucker"):
        # at least one bond is larger than its unfolding allows: its tail is exactly zero-weight
        padded = [b for b in range(layout.num_bonds) if layout.ranks[b] > limits[b]]
        assert padded
        for b in padded:
            assert (weights[b][limits[b] :] <= 1e-10 * weights[b][0]).all()
            assert (weights[b][: limits[b]] > 1e-6 * weights[b][0]).all()
    else:
        # CP: a rank above any unfolding's still has nonzero component norms
        assert (weights[0] > 0).all()


def test_canonical_train_bonds_are_balanced():
    """Vidal form: at every bond, left and right Gram matrices both equal diag(weights)."""
    layout = TT((3, 4, 5), (3, 4))
    new, weights = canonicalize(layout, _random_factors(layout, seed=1))
    left = new[0].reshape(-1, layout.ranks[0])
    gram_left = left.T @ left
    torch.testing.assert_close(gram_left, torch.diag(weights[0]), atol=1e-10, rtol=1e-10)
    right = new[2].reshape(layout.ranks[1], -1)
    torch.testing.assert_close(right @ right.T, torch.diag(weights[1]), atol=1e-10, rtol=1e-10)


def test_canonical_tucker_factors_orthonormal():
    layout = Tucker((4, 5, 6), (2, 3, 4))
    new, _ = canonicalize(layout, _random_factors(layout, seed=2))
    for u in new[1:]:
        torch.testing.assert_close(u.T @ u, torch.eye(u.shape[1], dtype=D), atol=1e-10, rtol=0)


def test_canonical_cp_columns_balanced_and_sorted():
    layout = CP((4, 5, 6), 4)
    factors = _random_factors(layout, seed=4)
    new, (w,) = canonicalize(layout, factors)
    norms = torch.stack([f.norm(dim=0) for f in new])  # (modes, R)
    # every mode's column j has the same norm, w_j ** (1/d)
    torch.testing.assert_close(norms, w.pow(1 / 3).expand_as(norms), atol=1e-12, rtol=1e-10)


def test_canonicalize_rejects_wrong_factors():
    layout = TT((3, 4, 5), (2, 2))
    factors = _random_factors(layout)
    with pytest.raises(ValueError, match="factors"):
        canonicalize(layout, factors[:2])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_factors_are_canonicalized_in_float32(layout, dtype):
    """torch's QR and SVD take no half precision: the gauge is found in float32 and cast back."""
    factors = [f.to(dtype) for f in _random_factors(layout)]
    new, weights = canonicalize(layout, factors)
    assert all(f.dtype == dtype for f in new + weights)
    ref_new, ref_weights = canonicalize(layout, [f.float() for f in factors])
    for got, want in zip(new + weights, ref_new + ref_weights):
        assert torch.equal(got, want.to(dtype))
