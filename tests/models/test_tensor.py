"""
LowRankTensor: site names, the product-form prior variances, the sufficient statistics of the
λ M-step (slice_moments), rank clipping and argument checking.
"""

import math

import pyro
import pytest
import torch
from pyro import poutine

import tensorbayes as tb
from tensorbayes.formats import get_format
from tensorbayes.models import LowRankTensor, TensorCompletion
from tensorbayes.models.tensor import CompactTensor
from tensorbayes.priors import HalfCauchy

D = torch.float64

CASES = [
    pytest.param("tt", (3, 4, 5, 2), (2, 3, 2), id="tt"),
    pytest.param("ttm", (2, 3, 4, 3, 2), (3, 2), id="ttm-odd"),
    pytest.param("tucker", (3, 4, 5), (2, 3, 4), id="tucker"),
    pytest.param("cp", (3, 4, 5), 3, id="cp"),
]


def _lambdas(tensor, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(r, generator=gen, dtype=D) * 2 + 0.1 for r in tensor.layout.ranks]


def _expected_variance(layout, lambdas, k):
    """Written out per format, independently of prior_variances."""
    shape = layout.factor_shapes[k]
    if layout.name in ("tt", "ttm"):
        left = lambdas[k - 1] if k > 0 else torch.ones(1, dtype=D)
        right = lambdas[k] if k < layout.num_bonds else torch.ones(1, dtype=D)
        var = left.reshape(-1, *[1] * (len(shape) - 1)) * right.reshape(*[1] * (len(shape) - 1), -1)
    elif layout.name == "tucker":
        if k == 0:
            var = torch.ones((), dtype=D)
            for lam in lambdas:
                var = var.unsqueeze(-1) * lam
        else:
            var = lambdas[k - 1].reshape(1, -1)
    else:
        var = lambdas[0].reshape(1, -1)
    return var.expand(shape)


# ----- site names -----


def test_site_names_standalone_and_inside_a_model():
    alone = LowRankTensor((3, 4, 5), format="tt", max_rank=2)
    trace = poutine.trace(alone).get_trace()
    sites = [n for n, s in trace.nodes.items() if s["type"] == "sample"]
    assert sites == ["lambda0", "lambda1", "factor0", "factor1", "factor2"]

    model = TensorCompletion((3, 4, 5), format="tucker", max_rank=2, noise=0.1)
    assert model.tensor.lambda_site(1) == "tensor.lambda1"
    assert model.tensor.factor_site(0) == "tensor.factor0"
    index = torch.tensor([[0, 1, 2], [2, 3, 4]])
    trace = poutine.trace(model).get_trace(index)
    sites = [n for n, s in trace.nodes.items() if s["type"] == "sample"]
    expected = [f"tensor.lambda{b}" for b in range(3)] + [f"tensor.factor{k}" for k in range(4)] + ["obs"]
    assert [s for s in sites if s != "data"] == expected
    # shapes of the factor sites are the layout's
    for k, shape in enumerate(model.tensor.layout.factor_shapes):
        assert tuple(trace.nodes[f"tensor.factor{k}"]["value"].shape) == shape


# ----- the prior -----


@pytest.mark.parametrize("format, shape, ranks", CASES)
def test_prior_variance_product_form(format, shape, ranks):
    tensor = LowRankTensor(shape, format=format, max_rank=ranks)
    lambdas = _lambdas(tensor)
    data = {tensor.lambda_site(b): lam for b, lam in enumerate(lambdas)}
    trace = poutine.trace(poutine.condition(tensor, data=data)).get_trace()
    for k in range(len(tensor.layout.factor_shapes)):
        fn = trace.nodes[tensor.factor_site(k)]["fn"]
        normal = fn.base_dist
        assert isinstance(normal, pyro.distributions.Normal)
        assert fn.event_shape == tensor.layout.factor_shapes[k]
        torch.testing.assert_close(normal.loc, torch.zeros_like(normal.loc))
        variance = normal.scale.to(D) ** 2
        torch.testing.assert_close(variance, _expected_variance(tensor.layout, lambdas, k), rtol=1e-12, atol=0)
    # the λ sites carry the hyperprior
    for b, lam in enumerate(lambdas):
        site = trace.nodes[tensor.lambda_site(b)]
        torch.testing.assert_close(
            site["fn"].log_prob(lam).to(D), HalfCauchy().log_prob(lam).sum(), rtol=1e-6, atol=1e-6
        )


def _expected_log_density(tensor, second, lambdas):
    """Σ_f Σ_entries E log N(x; 0, var) with E x² = second, from the hand-written variances."""
    total = 0.0
    for k, e in enumerate(second):
        var = _expected_variance(tensor.layout, lambdas, k)
        total = total + (-0.5 * torch.log(2 * math.pi * var) - e / (2 * var)).sum()
    return total


@pytest.mark.parametrize("format, shape, ranks", CASES)
def test_slice_moments_give_the_lambda_dependent_part(format, shape, ranks):
    tensor = LowRankTensor(shape, format=format, max_rank=ranks)
    gen = torch.Generator().manual_seed(1)
    second = [torch.rand(s, generator=gen, dtype=D) + 0.05 for s in tensor.layout.factor_shapes]
    base = _lambdas(tensor, seed=2)
    moments = tensor.slice_moments(second, base)
    assert len(moments) == tensor.layout.num_bonds
    for b, (m, d) in enumerate(moments):
        # D: the number of entries attached to one rank index of bond b
        expected_d = sum(
            math.prod(tensor.layout.factor_shapes[f]) // tensor.layout.ranks[b] for f, _ in tensor.layout.bonds[b]
        )
        assert int(torch.as_tensor(d).reshape(-1)[0]) == expected_d
        assert m.shape == (tensor.layout.ranks[b],)

        # derivative in log λ_b of the full expected log density = -D/2 + M / (2 λ_b)
        log_lam = base[b].log().clone().requires_grad_(True)
        lambdas = list(base)
        lambdas[b] = log_lam.exp()
        (grad,) = torch.autograd.grad(_expected_log_density(tensor, second, lambdas), log_lam)
        torch.testing.assert_close(grad, -d / 2 + m / (2 * base[b]), rtol=1e-10, atol=1e-10)

        # and finite differences: moving λ_b changes the density exactly as the formula says
        moved = list(base)
        moved[b] = base[b] * torch.linspace(0.3, 3.0, len(base[b]), dtype=D)
        change = _expected_log_density(tensor, second, moved) - _expected_log_density(tensor, second, base)

        def f(lam):  # only called within this iteration
            return (-d / 2 * lam.log() - m / (2 * lam)).sum()  # noqa: B023

        torch.testing.assert_close(change, f(moved[b]) - f(base[b]), rtol=1e-10, atol=1e-9)


def test_slice_moments_tt_by_hand():
    """Three-core TT: M written out with the neighbouring scales divided out."""
    tensor = LowRankTensor((3, 4, 5), format="tt", max_rank=(2, 3))
    gen = torch.Generator().manual_seed(5)
    e0, e1, e2 = [torch.rand(s, generator=gen, dtype=D) for s in tensor.layout.factor_shapes]
    lam0, lam1 = _lambdas(tensor, seed=6)
    (m0, d0), (m1, d1) = tensor.slice_moments([e0, e1, e2], [lam0, lam1])
    torch.testing.assert_close(m0, e0.sum((0, 1)) + (e1 / lam1).sum((1, 2)))
    torch.testing.assert_close(m1, (e1 / lam0[:, None, None]).sum((0, 1)) + e2.sum((1, 2)))
    assert d0 == 3 + 4 * 3 and d1 == 2 * 4 + 5


# ----- ranks -----


@pytest.mark.parametrize(
    "format, shape, max_rank, expected",
    [
        ("tt", (3, 4, 5), 100, (3, 5)),
        ("tt", (3, 4, 5), (2, 100), (2, 5)),
        ("ttm", (2, 3, 4, 3, 2), 100, (6, 4)),
        ("tucker", (3, 4, 5), 100, (3, 4, 5)),
        ("tucker", (3, 4, 5), (2, 100, 1), (2, 4, 1)),
        ("cp", (3, 4, 5), 100, (12,)),
    ],
)
def test_max_rank_is_clipped(format, shape, max_rank, expected):
    tensor = LowRankTensor(shape, format=format, max_rank=max_rank)
    assert tensor.layout.ranks == expected
    assert tensor.max_ranks == expected
    limits = tensor.layout.max_ranks()
    assert all(r <= lim for r, lim in zip(tensor.layout.ranks, limits))


def test_small_max_rank_is_kept():
    tensor = LowRankTensor((6, 7, 8), format="tt", max_rank=(2, 3))
    assert tensor.layout.ranks == (2, 3)


# ----- bad input -----


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        (dict(format="qr"), ValueError, "format"),
        (dict(format=None), ValueError, "format"),
        (dict(prior="laplace"), ValueError, "prior"),
        (dict(prior=3), TypeError, "prior"),
        (dict(prior_kwargs={"eta": -1.0}), ValueError, "eta"),
        (dict(prior_kwargs={"scale": 1.0}), ValueError, "scale"),
        (dict(max_rank=0), ValueError, "max_rank"),
        (dict(max_rank=(2, 0)), ValueError, "max_rank"),
        (dict(max_rank=(2,)), ValueError, "max_rank"),
        (dict(max_rank=2.5), TypeError, "max_rank"),
        (dict(max_rank=True), TypeError, "max_rank"),
        (dict(shape=(3, 0, 4)), ValueError, "shape"),
        (dict(shape=(3, -2, 4)), ValueError, "shape"),
        (dict(shape=()), ValueError, "shape"),
        (dict(shape=(3.0, 4)), ValueError, "shape"),
        (dict(shape=5), TypeError, "shape"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, name):
    args = dict(shape=(3, 4, 5), format="tt", max_rank=2)
    args.update(kwargs)
    with pytest.raises(error, match=name):
        LowRankTensor(**args)


# ----- a layout at other ranks, and scales or moments that do not fit it -----


def test_set_layout_refuses_another_train_or_matrix_view():
    """A TT weight's interleaved train and its row modes are part of what the factors mean: a layout with
    the same shape and factor shapes but another train would silently compute another weight."""
    layer = tb.models.TensorizedLinear(16, 16, format="tt", max_rank=2, in_shape=(4, 4), out_shape=(4, 4))
    tensor = layer.weight
    old = tensor.layout
    in_order = get_format("tt")(old.shape, old.ranks, row_modes=old.row_modes)  # the default train
    factors = [torch.randn(s, dtype=D) for s in old.factor_shapes]
    assert in_order.factor_shapes == old.factor_shapes
    assert not torch.allclose(in_order.full(factors), old.full(factors))  # the same factors, another weight
    with pytest.raises(ValueError, match="with_ranks"):
        tensor.set_layout(in_order)
    with pytest.raises(ValueError, match="row_modes=2"):
        tensor.set_layout(get_format("tt")(old.shape, old.ranks, row_modes=1, train=old.train))
    with pytest.raises(ValueError, match="layout must be"):
        tensor.set_layout(get_format("ttm")(old.shape, 2))
    assert tensor.layout is old
    tensor.set_layout(old.with_ranks((1, 2, 1)))
    assert tensor.layout.ranks == (1, 2, 1) and tensor.layout.labels == old.labels


def test_scales_that_do_not_fit_the_ranks_are_named():
    tensor = LowRankTensor((3, 4, 5), format="tt", max_rank=(2, 3))
    lambdas = _lambdas(tensor)
    stale = [torch.ones(2, dtype=D), torch.ones(2, dtype=D)]  # a guide's scales at other ranks
    for call in (
        lambda lam: tensor.prior_variances(lam),
        lambda lam: tensor.prior_variance(1, lam),
        lambda lam: tensor.slice_moments([torch.ones(s, dtype=D) for s in tensor.layout.factor_shapes], lam),
    ):
        with pytest.raises(ValueError, match=r"lambdas must be one tensor .* at the ranks \(2, 3\)"):
            call(stale)
        with pytest.raises(ValueError, match="lambdas"):
            call(lambdas[:1])
        with pytest.raises(TypeError, match="lambdas must be a list of tensors"):
            call([[1.0, 1.0], [1.0, 1.0, 1.0]])
    # vectorized particles: leading dims are fine for the variances, not for the M-step's moments
    lead = [lam.expand(4, 1, -1) for lam in lambdas]
    assert tensor.prior_variances(lead)[1].shape == (4, 1, 2, 1, 3)
    with pytest.raises(ValueError, match=r"\(rank,\)"):
        tensor.slice_moments([torch.ones(s, dtype=D) for s in tensor.layout.factor_shapes], lead)


def test_slice_moments_refuse_moments_of_other_shapes_and_unknown_bonds():
    tensor = LowRankTensor((3, 4, 5), format="tt", max_rank=(2, 3))
    lambdas = _lambdas(tensor)
    second = [torch.rand(s, dtype=D) for s in tensor.layout.factor_shapes]
    with pytest.raises(ValueError, match="one per factor, got 2"):
        tensor.slice_moments(second[:2], lambdas)
    # a scalar would broadcast against the variances: a wrong M, and D = 0, without an error
    with pytest.raises(ValueError, match=r"second_moments\[1\] must be a tensor of factor 1's shape \(2, 4, 3\)"):
        tensor.slice_moments([second[0], torch.tensor(1.0, dtype=D), second[2]], lambdas)
    with pytest.raises(TypeError, match="second_moments must be a list"):
        tensor.slice_moments(torch.stack([s.sum() for s in second]), lambdas)
    with pytest.raises(ValueError, match=r"bonds must be bond indices in \[0, 2\)"):
        tensor.slice_moments(second, lambdas, bonds=[2])
    # a factor the asked bonds do not touch is not read (the mean-field guide passes None there)
    ((m, d),) = tensor.slice_moments([second[0], second[1], None], lambdas, bonds=[0])
    torch.testing.assert_close(m, tensor.slice_moments(second, lambdas)[0][0])


def test_repr_names_the_format_shape_and_ranks():
    tensor = LowRankTensor((3, 4, 5), format="tt", max_rank=(2, 3))
    assert repr(tensor) == (
        "LowRankTensor(format='tt', shape=(3, 4, 5), ranks=(2, 3), max_ranks=(2, 3), prior=HalfCauchy(eta=1.0))"
    )


@pytest.mark.parametrize("layout", [None, "tt", get_format("tt"), "tensor"], ids=["None", "name", "class", "tensor"])
def test_compact_tensor_names_a_layout_that_is_no_tensor_format(layout):
    tensor = LowRankTensor((3, 4, 5), format="tt", max_rank=2)
    factors = [torch.rand(s) for s in tensor.layout.factor_shapes]
    layout = tensor if layout == "tensor" else layout  # the tensor itself, not its .layout
    with pytest.raises(TypeError, match=r"layout must be a tb\.formats\.TensorFormat .*, got "):
        CompactTensor(layout, factors)
    compact = CompactTensor(tensor.layout, factors)
    assert all(torch.equal(a, b) for a, b in zip(compact.factors, factors))


# ----- dtype -----


@pytest.mark.parametrize("prior", ["half_cauchy", "gamma"])
def test_a_float64_tensor_draws_and_scores_its_prior_in_float64(prior):
    """``.double()`` (or tensorize of a float64 layer) puts the prior's λ and factor draws, and
    the λ sites' log densities, in float64: a float32 hyperparameter (log(π η) rounded to 7
    digits) would leave a float64 ELBO wrong in its eighth digit."""
    tensor = LowRankTensor((3, 4, 5), format="tucker", max_rank=(2, 3, 4), prior=prior).double()
    pyro.set_rng_seed(0)
    trace = poutine.trace(tensor).get_trace()
    trace.compute_log_prob()
    for b in range(tensor.layout.num_bonds):
        site = trace.nodes[tensor.lambda_site(b)]
        assert site["value"].dtype == D
        expected = tensor.prior.log_prob(site["value"]).sum()
        torch.testing.assert_close(site["log_prob_sum"], expected, rtol=1e-14, atol=0)
    assert all(trace.nodes[tensor.factor_site(k)]["value"].dtype == D for k in range(4))


def test_a_float64_embedding_samples_from_its_prior():
    """A ``.double()`` tensorized embedding's prior predictive runs in float64 (its draws were float32)."""
    layer = tb.models.TensorizedEmbedding(64, 16, format="ttm", max_rank=3).double()
    pyro.set_rng_seed(0)
    out = layer(torch.tensor([0, 5, 63]))
    assert out.dtype == D and out.shape == (3, 16)
