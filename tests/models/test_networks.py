"""
BayesianClassifier and BayesianRegressor: the minibatch likelihood is scaled by
``num_data / batch`` (the full-data ELBO), a mean-field guide trains through them, they return
what tb.predict averages, and bad data gets errors that name the argument.
"""

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO
from pyro.nn import PyroModule

import tensorbayes as tb
from tensorbayes.guides import MeanField
from tensorbayes.models import BayesianClassifier, BayesianRegressor, tensorize

D = torch.float64
FORMATS = ["cp", "tucker", "tt", "ttm"]


def _net(format="ttm", out=3):
    """Linear(16, 16) tensorized ((4, 4) -> (4, 4)), ReLU, a small dense Linear(16, out)."""
    net = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, out))
    return tensorize(net, format=format, max_rank=3, min_features=16, order=2)


def _classifier(format="ttm"):
    model = BayesianClassifier(_net(format), num_classes=3)
    guide = MeanField(model, seed=0)
    model.double()
    guide.double()
    return model, guide


def _data(n=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 16, generator=gen, dtype=D), torch.randint(0, 3, (n,), generator=gen)


def _traces(model, guide, *args, **kwargs):
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return guide_trace, model_trace


@pytest.mark.parametrize("format", FORMATS)
def test_classifier_likelihood_scaled_to_full_data(format):
    model, guide = _classifier(format)
    x, y = _data()
    batch, n = len(y), 100
    _, trace = _traces(model, guide, x, y, num_data=n)
    trace.compute_log_prob()
    site = trace.nodes["obs"]
    assert site["scale"] == pytest.approx(n / batch)
    # the likelihood is Categorical on the network's logits at the drawn weights
    logits = site["fn"].logits
    assert logits.shape == (batch, 3) and logits.dtype == D
    unscaled = torch.distributions.Categorical(logits=logits).log_prob(y).sum()
    torch.testing.assert_close(site["log_prob_sum"], n / batch * unscaled, rtol=1e-12, atol=1e-12)
    # the return value is the softmax of those logits
    torch.testing.assert_close(trace.nodes["_RETURN"]["value"], torch.softmax(logits, -1), rtol=1e-12, atol=1e-12)
    # site names follow the module path
    assert "net.0.weight.factor0" in trace.nodes and "net.0.weight.lambda0" in trace.nodes
    assert {"net.0.bias", "net.2.weight", "net.2.bias"} <= {k for k, s in trace.nodes.items() if s["type"] == "param"}


def test_mean_field_elbo_differs_by_the_scaled_likelihood():
    """For the same guide draw, the loss at num_data = N and at N = batch differ by (N/B - 1) log p(y)."""
    model, guide = _classifier("tt")
    x, y = _data()
    batch, n = len(y), 1000
    elbo = TraceMeanField_ELBO()
    pyro.set_rng_seed(1)
    loss_n = elbo.differentiable_loss(model, guide, x, y, num_data=n)
    pyro.set_rng_seed(1)
    loss_b = elbo.differentiable_loss(model, guide, x, y)
    pyro.set_rng_seed(1)
    _, trace = _traces(model, guide, x, y, num_data=batch)
    loglik = trace.nodes["obs"]["fn"].log_prob(y).sum()
    torch.testing.assert_close(loss_n - loss_b, -(n / batch - 1) * loglik, rtol=1e-9, atol=1e-9)
    loss_n.backward()
    for name, param in guide.named_parameters():
        if "locs" in name:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert model.net[0].bias.grad is not None and model.net[2].weight.grad is not None


def test_classifier_samples_labels_and_predicts_probabilities():
    model, guide = _classifier("ttm")
    x, _ = _data(n=6)
    trace = poutine.trace(model).get_trace(x)
    labels = trace.nodes["obs"]["value"]
    assert labels.shape == (6,) and labels.dtype == torch.long and ((labels >= 0) & (labels < 3)).all()
    probs, std = tb.predict(model, guide, x, num_samples=4)
    assert probs.shape == (6, 3) and std.shape == (6, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(6, dtype=D), rtol=1e-12, atol=1e-12)


def test_fit_runs_a_classifier():
    model, guide = _classifier("ttm")
    x, y = _data(n=32)
    tb.fit(model, guide, (x, y.int()), epochs=2, batch_size=8, seed=0, progress=False)
    for param in guide.parameters():
        assert torch.isfinite(param).all()


# ----- regression -----


def test_regressor_noise_scaling_and_mean():
    model = BayesianRegressor(_net("tt", out=2), noise=0.25)
    guide = MeanField(model, seed=0)
    model.double()
    guide.double()
    assert not model.learns_noise and model.noise.item() == 0.25 and model.noise.dtype == D
    x, _ = _data(n=5)
    y = torch.randn(5, 2, dtype=D)
    _, trace = _traces(model, guide, x, y, num_data=40)
    trace.compute_log_prob()
    site = trace.nodes["obs"]
    assert site["scale"] == pytest.approx(8.0)
    mean = trace.nodes["_RETURN"]["value"]
    assert mean.shape == (5, 2)
    expected = torch.distributions.Normal(mean, 0.25).log_prob(y).sum()
    torch.testing.assert_close(site["log_prob_sum"], 8.0 * expected, rtol=1e-12, atol=1e-12)
    assert site["fn"].event_shape == (2,) and site["fn"].batch_shape == (5,)


def test_regressor_learns_noise_as_a_point_estimate():
    model = BayesianRegressor(_net("cp", out=1))
    guide = MeanField(model, seed=0)
    assert model.learns_noise and model.noise.item() == pytest.approx(1.0)
    x, _ = _data(n=4)
    loss = TraceMeanField_ELBO().differentiable_loss(model, guide, x.float(), torch.randn(4, 1), num_data=10)
    loss.backward()
    assert model.log_noise.grad is not None and model.log_noise.grad != 0


@pytest.mark.parametrize("noise", [0, -1.0, float("inf"), float("nan"), "0.1", True])
def test_regressor_bad_noise(noise):
    with pytest.raises(ValueError, match="noise"):
        BayesianRegressor(_net(), noise=noise)


# ----- bad input -----


@pytest.mark.parametrize(
    "change, error, match",
    [
        (
            lambda x, y: (x, y.index_put((torch.tensor([2]),), torch.tensor(3))),
            ValueError,
            r"y must hold class labels in \[0, num_classes=3\)",
        ),
        (lambda x, y: (x, y.index_put((torch.tensor([0]),), torch.tensor(-1))), ValueError, "y must hold class labels"),
        (lambda x, y: (x, y.double()), TypeError, "y must be an integer tensor"),
        (lambda x, y: (x, y[:7]), ValueError, r"y must have shape \(8,\)"),
        (lambda x, y: (x, y[:, None]), ValueError, r"y must have shape \(8,\)"),
        (lambda x, y: (x, [0, 1]), TypeError, "y must be a torch.Tensor"),
        (lambda x, y: (x[0, 0], y), ValueError, "x must have a leading batch dimension"),
        (lambda x, y: (x[:, :15], y), ValueError, "in_features=16"),
    ],
    ids=[
        "label-too-big",
        "label-negative",
        "float-labels",
        "short-labels",
        "2d-labels",
        "list-labels",
        "no-batch",
        "wrong-width",
    ],
)
def test_classifier_bad_input_names_the_argument(change, error, match):
    model, guide = _classifier("tt")
    x, y = change(*_data())
    with pytest.raises(error, match=match):
        model(x, y)


def test_classifier_bad_num_data_and_arguments():
    model, _ = _classifier("tt")
    x, y = _data()
    for num_data in (4, 0, 10.0, True):
        with pytest.raises(ValueError, match="num_data"):
            model(x, y, num_data=num_data)
    for num_classes in (1, 0, 2.5, True):
        with pytest.raises(ValueError, match="num_classes"):
            BayesianClassifier(_net(), num_classes=num_classes)
    with pytest.raises(TypeError, match="net must be a pyro.nn.PyroModule"):
        BayesianClassifier(torch.nn.Linear(4, 3), num_classes=3)
    with pytest.raises(TypeError, match="net must be a torch.nn.Module"):
        BayesianRegressor(lambda x: x)
    wide = BayesianClassifier(_net(out=3), num_classes=4)
    with pytest.raises(ValueError, match=r"num_classes=4"):
        wide(x.float())


def test_regressor_bad_input_names_the_argument():
    model = BayesianRegressor(_net(out=2), noise=0.1)
    x = torch.randn(5, 16)
    with pytest.raises(TypeError, match="y must be a floating point"):
        model(x, torch.ones(5, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="y must have a leading dimension of 5"):
        model(x, torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"y must have the shape of net\(x\), \(5, 2\)"):
        model(x, torch.randn(5))
    with pytest.raises(ValueError, match="y must be finite"):
        model.check_data(x, torch.full((5, 2), float("nan")))
    with pytest.raises(ValueError, match="x must be finite"):
        model.check_data(torch.full((5, 16), float("inf")), torch.randn(5, 2))


def test_check_data():
    model, _ = _classifier("cp")
    x, y = _data()
    got_x, got_y = model.check_data(x, y.int())
    assert got_x is x and got_y.dtype == torch.long and torch.equal(got_y, y)
    assert model.check_data(x)[1] is None
    got_x, got_y = model.check_data(x.tolist(), y.tolist())
    assert torch.equal(got_x, x.float()) and torch.equal(got_y, y)
    with pytest.raises(ValueError, match="x must be finite"):
        model.check_data(x.index_put((torch.tensor([0]), torch.tensor([3])), torch.tensor(float("nan"), dtype=D)), y)
    with pytest.raises(ValueError, match="y must hold class labels"):
        model.check_data(x, y + 3)
    with pytest.raises(TypeError, match="y must be an integer tensor"):
        model.check_data(x, y.float())
    with pytest.raises(ValueError, match=r"y must have shape \(8,\)"):
        model.check_data(x, y[:3])
    with pytest.raises(ValueError, match="x must have a leading batch dimension"):
        model.check_data(torch.zeros(0, 16), torch.zeros(0, dtype=torch.long))
    assert isinstance(model, PyroModule)
