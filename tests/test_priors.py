"""Tests of tensorbayes.priors: the rank-shrinkage hyperpriors and their closed-form M-steps."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoDelta

from tensorbayes.priors import (
    PRIORS,
    Gamma,
    HalfCauchy,
    ImproperLogUniform,
    LogUniform,
    RankPrior,
    get_prior,
    init_improper_to_feasible,
)

F64 = torch.float64

PRIOR_CASES = {
    "half_cauchy": lambda: HalfCauchy(),
    "half_cauchy_eta1e-3": lambda: HalfCauchy(eta=1e-3),
    "half_cauchy_eta1e3": lambda: HalfCauchy(eta=1e3),
    "log_uniform": lambda: LogUniform(),
    "gamma": lambda: Gamma(),
    "gamma_a2.5_b0.7": lambda: Gamma(concentration=2.5, rate=0.7),
}

# (M, D): ordinary values, values around the half-Cauchy's knee, and the extremes.
MD_CASES = [
    (1.0, 1.0),
    (3.7, 10.0),
    (0.05, 100.0),
    (2.0e-3, 4.0),
    (50.0, 7.0),
    (1e-30, 1.0),
    (1e-30, 1e7),
    (1e30, 1.0),
    (1e30, 1e7),
    (1e-12, 3.0),
    (1e12, 1e5),
    (4e6, 1e7),
]


@pytest.fixture(params=sorted(PRIOR_CASES))
def prior(request):
    return PRIOR_CASES[request.param]()


def objective(prior, u, M, D):
    """f(λ) = -D/2 log λ - M/(2λ) + log p(λ), as a function of u = log λ."""
    return -0.5 * D * u - 0.5 * M * torch.exp(-u) + prior.log_prob(torch.exp(u))


def objective_grad(prior, u, M, D):
    """df/du by autograd through ``prior.log_prob`` (independent of the hand derivations)."""
    u = u.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(objective(prior, u, M, D).sum(), u)
    return g


def numerical_argmax(prior, M, D):
    """Global maximizer of f found without the closed forms.

    A grid in log λ over [-110, 90] (λ from 1e-48 to 1e39, step h = 0.025) locates the
    maximum to within one step; once f' changes sign on [u_best - h, u_best + h] the
    maximizer lies there, and repeated 1024-fold refinement of the sign change of the
    autograd derivative pins it down. (A root of f' rather than golden section on f:
    near the optimum f is flat to O(eps |f|) over a width ~sqrt(eps |f| / |f''|) ≈ 1e-7
    in u, while f' has error O(eps D) against a slope |f''| ≈ D/2, so the root is
    resolved to ~1e-15 in u.)
    """
    grid = torch.linspace(-110.0, 90.0, 8001, dtype=F64)
    h = (grid[1] - grid[0]).item()
    values = objective(prior, grid, M, D)
    assert torch.isfinite(values).all()
    i = int(torch.argmax(values))
    assert 0 < i < grid.numel() - 1, "maximum at the edge of the search grid"
    lo, hi = (grid[i] - h).item(), (grid[i] + h).item()
    assert objective_grad(prior, torch.tensor(lo, dtype=F64), M, D) > 0
    assert objective_grad(prior, torch.tensor(hi, dtype=F64), M, D) < 0
    for _ in range(8):
        pts = torch.linspace(lo, hi, 1025, dtype=F64)
        g = objective_grad(prior, pts, M, D)
        k = int(torch.nonzero(g <= 0)[0]) - 1  # g[0] > 0 by construction
        lo, hi = pts[k].item(), pts[k + 1].item()
        if hi - lo <= 4 * torch.finfo(F64).eps * max(1.0, abs(lo)):
            break
    return torch.exp(torch.tensor(0.5 * (lo + hi), dtype=F64)), values.max()


# ----------------------------------------------------------------------------- M-step


@pytest.mark.parametrize("M,D", MD_CASES)
def test_update_is_the_numerical_argmax(prior, M, D):
    lam_num, grid_max = numerical_argmax(prior, M, D)
    lam = prior.update(torch.tensor(M, dtype=F64), D)
    assert lam.dtype == F64 and lam.shape == ()
    # relative tolerance: bisection resolves log λ to ~1e-15 and the float64 solvers
    # have rounding error ~1e-15 too; 1e-9 leaves six orders of magnitude of slack.
    torch.testing.assert_close(lam, lam_num, rtol=1e-9, atol=0.0)
    # stationarity: f'(log λ*) vanishes relative to the size of its terms
    u = torch.log(lam)
    g = objective_grad(prior, u, M, D)
    du_logp = objective_grad(prior, u, 0.0, 0.0)  # d/du log p(e^u)
    scale = 0.5 * D + 0.5 * M / lam + du_logp.abs()
    assert (g.abs() / scale).item() < 1e-12
    # and it is at least as good as every point of the dense grid
    f_star = objective(prior, u, M, D)
    assert f_star >= grid_max - 1e-14 * grid_max.abs()


def test_closed_forms():
    M = torch.tensor([0.3, 7.0, 1e-5], dtype=F64)
    D = torch.tensor([1.0, 12.0, 1e3], dtype=F64)
    torch.testing.assert_close(LogUniform().update(M, D), M / (D + 2), rtol=1e-15, atol=0)
    a, b = 2.5, 0.7
    torch.testing.assert_close(
        Gamma(concentration=a, rate=b).update(M, D), (M + 2 * b) / (D + 2 * a + 2), rtol=1e-15, atol=0
    )
    # half-Cauchy: λ* is the root of (D+4)λ³ - Mλ² + Dη²λ - Mη² and lies in [M/(D+4), M/D]
    eta = 0.8
    lam = HalfCauchy(eta=eta).update(M, D)
    cubic = (D + 4) * lam**3 - M * lam**2 + D * eta**2 * lam - M * eta**2
    terms = (D + 4) * lam**3 + M * lam**2 + D * eta**2 * lam + M * eta**2
    assert (cubic.abs() / terms).max() < 1e-14
    assert torch.all(lam >= M / (D + 4)) and torch.all(lam <= M / D)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_update_extremes_no_nan(prior, dtype):
    tiny = torch.finfo(dtype).tiny
    M = torch.tensor([0.0, tiny / 4, 1e-30, 1e-3, 1.0, 1e3, 1e30], dtype=dtype)[:, None]
    D = torch.tensor([1.0, 2.0, 17.0, 1e4, 1e7], dtype=dtype)
    lam = prior.update(M, D)
    assert lam.shape == (7, 5) and lam.dtype == dtype
    assert torch.isfinite(lam).all() and (lam >= tiny).all()
    assert torch.isfinite(torch.log(lam)).all()
    # float32 agrees with float64 to a few ulps
    ref = prior.update(M.to(F64), D.to(F64))
    if dtype == torch.float32:
        torch.testing.assert_close(lam.to(F64), ref.clamp(min=tiny), rtol=4e-6, atol=0.0)
    # M = 0: the optimum is 0 (half-Cauchy, log-uniform) or 2b/(D+2a+2) (Gamma)
    if isinstance(prior, Gamma):
        expected = torch.full_like(D, 2 * prior.rate) / (D + 2 * prior.concentration + 2)
        torch.testing.assert_close(lam[0], expected, rtol=1e-6, atol=0.0)
    else:
        assert torch.all(lam[0] == tiny)


def test_update_broadcasts_and_matches_scalar_calls(prior):
    M = torch.tensor([[1e-4], [0.2], [9.0]], dtype=F64)
    D = torch.tensor([1.0, 5.0, 300.0, 2e4], dtype=F64)
    lam = prior.update(M, D)
    assert lam.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            torch.testing.assert_close(lam[i, j], prior.update(M[i, 0].item(), D[j]), rtol=1e-14, atol=0)
    # plain numbers work too (torch's default dtype)
    assert prior.update(2.0, 10).dtype == torch.get_default_dtype()
    # integer D tensors are accepted
    torch.testing.assert_close(prior.update(M, D.long()), lam)


def test_half_cauchy_update_gradient():
    """The last Newton step carries the implicit-function gradient dλ*/dM = 1/h'(λ*)."""
    prior = HalfCauchy(eta=0.5)
    M = torch.tensor([0.01, 0.3, 2.0, 40.0], dtype=F64, requires_grad=True)
    D = torch.tensor([3.0, 10.0, 1.0, 100.0], dtype=F64)
    lam = prior.update(M, D)
    (grad,) = torch.autograd.grad(lam.sum(), M)
    eps = 1e-6 * M.detach()
    fd = (prior.update(M.detach() + eps, D) - prior.update(M.detach() - eps, D)) / (2 * eps)
    torch.testing.assert_close(grad, fd, rtol=1e-6, atol=0)
    # M = 0 (λ* clamped to tiny) gives a finite gradient
    M0 = torch.zeros(2, dtype=F64, requires_grad=True)
    (grad0,) = torch.autograd.grad(prior.update(M0, 3.0).sum(), M0)
    assert torch.isfinite(grad0).all()


def test_update_validates_inputs(prior):
    with pytest.raises(ValueError, match="M"):
        prior.update(torch.tensor([1.0, -1.0]), 3.0)
    with pytest.raises(ValueError, match="M"):
        prior.update(torch.tensor([float("nan")]), 3.0)
    with pytest.raises(ValueError, match="D"):
        prior.update(torch.tensor([1.0]), 0.0)


# ----------------------------------------------------------------------------- damping


@pytest.mark.parametrize("step_size", [0.05, 0.5, 0.9])
def test_damped_update_interpolates_in_log_space(prior, step_size):
    lam = torch.tensor([1e-6, 0.3, 2.0, 50.0], dtype=F64)
    M = torch.tensor([1e-3, 1.0, 10.0, 2.0], dtype=F64)
    D = 12.0
    new = prior.update(M, D)
    damped = prior.damped_update(lam, M, D, step_size)
    expected = torch.exp((1 - step_size) * torch.log(lam) + step_size * torch.log(new))
    torch.testing.assert_close(damped, expected, rtol=1e-14, atol=0)
    assert torch.all(damped >= torch.minimum(lam, new)) and torch.all(damped <= torch.maximum(lam, new))


def test_damped_update_full_step_is_update(prior):
    lam = torch.tensor([0.5, 3.0, 1e-20], dtype=F64)
    M = torch.tensor([2.0, 1e-8, 5.0], dtype=F64)
    assert torch.equal(prior.damped_update(lam, M, 4.0, 1.0), prior.update(M, 4.0))
    assert torch.equal(prior.damped_update(lam, M, 4.0, 1), prior.update(M, 4.0))
    # a tensor step size, broadcasting with λ
    s = torch.tensor([1.0, 0.5, 0.25], dtype=F64)
    expected = torch.exp((1 - s) * torch.log(lam) + s * torch.log(prior.update(M, 4.0)))
    torch.testing.assert_close(prior.damped_update(lam, M, 4.0, s), expected, rtol=1e-14, atol=0)
    # λ = 0 is treated as the dtype's tiny: still finite and positive
    out = prior.damped_update(torch.zeros(3, dtype=F64), M, 4.0, 0.5)
    assert torch.isfinite(out).all() and (out > 0).all()


@pytest.mark.parametrize("step_size", [0.0, -0.1, 1.5, float("nan"), True, "0.5", torch.tensor([0.5, 0.0])])
def test_damped_update_rejects_bad_step_size(prior, step_size):
    with pytest.raises(ValueError, match="step_size"):
        prior.damped_update(torch.ones(2), torch.ones(2), 3.0, step_size)


# ----------------------------------------------------------------------------- distributions


@pytest.mark.parametrize("batch_shape", [(), (5,), (2, 3)])
def test_distribution_shapes(prior, batch_shape):
    d = prior.distribution(batch_shape)
    assert d.batch_shape == torch.Size(batch_shape)
    assert d.event_shape == torch.Size()
    assert str(d.support) == str(dist.constraints.positive)
    lam = torch.rand(batch_shape) + 0.1
    assert d.log_prob(lam).shape == torch.Size(batch_shape)
    # dtype / device keywords
    d64 = prior.distribution(batch_shape, dtype=F64)
    assert d64.log_prob(lam.to(F64)).dtype == F64


def test_distribution_int_batch_shape(prior):
    assert prior.distribution(4).batch_shape == (4,)


def test_distribution_validate_args(prior):
    # validate_args=False (the model's own λ sites) skips the support check; True keeps it
    with pytest.raises(ValueError, match="support"):
        prior.distribution(3, validate_args=True).log_prob(torch.tensor([1.0, -1.0, 2.0]))
    lp = prior.distribution(3, validate_args=False).log_prob(torch.tensor([1.0, -1.0, 2.0]))
    assert lp.shape == (3,) and torch.isfinite(lp[[0, 2]]).all()


def test_distribution_log_prob_matches_log_prob(prior):
    lam = torch.logspace(-12, 12, 97, dtype=F64).reshape(97, 1).expand(97, 3)
    d = prior.distribution((3,), dtype=F64)
    one = torch.ones((), dtype=F64)
    const = (d.log_prob(one.expand(3)) - prior.log_prob(one))[0]
    # equal up to a constant independent of λ (|log p| reaches 1e12 at λ = 1e-12 for the
    # Gamma prior, so the comparison is relative) ...
    torch.testing.assert_close(d.log_prob(lam), prior.log_prob(lam) + const, rtol=1e-13, atol=1e-12)
    if prior.proper:
        # ... and, for a proper prior, exactly the normalized density of torch's reference
        if isinstance(prior, HalfCauchy):
            ref = torch.distributions.HalfCauchy(torch.tensor(prior.eta, dtype=F64))
        else:
            ref = torch.distributions.InverseGamma(
                torch.tensor(prior.concentration, dtype=F64), torch.tensor(prior.rate, dtype=F64)
            )
        torch.testing.assert_close(prior.log_prob(lam), ref.log_prob(lam), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(d.log_prob(lam), ref.log_prob(lam), rtol=1e-12, atol=1e-12)
    else:
        torch.testing.assert_close(prior.log_prob(lam), -torch.log(lam), rtol=1e-15, atol=0)


def test_log_prob_huge_and_tiny_lambda_are_finite(prior):
    lam = torch.tensor([1e-30, 1e30], dtype=torch.float32)
    assert torch.isfinite(prior.log_prob(lam)).all()
    assert prior.log_prob(torch.tensor([-1.0])).item() == -math.inf


@pytest.mark.parametrize("name", ["half_cauchy", "gamma"])
def test_proper_priors_sample_positive(name):
    torch.manual_seed(0)
    x = get_prior(name).distribution((1000,)).sample()
    assert x.shape == (1000,) and torch.isfinite(x).all() and (x > 0).all()


def test_log_uniform_distribution_cannot_be_sampled():
    d = LogUniform().distribution((3,))
    assert isinstance(d, ImproperLogUniform)
    for call in (d.sample, d.rsample, lambda: d.sample((2,)), d.expand((4, 3)).sample):
        with pytest.raises(NotImplementedError, match="improper"):
            call()
    e = d.expand((4, 3))
    assert e.batch_shape == (4, 3)
    torch.testing.assert_close(e.log_prob(torch.full((4, 3), 2.0)), torch.full((4, 3), -math.log(2.0)))


# ----------------------------------------------------------------------------- registry


def test_registry_consistency():
    assert set(PRIORS) == {"half_cauchy", "log_uniform", "gamma"}
    for name, cls in PRIORS.items():
        p = cls()
        assert isinstance(p, RankPrior) and p.name == name
        assert p.proper == (name != "log_uniform")


def test_get_prior():
    p = HalfCauchy(eta=2.0)
    assert get_prior(p) is p
    assert isinstance(get_prior("half_cauchy"), HalfCauchy) and get_prior("half_cauchy").eta == 1.0
    assert get_prior("Half-Cauchy", eta=0.3).eta == 0.3
    assert isinstance(get_prior("log_uniform"), LogUniform)
    g = get_prior("gamma", concentration=2.0, rate=0.5)
    assert (g.concentration, g.rate) == (2.0, 0.5)


def test_get_prior_unknown_name():
    with pytest.raises(ValueError, match="prior") as info:
        get_prior("horseshoe")
    for name in PRIORS:
        assert name in str(info.value)
    assert "horseshoe" in str(info.value)
    with pytest.raises(TypeError, match="prior"):
        get_prior(None)


@pytest.mark.parametrize(
    "name,kwargs,arg",
    [
        ("half_cauchy", {"eta": 0.0}, "eta"),
        ("half_cauchy", {"eta": -1.0}, "eta"),
        ("half_cauchy", {"eta": float("nan")}, "eta"),
        ("half_cauchy", {"eta": float("inf")}, "eta"),
        ("half_cauchy", {"eta": "1"}, "eta"),
        ("gamma", {"concentration": 0.0}, "concentration"),
        ("gamma", {"rate": -2.0}, "rate"),
        ("half_cauchy", {"scale": 1.0}, "scale"),
        ("log_uniform", {"eta": 1.0}, "eta"),
    ],
)
def test_get_prior_bad_hyperparameters(name, kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        get_prior(name, **kwargs)


def test_get_prior_instance_with_hyperparameters():
    with pytest.raises(ValueError, match="eta"):
        get_prior(HalfCauchy(), eta=2.0)


# ----------------------------------------------------------------------------- Pyro integration


def _tiny_model(prior):
    def model(y):
        lam = pyro.sample("lam", prior.distribution((3,)).to_event(1))
        w = pyro.sample("w", dist.Normal(0.0, lam.sqrt().unsqueeze(-1).expand(3, 4)).to_event(2))
        pyro.sample("y", dist.Normal(w, 0.1).to_event(2), obs=y)

    return model


def test_log_uniform_default_autoguide_init_fails_loudly():
    """Pyro 1.9's init_to_median falls back to init_to_feasible, which also samples."""
    pyro.clear_param_store()
    guide = AutoDelta(_tiny_model(LogUniform()))
    with pytest.raises(NotImplementedError, match="improper"):
        guide(torch.zeros(3, 4))


@pytest.mark.parametrize("elbo", [Trace_ELBO, TraceMeanField_ELBO])
def test_log_uniform_site_under_autodelta(elbo):
    pyro.clear_param_store()
    torch.manual_seed(0)
    y = 0.1 * torch.randn(3, 4)
    model = _tiny_model(LogUniform())
    guide = AutoDelta(model, init_loc_fn=init_improper_to_feasible)
    # the improper site starts at the feasible point transform_to(positive)(0) = 1
    torch.testing.assert_close(guide(y)["lam"].detach(), torch.ones(3))
    lr = 0.1
    svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), elbo())
    loss = svi.step(y)
    lam = guide(y)["lam"].detach()
    assert math.isfinite(loss)
    assert torch.isfinite(lam).all() and (lam > 0).all()
    # at λ = 1 with small w the ELBO increases as λ shrinks (d/dlogλ = -D/2 + |w|²/2 - 1 < 0),
    # and Adam's first step moves log λ by exactly lr against the gradient
    torch.testing.assert_close(lam, torch.full((3,), math.exp(-lr)), rtol=1e-4, atol=0)


@pytest.mark.parametrize("name", sorted(PRIORS))
def test_all_priors_under_autodelta_with_helper_init(name):
    pyro.clear_param_store()
    torch.manual_seed(1)
    y = 0.1 * torch.randn(3, 4)
    model = _tiny_model(get_prior(name))
    guide = AutoDelta(model, init_loc_fn=init_improper_to_feasible)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(3):
        assert math.isfinite(svi.step(y))
    lam = guide(y)["lam"].detach()
    assert lam.shape == (3,) and torch.isfinite(lam).all() and (lam > 0).all()


# ----- gaps found by mutation testing (benchmarks/mutation.py) -----


@pytest.mark.parametrize("eta", [0.5, 1.0, 2.0])
def test_half_cauchy_log_prob_at_zero_is_the_density_at_the_mode(eta):
    # p(λ) = 2 / (π η (1 + (λ/η)²)): 2 / (π η) at λ = 0, and the limit from above
    expected = math.log(2.0 / (math.pi * eta))
    lp = HalfCauchy(eta=eta).log_prob(torch.tensor([0.0, 1e-12], dtype=F64))
    torch.testing.assert_close(lp, torch.full((2,), expected, dtype=F64))


def test_gamma_log_prob_at_zero_and_below_is_minus_infinity():
    lp = Gamma(concentration=2.5, rate=0.7).log_prob(torch.tensor([0.0, -1.0, 1.0], dtype=F64))
    assert lp[0] == -math.inf and lp[1] == -math.inf and math.isfinite(float(lp[2]))


def test_half_cauchy_update_converges_in_a_few_newton_steps():
    # Newton from one fixed-point step off the bracket's end: a handful of steps, and it stops
    # there (bisection alone, or no stop, would run dozens up to max_iter)
    prior = HalfCauchy()
    calls = []
    phi = prior._phi
    prior._phi = lambda *args: calls.append(1) or phi(*args)
    M, D = torch.tensor([1.0, 3.7, 0.05, 50.0], dtype=F64), torch.tensor([1.0, 10.0, 100.0, 7.0], dtype=F64)
    lam = prior.update(M, D)
    assert len(calls) <= 12
    expected = torch.stack([numerical_argmax(prior, float(m), float(d))[0] for m, d in zip(M, D)])
    torch.testing.assert_close(lam, expected.to(F64), rtol=1e-6, atol=0)


def test_the_log_uniform_distribution_keeps_its_dtype_and_has_no_rsample():
    d = ImproperLogUniform((3,), dtype=F64)
    assert d.dtype == F64 and d.expand((2, 3)).dtype == F64
    assert d.has_rsample is False and d.expand((2, 3)).has_rsample is False
    assert ImproperLogUniform().dtype == torch.get_default_dtype()


def test_the_feasible_init_of_an_improper_site_is_marked_as_a_default_init():
    # as Pyro's own init strategies mark theirs, so that poutine.reparam does not warn about it
    site = {"name": "lam", "fn": LogUniform().distribution((3,)).to_event(1)}
    value = init_improper_to_feasible(site)
    assert value.shape == (3,) and bool((value > 0).all())
    assert value._pyro_custom_init is False


# ----------------------------------------------------------------------------- arguments of the wrong form


@pytest.mark.parametrize("lam", [[-1.0, 1.0], [float("nan"), 1.0], [1.0, 1.0, 1.0]], ids=["negative", "nan", "shape"])
@pytest.mark.parametrize("step_size", [1.0, 0.5])
def test_damped_update_checks_lam_at_every_step_size(prior, lam, step_size):
    # the docstring: a negative or NaN λ is refused, the full step included (which returns λ* alone);
    # a λ that does not broadcast with M is named rather than failing inside torch
    M = torch.tensor([1.0, 2.0], dtype=F64)
    with pytest.raises(ValueError, match="lam must"):
        prior.damped_update(torch.tensor(lam, dtype=F64), M, 3.0, step_size)
    # the guide's own M-step (check=False) takes the full step without reading λ
    assert torch.equal(prior.damped_update(None, M, 3.0, 1.0, check=False), prior.update(M, 3.0))


def test_update_names_M_and_D_that_do_not_broadcast(prior):
    with pytest.raises(ValueError, match=r"M and D must broadcast together, got shapes \(3,\) and \(2,\)"):
        prior.update(torch.ones(3, dtype=F64), torch.ones(2, dtype=F64))


def test_log_prob_of_nan_is_nan(prior):
    # not a finite number (half-Cauchy, log-uniform) or -inf (Gamma): a NaN λ must not look like a density
    lam = torch.tensor([float("nan"), 0.5], dtype=F64)
    lp = prior.log_prob(lam)
    assert torch.isnan(lp[0]) and torch.isfinite(lp[1])
    assert torch.isnan(prior.distribution(2, dtype=F64, validate_args=False).log_prob(lam)[0])


@pytest.mark.parametrize("batch_shape", [-1, 2.5, (2, -1), "3", (True,), None])
def test_distribution_names_a_batch_shape_of_the_wrong_form(prior, batch_shape):
    with pytest.raises(ValueError, match="batch_shape must be a torch.Size, a tuple of non-negative ints or an int"):
        prior.distribution(batch_shape)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, "float64"])
def test_distribution_names_a_dtype_that_is_not_floating(prior, dtype):
    with pytest.raises(ValueError, match="dtype must be a floating torch dtype"):
        prior.distribution(2, dtype=dtype)
