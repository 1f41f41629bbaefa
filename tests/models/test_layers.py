"""
Tensorized layers: exactness against the dense layer for the same factor values (both paths
of the linear layer, convolution with stride/padding/dilation, embedding rows), the FLOP-count
path choice, gradients, Kaiming-scaled guide initialization, a mean-field ELBO on a tiny
classifier, factoring sizes and argument checking.
"""

import itertools
import math

import numpy as np
import opt_einsum
import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO
from pyro.nn import PyroModule

import tensorbayes as tb
from tensorbayes.formats import TTM, get_format
from tensorbayes.formats.base import path_cost
from tensorbayes.guides import MeanField
from tensorbayes.models import (
    FactorizationError,
    LowRankTensor,
    TensorizedConv2d,
    TensorizedEmbedding,
    TensorizedLinear,
    factorize,
)
from tensorbayes.models.layers import MAX_RATIO, MIN_SEARCH_RANK, auto_order, default_max_rank, padded_shape

D = torch.float64
FORMATS = ["cp", "tucker", "tt", "ttm"]


def _site_values(tensor, dtype=D, requires_grad=False, seed=0):
    """Values for every sample site of a LowRankTensor: positive λ, Normal factors."""
    gen = torch.Generator().manual_seed(seed)
    lambdas = [torch.rand(r, generator=gen, dtype=dtype) + 0.5 for r in tensor.layout.ranks]
    factors = [
        torch.randn(s, generator=gen, dtype=dtype).requires_grad_(requires_grad) for s in tensor.layout.factor_shapes
    ]
    data = {tensor.lambda_site(b): lam for b, lam in enumerate(lambdas)}
    data.update({tensor.factor_site(k): f for k, f in enumerate(factors)})
    return data, factors


def _linear(format, **kwargs):
    kwargs.setdefault("max_rank", 3)
    return TensorizedLinear(12, 8, format=format, in_shape=(3, 4), out_shape=(2, 4), **kwargs).double()


# ----- factoring sizes -----


def test_factorize_balanced():
    assert factorize(784, 4) == (4, 7, 4, 7)
    assert factorize(625, 4) == (5, 5, 5, 5)
    assert factorize(12, 2) == (3, 4)
    assert factorize(8, 3) == (2, 2, 2)
    assert factorize(7, 1) == (7,)
    assert factorize(10**12, 4) == (1000,) * 4
    for n, d in [(784, 4), (1000, 3), (4096, 4), (2 * 3 * 5 * 7 * 11, 3)]:
        shape = factorize(n, d)
        assert math.prod(shape) == n and len(shape) == d and min(shape) >= 2


@pytest.mark.parametrize(
    "n, d, match",
    [(13, 2, "n=13 is prime"), (6, 4, "only 2 prime factors"), (202, 2, "too unevenly"), (176, 4, "too unevenly")],
)
def test_factorize_refuses_with_advice(n, d, match):
    with pytest.raises(FactorizationError, match=match) as info:
        factorize(n, d)
    assert isinstance(info.value, ValueError)
    assert "explicit shape" in str(info.value) and "pad n to" in str(info.value)


def test_factorize_of_one_says_it_has_no_prime_factors():
    with pytest.raises(FactorizationError, match="in_features=1 has no prime factors") as info:
        factorize(1, 2, name="in_features")
    assert "1 = " not in str(info.value) and "only 0" not in str(info.value)


def test_factorize_max_ratio_and_padding():
    assert factorize(202, 2, max_ratio=60) == (2, 101)
    assert padded_shape(13, 2) == (4, 4)
    assert padded_shape(10_000_019, 4) == (56, 57, 56, 56)
    for n, d in [(13, 2), (10_000_019, 4), (5, 3), (1, 2)]:
        shape = padded_shape(n, d)
        assert math.prod(shape) >= n and min(shape) >= 2 and max(shape) - min(shape) <= 1
    with pytest.raises(ValueError, match="d must be"):
        factorize(12, 0)


# ----- TensorizedLinear -----


@pytest.mark.parametrize("path", ["contract", "dense", "auto"])
@pytest.mark.parametrize("format", FORMATS)
def test_linear_matches_dense_layer(format, path, monkeypatch):
    layer = _linear(format)
    layer.path = path
    assert layer.layout.shape == (2, 4, 3, 4) and layer.layout.matrix_shape == (8, 12)
    if path == "contract":  # the contraction never asks for the dense weight
        monkeypatch.setattr(layer.layout, "to_matrix", lambda *a: pytest.fail("dense path taken"))
    if path == "dense":
        monkeypatch.setattr(layer.layout, "contract", lambda *a: pytest.fail("contract path taken"))
    data, factors = _site_values(layer.weight)
    x = torch.randn(2, 5, 12, dtype=D)
    y = poutine.condition(layer, data=data)(x)
    monkeypatch.undo()
    expected = F.linear(x, layer.layout.to_matrix(factors), layer.bias)
    assert y.shape == (2, 5, 8) and y.dtype == D
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("path", ["contract", "dense"])
def test_linear_without_bias(path):
    layer = _linear("ttm", bias=False)
    layer.path = path
    assert layer.bias is None
    data, factors = _site_values(layer.weight)
    x = torch.randn(3, 12, dtype=D)
    y = poutine.condition(layer, data=data)(x)
    torch.testing.assert_close(y, x @ layer.layout.to_matrix(factors).T, rtol=1e-12, atol=1e-12)


def test_linear_site_names_and_prior_draw():
    layer = TensorizedLinear(12, 8, format="tt", max_rank=2, in_shape=(3, 4), out_shape=(2, 4))
    trace = poutine.trace(layer).get_trace(torch.randn(4, 12))
    samples = [n for n, s in trace.nodes.items() if s["type"] == "sample"]
    assert samples == ["weight.lambda0", "weight.lambda1", "weight.lambda2"] + [f"weight.factor{k}" for k in range(4)]
    assert "bias" in [n for n, s in trace.nodes.items() if s["type"] == "param"]
    # a draw from the prior (default dtype) works with float64 inputs too
    assert layer.double()(torch.randn(4, 12, dtype=D)).dtype == D


def _ttm_counts(batch, r):
    """FLOPs of the 12 -> 8 TTM layer (cores (1,2,3,r), (r,4,4,1)), counted by hand as
    opt_einsum counts: 2 x the product of the sizes of a pairwise contraction's indices; the
    contraction takes the path of lower cost, its FLOPs plus MEMORY_COST per entry it writes."""
    sweep = 2 * batch * 3 * 4 * 2 * r + 2 * batch * 4 * 2 * r * 4  # x with core 1, then core 2
    sweep_entries = batch * 4 * 2 * r + batch * 8  # (batch, n2, m1, r), then the output
    weight_first = 2 * 2 * 3 * 4 * 4 * r + 2 * batch * 8 * 12  # form W, then multiply
    weight_first_entries = 2 * 4 * 3 * 4 + batch * 8
    dense = 2 * 2 * 3 * 4 * 4 * r + 2 * batch * 8 * 12
    by_sweep = path_cost(sweep, sweep_entries) <= path_cost(weight_first, weight_first_entries)
    return (sweep if by_sweep else weight_first), dense


@pytest.mark.parametrize("rank", [1, 2, 6])
def test_choose_path_follows_hand_counted_flops(rank):
    layer = _linear("ttm", max_rank=rank)
    assert layer.layout.ranks == (rank,)
    seen = set()
    for batch in [1, 2, 3, 4, 7, 16, 100, 10_000]:
        contract, dense = _ttm_counts(batch, rank)
        assert layer.flop_counts(batch) == {"contract": contract, "dense": dense}
        expected = "contract" if contract < dense else "dense"
        assert layer.choose_path(batch) == expected
        seen.add(expected)
    # a small batch sweeps and a big one forms W, at every rank: by FLOPs alone the sweep (112 B at
    # rank 1) would beat forming W (192 + 192 B) at any batch, but it writes 8 r entries a row
    assert seen == {"contract", "dense"}


def _optimal_counts(layout, batch):
    """Independent FLOP counts: opt_einsum's optimal paths on equations written from the labels."""
    labels = sorted({lab for labs in layout.labels for lab in labs} | {"batch"})
    sym = {lab: opt_einsum.get_symbol(i) for i, lab in enumerate(labels)}
    p, order = layout.row_modes, len(layout.shape)
    factors = ",".join("".join(sym[lab] for lab in labs) for labs in layout.labels)
    x = sym["batch"] + "".join(sym[f"m{k}"] for k in range(p, order))
    out = sym["batch"] + "".join(sym[f"m{k}"] for k in range(p))
    full = "".join(sym[f"m{k}"] for k in range(order))
    shapes = layout.factor_shapes
    contract = opt_einsum.contract_path(
        f"{x},{factors}->{out}", (batch,) + layout.col_shape, *shapes, shapes=True, optimize="optimal"
    )[1].opt_cost
    rows, cols = layout.matrix_shape
    dense = opt_einsum.contract_path(f"{factors}->{full}", *shapes, shapes=True, optimize="optimal")[1].opt_cost
    return int(contract), int(dense) + 2 * batch * rows * cols


@pytest.mark.parametrize("rank", [2, 6])
@pytest.mark.parametrize("format", FORMATS)
def test_choose_path_takes_the_lower_cost(format, rank):
    layer = _linear(format, max_rank=rank)
    rows = layer.layout.matrix_shape[0]
    for batch in [1, 2, 3, 8, 64, 4096]:
        contract, dense = _optimal_counts(layer.layout, batch)
        counts = layer.flop_counts(batch)
        assert counts["dense"] == dense
        # the contraction's count is that of the path actually planned: never below the optimum;
        # its cost adds MEMORY_COST for each entry it writes, its output at least
        assert contract <= counts["contract"]
        assert layer.layout.contract_cost(batch) >= path_cost(counts["contract"], batch * rows)
        if max(contract, dense) > 3 * min(contract, dense):  # a clear case: the FLOPs agree
            assert layer.choose_path(batch) == ("contract" if contract < dense else "dense")


@pytest.mark.parametrize("format", FORMATS)
def test_a_single_input_to_a_big_layer_is_contracted(format):
    layer = TensorizedLinear(784, 625, format=format, max_rank=8, order=4)
    assert layer.in_shape == (4, 7, 4, 7) and layer.out_shape == (5, 5, 5, 5)
    counts = layer.flop_counts(1)
    assert counts["contract"] * 2 < counts["dense"] and layer.choose_path(1) == "contract"


def _core_sizes(layer):
    return [m * n for m, n in zip(layer.out_shape, layer.in_shape)]


@pytest.mark.parametrize("size, rank", [(256, 8), (4096, 16)])
def test_default_ttm_modes_are_the_cheapest_pairing_of_the_balanced_cores(size, rank):
    layer = TensorizedLinear(size, size, format="ttm", max_rank=rank)
    balanced = TensorizedLinear(size, size, format="ttm", max_rank=rank, in_shape=factorize(size, 4))
    assert balanced.out_shape == factorize(size, 4)  # given one shape, a layer does not re-pair
    # the same cores, parameters and ranks, paired to contract more cheaply
    assert _core_sizes(layer) == _core_sizes(balanced)
    assert layer.layout.num_params() == balanced.layout.num_params() and layer.layout.ranks == balanced.layout.ranks
    cost = layer.layout.split_row_cost()
    assert cost < balanced.layout.split_row_cost() <= size * size
    # no pairing of the same core sizes, factors within MAX_RATIO, costs less (brute force)
    divisors = [f for f in range(2, size + 1) if size % f == 0]
    sides = [s for s in itertools.product(divisors, repeat=4) if math.prod(s) == size and max(s) <= MAX_RATIO * min(s)]
    for ins in sides:
        for outs in sides:
            if [m * n for m, n in zip(outs, ins)] == _core_sizes(balanced):
                assert TTM(outs + ins, layer.layout.ranks).split_row_cost() >= cost


def test_default_ttm_modes_stay_balanced_where_no_pairing_beats_dense():
    layer = TensorizedLinear(784, 625, format="ttm", max_rank=20)
    assert layer.in_shape == (4, 7, 4, 7) and layer.out_shape == (5, 5, 5, 5)
    assert layer.layout.split_row_cost() >= 784 * 625
    # the other formats never re-pair
    assert TensorizedLinear(4096, 4096, format="tt", max_rank=16).in_shape == (8, 8, 8, 8)


def test_repaired_ttm_layer_matches_its_matrix():
    layer = TensorizedLinear(256, 256, format="ttm", max_rank=4).double()
    assert layer.in_shape == (2, 2, 8, 8) and layer.out_shape == (8, 8, 2, 2)
    layer.path = "contract"
    data, factors = _site_values(layer.weight)
    x = torch.randn(5, 256, dtype=D)
    y = poutine.condition(layer, data=data)(x)
    expected = x @ layer.layout.to_matrix(factors).T + layer.bias
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("path", ["contract", "dense"])
@pytest.mark.parametrize("format", FORMATS)
def test_linear_gradients_reach_every_factor(format, path):
    layer = _linear(format)
    layer.path = path
    data, factors = _site_values(layer.weight, requires_grad=True)
    x = torch.randn(6, 12, dtype=D)
    y = poutine.condition(layer, data=data)(x)
    (y**2).sum().backward()
    for k, f in enumerate(factors):
        assert f.grad is not None and f.grad.abs().sum() > 0, f"factor {k}"
    assert layer.bias.grad is not None and layer.bias.grad.abs().sum() > 0


# ----- TensorizedConv2d -----


@pytest.mark.parametrize(
    "kernel_size, stride, padding, dilation",
    [(3, 1, 0, 1), ((3, 2), 2, 1, 1), (3, (2, 1), 2, 2), ((2, 3), 1, "same", 2), (1, 1, 0, 1)],
)
@pytest.mark.parametrize("format", FORMATS)
def test_conv_matches_dense_conv(format, kernel_size, stride, padding, dilation):
    conv = TensorizedConv2d(
        4,
        6,
        kernel_size,
        stride=stride,
        padding=padding,
        dilation=dilation,
        format=format,
        max_rank=3,
        in_shape=(2, 2),
        out_shape=(2, 3),
    ).double()
    kh, kw = conv.kernel_size
    window = (kh * kw,) if kh * kw > 1 else ()  # the window is one extra mode (none for 1x1)
    if format == "ttm":  # ... paired with an out mode of size 1
        expected_shape = (2, 3) + (1,) * len(window) + (2, 2) + window
    else:
        expected_shape = (2, 3, 2, 2) + window
    assert conv.layout.shape == expected_shape
    assert conv.layout.matrix_shape == (6, 4 * kh * kw)
    data, factors = _site_values(conv.weight)
    x = torch.randn(2, 4, 9, 8, dtype=D)
    y = poutine.condition(conv, data=data)(x)
    kernel = conv.layout.to_matrix(factors).reshape(6, 4, kh, kw)
    expected = F.conv2d(x, kernel, conv.bias, stride, padding, dilation)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    # unbatched input
    y1 = poutine.condition(conv, data=data)(x[0])
    torch.testing.assert_close(y1, expected[0], rtol=1e-12, atol=1e-12)


def test_conv_gradients_and_sites():
    conv = TensorizedConv2d(4, 6, 3, padding=1, format="tucker", max_rank=2, in_shape=(2, 2), out_shape=(2, 3)).double()
    data, factors = _site_values(conv.weight, requires_grad=True)
    poutine.condition(conv, data=data)(torch.randn(1, 4, 5, 5, dtype=D)).sum().backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in factors)
    trace = poutine.trace(conv).get_trace(torch.randn(1, 4, 5, 5))
    assert "weight.factor0" in trace.nodes and "weight.lambda0" in trace.nodes


# ----- TensorizedEmbedding -----


@pytest.mark.parametrize("format", FORMATS)
def test_embedding_rows_equal_the_table(format):
    emb = TensorizedEmbedding(29, 12, format=format, max_rank=3, row_shape=(2, 3, 5), col_shape=(2, 2, 3))
    assert emb.num_padding_rows == 1 and emb.layout.matrix_shape == (30, 12)
    data, factors = _site_values(emb.weight)
    indices = torch.randint(0, 29, (4, 5))
    indices[0, 0] = 28  # the last real row
    out = poutine.condition(emb, data=data)(indices)
    table = emb.layout.to_matrix(factors)
    assert out.shape == (4, 5, 12)
    torch.testing.assert_close(out, table[indices], rtol=1e-12, atol=1e-12)
    # int32 indices and a 0-d index
    torch.testing.assert_close(poutine.condition(emb, data=data)(indices.int()), out)
    torch.testing.assert_close(poutine.condition(emb, data=data)(torch.tensor(7)), table[7])


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("shape", [(0,), (3, 0)])
def test_embedding_of_no_indices(format, shape):
    emb = TensorizedEmbedding(29, 12, format=format, max_rank=3, row_shape=(2, 3, 5), col_shape=(2, 2, 3))
    data, _ = _site_values(emb.weight)
    out = poutine.condition(emb, data=data)(torch.zeros(shape, dtype=torch.long))
    assert out.shape == (*shape, 12)


def test_embedding_gradients():
    emb = TensorizedEmbedding(30, 12, format="ttm", max_rank=3, row_shape=(5, 6), col_shape=(3, 4))
    data, factors = _site_values(emb.weight, requires_grad=True)
    out = poutine.condition(emb, data=data)(torch.arange(30))
    (out**2).sum().backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in factors)


def test_embedding_with_a_trillion_virtual_rows():
    emb = TensorizedEmbedding(10**12, 16, format="ttm", max_rank=2)
    assert emb.row_shape == (1000,) * 4 and math.prod(emb.col_shape) == 16
    assert emb.weight.layout.num_params() < 10**5
    data, factors = _site_values(emb.weight)
    indices = torch.tensor([0, 123_456_789_012, 10**12 - 1])
    out = poutine.condition(emb, data=data)(indices)
    assert out.shape == (3, 16)
    # each row against the entries at its full multi-indices (a different gather)
    layout = emb.layout
    for i, row in zip(indices, out):
        digits = layout.unravel(i.reshape(1), layout.row_shape).expand(16, -1)
        cols = layout.unravel(torch.arange(16), layout.col_shape)
        torch.testing.assert_close(row, layout.entries(factors, torch.cat([digits, cols], 1)), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="num_embeddings"):
        emb(torch.tensor([10**12]))


def test_embedding_pads_sizes_that_do_not_factor():
    emb = TensorizedEmbedding(10_000_019, 16, max_rank=2)  # a prime number of rows
    assert emb.row_shape == (56, 57, 56, 56) and emb.col_shape == (2, 2, 2, 2)
    assert emb.num_padding_rows == math.prod(emb.row_shape) - 10_000_019 == 10_093
    assert emb(torch.tensor([10_000_018])).shape == (1, 16)
    # an exact split at a lower order is preferred to padding: 176 = 4 x 11 x 4
    assert TensorizedEmbedding(176, 16, max_rank=2).row_shape == (4, 11, 4)
    with pytest.raises(FactorizationError, match="num_embeddings=13 is prime"):
        TensorizedEmbedding(13, 8, padding=False)
    # 8 = 2 x 2 x 2 sets the order (3), 13 is padded to 18 = 2 x 3 x 3
    assert TensorizedEmbedding(13, 8, max_rank=2).row_shape == padded_shape(13, 3) == (2, 3, 3)


# ----- initialization -----


@pytest.mark.parametrize("format", FORMATS)
def test_initial_weight_has_kaiming_variance(format):
    layer = TensorizedLinear(256, 64, format=format, max_rank=4, in_shape=(16, 16), out_shape=(8, 8))
    target = 1 / 256
    assert layer.weight.init_variance == target
    layout = layer.layout
    s = layer.weight.init_loc_scale()
    assert s ** (2 * len(layout.labels)) * math.prod(layout.ranks) == pytest.approx(target)
    second = []
    for seed in range(30):  # many layers' initial posterior means
        guide = MeanField(layer, seed=seed)
        second.append(layout.to_matrix(guide.factor_means(layer.weight)).pow(2).mean())
    assert torch.stack(second).mean().item() == pytest.approx(target, rel=0.3)


@pytest.mark.parametrize("format", ["tt", "ttm"])
@pytest.mark.parametrize("in_features, out_features", [(4, 4096), (4096, 16)], ids=["wide", "narrow"])
def test_bias_bound_of_a_non_square_layer_is_from_fan_in(format, in_features, out_features):
    # as torch.nn.Linear: bias ~ U(-1/sqrt(in_features), 1/sqrt(in_features)); the bounds from
    # in_features and from out_features differ 32x (wide) and 16x (narrow), so either mistake shows
    torch.manual_seed(0)
    layer = TensorizedLinear(in_features, out_features, format=format, max_rank=2)
    bias = layer.bias.detach().double()
    bound = 1 / math.sqrt(in_features)
    assert bias.shape == (out_features,)
    # narrow: 16 draws from U(-1/4, 1/4) (the bound from out_features) all within 1/64: probability 16**-16
    assert bias.abs().max() <= bound
    if out_features > in_features:
        # 4096 draws fill the interval: the largest within 1 % of the bound (it falls short with
        # probability 0.99**4096 < 1e-17), 32x above the bound from out_features
        assert bias.abs().max() > 0.99 * bound
        # and spread as U(-bound, bound): std bound / sqrt(3), to 5 % (the sampling error of 4096 draws is 1.1 %)
        assert abs(bias.std() / (bound / math.sqrt(3)) - 1) < 0.05
    else:
        assert bias.abs().max() > 0.5 * bound  # not a narrower rule either: probability 2**-16 of failing


def test_initial_variance_of_conv_and_embedding():
    conv = TensorizedConv2d(8, 16, 3, format="ttm", max_rank=4)
    assert conv.weight.init_variance == pytest.approx(1 / 72)
    emb = TensorizedEmbedding(100, 16, format="cp", max_rank=4)
    assert emb.weight.init_variance == 1.0
    custom = TensorizedLinear(16, 16, init_variance=0.5)
    assert custom.weight.init_variance == 0.5
    assert LowRankTensor((3, 4), format="cp", max_rank=2).init_variance == 1.0  # the default


# ----- inside a Pyro model -----


class TinyClassifier(PyroModule):
    def __init__(self, format):
        super().__init__()
        self.conv = TensorizedConv2d(4, 6, 3, padding=1, format=format, max_rank=2, in_shape=(2, 2), out_shape=(2, 3))
        self.fc = TensorizedLinear(6 * 4 * 4, 12, format=format, max_rank=2, in_shape=(4, 4, 6), out_shape=(2, 2, 3))
        self.emb = TensorizedEmbedding(30, 12, format=format, max_rank=2, row_shape=(2, 3, 5), col_shape=(2, 2, 3))
        self.out = PyroModule[torch.nn.Linear](12, 3)

    def forward(self, images, tokens, labels=None, num_data=None):
        h = torch.relu(self.conv(images)).flatten(1)
        h = torch.relu(self.fc(h)) + self.emb(tokens).mean(1)
        logits = self.out(h)
        batch = images.shape[0]
        with pyro.plate("data", num_data or batch, subsample=torch.arange(batch)):
            pyro.sample("obs", dist.Categorical(logits=logits), obs=labels)
        return logits


@pytest.mark.parametrize("format", FORMATS)
def test_mean_field_elbo_on_a_tiny_classifier(format):
    model = TinyClassifier(format)
    guide = MeanField(model, seed=0)
    assert set(guide.tensors()) == {"conv.weight", "fc.weight", "emb.weight"}
    images, tokens, labels = torch.randn(5, 4, 4, 4), torch.randint(0, 30, (5, 3)), torch.randint(0, 3, (5,))
    loss = TraceMeanField_ELBO().differentiable_loss(model, guide, images, tokens, labels, num_data=100)
    assert torch.isfinite(loss)
    loss.backward()
    for name, param in guide.named_parameters():
        if "locs" in name:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert model.fc.bias.grad is not None and model.out.weight.grad is not None


# ----- bad input -----


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="in_shape"):
        TensorizedLinear(12, 8, in_shape=(3, 5), out_shape=(2, 4))
    with pytest.raises(ValueError, match="out_shape"):
        TensorizedLinear(12, 8, in_shape=(3, 4), out_shape=(3, 4))
    with pytest.raises(ValueError, match="same number of modes"):
        TensorizedLinear(12, 8, format="ttm", in_shape=(3, 4), out_shape=(2, 2, 2))
    TensorizedLinear(12, 8, format="tt", in_shape=(3, 4), out_shape=(2, 2, 2))  # fine outside TTM
    with pytest.raises(ValueError, match="max_rank"):
        TensorizedLinear(12, 8, in_shape=(3, 4), out_shape=(2, 4), max_rank=0)
    with pytest.raises(ValueError, match="in_features"):
        TensorizedLinear(0, 8)
    with pytest.raises(ValueError, match="in_features=13 is prime"):
        TensorizedLinear(13, 8)
    with pytest.raises(ValueError, match="format"):
        TensorizedLinear(12, 8, format="svd")
    with pytest.raises(ValueError, match="init_variance"):
        TensorizedLinear(12, 8, init_variance=-1.0)
    with pytest.raises(ValueError, match="kernel_size"):
        TensorizedConv2d(4, 6, 0, in_shape=(2, 2), out_shape=(2, 3))
    with pytest.raises(ValueError, match="in_shape"):
        TensorizedConv2d(4, 6, 3, in_shape=(2, 3), out_shape=(2, 3))
    with pytest.raises(ValueError, match="padding='same' needs stride=1"):
        TensorizedConv2d(4, 6, 3, stride=2, padding="same", in_shape=(2, 2), out_shape=(2, 3))
    with pytest.raises(ValueError, match="row_shape"):
        TensorizedEmbedding(31, 12, row_shape=(2, 3, 5), col_shape=(2, 2, 3))
    with pytest.raises(ValueError, match="row_shape"):
        TensorizedEmbedding(29, 12, row_shape=(2, 3, 5), col_shape=(2, 2, 3), padding=False)
    with pytest.raises(ValueError, match="col_shape"):
        TensorizedEmbedding(30, 12, row_shape=(2, 3, 5), col_shape=(2, 2, 2))
    layer = _linear("cp")
    with pytest.raises(ValueError, match="path"):
        layer.path = "fast"
    assert layer.path == "auto"


def test_bad_inputs_name_the_argument():
    layer = _linear("ttm")
    with pytest.raises(ValueError, match="in_features=12"):
        layer(torch.randn(3, 11, dtype=D))
    with pytest.raises(ValueError, match="in_features=12"):
        layer(torch.tensor(1.0, dtype=D))
    with pytest.raises(TypeError, match="floating point"):
        layer(torch.ones(3, 12, dtype=torch.long))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        layer([[0.0] * 12])
    conv = TensorizedConv2d(4, 6, 3, in_shape=(2, 2), out_shape=(2, 3))
    with pytest.raises(ValueError, match="in_channels=4"):
        conv(torch.randn(1, 5, 6, 6))
    with pytest.raises(TypeError, match="floating point"):
        conv(torch.ones(1, 4, 6, 6, dtype=torch.int64))
    emb = TensorizedEmbedding(29, 12, row_shape=(2, 3, 5), col_shape=(2, 2, 3))
    with pytest.raises(ValueError, match=r"indices must lie in \[0, num_embeddings=29\)"):
        emb(torch.tensor([29]))  # a padding row
    with pytest.raises(ValueError, match="indices"):
        emb(torch.tensor([-1]))
    with pytest.raises(TypeError, match="indices must be an integer tensor"):
        emb(torch.tensor([1.0]))


# ----- default maximum ranks: a budget of the dense weight -----


def test_budget_rank_is_the_largest_uniform_rank_within_the_budget():
    # TTM (5,5,5,5) x (4,7,4,7): cores of 20, 35, 20, 35 entries per pair of bond indices;
    # rank 20 holds 20*20 + 20*35*20 + 20*20*20 + 20*35 = 23,100 <= 490,000 / 20, rank 21 25,389
    shape = (5, 5, 5, 5, 4, 7, 4, 7)
    assert tb.models.budget_rank("ttm", shape, 4) == 20
    # Tucker: core r^8 plus r per entry of every mode: 3^8 + 3*42 = 6,687 fits, 4^8 = 65,536 does not
    assert tb.models.budget_rank("tucker", shape, 4) == 3
    # CP: r * 42 <= 24,500
    assert tb.models.budget_rank("cp", shape, 4) == 583
    probe = get_format("tt")(shape, 1, row_modes=4)
    r = tb.models.budget_rank("tt", shape, 4, budget=0.5)
    clipped = [tuple(min(k, lim) for lim in probe.max_ranks()) for k in (r, r + 1)]
    assert probe.num_params(clipped[0]) <= 0.5 * 490_000 < probe.num_params(clipped[1])


@pytest.mark.parametrize("fmt", ["cp", "tucker", "tt", "ttm"])
def test_default_layers_hold_at_most_a_twentieth_of_the_dense_weight(fmt):
    linear = TensorizedLinear(784, 625, format=fmt)
    assert linear.layout.num_params() <= 784 * 625 / 20
    conv = TensorizedConv2d(512, 512, 3, format=fmt)  # large enough for a Tucker core of rank 8
    assert conv.layout.num_params() <= 512 * 512 * 9 / 20
    table = TensorizedEmbedding(10_000, 64, format=fmt)  # a table keeps a fixed default rank
    assert table.weight.max_ranks == TensorizedEmbedding(10_000, 64, format=fmt, max_rank=8).weight.max_ranks


def test_a_small_layer_reaches_the_search_rank_within_a_quarter_of_its_entries():
    # a 64 x 288 TTM kernel at two modes a side, (8, 8, 1) x (4, 8, 9): cores of 32 r1, 64 r1 r2
    # and 9 r2 entries. A twentieth (921) holds rank 3 (699; rank 4: 1,188); a quarter (4,608)
    # holds rank 8 (4,424), which is where the floor stops
    shape = (8, 8, 1, 4, 8, 9)
    assert tb.models.budget_rank("ttm", shape, 3) == 3
    assert default_max_rank("ttm", shape, 3) == MIN_SEARCH_RANK
    conv = TensorizedConv2d(32, 64, 3, format="ttm")
    assert conv.layout.shape == shape and conv.layout.ranks == (8, 8)
    # Tucker 64 -> 128, 3 x 3: no order holds rank 8 in a twentieth; a quarter (18,432) holds
    # 7^5 + 7 * (8 + 16 + 8 + 8 + 9) = 17,150 at two modes a side, rank 8 a core of 32,768
    tucker = TensorizedConv2d(64, 128, 3, format="tucker")
    assert tucker.layout.shape == (8, 16, 8, 8, 9) and tucker.layout.ranks == (7,) * 5
    # a layer whose twentieth holds the rank keeps its budget rank
    assert default_max_rank("ttm", (5, 5, 5, 5, 4, 7, 4, 7), 4) == 20


def test_a_layer_picks_the_largest_order_whose_budget_leaves_the_search_room():
    # Tucker 784 x 625: the budget holds rank 3 at four modes a side, (25, 25) x (28, 28) at two
    # holds 12^4 + 12 * (25 + 25 + 28 + 28) = 22,008 <= 24,500 (rank 13: 29,939); three modes do
    # not factor 625 within MAX_RATIO. TTM, TT and CP keep four modes (ranks 20, 35, 583).
    tucker = TensorizedLinear(784, 625, format="tucker")
    assert (tucker.in_shape, tucker.out_shape) == ((28, 28), (25, 25))
    assert tucker.layout.ranks == (12,) * 4 and 12 >= MIN_SEARCH_RANK
    for fmt in ("ttm", "tt", "cp"):
        assert len(TensorizedLinear(784, 625, format=fmt).in_shape) == 4
    # the order depends on the format and sizes only: a fixed max_rank gets the default's layout
    assert TensorizedLinear(784, 625, format="tucker", max_rank=3).in_shape == (28, 28)
    assert TensorizedLinear(784, 625, format="tucker", order=4).in_shape == (4, 7, 4, 7)


def test_where_no_order_leaves_the_search_room_the_fewest_modes_are_taken():
    # Tucker 64 x 64: budget 204 entries; rank 1 at four modes a side, 2 at three, 3 at two
    ranks = {d: tb.models.budget_rank("tucker", (s := factorize(64, d)) + s, d) for d in (4, 3, 2)}
    assert ranks == {4: 1, 3: 2, 2: 3}
    assert TensorizedLinear(64, 64, format="tucker").in_shape == factorize(64, 2)
    # TT 64 x 64: rank 3 at every order; two modes a side
    sizes = {"in": 64, "out": 64}
    assert auto_order("tt", sizes, lambda s: (s["out"] + s["in"], len(s["out"]))) == 2
    # a size that factors at no order: nothing to pick
    assert auto_order("tt", {"in": 97, "out": 64}, lambda s: (s["out"] + s["in"], len(s["out"]))) is None


def test_a_ttm_of_one_mode_a_side_takes_its_default_max_rank():
    # one core, no rank bond: the default budget has nothing to bound (a prime size's only shape)
    assert tb.models.budget_rank("ttm", (7, 13), 1) == 1
    linear = TensorizedLinear(13, 7, format="ttm", in_shape=(13,), out_shape=(7,)).double()
    assert linear.layout.ranks == () and linear.layout.shape == (7, 13)
    data, factors = _site_values(linear.weight)
    x = torch.randn(5, 13, dtype=D)
    y = poutine.condition(linear, data=data)(x)
    torch.testing.assert_close(y, F.linear(x, linear.layout.to_matrix(factors), linear.bias), rtol=1e-12, atol=1e-12)
    conv = TensorizedConv2d(3, 7, 1, format="ttm", in_shape=(3,), out_shape=(7,))  # a 1 x 1 kernel: no window core
    assert conv.layout.ranks == ()
    assert TensorizedLinear(64, 64, format="ttm", order=1).layout.ranks == ()


def test_max_rank_may_be_a_numpy_int():
    layer = TensorizedLinear(12, 8, format="tt", in_shape=(3, 4), out_shape=(2, 4), max_rank=np.int64(2))
    assert layer.layout.ranks == (2, 2, 2) and all(type(r) is int for r in layer.layout.ranks)
    layer = TensorizedLinear(12, 8, format="tt", in_shape=(3, 4), out_shape=(2, 4), max_rank=(np.int32(1), 2, 3))
    assert layer.layout.ranks == (1, 2, 3)


def test_prior_kwargs_that_are_not_a_dict_are_named():
    with pytest.raises(TypeError, match="prior_kwargs must be a dict"):
        TensorizedLinear(12, 8, in_shape=(3, 4), out_shape=(2, 4), prior_kwargs=[1.0])


def test_budget_rank_refuses_a_budget_outside_zero_one():
    with pytest.raises(ValueError, match="budget must be a share in \\(0, 1\\], got 0"):
        tb.models.budget_rank("tt", (4, 4, 4), 1, budget=0)


def test_tensorize_and_budget_rank_name_arguments_of_the_wrong_form():
    with pytest.raises(TypeError, match="prior_kwargs must be a dict"):
        tb.models.tensorize(torch.nn.Linear(256, 256), prior_kwargs=[1.0])
    with pytest.raises(TypeError, match="shape must be a sequence of positive ints, got 16"):
        tb.models.budget_rank("tt", 16, 1)


def test_a_conv_refuses_an_input_before_drawing_its_kernel():
    """A wrong channel count or too few dims is refused before the draw: the random stream and a
    trace are left as they were."""
    conv = TensorizedConv2d(4, 6, 3, in_shape=(2, 2), out_shape=(2, 3), format="tt", max_rank=2)
    for x in (torch.randn(1, 5, 6, 6), torch.randn(6, 6), torch.randn(2, 1, 5, 6, 6)):
        state = torch.get_rng_state()
        with poutine.trace() as tracer, pytest.raises(ValueError, match="in_channels=4"):
            conv(x)
        assert torch.equal(torch.get_rng_state(), state)
        assert not [name for name, site in tracer.trace.nodes.items() if site["type"] == "sample"]
    with pytest.raises(ValueError, match="in_channels=4"):  # five dims without particles: after the draw
        conv(torch.randn(2, 1, 4, 6, 6))


def test_budget_rank_and_auto_order_name_a_format_of_the_wrong_kind():
    layout = get_format("cp")((4, 4, 4, 4), 2, row_modes=2)
    with pytest.raises(ValueError, match="format must be one of"):
        tb.models.budget_rank(layout, (4, 4, 4, 4), 2)  # a layout, not its format
    with pytest.raises(ValueError, match="format must be one of"):
        auto_order(3, {"in": 64, "out": 64}, lambda s: (s["out"] + s["in"], len(s["out"])))
    assert tb.models.budget_rank(get_format("cp"), (4, 4, 4, 4), 2) == tb.models.budget_rank("CP", (4, 4, 4, 4), 2)
