"""MeanFieldELBO: Pyro's TraceMeanField_ELBO, computing only the log densities its estimator uses."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO
from pyro.nn import PyroModule

import tensorbayes as tb
from tensorbayes.infer import MeanFieldELBO
from tensorbayes.models import BayesianRegressor


def _regressor(fmt, gradient_lambdas=False):
    torch.manual_seed(0)
    layer = tb.models.TensorizedLinear(16, 12, format=fmt, max_rank=3).double()
    model = BayesianRegressor(layer, noise=0.7).double()
    kwargs = {"lambda_guide": "lognormal"} if gradient_lambdas else {}
    guide = tb.guides.MeanField(model, seed=1, **kwargs).double()
    x, y = torch.randn(10, 16, dtype=torch.float64), torch.randn(10, 12, dtype=torch.float64)
    return model, guide, (x, y), {"num_data": 40}


def _loss_and_grads(elbo, model, guide, args, kwargs):
    pyro.set_rng_seed(3)
    params = list(model.parameters()) + list(guide.parameters())
    loss = elbo.differentiable_loss(model, guide, *args, **kwargs)
    return loss.detach(), torch.autograd.grad(loss, params, allow_unused=True)


# The regressor's factor sites have an analytic KL; its λ sites (a Delta or a LogNormal guide
# against a half-Cauchy) do not, so both branches of the estimator are compared.
@pytest.mark.parametrize("fmt", ["cp", "tucker", "tt", "ttm"])
@pytest.mark.parametrize("gradient_lambdas", [False, True])
@pytest.mark.parametrize("particles", [1, 3])
def test_loss_and_gradients_equal_pyros(fmt, gradient_lambdas, particles):
    model, guide, args, kwargs = _regressor(fmt, gradient_lambdas)
    opts = {"num_particles": particles}  # in turn: a low-rank tensor's sites hold no particle dim
    want_loss, want_grads = _loss_and_grads(TraceMeanField_ELBO(**opts), model, guide, args, kwargs)
    loss, grads = _loss_and_grads(MeanFieldELBO(**opts), model, guide, args, kwargs)
    torch.testing.assert_close(loss, want_loss, rtol=1e-12, atol=0)
    for got, want in zip(grads, want_grads):
        assert (got is None) == (want is None)
        if got is not None:
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_log_likelihood_is_the_observed_sites_scaled_log_density():
    model, guide, args, kwargs = _regressor("ttm")
    pyro.set_rng_seed(3)
    loss, log_likelihood = MeanFieldELBO().loss_and_log_likelihood(model, guide, *args, **kwargs)
    pyro.set_rng_seed(3)
    guide_trace = pyro.poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = pyro.poutine.trace(pyro.poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    observed = [s for s in model_trace.nodes.values() if s["type"] == "sample" and s["is_observed"]]
    assert len(observed) == 1
    site = observed[0]
    want = site["fn"].log_prob(site["value"]).sum() * site["scale"]  # scale = num_data / batch = 4
    torch.testing.assert_close(log_likelihood, want.detach(), rtol=1e-12, atol=0)
    assert not log_likelihood.requires_grad and loss.requires_grad
    assert site["scale"] == 4.0


def test_computes_no_log_density_of_a_site_with_an_analytic_kl(monkeypatch):
    """Pyro's ELBO evaluates the density of every Normal site of both traces (the factors' and the
    likelihood's); this one only the likelihood's."""
    model, guide, args, kwargs = _regressor("ttm")
    normal_sites = []
    log_prob = dist.Independent.log_prob

    def counted(self, value):
        if isinstance(self.base_dist, torch.distributions.Normal):
            normal_sites.append(tuple(value.shape))
        return log_prob(self, value)

    monkeypatch.setattr(dist.Independent, "log_prob", counted)
    MeanFieldELBO().differentiable_loss(model, guide, *args, **kwargs)
    assert normal_sites == [(10, 12)]
    normal_sites.clear()
    TraceMeanField_ELBO().differentiable_loss(model, guide, *args, **kwargs)
    factors = len(model.net.weight.layout.factor_shapes)
    assert len(normal_sites) == 1 + 2 * factors  # what the new class saves


class _WithAuxiliary(PyroModule):
    """A latent with no analytic KL (a Gamma guide against a LogNormal prior) and an auxiliary guide site."""

    def model(self, y):
        z = pyro.sample("z", dist.LogNormal(torch.zeros(()).double(), 1.0))
        pyro.sample("y", dist.Normal(z, 1.0).expand(y.shape).to_event(1), obs=y)

    def guide(self, y):
        a = pyro.param("a", torch.tensor(1.5, dtype=torch.float64), constraint=dist.constraints.positive)
        u = pyro.sample("u", dist.Normal(torch.zeros(()).double(), 1.0), infer={"is_auxiliary": True})
        pyro.sample("z", dist.Gamma(a + 0.1 * u.exp(), 2.0))


def test_one_sample_kl_and_auxiliary_sites_as_pyro():
    pyro.clear_param_store()
    m = _WithAuxiliary()
    y = torch.tensor([0.3, 1.2], dtype=torch.float64)
    losses = []
    for elbo in (TraceMeanField_ELBO(), MeanFieldELBO()):
        pyro.set_rng_seed(5)
        losses.append(elbo.differentiable_loss(m.model, m.guide, y))
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-12, atol=0)


def test_svi_steps_as_with_pyros():
    """Pyro's SVI drives it through loss_and_grads: the same loss and the same step."""
    losses, states = [], []
    for elbo in (TraceMeanField_ELBO(), MeanFieldELBO()):
        pyro.clear_param_store()
        model, guide, args, kwargs = _regressor("tt")
        svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), elbo)
        pyro.set_rng_seed(3)
        losses.append(svi.step(*args, **kwargs))
        states.append([p.detach().clone() for p in guide.parameters()])
    assert isinstance(losses[1], float)
    assert losses[1] == pytest.approx(losses[0], rel=1e-12)
    for got, want in zip(*states):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    assert MeanFieldELBO().loss(model, guide, *args, **kwargs) == pytest.approx(
        TraceMeanField_ELBO().loss(model, guide, *args, **kwargs), rel=0.5
    )  # both estimate it; not the same draw


@pytest.mark.filterwarnings("ignore:Found vars in model but not guide")  # Pyro's validation says it first
def test_a_latent_site_the_guide_lacks_is_named():
    """The regressor called without its targets samples them: the error names the site, not a KeyError."""
    model, guide, (x, _), kwargs = _regressor("tt")
    with pytest.raises(ValueError, match="the model samples the latent site 'obs' and the guide has no site"):
        MeanFieldELBO().differentiable_loss(model, guide, x, **kwargs)


def test_loss_and_grads_keeps_the_graph_when_asked_as_pyros():
    """``retain_graph=True`` (an ELBO argument of Pyro's): a model that reads a tensor computed
    once outside it is differentiated through that tensor's graph at every call."""
    pyro.clear_param_store()
    w = torch.nn.Parameter(torch.tensor([0.5, -1.0], dtype=torch.float64))
    shift = (2 * w).sum()  # computed once, outside the model
    y = torch.tensor([0.3, 1.2], dtype=torch.float64)

    def model():
        z = pyro.sample("z", dist.Normal(torch.zeros((), dtype=torch.float64), 1.0))
        pyro.sample("y", dist.Normal(z + shift, 1.0).expand(y.shape).to_event(1), obs=y)

    def guide():
        loc = pyro.param("loc", torch.tensor(0.1, dtype=torch.float64))
        pyro.sample("z", dist.Normal(loc, 0.5))

    grads = []
    for elbo in (TraceMeanField_ELBO(retain_graph=True), MeanFieldELBO(retain_graph=True)):
        w.grad = None
        for _ in range(2):  # the second call goes through the first's graph of ``shift`` again
            pyro.set_rng_seed(0)
            elbo.loss_and_grads(model, guide)
        grads.append(w.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=0)


class _BroadcastingTargets(PyroModule):
    """A model whose ``(n, 1)`` mean against ``(n,)`` targets makes an ``(n, n)`` likelihood."""

    def __init__(self):
        super().__init__()
        self.layer = tb.models.TensorizedLinear(16, 4, format="tt", max_rank=2).double()

    def forward(self, x, y):
        mean = self.layer(x)[:, :1]
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mean, 1.0), obs=y)


def test_a_likelihood_broadcast_over_the_plate_is_refused_as_by_pyro():
    """The guide's draws go straight into the model (no trace), and the observed site's shape is
    still checked, as Pyro's validation does: not a silent ``(n, n)`` log-likelihood."""
    torch.manual_seed(0)
    model = _BroadcastingTargets()
    guide = tb.guides.MeanField(model, seed=1).double()
    x, y = torch.randn(6, 16, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    assert guide.draws() is not None  # the fast path
    for elbo in (TraceMeanField_ELBO(), MeanFieldELBO()):
        with pytest.raises(ValueError, match='at site "obs", invalid log_prob shape'):
            elbo.differentiable_loss(model, guide, x, y)
