"""
TensorizedEmbeddingBag: bags equal torch's embedding_bag over the reconstructed table (sum,
mean, offsets, 2-d input, per-sample weights, padding rows) in every format, gradients w.r.t.
the factors equal the dense path's, the lookup deduplicates, a table of 1e12 virtual rows is
looked up without being formed, the guide finds its sites, the compact export predicts the same,
and bad input is refused naming the argument.
"""

import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine

from tensorbayes.guides import MeanField
from tensorbayes.models.embedding_bag import CompactEmbeddingBag, TensorizedEmbeddingBag, bag_lookup, check_bags

D = torch.float64
FORMATS = ["cp", "tucker", "tt", "ttm"]
NUM = 30  # rows; the row shape (4, 8) has 32, so two padding rows


def _bag(format, mode="sum"):
    return TensorizedEmbeddingBag(NUM, 6, format=format, max_rank=3, mode=mode, row_shape=(4, 8), col_shape=(2, 3))


def _factors(layer, requires_grad=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=D).requires_grad_(requires_grad) for s in layer.layout.factor_shapes]


INPUT = torch.tensor([1, 5, 5, 29, 0, 3, 3, 3, 17])
OFFSETS = torch.tensor([0, 3, 3, 5])  # bags of 3, 0, 2 and 4 indices (one empty)


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_bags_equal_dense_embedding_bag(format, mode):
    layer = _bag(format, mode)
    factors = _factors(layer)
    table = layer.layout.to_matrix(factors)[:NUM]
    out = layer.bag(factors, INPUT, OFFSETS)
    assert out.shape == (4, 6) and out.dtype == D
    torch.testing.assert_close(out, F.embedding_bag(INPUT, table, OFFSETS, mode=mode))
    square = torch.tensor([[1, 5, 29], [0, 0, 7]])  # 2-d: fixed-length bags
    torch.testing.assert_close(layer.bag(factors, square), F.embedding_bag(square, table, mode=mode))


@pytest.mark.parametrize("format", FORMATS)
def test_per_sample_weights_and_gradients_equal_dense_path(format):
    layer = _bag(format)
    weights = torch.rand(len(INPUT), dtype=D)
    factors = _factors(layer, requires_grad=True)
    out = layer.bag(factors, INPUT, OFFSETS, per_sample_weights=weights)
    probe = torch.randn(out.shape, dtype=D)
    grads = torch.autograd.grad((out * probe).sum(), factors)
    dense = F.embedding_bag(
        INPUT, layer.layout.to_matrix(factors)[:NUM], OFFSETS, mode="sum", per_sample_weights=weights
    )
    torch.testing.assert_close(out, dense)
    for g, ref in zip(grads, torch.autograd.grad((dense * probe).sum(), factors)):
        torch.testing.assert_close(g, ref)


def test_gather_grows_with_unique_indices():
    layer = _bag("ttm")
    factors = _factors(layer)
    seen = []
    rows = layer.layout.rows
    layer.layout.rows = lambda f, idx: seen.append(idx.clone()) or rows(f, idx)
    try:
        out = layer.bag(factors, torch.tensor([7] * 1000 + [3] * 500), torch.tensor([0, 700]))
    finally:
        del layer.layout.rows
    assert seen[0].tolist() == [3, 7]
    torch.testing.assert_close(out[0], 700 * layer.layout.rows(factors, torch.tensor([7]))[0])


def test_forward_draws_the_weight_and_matches_bag():
    layer = _bag("tt").double()
    factors = _factors(layer)
    data = {layer.weight.factor_site(k): f for k, f in enumerate(factors)}
    data.update({layer.weight.lambda_site(b): torch.ones(r, dtype=D) for b, r in enumerate(layer.layout.ranks)})
    out = poutine.condition(layer, data=data)(INPUT, OFFSETS)
    torch.testing.assert_close(out, layer.bag(factors, INPUT, OFFSETS))
    trace = poutine.trace(layer).get_trace(INPUT, OFFSETS)
    assert {"weight.factor0", "weight.lambda0"} <= set(trace.nodes)


def test_guide_finds_the_weight_and_compact_export_matches():
    layer = _bag("ttm")
    guide = MeanField(layer, seed=0)
    assert set(guide.tensors()) == {"weight"}
    means = guide.factor_means(layer.weight)
    compact = CompactEmbeddingBag(layer, means)
    assert not any(isinstance(m, pyro.nn.PyroModule) for m in compact.modules())
    torch.testing.assert_close(compact(INPUT, OFFSETS), layer.bag(means, INPUT, OFFSETS))
    assert "mode='sum'" in repr(compact)


def test_export_gives_a_compact_bag_not_a_compact_embedding():
    """The bag subclasses TensorizedEmbedding: tb.export must still pick CompactEmbeddingBag."""
    import tensorbayes as tb

    layer = _bag("cp")
    guide = MeanField(layer, seed=0)
    net = tb.export(layer, guide)
    assert isinstance(net, CompactEmbeddingBag)
    torch.testing.assert_close(net(INPUT, OFFSETS), layer.bag(guide.factor_means(layer.weight), INPUT, OFFSETS))


def test_trillion_rows_never_formed():
    layer = TensorizedEmbeddingBag(10**12, 16, format="ttm", max_rank=4)
    assert layer.layout.dense_size * 4 > 2**44  # 16 TB in float32: it could not be allocated here
    assert layer.layout.num_params() < 10**6
    idx = torch.tensor([0, 10**12 - 1, 123_456_789_012, 10**12 - 1])
    out = layer(idx, torch.tensor([0, 2]))
    assert out.shape == (2, 16) and torch.isfinite(out).all()
    factors = _factors(layer)
    rows = layer.layout.rows(factors, idx)
    torch.testing.assert_close(
        layer.bag(factors, idx, torch.tensor([0, 2])), torch.stack([rows[:2].sum(0), rows[2:].sum(0)])
    )


def test_padding_rows_are_never_indexed():
    layer = _bag("ttm")
    assert layer.num_padding_rows == 2
    with pytest.raises(ValueError, match=r"input must hold row indices in \[0, num_embeddings=30\)"):
        layer(torch.tensor([30]), torch.tensor([0]))


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((torch.tensor([1.0]), torch.tensor([0])), TypeError, "input must be an integer tensor"),
        (([1, 2], torch.tensor([0])), TypeError, "input must be a torch.Tensor"),
        ((torch.tensor([-1, 2]), torch.tensor([0])), ValueError, "input must hold row indices"),
        ((torch.tensor([1, 2]), None), ValueError, "offsets must be given"),
        ((torch.tensor([[1, 2]]), torch.tensor([0])), ValueError, "offsets must be None for a 2-d input"),
        ((torch.tensor([1, 2]), torch.tensor([0.0])), TypeError, "offsets must be an integer tensor"),
        ((torch.tensor([1, 2]), torch.tensor([0, -1])), ValueError, "offsets must be non-negative"),
        ((torch.tensor([1, 2]), torch.tensor([1, 2])), ValueError, "offsets must start at 0"),
        ((torch.tensor([1, 2, 3]), torch.tensor([0, 2, 1])), ValueError, "offsets must be sorted"),
        ((torch.tensor([1, 2]), torch.tensor([0, 3])), ValueError, "offsets must be at most len"),
        ((torch.tensor([1, 2]), torch.tensor([[0]])), ValueError, "offsets must be 1-d"),
        # no bags for some indices: torch's embedding_bag crashes the process on it
        ((torch.tensor([1, 2]), torch.tensor([], dtype=torch.long)), ValueError, "offsets must start every bag"),
        ((torch.zeros(2, 2, 2, dtype=torch.long), None), ValueError, "input must be 1-d"),
    ],
)
def test_bad_input_names_the_argument(args, error, match):
    with pytest.raises(error, match=match):
        _bag("tt")(*args)


def test_bad_weights_and_mode():
    layer = _bag("cp", mode="mean")
    with pytest.raises(ValueError, match="per_sample_weights needs mode='sum'"):
        layer(INPUT, OFFSETS, per_sample_weights=torch.ones(len(INPUT)))
    with pytest.raises(TypeError, match="per_sample_weights must be a floating point"):
        check_bags(INPUT, OFFSETS, torch.ones(len(INPUT), dtype=torch.long), "sum", NUM)
    with pytest.raises(ValueError, match="per_sample_weights must have the shape of input"):
        check_bags(INPUT, OFFSETS, torch.ones(3), "sum", NUM)
    with pytest.raises(ValueError, match="mode must be one of"):
        TensorizedEmbeddingBag(NUM, 6, mode="max")


def test_empty_input_gives_zero_bags():
    layer = _bag("ttm")
    factors = _factors(layer, requires_grad=True)
    idx, off, _ = check_bags(torch.tensor([], dtype=torch.long), torch.tensor([0, 0]), None, "sum", NUM)
    out = bag_lookup(layer.layout, factors, idx, off)
    assert out.shape == (2, 6) and (out == 0).all()
