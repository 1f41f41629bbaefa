"""Tests of :func:`tensorbayes.data.planted_tensor`: planted ranks, split, noise, seeds, errors."""

import math

import pytest
import torch

from tensorbayes.data import PlantedTensor, planted_tensor
from tensorbayes.formats import TT
from tests.common import assert_rank, unfolding


def test_cp_ranks():
    shape, rank = (3, 4, 5, 2), 6
    data = planted_tensor(shape, "cp", rank)
    assert data.ranks == (rank,)
    numel = math.prod(shape)
    for k, size in enumerate(shape):
        # Tucker ranks of a CP tensor: min(R, I_k, rest)
        assert_rank(unfolding(data.full, [k]), min(rank, size, numel // size))
        # every factor has full rank
        assert torch.linalg.matrix_rank(data.factors[k]) == min(size, rank)
    # the most balanced unfolding (12 x 10) certifies CP rank >= R
    assert_rank(unfolding(data.full, [0, 1]), rank)
    # and the R components are linearly independent
    components = data.factors[0]
    for u in data.factors[1:]:
        components = (components[:, None, :] * u[None, :, :]).reshape(-1, rank)
    assert torch.linalg.matrix_rank(components) == rank


def test_cp_rank_below_mode_sizes():
    data = planted_tensor((6, 7, 8), "cp", 4)
    for k in range(3):
        assert_rank(unfolding(data.full, [k]), 4)


def test_tucker_ranks():
    ranks = (2, 3, 4)
    data = planted_tensor((5, 6, 7), "tucker", ranks)
    assert data.ranks == ranks
    for k, r in enumerate(ranks):
        assert_rank(unfolding(data.full, [k]), r)


def test_tt_ranks():
    ranks = (3, 5, 2)
    data = planted_tensor((4, 5, 6, 3), "tt", ranks)
    assert data.ranks == ranks
    for k, r in enumerate(ranks):
        assert_rank(unfolding(data.full, list(range(k + 1))), r)


@pytest.mark.parametrize(
    "shape, ranks",
    [
        ((3, 4, 5, 2, 3, 2), (4, 5)),  # three cores pairing modes (0, 3), (1, 4), (2, 5)
        ((3, 4, 5, 2, 3), (4, 3)),  # odd order: the last core has row mode 2 only
    ],
)
def test_ttm_ranks(shape, ranks):
    data = planted_tensor(shape, "ttm", ranks)
    assert data.ranks == ranks
    cores = (len(shape) + 1) // 2
    for k, r in enumerate(ranks):
        modes = [j for j in range(k + 1)] + [cores + j for j in range(k + 1) if cores + j < len(shape)]
        assert_rank(unfolding(data.full, modes), r)


@pytest.mark.parametrize(
    "fmt, shape, ranks",
    [("cp", (4, 5, 6), 3), ("tucker", (4, 5, 6), (2, 3, 3)), ("tt", (4, 5, 6), (3, 2)), ("ttm", (4, 5, 2, 3), 3)],
)
def test_factors_and_values(fmt, shape, ranks):
    data = planted_tensor(shape, fmt, ranks, noise=0.0)
    assert isinstance(data, PlantedTensor)
    assert data.shape == shape
    assert data.format.name == fmt
    assert [tuple(f.shape) for f in data.factors] == data.format.factor_shapes
    assert torch.allclose(data.format.full(list(data.factors)), data.full, atol=1e-12)
    assert data.full.dtype == torch.float64
    assert data.full.std().item() == pytest.approx(1.0, abs=1e-12)
    assert torch.allclose(data.format.entries(list(data.factors), data.test_index), data.test_values, atol=1e-12)
    assert torch.equal(data.train_values, data.full[tuple(data.train_index.T)])
    assert torch.equal(data.test_values, data.full[tuple(data.test_index.T)])
    assert data.noise_std == 0.0


def test_tucker_factors_are_orthonormal():
    data = planted_tensor((5, 6, 7), "tucker", (2, 3, 4))
    for u in data.factors[1:]:
        assert torch.allclose(u.T @ u, torch.eye(u.shape[1], dtype=u.dtype), atol=1e-12)


def flat(index, shape):
    strides = torch.tensor([math.prod(shape[k + 1 :]) for k in range(len(shape))])
    return (index * strides).sum(-1)


@pytest.mark.parametrize("observed", [0.3, 0.5, 1e-6, 1.0])
def test_split_is_disjoint_and_complete(observed):
    shape = (6, 7, 8)
    numel = math.prod(shape)
    data = planted_tensor(shape, "tt", (3, 3), observed=observed)
    n_train = max(1, round(observed * numel))
    assert data.train_index.shape == (n_train, 3) and data.train_index.dtype == torch.long
    assert data.test_index.shape == (numel - n_train, 3) and data.test_index.dtype == torch.long
    assert data.train_values.shape == (n_train,) and data.test_values.shape == (numel - n_train,)
    both = torch.cat([flat(data.train_index, shape), flat(data.test_index, shape)])
    assert torch.equal(both.sort().values, torch.arange(numel))


def test_noise_level():
    data = planted_tensor((20, 20, 20), "cp", 3, observed=0.5, noise=0.1, seed=3)
    assert data.noise_std == pytest.approx(0.1 * data.full.std().item())
    residual = data.train_values - data.full[tuple(data.train_index.T)]
    assert residual.std().item() == pytest.approx(data.noise_std, rel=0.05)
    assert residual.mean().abs().item() < 4 * data.noise_std / math.sqrt(len(residual))
    # held-out values are the noiseless truth
    assert torch.equal(data.test_values, data.full[tuple(data.test_index.T)])


def assert_same(a, b):
    for name in ["full", "train_index", "train_values", "test_index", "test_values"]:
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert all(torch.equal(x, y) for x, y in zip(a.factors, b.factors))
    assert a.noise_std == b.noise_std


def test_seeds_reproduce_and_differ():
    args = ((5, 6, 7), "tt", (3, 4))
    assert_same(planted_tensor(*args, seed=7), planted_tensor(*args, seed=7))
    a, b = planted_tensor(*args, seed=7), planted_tensor(*args, seed=8)
    assert not torch.allclose(a.full, b.full)
    assert not torch.equal(a.train_index, b.train_index)
    assert not torch.equal(
        a.train_values - a.full[tuple(a.train_index.T)], b.train_values - b.full[tuple(b.train_index.T)]
    )


def test_split_depends_on_seed_and_observed_only():
    a = planted_tensor((5, 6, 7), "tt", (3, 4), seed=2)
    b = planted_tensor((5, 6, 7), "cp", 2, seed=2)
    assert torch.equal(a.train_index, b.train_index)


def test_dtype():
    data = planted_tensor((4, 5, 6), "tucker", (2, 2, 3), dtype=torch.float32)
    assert data.full.dtype == torch.float32
    assert data.train_values.dtype == data.test_values.dtype == torch.float32
    assert all(f.dtype == torch.float32 for f in data.factors)
    assert torch.allclose(data.full, planted_tensor((4, 5, 6), "tucker", (2, 2, 3)).full.float())


def test_relative_error():
    data = planted_tensor((4, 5, 6), "cp", 2)
    assert data.relative_error(data.test_values) == 0.0
    assert data.relative_error(torch.zeros_like(data.test_values)) == pytest.approx(1.0)
    assert data.relative_error(2 * data.test_values) == pytest.approx(1.0)
    assert data.relative_error(data.test_values.float()) < 1e-6
    with pytest.raises(ValueError, match="prediction"):
        data.relative_error(data.test_values[:-1])
    with pytest.raises(ValueError, match="observed"):
        planted_tensor((4, 5), "cp", 2, observed=1.0).relative_error(torch.zeros(0))


def test_format_class_is_accepted():
    data = planted_tensor((4, 5, 6), TT, (2, 3))
    assert isinstance(data.format, TT)


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        (dict(format="ht"), ValueError, "format"),
        (dict(format=3), ValueError, "format"),
        (dict(shape=(4, 0, 6)), ValueError, "shape"),
        (dict(shape=(4, -5, 6)), ValueError, "shape"),
        (dict(shape=(4, 5.0, 6)), ValueError, "shape"),
        (dict(shape=(1,)), ValueError, "shape"),
        (dict(shape=5), TypeError, "shape"),
        (dict(shape=(4, 5, 6, 7)), ValueError, "shape"),  # 3 bonds, 2 ranks
        (dict(ranks=(2,)), ValueError, "ranks"),
        (dict(ranks=(0, 2)), ValueError, "ranks"),
        (dict(ranks=(2, -1)), ValueError, "ranks"),
        (dict(ranks=(5, 2)), ValueError, "ranks"),  # above max_ranks() = (4, 6)
        (dict(ranks=(2.0, 2)), ValueError, "ranks"),
        (dict(ranks="2"), ValueError, "ranks"),
        (dict(ranks=None), TypeError, "ranks"),
        (dict(format="tt", shape=(2, 2, 2, 2), ranks=(1, 4, 1)), ValueError, "ranks"),  # not attainable
        (dict(format="tucker", shape=(5, 5, 5), ranks=(4, 1, 1)), ValueError, "ranks"),  # not attainable
        (dict(format="cp", ranks=21), ValueError, "ranks"),  # above 4 * 5 = 20
        (dict(observed=0), ValueError, "observed"),
        (dict(observed=1.5), ValueError, "observed"),
        (dict(observed=-0.1), ValueError, "observed"),
        (dict(observed=float("nan")), ValueError, "observed"),
        (dict(observed="half"), TypeError, "observed"),
        (dict(noise=-0.01), ValueError, "noise"),
        (dict(noise=float("inf")), ValueError, "noise"),
        (dict(noise=float("nan")), ValueError, "noise"),
        (dict(noise=None), TypeError, "noise"),
        (dict(seed=1.5), TypeError, "seed"),
        (dict(seed="0"), TypeError, "seed"),
        (dict(seed=True), TypeError, "seed"),
        (dict(seed=-1), ValueError, "seed"),
        (dict(dtype=torch.long), TypeError, "dtype"),
    ],
)
def test_bad_input(kwargs, error, name):
    args = dict(shape=(4, 5, 6), format="tt", ranks=(2, 2))
    args.update(kwargs)
    with pytest.raises(error, match=name):
        planted_tensor(**args)


def test_relative_error_refuses_complex_or_non_numeric_predictions():
    data = planted_tensor((4, 5), "cp", 2, seed=0)
    n = len(data.test_values)
    truth = data.test_values.to(torch.complex128)
    with pytest.raises(TypeError, match="prediction must hold real values"):
        data.relative_error(truth + 1j)  # the imaginary part would be dropped: error 0
    with pytest.raises(TypeError, match="prediction must be a tensor of real values"):
        data.relative_error("x" * n)
    assert data.relative_error(data.test_values.numpy()) == 0.0
