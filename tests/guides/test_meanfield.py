"""
MeanField: its sites mirror the model's, it trains with TraceMeanField_ELBO, and the closed-form
λ M-step is the prior's update of statistics computed here by hand.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO
from torch.utils._python_dispatch import TorchDispatchMode

from tensorbayes.data import planted_tensor
from tensorbayes.guides import MeanField
from tensorbayes.models import BayesianRegressor, LowRankTensor, TensorCompletion, TensorizedLinear

D = torch.float64

CASES = [
    pytest.param("tt", (4, 5, 6), 3, id="tt"),
    pytest.param("ttm", (2, 3, 4, 3, 2), 3, id="ttm-odd"),
    pytest.param("tucker", (4, 5, 6), 3, id="tucker"),
    pytest.param("cp", (4, 5, 6), 3, id="cp"),
]


def _setup(fmt="tt", shape=(4, 5, 6), max_rank=3, noise=0.1, **guide_kwargs):
    planted = planted_tensor(shape, "cp", 2, observed=0.4, noise=0.05, seed=0, dtype=D)
    model = TensorCompletion(shape, format=fmt, max_rank=max_rank, noise=noise)
    guide = MeanField(model, seed=0, **guide_kwargs)
    model.double()
    guide.double()
    return planted, model, guide


def _sample_sites(trace):
    return {n: s for n, s in trace.nodes.items() if s["type"] == "sample" and not s["is_observed"] and n != "data"}


@pytest.mark.parametrize("fmt, shape, max_rank", CASES)
def test_guide_sites_match_the_model(fmt, shape, max_rank):
    planted, model, guide = _setup(fmt, shape, max_rank)
    args = (planted.train_index, planted.train_values)
    guide_trace = poutine.trace(guide).get_trace(*args)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args)
    g, m = _sample_sites(guide_trace), _sample_sites(model_trace)
    assert list(g) == list(m)
    assert len(g) == model.tensor.layout.num_bonds + len(model.tensor.layout.factor_shapes)
    for name in g:
        assert g[name]["value"].shape == m[name]["value"].shape
        assert g[name]["fn"].event_shape == m[name]["fn"].event_shape
        assert g[name]["fn"].batch_shape == m[name]["fn"].batch_shape == ()
        assert g[name]["value"].dtype == D
    for k, shape_k in enumerate(model.tensor.layout.factor_shapes):
        assert tuple(g[f"tensor.factor{k}"]["value"].shape) == shape_k
    for b, r in enumerate(model.tensor.layout.ranks):
        lam = g[f"tensor.lambda{b}"]
        assert isinstance(lam["fn"], dist.Delta) and lam["value"].shape == (r,) and (lam["value"] > 0).all()


@pytest.mark.parametrize("lambda_update", ["closed_form", "gradient"])
def test_differentiable_loss_reaches_every_parameter(lambda_update):
    planted, model, guide = _setup("tucker", lambda_update=lambda_update)
    loss = TraceMeanField_ELBO().differentiable_loss(
        model, guide, planted.train_index, planted.train_values, num_data=3 * len(planted.train_values)
    )
    assert loss.dtype == D and torch.isfinite(loss)
    loss.backward()
    named = dict(guide.named_parameters())
    for k in range(len(model.tensor.layout.factor_shapes)):
        for kind in ("locs", "scales"):
            grad = named[f"{kind}.tensor.factor{k}_unconstrained"].grad
            assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, (kind, k)
    if lambda_update == "gradient":
        for b in range(model.tensor.layout.num_bonds):
            grad = named[f"locs.tensor.lambda{b}_unconstrained"].grad
            assert grad is not None and grad.abs().sum() > 0
    else:
        assert not any("lambda" in n for n in named)


def test_lambda_buffers_follow_double():
    _, model, guide = _setup("tt")
    buffers = dict(guide.named_buffers())
    assert set(buffers) == {"locs.tensor.lambda0_unconstrained", "locs.tensor.lambda1_unconstrained"}
    assert all(b.dtype == D for b in buffers.values())
    guide.update_lambdas(0.5)
    assert all(lam.dtype == D for lam in guide.lambdas()["tensor"])


def _set_random_posterior(model, guide, seed=0, max_scale=0.31, min_lambda=0.2):
    """Random locs, scales in ``[0.01, max_scale)`` and λ in ``[min_lambda, min_lambda + 1)``."""
    gen = torch.Generator().manual_seed(seed)
    tensor = model.tensor
    locs = [torch.randn(s, generator=gen, dtype=D) for s in tensor.layout.factor_shapes]
    scales = [torch.rand(s, generator=gen, dtype=D) * (max_scale - 0.01) + 0.01 for s in tensor.layout.factor_shapes]
    lambdas = [torch.rand(r, generator=gen, dtype=D) + min_lambda for r in tensor.layout.ranks]
    guide.set_posterior(tensor, locs, scales, lambdas)
    return locs, scales, lambdas


@pytest.mark.parametrize("prior", ["half_cauchy", "gamma", "log_uniform"])
def test_update_lambdas_is_the_prior_update_of_hand_computed_moments(prior):
    shape = (3, 4, 5)
    model = TensorCompletion(shape, format="tt", max_rank=(2, 3), prior=prior, noise=0.1)
    guide = MeanField(model, seed=1)
    model.double()
    guide.double()
    locs, scales, (lam0, lam1) = _set_random_posterior(model, guide)
    # the stored parameters round-trip (scales through the softplus)
    torch.testing.assert_close(guide.factor_scales(model.tensor)[1], scales[1], rtol=1e-10, atol=1e-12)
    e0, e1, e2 = [loc**2 + s**2 for loc, s in zip(locs, scales)]
    update = model.tensor.prior.update
    # bond 0: G0[0, i, j] ~ N(0, λ0_j); G1[j, i, l] ~ N(0, λ0_j λ1_l)
    m0 = e0.sum((0, 1)) + (e1 / lam1.reshape(1, 1, -1)).sum((1, 2))
    d0 = 1 * 3 + 4 * 3
    new0 = update(m0, torch.full_like(m0, d0))
    # bond 1, bond by bond: with the freshly updated λ0; G2[l, i, 0] ~ N(0, λ1_l)
    m1 = (e1 / new0.reshape(-1, 1, 1)).sum((0, 1)) + e2.sum((1, 2))
    d1 = 2 * 4 + 5 * 1
    new1 = update(m1, torch.full_like(m1, d1))
    guide.update_lambdas(step_size=1)
    got0, got1 = guide.lambdas()["tensor"]
    torch.testing.assert_close(got0, new0, rtol=1e-10, atol=0)
    torch.testing.assert_close(got1, new1, rtol=1e-10, atol=0)
    assert not torch.allclose(got0, lam0)


def test_update_lambdas_damped_is_geometric():
    model = TensorCompletion((3, 4, 5), format="cp", max_rank=3, noise=0.1)
    guide = MeanField(model, seed=1)
    model.double()
    guide.double()
    _, _, (lam,) = _set_random_posterior(model, guide)
    guide.update_lambdas(1.0)
    (full_step,) = guide.lambdas()["tensor"]
    guide.set_posterior(model.tensor, guide.factor_means(model.tensor), guide.factor_scales(model.tensor), [lam])
    guide.update_lambdas(0.25)
    (damped,) = guide.lambdas()["tensor"]
    torch.testing.assert_close(damped, lam**0.75 * full_step**0.25, rtol=1e-10, atol=0)


def _set_small_scale_posterior(model, guide):
    """Posterior scales well below the prior's (at most 0.06 against λ products of at least
    0.25): no term of γ is clipped."""
    return _set_random_posterior(model, guide, max_scale=0.06, min_lambda=0.5)


@pytest.mark.parametrize("prior", ["half_cauchy", "gamma", "log_uniform"])
def test_mackay_step_is_the_prior_update_of_well_determined_entries(prior):
    # CP: one bond; U_k[:, j] ~ N(0, λ_j). γ_j = Σ_entries (1 - s²/λ_j), M_j = Σ loc².
    model = TensorCompletion((3, 4, 5), format="cp", max_rank=3, prior=prior, noise=0.1)
    guide = MeanField(model, seed=1, m_step="mackay")
    model.double()
    guide.double()
    locs, scales, (lam,) = _set_small_scale_posterior(model, guide)
    m_loc = sum(loc.pow(2).sum(0) for loc in locs)
    gamma = sum((1 - s.pow(2) / lam).sum(0) for s in scales)
    m = m_loc + sum(s.pow(2).sum(0) for s in scales)
    update = model.tensor.prior.update
    expected = torch.minimum(update(m_loc, gamma), update(m, torch.full_like(m, 12)))
    guide.update_lambdas(step_size=1)
    (got,) = guide.lambdas()["tensor"]
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=0)
    assert not torch.allclose(got, update(m, torch.full_like(m, 12)))


@pytest.mark.parametrize("prior", ["half_cauchy", "gamma"])
def test_mackay_step_of_a_train_reads_each_bond_from_the_factors_it_touches(prior):
    # TT (3, 4, 5) at ranks (2, 3):
    # G0[0, i, j] ~ N(0, λ0_j), G1[j, i, l] ~ N(0, λ0_j λ1_l), G2[l, i, 0] ~ N(0, λ1_l)
    model = TensorCompletion((3, 4, 5), format="tt", max_rank=(2, 3), prior=prior, noise=0.1)
    guide = MeanField(model, seed=1, m_step="mackay")
    model.double()
    guide.double()
    (l0, l1, l2), (s0, s1, s2), (lam0, lam1) = _set_small_scale_posterior(model, guide)
    update = model.tensor.prior.update

    def step(m_loc, gamma, m, d):
        return torch.minimum(update(m_loc, gamma), update(m, torch.full_like(m, d)))

    v1 = lam0.reshape(-1, 1, 1) * lam1.reshape(1, 1, -1)
    new0 = step(
        l0.pow(2).sum((0, 1)) + (l1.pow(2) / lam1.reshape(1, 1, -1)).sum((1, 2)),
        (1 - s0.pow(2) / lam0).sum((0, 1)) + (1 - s1.pow(2) / v1).sum((1, 2)),
        (l0.pow(2) + s0.pow(2)).sum((0, 1)) + ((l1.pow(2) + s1.pow(2)) / lam1.reshape(1, 1, -1)).sum((1, 2)),
        1 * 3 + 4 * 3,
    )
    v1 = new0.reshape(-1, 1, 1) * lam1.reshape(1, 1, -1)  # bond by bond: bond 1 sees the new λ0
    new1 = step(
        (l1.pow(2) / new0.reshape(-1, 1, 1)).sum((0, 1)) + l2.pow(2).sum((1, 2)),
        (1 - s1.pow(2) / v1).sum((0, 1)) + (1 - s2.pow(2) / lam1.reshape(-1, 1, 1)).sum((1, 2)),
        ((l1.pow(2) + s1.pow(2)) / new0.reshape(-1, 1, 1)).sum((0, 1)) + (l2.pow(2) + s2.pow(2)).sum((1, 2)),
        2 * 4 + 5 * 1,
    )
    guide.update_lambdas(step_size=1)
    got0, got1 = guide.lambdas()["tensor"]
    torch.testing.assert_close(got0, new0, rtol=1e-10, atol=0)
    torch.testing.assert_close(got1, new1, rtol=1e-10, atol=0)


def test_mackay_step_shrinks_a_prior_dominated_index_where_em_barely_moves():
    # CP, two components with λ = 1. Component 0 is needed: every entry well determined, loc² = 4.
    # Component 1 is not: the first row of each factor is determined (small s) at loc 0, the
    # other rows sit at their prior (s² = λ, loc 0), as rows no data reach do.
    shape = (20, 30, 40)
    model = TensorCompletion(shape, format="cp", max_rank=2, prior="log_uniform", noise=0.1)
    model.double()
    locs, scales = [], []
    for n in shape:
        loc = torch.zeros(n, 2, dtype=D)
        loc[:, 0] = 2.0
        scale = torch.full((n, 2), 0.1, dtype=D)
        scale[1:, 1] = 1.0
        locs.append(loc)
        scales.append(scale)
    steps = {}
    for m_step in ("em", "mackay"):
        guide = MeanField(model, m_step=m_step).double()
        guide.set_posterior(model.tensor, locs, scales, [torch.ones(2, dtype=D)])
        guide.update_lambdas(step_size=1)
        (steps[m_step],) = guide.lambdas()["tensor"]
    assert steps["em"][1] > 0.9  # 87 of the 90 entries keep E[x²] = λ
    assert steps["mackay"][1] < 1e-3 * steps["em"][1]
    torch.testing.assert_close(steps["mackay"][0], steps["em"][0], rtol=1e-12, atol=0)


@pytest.mark.parametrize("fmt, shape", [("tt", (4, 5, 6)), ("ttm", (2, 3, 4, 3, 2)), ("tucker", (4, 5, 6))])
def test_mackay_and_em_steps_share_their_stationary_points(fmt, shape):
    # EM's λ given the factor posteriors, iterated bond by bond to its fixed point, is also a
    # fixed point of MacKay's step (docs/method.md, "The λ M-step": both maximize the same objective there).
    model = TensorCompletion(shape, format=fmt, max_rank=3, noise=0.1)
    guide = MeanField(model, seed=1)
    model.double()
    guide.double()
    _set_small_scale_posterior(model, guide)
    for _ in range(200):
        guide.update_lambdas(step_size=1)
    em = guide.lambdas()["tensor"]
    guide.update_lambdas(step_size=1)
    assert all(torch.allclose(a, b, rtol=1e-12, atol=0) for a, b in zip(em, guide.lambdas()["tensor"]))  # converged
    guide.m_step = "mackay"
    guide.update_lambdas(step_size=1)
    for a, b in zip(em, guide.lambdas()["tensor"]):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=0)


def test_lognormal_lambda_guide():
    planted, model, guide = _setup("tt", lambda_guide="lognormal")
    assert guide.lambda_update == "gradient"
    named = dict(guide.named_parameters())
    lam_params = [n for n in named if "lambda" in n]
    assert sorted(lam_params) == sorted(
        [f"locs.tensor.lambda{b}_unconstrained" for b in range(2)]
        + [f"scales.tensor.lambda{b}_unconstrained" for b in range(2)]
    )
    trace = poutine.trace(guide).get_trace(planted.train_index, planted.train_values)
    fn = trace.nodes["tensor.lambda0"]["fn"]
    assert isinstance(fn.base_dist, dist.LogNormal)
    loss = TraceMeanField_ELBO().differentiable_loss(model, guide, planted.train_index, planted.train_values)
    assert torch.isfinite(loss)
    loss.backward()
    for n in lam_params:
        assert named[n].grad is not None and named[n].grad.abs().sum() > 0, n
    with pytest.raises(RuntimeError, match="closed_form"):
        guide.update_lambdas()
    with pytest.raises(ValueError, match="lambda_update"):
        MeanField(model, lambda_guide="lognormal", lambda_update="closed_form")


@pytest.mark.parametrize("lambda_guide", ["delta", "lognormal"])
@pytest.mark.parametrize("fmt, shape, max_rank", CASES)
def test_truncate_keeps_the_posterior_at_the_kept_indices(fmt, shape, max_rank, lambda_guide):
    _, model, guide = _setup(fmt, shape, max_rank, lambda_guide=lambda_guide)
    tensor = model.tensor
    named = {**dict(guide.named_parameters()), **dict(guide.named_buffers())}
    num_factors = len(tensor.layout.factor_shapes)
    factor_params = [
        named[f"{kind}.tensor.factor{k}_unconstrained"] for kind in ("locs", "scales") for k in range(num_factors)
    ]
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # every entry distinct, so that an entry from another index would show
        for p in factor_params:
            p.copy_(torch.randn(p.shape, generator=generator, dtype=D))
        for b, r in enumerate(tensor.layout.ranks):
            named[f"locs.tensor.lambda{b}_unconstrained"].copy_(torch.randn(r, generator=generator, dtype=D))
            if lambda_guide == "lognormal":
                named[f"scales.tensor.lambda{b}_unconstrained"].copy_(torch.randn(r, generator=generator, dtype=D))
    labels = tensor.layout.labels
    locs, scales = guide.factor_means(tensor), guide.factor_scales(tensor)
    lambdas = guide.lambdas("tensor")
    raw_lambda_scales = [
        named[f"scales.tensor.lambda{b}_unconstrained"].detach().clone()
        for b in range(len(tensor.layout.ranks))
        if lambda_guide == "lognormal"
    ]
    # not the leading indices: the last, then the first (an order too), or the last alone
    keep = [torch.tensor([r - 1, 0]) if r >= 2 else torch.tensor([0]) for r in tensor.layout.ranks]
    assert any(len(k) > 1 for k in keep)

    def kept(factor, f):
        # index every bond dimension of factor f by its kept indices, read from the layout's labels
        for d, label in enumerate(labels[f]):
            if label.startswith("b"):
                factor = factor.index_select(d, keep[int(label[1:])])
        return factor

    guide.truncate(tensor, keep)
    for f in range(len(labels)):
        assert torch.equal(guide.factor_means(tensor)[f], kept(locs[f], f)), f
        torch.testing.assert_close(guide.factor_scales(tensor)[f], kept(scales[f], f), rtol=1e-15, atol=0)
    named = {**dict(guide.named_parameters()), **dict(guide.named_buffers())}
    for b, k in enumerate(keep):
        torch.testing.assert_close(
            named[f"locs.tensor.lambda{b}_unconstrained"].exp(), lambdas[b][k], rtol=1e-15, atol=0
        )
        if lambda_guide == "lognormal":
            assert torch.equal(named[f"scales.tensor.lambda{b}_unconstrained"].detach(), raw_lambda_scales[b][k])


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(lambda_guide="normal"), "lambda_guide"),
        (dict(lambda_update="newton"), "lambda_update"),
        (dict(init_scale=0), "init_scale"),
        (dict(init_scale=-0.1), "init_scale"),
        (dict(init_scale="big"), "init_scale"),
        (dict(m_step="newton"), "m_step"),
        (dict(m_step="mackay", lambda_update="gradient"), "m_step"),
        (dict(seed="a"), "seed"),
        (dict(seed=1.5), "seed"),
        (dict(seed=-1), "seed"),
        (dict(seed=True), "seed"),
        (dict(seed=2**64), "seed"),
    ],
)
def test_bad_arguments_are_named(kwargs, name):
    model = TensorCompletion((3, 4, 5), noise=0.1)
    with pytest.raises(ValueError, match=name):
        MeanField(model, **kwargs)


@pytest.mark.parametrize("model", [None, 42, "model"])
def test_a_model_that_cannot_be_called_is_named(model):
    with pytest.raises(TypeError, match="model must be a Pyro model"):
        MeanField(model)


def _state(guide):
    return {k: v.clone() for k, v in guide.state_dict().items()}


def _unchanged(guide, state):
    return all(torch.equal(v, state[k]) for k, v in guide.state_dict().items())


@pytest.mark.parametrize("step_size", [0, -1, 2, float("nan"), "a", True])
def test_update_lambdas_names_a_bad_step_size_and_changes_nothing(step_size):
    _, model, guide = _setup("tt")
    _set_random_posterior(model, guide)
    state = _state(guide)
    with pytest.raises(ValueError, match=r"step_size must be a number in \(0, 1\]"):
        guide.update_lambdas(step_size)
    assert _unchanged(guide, state)


def test_set_posterior_checks_every_value_before_taking_any():
    _, model, guide = _setup("tt")
    locs, scales, lambdas = _set_random_posterior(model, guide)
    state = _state(guide)
    new = [loc + 1 for loc in locs]
    bad = [
        (dict(locs=new[:2]), r"locs must be a list of 3 tensors, one per factor, got 2"),
        (dict(locs=new + new[:1]), r"locs must be a list of 3 tensors, one per factor, got 4"),
        (dict(locs=new[0]), r"locs must be a list of 3 tensors, one per factor, got a Tensor"),
        (dict(locs=new[:2] + [new[2][:2]]), r"locs must keep the posterior's shapes.*\(locs\[2\]\)"),
        (dict(locs=new[:2] + [new[2] * float("nan")]), r"locs\[2\] must be finite"),
        (dict(locs=new, scales=scales[:2] + [-scales[2]]), r"scales\[2\] must be non-negative and finite"),
        (dict(locs=new, scales=scales, lambdas=lambdas[:1]), r"lambdas must be a list of 2 tensors, one per bond"),
        (dict(locs=new, scales=scales, lambdas=[lambdas[0], -lambdas[1]]), r"lambdas\[1\] must be positive"),
        (dict(locs=new, scales=scales, lambdas=[lambdas[0], 0 * lambdas[1]]), r"lambdas\[1\] must be positive"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            guide.set_posterior(model.tensor, **kwargs)
        assert _unchanged(guide, state), kwargs
    guide.set_posterior(model.tensor, new, scales, lambdas)
    assert all(torch.equal(a, b) for a, b in zip(guide.factor_means(model.tensor), new))
    for a, b in zip(guide.factor_scales(model.tensor), scales):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    for a, b in zip(guide.lambdas("tensor"), lambdas):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


def test_model_without_tensor_is_rejected():
    with pytest.raises(ValueError, match="LowRankTensor"):
        MeanField(pyro.nn.PyroModule())


def test_initial_posterior_and_seed():
    model = TensorCompletion((4, 5, 6), format="tt", max_rank=3, noise=0.1)
    a, b, c = MeanField(model, seed=3), MeanField(model, seed=3), MeanField(model, seed=4)
    la, lb, lc = [g.factor_means(model.tensor) for g in (a, b, c)]
    assert all(torch.equal(x, y) for x, y in zip(la, lb))
    assert not torch.equal(la[1], lc[1])
    # the scales start at init_scale times the locs' spread, all equal
    std = model.tensor.init_loc_scale()
    for s in a.factor_scales(model.tensor):
        torch.testing.assert_close(s, torch.full_like(s, 0.1 * std), rtol=1e-5, atol=0)
    assert len(a.factor_means(model.tensor)) == 3


def test_standalone_tensor_guide_names():
    tensor = LowRankTensor((3, 4, 5), format="cp", max_rank=2)
    guide = MeanField(tensor, seed=0)
    trace = poutine.trace(guide).get_trace()
    names = [n for n, s in trace.nodes.items() if s["type"] == "sample"]
    assert names == ["lambda0", "factor0", "factor1", "factor2"]
    assert sorted(guide.state_dict()) == sorted(
        [f"{kind}.factor{k}_unconstrained" for kind in ("locs", "scales") for k in range(3)]
        + ["locs.lambda0_unconstrained"]
    )


def test_guide_scales_are_softplus_of_raw():
    _, model, guide = _setup("cp")
    named = dict(guide.named_parameters())
    for k, s in enumerate(guide.factor_scales(model.tensor)):
        torch.testing.assert_close(s, F.softplus(named[f"scales.tensor.factor{k}_unconstrained"].detach()))


def test_guide_takes_the_models_dtype():
    from tensorbayes.guides import MeanField
    from tensorbayes.models import TensorCompletion

    model = TensorCompletion((4, 5, 6), format="tt", max_rank=3).double()
    guide = MeanField(model)
    assert {p.dtype for p in guide.parameters()} == {torch.float64}
    assert {b.dtype for b in guide.buffers()} == {torch.float64}


class _CountHostSyncs(TorchDispatchMode):
    """Counts the ops that copy a tensor's value to the host (``.item()``, ``bool(t)``): each a stall on a GPU."""

    def __init__(self):
        super().__init__()
        self.syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.syncs += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


def _syncs_of_a_step(model, guide, *args, **kwargs):
    """Host synchronizations of one SVI loss and backward pass, Pyro's per-site NaN checks off."""
    elbo = TraceMeanField_ELBO()
    with pyro.validation_enabled(False):
        elbo.differentiable_loss(model, guide, *args, **kwargs)  # the first call checks the sites once
        with _CountHostSyncs() as counter:
            loss = elbo.differentiable_loss(model, guide, *args, **kwargs)
            loss.backward()
    assert torch.isfinite(loss)
    return counter.syncs


def _one_site_model(y):
    z = pyro.sample("z", dist.Normal(torch.zeros((), dtype=D), 1.0, validate_args=False))
    with pyro.plate("data", len(y)):
        pyro.sample("obs", dist.Normal(z, 1.0, validate_args=False), obs=y)


def _one_site_guide(y):
    loc = pyro.param("loc", torch.zeros((), dtype=D))
    pyro.sample("z", dist.Normal(loc, 1.0, validate_args=False))


def _unwrapped(fn):
    while isinstance(fn, dist.Independent):
        fn = fn.base_dist
    return fn


@pytest.mark.parametrize("fmt", ["cp", "tucker", "tt", "ttm"])
@pytest.mark.parametrize("lambda_guide", ["delta", "lognormal"])
def test_the_svi_step_of_a_layer_makes_no_host_synchronization_of_its_own(fmt, lambda_guide):
    pyro.clear_param_store()
    layer = TensorizedLinear(16, 12, format=fmt, max_rank=3)
    model = BayesianRegressor(layer, noise=1.0).double()
    guide = MeanField(model, seed=0, lambda_guide=lambda_guide)
    x, y = torch.randn(8, 16, dtype=D), torch.randn(8, 12, dtype=D)
    # with Pyro's validation on, the prior's and the guide's sites skip torch's argument and
    # support checks (a host synchronization each); the observed site keeps them
    with pyro.validation_enabled(True):
        guide_trace = poutine.trace(guide).get_trace(x, y, num_data=80)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, y, num_data=80)
    latent = {**_sample_sites(guide_trace), **_sample_sites(model_trace)}
    assert len(latent) == len(_sample_sites(guide_trace)) == len(layer.layout.ranks) + len(layer.layout.factor_shapes)
    for trace in (guide_trace, model_trace):
        assert not any(_unwrapped(s["fn"])._validate_args for s in _sample_sites(trace).values())
    assert _unwrapped(model_trace.nodes["obs"]["fn"])._validate_args
    # with Pyro's per-site NaN checks off too, as many as the ELBO of a one-site Pyro model makes
    # (reading its loss back): nothing in the forward or backward pass reads a value back
    y1 = torch.randn(5, dtype=D)
    assert _syncs_of_a_step(model, guide, x, y, num_data=80) == _syncs_of_a_step(_one_site_model, _one_site_guide, y1)
    with pyro.validation_enabled(True), _CountHostSyncs() as counter:  # the counter sees the checks skipped
        dist.Normal(torch.zeros(3), torch.ones(3)).log_prob(torch.zeros(3))
    assert counter.syncs > 0
