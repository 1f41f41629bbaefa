import pytest
import torch

import tensorbayes as tb
from tensorbayes.data import planted_tensor
from tensorbayes.guides import MeanField
from tensorbayes.models import TensorCompletion
from tests.common import factor_parameter


def _model_and_guide(scale):
    model = TensorCompletion((5, 6, 7), format="tt", max_rank=3, noise=0.1).double()
    guide = MeanField(model, seed=0).double()
    with torch.no_grad():
        for k in range(len(model.tensor.layout.factor_shapes)):
            factor_parameter(guide, "scales", k).fill_(
                float(torch.log(torch.expm1(torch.tensor(scale, dtype=torch.float64))))
            )
    return model, guide


def test_predict_with_a_point_posterior_is_the_mean_tensor():
    model, guide = _model_and_guide(1e-12)
    index = planted_tensor((5, 6, 7), "tt", (2, 2), seed=0).test_index
    mean, std = tb.predict(model, guide, index, num_samples=3, chunk_size=50)
    expected = model.tensor.layout.entries(guide.factor_means(model.tensor), index)
    assert torch.allclose(mean, expected, atol=1e-9)
    assert std.max() < 1e-8


def test_predict_spread_matches_the_sample_spread():
    model, guide = _model_and_guide(0.05)
    index = planted_tensor((5, 6, 7), "tt", (2, 2), seed=0).test_index[:40]
    torch.manual_seed(0)
    mean, std = tb.predict(model, guide, index, num_samples=400, chunk_size=7)
    layout = model.tensor.layout
    locs, scales = guide.factor_means(model.tensor), guide.factor_scales(model.tensor)
    draws = torch.stack(
        [layout.entries([loc + s * torch.randn_like(s) for loc, s in zip(locs, scales)], index) for _ in range(400)]
    )
    # two independent Monte Carlo estimates of the same moments: 400 draws, a few standard errors
    assert torch.allclose(mean, draws.mean(0), atol=5 * (draws.std(0).max() / 20).item())
    assert torch.allclose(std, draws.std(0), rtol=0.25)


def _the_same_draws(model, guide, index, num_samples, seed):
    """The model's outputs on the guide's draws, drawn in predict's order from the same seed."""
    import pyro

    pyro.set_rng_seed(seed)
    draws = []
    for _ in range(num_samples):
        trace = pyro.poutine.trace(guide).get_trace(index)
        draws.append(pyro.poutine.replay(model, trace=trace)(index))
    return torch.stack(draws)


@pytest.mark.parametrize("num_samples", [2, 3, 4, 5])
def test_predict_from_a_few_draws_is_their_mean_and_std(num_samples):
    # the spread of a handful of draws is torch.std's (the n - 1 estimate), not the n one, which
    # would be sqrt(2/3) of it at 3 draws; Welford's recurrence and the two-pass formulas agree to
    # rounding: 1e-12 relative, atol 1e-15 (the entries are of order 0.1, their spreads 0.01)
    import pyro

    model, guide = _model_and_guide(0.05)
    index = planted_tensor((5, 6, 7), "tt", (2, 2), seed=0).test_index[:30]
    pyro.set_rng_seed(1)
    mean, std = tb.predict(model, guide, index, num_samples=num_samples, chunk_size=30)
    draws = _the_same_draws(model, guide, index, num_samples, seed=1)
    assert draws.dtype == torch.float64 and (draws.std(0) > 1e-3).all()  # a real spread
    torch.testing.assert_close(mean, torch.mean(draws, 0), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(std, torch.std(draws, 0), rtol=1e-12, atol=1e-15)


def test_predict_from_one_draw_has_no_spread_to_give():
    import pyro

    model, guide = _model_and_guide(0.05)
    index = planted_tensor((5, 6, 7), "tt", (2, 2), seed=0).test_index[:10]
    pyro.set_rng_seed(2)
    mean, std = tb.predict(model, guide, index, num_samples=1)
    torch.testing.assert_close(mean, _the_same_draws(model, guide, index, 1, seed=2)[0], rtol=0, atol=0)
    assert torch.isnan(std).all()  # as torch.std of one draw: one draw estimates no spread


@pytest.mark.parametrize("kwargs, match", [({"num_samples": 0}, "num_samples"), ({"chunk_size": 0}, "chunk_size")])
def test_predict_rejects_bad_arguments(kwargs, match):
    model, guide = _model_and_guide(0.1)
    with pytest.raises(ValueError, match=match):
        tb.predict(model, guide, torch.zeros(3, 3, dtype=torch.long), **kwargs)


def test_predict_refuses_inputs_without_examples():
    model, guide = _model_and_guide(0.1)
    with pytest.raises(ValueError, match="at least one example"):
        tb.predict(model, guide, torch.zeros(0, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="at least one example"):
        tb.predict(model, guide, torch.zeros(0, 3, dtype=torch.long), return_sites=["_RETURN"])


def _classifier():
    torch.manual_seed(0)
    net = torch.nn.Sequential(tb.models.TensorizedLinear(16, 12, format="tt", max_rank=3), torch.nn.ReLU())
    net.append(torch.nn.Linear(12, 3))
    model = tb.models.BayesianClassifier(tb.models.tensorize(net), num_classes=3).double()
    return model, MeanField(model, seed=0).double()


def test_predict_returns_every_draw_of_the_named_sites_over_chunks():
    # one draw of the guide for all chunks: each draw's return value is the network at that draw's
    # factors (float64, the same operations in the same order: equal to rounding, 1e-12)
    import pyro
    from pyro import poutine

    model, guide = _classifier()
    tensor = model.net[0].weight
    x = torch.randn(10, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    factor, lam = tensor.factor_site(1), tensor.lambda_site(0)
    pyro.set_rng_seed(0)
    draws = tb.predict(model, guide, x, num_samples=4, chunk_size=4, return_sites=["obs", "_RETURN", factor, lam])
    assert tuple(draws["obs"].shape) == (4, 10) and draws["obs"].dtype == torch.int64
    assert tuple(draws["_RETURN"].shape) == (4, 10, 3)
    assert tuple(draws[factor].shape) == (4, *tensor.layout.factor_shapes[1])
    assert tuple(draws[lam].shape) == (4, tensor.layout.ranks[0])
    assert not torch.equal(draws[factor][0], draws[factor][1])  # four draws, not one
    sites = tb.guides.tensor_sites(model)
    draws = tb.predict(model, guide, x, num_samples=4, chunk_size=3, return_sites=[*sites, "_RETURN"])
    for s in range(4):
        expected = poutine.condition(model, data={site: draws[site][s] for site in sites})(x)
        torch.testing.assert_close(draws["_RETURN"][s], expected, rtol=1e-12, atol=1e-12)


def test_predict_refuses_bad_return_sites():
    model, guide = _classifier()
    x = torch.zeros(2, 16, dtype=torch.float64)
    with pytest.raises(TypeError, match="return_sites must be a list of site names"):
        tb.predict(model, guide, x, num_samples=1, return_sites="obs")
    with pytest.raises(KeyError, match=r"no site 'nope' \(its sample sites: .*obs"):
        tb.predict(model, guide, x, num_samples=1, return_sites=["nope"])


def _network_with_batch_norm_and_dropout():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(16, 32),
        torch.nn.BatchNorm1d(32),
        torch.nn.Dropout(0.5),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 3),
    )
    model = tb.models.BayesianClassifier(tb.models.tensorize(net, format="tt", min_features=16), num_classes=3)
    return model, tb.guides.MeanField(model, seed=0)


def test_predict_runs_in_evaluation_mode_and_gives_each_module_its_mode_back():
    """Dropout off and batch norm on its running statistics, which predicting leaves unchanged."""
    model, guide = _network_with_batch_norm_and_dropout()
    norm, dropout = model.net[1], model.net[2]
    norm.running_mean.fill_(0.5)
    dropout.eval()  # one submodule in evaluation mode already: it stays so
    x = torch.randn(40, 16)
    mean, _ = tb.predict(model, guide, x, num_samples=2)
    assert torch.all(norm.running_mean == 0.5) and norm.num_batches_tracked == 0
    assert model.training and norm.training and not dropout.training
    torch.testing.assert_close(mean.sum(-1), torch.ones(40))


def test_predict_refuses_an_input_without_an_example_dimension():
    # a 0-d input failed with a bare IndexError from its shape
    model, guide = _model_and_guide(0.1)
    with pytest.raises(ValueError, match=r"first \(example\) dimension, got shapes \[\(\)\]"):
        tb.predict(model, guide, torch.tensor(3))


@pytest.mark.parametrize("returned", [None, "labels"])
def test_predict_asks_for_return_sites_when_the_model_returns_no_floating_tensor(returned):
    # a Pyro model that returns nothing (or integer labels) failed with an AttributeError on
    # None.clone (or a dtype error in the running mean) instead of pointing at return_sites
    import pyro
    import pyro.distributions as dist

    def model(x):
        w = pyro.sample("w", dist.Normal(torch.zeros(2, dtype=torch.float64), 1.0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Bernoulli(logits=x @ w)).long()
        return y if returned == "labels" else None

    def guide(x):
        pyro.sample("w", dist.Normal(torch.zeros(2, dtype=torch.float64), 0.1).to_event(1))

    x = torch.randn(5, 2, dtype=torch.float64)
    with pytest.raises(TypeError, match="must be a floating point tensor.*return_sites"):
        tb.predict(model, guide, x, num_samples=2)
    assert tb.predict(model, guide, x, num_samples=2, return_sites=["y"])["y"].shape == (2, 5)


def test_predict_reads_return_sites_given_as_a_generator_once():
    # a generator of names was read up by the checks and left no sites: {} came back, silently
    model, guide = _model_and_guide(0.1)
    index = planted_tensor((5, 6, 7), "tt", (2, 2), seed=0).test_index[:4]
    draws = tb.predict(model, guide, index, num_samples=2, return_sites=(site for site in ["_RETURN"]))
    assert set(draws) == {"_RETURN"} and draws["_RETURN"].shape == (2, 4)
    with pytest.raises(TypeError, match="return_sites must be a list of site names"):
        tb.predict(model, guide, index, num_samples=2, return_sites=3)


def _global_model_and_guide(shape):
    """A Pyro model returning a draw of shape ``shape`` whatever its inputs (no example dimension)."""
    import pyro
    import pyro.distributions as dist

    def model(x):
        return pyro.sample("w", dist.Normal(torch.zeros(shape, dtype=torch.float64), 1.0).to_event(len(shape)))

    def guide(x):
        pyro.sample("w", dist.Normal(torch.ones(shape, dtype=torch.float64), 0.1).to_event(len(shape)))

    return model, guide


def test_predict_of_an_output_without_one_row_per_example():
    # chunked, a (3,) global output was joined into a (6,) one; a 0-d output failed in torch.cat
    x = torch.randn(5, dtype=torch.float64)
    model, guide = _global_model_and_guide((3,))
    with pytest.raises(ValueError, match=r"one per example \(2\), got shape \(3,\).*chunk_size"):
        tb.predict(model, guide, x, num_samples=2, chunk_size=2)
    mean, std = tb.predict(model, guide, x, num_samples=2)  # one chunk: nothing to join
    assert mean.shape == std.shape == (3,)
    model, guide = _global_model_and_guide(())
    mean, std = tb.predict(model, guide, x, num_samples=2)
    assert mean.shape == std.shape == () and torch.isfinite(std)
    with pytest.raises(ValueError, match=r"got shape \(\)"):
        tb.predict(model, guide, x, num_samples=2, chunk_size=2)
