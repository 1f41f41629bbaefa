"""
SVIEngine and the fast ELBO: the guide's draws go straight into the model with Pyro's values and
gradients (every model, no tracing); the engine's step is Pyro's SVI step plus the guide's λ
step; its schedule holds λ in the warm-up; it resumes exactly from its state; it takes Pyro and
torch optimizers and Pyro's ELBOs, and refuses bad ones by name.
"""

import math

import pyro
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO

import tensorbayes as tb
from tensorbayes.infer import MeanFieldELBO, Schedule, SVIEngine
from tensorbayes.infer.elbo import MeanFieldELBO as ElboClass
from tensorbayes.infer.engine import SCALE_LR
from tests.dlrm import tiny_dlrm


def _classifier():
    torch.manual_seed(0)
    layer = tb.models.TensorizedLinear(16, 12, format="ttm", max_rank=3, in_shape=(4, 4), out_shape=(3, 4))
    model = tb.models.BayesianClassifier(layer, 12).double()
    x, y = torch.randn(10, 16, dtype=torch.float64), torch.randint(0, 12, (10,))
    return model, (x, y), {"num_data": 50}


def _completion(fmt="tucker"):
    torch.manual_seed(0)
    model = tb.models.TensorCompletion((5, 6, 7), format=fmt, max_rank=3, noise=None).double()
    index = torch.stack([torch.randint(0, n, (30,)) for n in (5, 6, 7)], 1)
    return model, (index, torch.randn(30, dtype=torch.float64)), {"num_data": 90}


def _dlrm():
    gen, model = tiny_dlrm()
    model = model.double()
    dense, sparse, clicks = next(iter(gen.stream(64, "train").batches(16)))
    return model, (dense.double(), sparse, clicks.double()), {"num_data": 64}


def _regressor():
    torch.manual_seed(0)
    layer = tb.models.TensorizedConv2d(4, 6, 3, format="tt", max_rank=3, in_shape=(2, 2), out_shape=(2, 3))
    net = pyro.nn.PyroModule[torch.nn.Sequential](layer, pyro.nn.PyroModule[torch.nn.Flatten]())
    model = tb.models.BayesianRegressor(net, noise=None).double()
    x = torch.randn(5, 4, 5, 5, dtype=torch.float64)
    return model, (x, torch.randn(5, 6 * 9, dtype=torch.float64)), {"num_data": 20}


def _no_tracing(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the fast ELBO traced the guide")

    monkeypatch.setattr(ElboClass, "_get_traces", refuse)


@pytest.mark.parametrize("make", [_classifier, _completion, _dlrm, _regressor], ids=lambda f: f.__name__[1:])
def test_the_draws_give_pyros_loss_and_gradients_without_tracing(make, monkeypatch):
    model, args, kwargs = make()
    guide = tb.guides.MeanField(model, seed=1).double()
    params = list(model.parameters()) + list(guide.parameters())
    results = []
    for elbo in (TraceMeanField_ELBO(), MeanFieldELBO()):
        if isinstance(elbo, MeanFieldELBO):
            _no_tracing(monkeypatch)
        pyro.set_rng_seed(3)
        loss = elbo.differentiable_loss(model, guide, *args, **kwargs)
        results.append((loss.detach(), torch.autograd.grad(loss, params, allow_unused=True)))
    (want, want_grads), (got, grads) = results
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    for g, w in zip(grads, want_grads):
        assert (g is None) == (w is None)
        if g is not None:
            torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-8)


def test_a_model_with_a_site_the_guide_lacks_is_traced_as_pyro_does():
    model, args, kwargs = _completion()
    guide = tb.guides.MeanField(model, seed=1).double()

    def with_extra_site(*a, **k):
        pyro.sample("extra", pyro.distributions.Normal(torch.zeros((), dtype=torch.float64), 1.0))
        return model(*a, **k)

    def guide_with_extra(*a, **k):
        pyro.sample("extra", pyro.distributions.Normal(torch.zeros((), dtype=torch.float64), 0.5))
        return guide(*a, **k)

    guide_with_extra.draws = guide.draws  # claims draws, but not of every site
    losses = []
    for elbo in (TraceMeanField_ELBO(), MeanFieldELBO()):
        pyro.set_rng_seed(3)
        losses.append(elbo.differentiable_loss(with_extra_site, guide_with_extra, *args, **kwargs).detach())
    elbo = MeanFieldELBO()
    elbo.differentiable_loss(with_extra_site, guide_with_extra, *args, **kwargs)
    assert (id(with_extra_site), id(guide_with_extra)) in elbo._traced
    assert torch.isfinite(losses[1])


def _svi_problem():
    model, args, kwargs = _completion("tt")
    return model, tb.guides.MeanField(model, seed=1).double(), args, kwargs


def test_the_engine_steps_as_pyros_svi_with_the_guides_lambda_step():
    """Pyro's SVI takes the guide's λ step at the next call, the engine right after the optimizer's:
    after the same steps and the guide's pending λ step, the two agree."""
    model, guide, args, kwargs = _svi_problem()
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), MeanFieldELBO())
    pyro.set_rng_seed(3)
    for _ in range(5):
        svi.step(*args, **kwargs)
    with torch.enable_grad():
        guide.draws()  # takes the pending λ step; draws nothing that is kept
    want = {k: v.clone() for k, v in guide.state_dict().items()}

    pyro.clear_param_store()
    model, guide, args, kwargs = _svi_problem()
    engine = SVIEngine(model, guide, kwargs["num_data"], lr=0.01, scale_lr=1.0)  # the scales at Pyro's rate too
    pyro.set_rng_seed(3)
    for _ in range(5):
        engine.step(*args)
    for key, value in guide.state_dict().items():
        torch.testing.assert_close(value, want[key], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("scale_lr", [SCALE_LR, 1.0])
def test_the_posterior_scales_step_at_their_share_of_the_rate(scale_lr):
    """Adam's first step moves each parameter by its group's rate times g / (|g| + eps): the
    largest move of a mean is the rate, of a raw scale the rate times ``scale_lr``."""
    model, guide, args, kwargs = _svi_problem()
    engine = SVIEngine(model, guide, kwargs["num_data"], lr=0.01, scale_lr=scale_lr)
    scales = {id(p) for p in guide.scale_parameters()}
    assert scales and {id(p) for p in engine.optimizer.param_groups[2]["params"]} == scales
    before = {name: p.detach().clone() for name, p in guide.named_parameters()}
    engine.step(*args)
    moved = {"scales": 0.0, "locs": 0.0}
    for name, p in guide.named_parameters():
        kind = "scales" if id(p) in scales else "locs"
        moved[kind] = max(moved[kind], (p.detach() - before[name]).abs().max().item())
    assert moved["locs"] == pytest.approx(0.01, rel=1e-4)
    assert moved["scales"] == pytest.approx(0.01 * scale_lr, rel=1e-4)


def test_the_engine_refuses_a_scale_rate_that_is_not_positive():
    model, guide, _, kwargs = _svi_problem()
    with pytest.raises(ValueError, match="scale_lr"):
        SVIEngine(model, guide, kwargs["num_data"], scale_lr=0)


def test_the_warm_up_holds_lambda_and_then_lets_it_move():
    model, guide, args, kwargs = _svi_problem()
    engine = SVIEngine(model, guide, kwargs["num_data"], schedule=Schedule(warmup=3, ramp=2))
    start = [v.clone() for v in guide.lambdas()["tensor"]]
    betas = []
    for _ in range(3):
        betas.append(engine.beta)
        engine.step(*args)
    assert betas == [0.0, 0.0, 0.0]
    assert all(torch.equal(a, b) for a, b in zip(start, guide.lambdas()["tensor"]))
    engine.step(*args)
    assert not all(torch.equal(a, b) for a, b in zip(start, guide.lambdas()["tensor"]))
    assert engine.beta == 1.0


def test_a_kl_weight_scales_the_kl_term_of_the_step_and_nothing_else():
    """On the same draws (float64), the loss at kl_weight w is -log-likelihood + w * KL, where
    the KL is what the loss at weight 1 adds to the same log-likelihood."""
    steps = {}
    for weight in (1.0, 0.25):
        model, guide, args, kwargs = _svi_problem()
        engine = SVIEngine(model, guide, kwargs["num_data"], schedule=Schedule(kl_weight=weight))
        pyro.set_rng_seed(0)
        steps[weight] = (engine.step(*args), engine.log_likelihood, engine.beta)
    (loss, likelihood, beta), (tempered, same_likelihood, tempered_beta) = steps[1.0], steps[0.25]
    kl = loss + likelihood
    assert kl > 1.0  # a KL term the weight visibly changes
    assert same_likelihood == pytest.approx(likelihood, rel=1e-12)
    assert tempered == pytest.approx(-likelihood + 0.25 * kl, rel=1e-10)
    assert (beta, tempered_beta) == (1.0, 0.25)


def test_the_engine_resumes_exactly_from_its_state():
    model, guide, args, kwargs = _svi_problem()
    engine = SVIEngine(model, guide, kwargs["num_data"], schedule=Schedule(warmup=2, ramp=2, total=8, decay=4))
    pyro.set_rng_seed(0)
    uninterrupted = [engine.step(*args) for _ in range(8)]
    want = {k: v.clone() for k, v in guide.state_dict().items()}

    model, guide, args, kwargs = _svi_problem()
    engine = SVIEngine(model, guide, kwargs["num_data"], schedule=Schedule(warmup=2, ramp=2, total=8, decay=4))
    pyro.set_rng_seed(0)
    first = [engine.step(*args) for _ in range(4)]
    saved = (model.state_dict(), guide.state_dict(), engine.state_dict(), pyro.util.get_rng_state())
    model, guide, args, kwargs = _svi_problem()
    model.load_state_dict(saved[0])
    guide.load_state_dict(saved[1])
    engine = SVIEngine(model, guide, kwargs["num_data"], schedule=Schedule(warmup=2, ramp=2, total=8, decay=4))
    engine.load_state_dict(saved[2])
    pyro.util.set_rng_state(saved[3])
    rest = [engine.step(*args) for _ in range(4)]
    assert first + rest == uninterrupted
    for key, value in guide.state_dict().items():
        assert torch.equal(value, want[key]), key


@pytest.mark.parametrize(
    "optim, expected",
    [
        (pyro.optim.ClippedAdam({"lr": 0.02}), 0.02),
        (torch.optim.SGD, 0.01),
        (lambda groups, lr: torch.optim.RMSprop(groups, lr=lr), 0.01),
    ],
    ids=["pyro", "torch-class", "factory"],
)
def test_pyro_and_torch_optimizers_and_pyros_elbos_are_taken(optim, expected):
    model, guide, args, kwargs = _svi_problem()
    engine = SVIEngine(model, guide, kwargs["num_data"], optim=optim, loss=TraceMeanField_ELBO(), lr=None)
    before = [p.detach().clone() for p in guide.parameters()]
    losses = [engine.step(*args) for _ in range(3)]
    assert all(isinstance(v, float) for v in losses)
    assert any(not torch.equal(a, b) for a, b in zip(before, guide.parameters()))
    assert engine.optimizer.param_groups[0]["lr"] == pytest.approx(expected)


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        (dict(optim="adam"), TypeError, "optim"),
        (dict(loss=object()), TypeError, "loss"),
        (dict(lr=-1), ValueError, "lr"),
        (dict(lambda_step=0), ValueError, "lambda_step"),
        (dict(schedule=(1, 2)), TypeError, "schedule"),
    ],
)
def test_bad_arguments_are_named_and_change_nothing(kwargs, error, name):
    _assert_engine_refuses(kwargs, error, name)


def _assert_engine_refuses(kwargs, error, match):
    """``SVIEngine(..., **kwargs)`` raises ``error`` matching ``match`` and leaves the guide as it was."""
    model, guide, _, _ = _svi_problem()
    before = {k: v.clone() for k, v in guide.state_dict().items()}
    with pytest.raises(error, match=match):
        SVIEngine(model, guide, 90, **kwargs)
    assert all(torch.equal(v, before[k]) for k, v in guide.state_dict().items())


def test_fit_takes_a_pyro_optimizer_and_elbo():
    model, guide, args, _ = _svi_problem()
    history = tb.fit(
        model, guide, args, epochs=2, batch_size=15, progress=False, init="none", seed=0,
        optim=pyro.optim.Adam({"lr": 0.005}), loss=TraceMeanField_ELBO(), tolerance=None,
    )  # fmt: skip
    assert len(history.elbo) == 2 and all(torch.isfinite(torch.tensor(history.elbo)))
    assert history.lr[0] == pytest.approx(0.005)


def test_after_the_last_rank_search_the_likelihood_counts_the_whole_data(monkeypatch):
    task = tb.data.teacher_student(num_train=4096, num_test=64, seed=0)
    torch.manual_seed(0)
    layer = tb.models.TensorizedLinear(
        64, 64, format="ttm", max_rank=4, in_shape=task.in_shape, out_shape=task.out_shape
    )
    model = tb.models.BayesianClassifier(pyro.nn.PyroModule[torch.nn.Sequential](layer), task.num_classes)
    guide = tb.guides.MeanField(model, seed=0)
    seen = []
    real_step = SVIEngine.step

    def recording_step(engine, *args, **kwargs):
        seen.append(engine.num_data)
        return real_step(engine, *args, **kwargs)

    monkeypatch.setattr(SVIEngine, "step", recording_step)
    history = tb.fit(model, guide, (task.x_train, task.y_train), epochs=6, batch_size=256, seed=0, progress=False)
    assert history.rank_search, "the fit must have searched for this test to mean something"
    held = round(0.1 * 4096)
    assert seen[0] == 4096 - held and seen[-1] == 4096
    # and not before: every step up to the last search epoch counts the training share alone
    searched = [r["epoch"] for r in history.rank_search]
    assert len(searched) >= 2, "two searches or more, so that the first and the last differ"
    assert seen.count(4096 - held) == (searched[-1] + 1) * math.ceil((4096 - held) / 256)


def test_gradient_norms_read_with_the_loss_in_one_read():
    from tensorbayes.infer.diagnostics import read_norms

    grads = [("guide", "a", torch.full((3,), 2.0)), ("model", "b", torch.ones(4, dtype=torch.float64))]
    scalars, norms = read_norms(grads, torch.tensor(-987.8241217133207, dtype=torch.float64), 0.5)
    assert scalars == [-987.8241217133207, 0.5]  # float64 kept: a Python float is not cast to float32
    assert norms == pytest.approx([12**0.5, 2.0], rel=1e-7)
    assert read_norms(grads)[0] == [] and read_norms([], 1.0) == ([1.0], [])


def test_an_optimizer_state_of_another_grouping_is_refused_with_a_message_that_says_why():
    model, guide, args, kwargs = _svi_problem()
    engine = SVIEngine(model, guide, kwargs["num_data"], lr=0.01)
    engine.step(*args)
    state = engine.state_dict()
    state["optimizer"]["param_groups"] = state["optimizer"]["param_groups"][:2]  # as saved before SCALE_LR
    with pytest.raises(ValueError, match="does not fit this engine's optimizer .*SCALE_LR"):
        SVIEngine(model, guide, kwargs["num_data"], lr=0.01).load_state_dict(state)


def test_a_float16_fit_that_overflows_is_told_why_and_a_float32_one_is_not():
    model, (x, y), _ = _classifier()
    for dtype, hint in ((torch.float16, True), (torch.float32, False)):
        pyro.clear_param_store()
        model = model.to(dtype)
        guide = tb.guides.MeanField(model, seed=0).to(dtype)
        engine = SVIEngine(model, guide, num_data=10**6)
        if dtype == torch.float32:  # a NaN of its own: the message names it, and says nothing of float16
            engine.step(x.to(dtype), y)
            with torch.no_grad():
                next(p for name, p in guide.named_parameters() if name.startswith("locs."))[0] = math.nan
        with pytest.raises(tb.infer.NonFiniteError) as error:
            for _ in range(5):
                engine.step(x.to(dtype), y)
        assert ("float16, whose largest value is 65504" in str(error.value)) == hint


class _PlainRegression(pyro.nn.PyroModule):
    """A Pyro model of no low-rank tensor: a linear layer whose weights are PyroSample sites."""

    def __init__(self):
        super().__init__()
        self.lin = pyro.nn.PyroModule[torch.nn.Linear](3, 1).double()
        prior = pyro.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0)
        self.lin.weight = pyro.nn.PyroSample(prior.expand([1, 3]).to_event(2))
        self.lin.bias = pyro.nn.PyroSample(prior.expand([1]).to_event(1))

    def forward(self, x, y=None, num_data=None):
        mean = self.lin(x).squeeze(-1)
        with pyro.plate("data", num_data or len(x), subsample_size=len(x)):
            pyro.sample("obs", pyro.distributions.Normal(mean, 1.0), obs=y)
        return mean


def _plain_problem():
    pyro.clear_param_store()
    torch.manual_seed(0)
    x = torch.randn(20, 3, dtype=torch.float64)
    model = _PlainRegression()
    return model, pyro.infer.autoguide.AutoNormal(model), (x, x.sum(-1))


def test_a_model_without_low_rank_tensors_steps_as_pyros_svi_with_an_autoguide():
    """Any Pyro guide: an AutoNormal over a plain PyroModule, whose parameters appear at its first call."""
    model, guide, args = _plain_problem()
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), TraceMeanField_ELBO())
    pyro.set_rng_seed(3)
    want = [svi.step(*args, num_data=40) for _ in range(4)]
    want_params = {name: p.detach().clone() for name, p in guide.named_parameters()}

    model, guide, args = _plain_problem()
    engine = SVIEngine(model, guide, 40, lr=0.05)
    pyro.set_rng_seed(3)
    got = [engine.step(*args) for _ in range(4)]
    assert got == pytest.approx(want, rel=1e-12)
    assert want_params and want_params.keys() == dict(guide.named_parameters()).keys()
    for name, p in guide.named_parameters():
        torch.testing.assert_close(p.detach(), want_params[name], rtol=1e-10, atol=1e-12)


def test_the_learning_rate_is_never_below_zero_past_the_schedules_total():
    """A step past ``total`` is at rate 0: a negative one would step up the loss."""
    schedule = Schedule(total=4, decay=2)
    assert [schedule.lr_factor(step) for step in range(7)] == [1.0, 1.0, 1.0, 0.5, 0.0, 0.0, 0.0]
    model, guide, args, kwargs = _svi_problem()
    engine = SVIEngine(model, guide, kwargs["num_data"], schedule=schedule)
    for _ in range(4):
        engine.step(*args)
    before = {name: p.detach().clone() for name, p in guide.named_parameters() if name.startswith("locs.")}
    engine.step(*args)  # the sixth step, past the total
    assert all(group["lr"] == 0.0 for group in engine.optimizer.param_groups)
    for name, p in guide.named_parameters():
        if name in before and "lambda" not in name:  # λ takes its closed-form step, not the optimizer's
            assert torch.equal(p.detach(), before[name]), name


def _returns_no_optimizer(groups, lr):
    return None


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(optim=pyro.optim.ExponentialLR({"optimizer": torch.optim.SGD, "optim_args": {}, "gamma": 0.9})),
         ValueError, "learning-rate scheduler"),
        (dict(optim=pyro.optim.Adam({"lr": 0.01}, {"clip_norm": 1.0})), ValueError, "clip_args"),
        (dict(optim=pyro.optim.Adam), TypeError, r"pyro\.optim\.Adam\(\{'lr': 0\.01\}\)"),
        (dict(optim=torch.optim.Adam([torch.zeros(1, requires_grad=True)])), TypeError, "got an instance"),
        (dict(optim=_returns_no_optimizer), TypeError, "optim must return a torch optimizer"),
        (dict(loss=TraceMeanField_ELBO(), num_particles=4), ValueError, r"TraceMeanField_ELBO\(num_particles=4\)"),
    ],
    ids=["pyro-scheduler", "pyro-clip-args", "pyro-factory", "torch-instance", "bad-factory", "particles-and-loss"],
)  # fmt: skip
def test_what_the_engine_would_ignore_or_misuse_is_refused_by_name(kwargs, error, match):
    """A Pyro optimizer's clipping and scheduler, and num_particles beside a loss, would be silently ignored."""
    _assert_engine_refuses(kwargs, error, match)


def test_an_optimizer_state_of_other_shapes_is_refused_before_anything_changes():
    """torch's load takes a state of the same count of parameters whatever their shapes, and the
    next step fails deep inside Adam: a state saved after pruning, loaded into the unpruned model."""
    model, guide, args, kwargs = _svi_problem()
    engine = SVIEngine(model, guide, kwargs["num_data"])
    engine.step(*args)
    tb.prune(model, guide, ranks={"tensor": (2, 2)})
    engine.step(*args)
    state = engine.state_dict()
    model, guide, args, kwargs = _svi_problem()
    fresh = SVIEngine(model, guide, kwargs["num_data"])
    with pytest.raises(ValueError, match=r"guide parameter 'locs\.tensor\.factor0_unconstrained' has shape .*pruned"):
        fresh.load_state_dict(state)
    assert fresh.num_steps == 0 and not fresh.optimizer.state
    fresh.step(*args)  # the engine is as it was
    with pytest.raises(ValueError, match="state must be what SVIEngine.state_dict"):
        fresh.load_state_dict(model.state_dict())


def test_a_state_loaded_before_an_autoguide_has_parameters_says_to_call_it_first():
    model, guide, args = _plain_problem()
    engine = SVIEngine(model, guide, 40)
    engine.step(*args)
    state = engine.state_dict()
    model, guide, args = _plain_problem()
    engine = SVIEngine(model, guide, 40)
    with pytest.raises(ValueError, match="call it once with the model's arguments before load_state_dict"):
        engine.load_state_dict(state)
    with torch.no_grad():
        guide(*args)
    engine.load_state_dict(state)
    assert engine.num_steps == 1


def test_a_step_without_gradients_or_parameters_is_refused_by_name():
    model, guide, args, kwargs = _svi_problem()
    engine = SVIEngine(model, guide, kwargs["num_data"])
    with torch.no_grad(), pytest.raises(RuntimeError, match="torch.no_grad"):
        engine.step(*args)
    assert engine.num_steps == 0

    def fixed_guide(x, y=None, num_data=None):
        pyro.sample("w", pyro.distributions.Normal(torch.zeros(3, dtype=torch.float64), 1.0).to_event(1))

    def linear(x, y=None, num_data=None):
        w = pyro.sample("w", pyro.distributions.Normal(torch.zeros(3, dtype=torch.float64), 1.0).to_event(1))
        pyro.sample("obs", pyro.distributions.Normal(x @ w, 1.0).to_event(1), obs=y)

    pyro.clear_param_store()
    x = torch.randn(5, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="no trainable parameter"):
        SVIEngine(linear, fixed_guide).step(x, x.sum(-1))
