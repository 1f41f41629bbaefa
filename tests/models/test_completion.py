"""
TensorCompletion: the minibatch likelihood is scaled by the data so that the ELBO is the
full-data ELBO, and observed data are validated.
"""

import pytest
import torch
from pyro import poutine

from tensorbayes.data import planted_tensor
from tensorbayes.guides import MeanField
from tensorbayes.infer import MeanFieldELBO
from tensorbayes.models import TensorCompletion

D = torch.float64


def _fixed_model(fmt="tt", shape=(4, 5, 6), ranks=(2, 3), noise=0.3):
    """A completion model with its factors and λ conditioned to a planted tensor's."""
    planted = planted_tensor(shape, fmt, ranks, observed=0.5, noise=0.05, seed=1, dtype=D)
    model = TensorCompletion(shape, format=fmt, max_rank=ranks, noise=noise)
    model.double()
    tensor = model.tensor
    data = {tensor.factor_site(k): f for k, f in enumerate(planted.factors)}
    data.update({tensor.lambda_site(b): torch.ones(r, dtype=D) for b, r in enumerate(tensor.layout.ranks)})
    return planted, model, poutine.condition(model, data=data)


def _obs_log_prob(conditioned, index, values, num_data):
    trace = poutine.trace(conditioned).get_trace(index, values, num_data=num_data)
    trace.compute_log_prob()
    site = trace.nodes["obs"]
    return site["log_prob_sum"], site


@pytest.mark.parametrize("fmt, ranks", [("tt", (2, 3)), ("tucker", (2, 3, 3))])
def test_minibatch_likelihood_scaled_to_full_data(fmt, ranks):
    planted, model, conditioned = _fixed_model(fmt, ranks=ranks)
    index, values = planted.train_index, planted.train_values
    n = len(values)
    batch = 20
    n = n - n % batch
    index, values = index[:n], values[:n]

    # the full-data log likelihood, written independently
    mean = model.tensor.layout.entries(list(planted.factors), index)
    noise = model.noise
    assert noise.dtype == D
    full = torch.distributions.Normal(mean, noise).log_prob(values).sum()
    whole, _ = _obs_log_prob(conditioned, index, values, num_data=n)
    torch.testing.assert_close(whole, full, rtol=1e-12, atol=1e-9)

    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    terms = []
    for start in range(0, n, batch):
        idx = perm[start : start + batch]
        scaled, site = _obs_log_prob(conditioned, index[idx], values[idx], num_data=n)
        assert site["scale"] == pytest.approx(n / batch)
        unscaled = site["fn"].log_prob(values[idx]).sum()
        torch.testing.assert_close(scaled, n / batch * unscaled, rtol=1e-12, atol=1e-9)
        # the mean of the batch is the tensor's entries there
        torch.testing.assert_close(site["fn"].mean, mean[idx], rtol=1e-12, atol=1e-12)
        terms.append(scaled)
    assert len(terms) == n // batch > 1
    torch.testing.assert_close(torch.stack(terms).mean(), full, rtol=1e-12, atol=1e-9)


def test_without_num_data_the_batch_is_the_data():
    planted, _, conditioned = _fixed_model()
    index, values = planted.train_index[:7], planted.train_values[:7]
    _, site = _obs_log_prob(conditioned, index, values, num_data=None)
    assert site["scale"] == 1.0


def test_forward_returns_the_entries_and_samples_without_values():
    planted, model, conditioned = _fixed_model()
    index = planted.test_index[:11]
    trace = poutine.trace(conditioned).get_trace(index)
    mean = trace.nodes["_RETURN"]["value"]
    torch.testing.assert_close(mean, planted.full[tuple(index.T)], rtol=1e-10, atol=1e-10)
    obs = trace.nodes["obs"]
    assert not obs["is_observed"] and obs["value"].shape == (11,)


def test_noise_fixed_or_learned():
    fixed = TensorCompletion((3, 4, 5), noise=0.25)
    assert not fixed.learns_noise
    assert fixed.noise.item() == pytest.approx(0.25)
    assert not any(n.endswith("log_noise") for n, _ in fixed.named_parameters())
    learned = TensorCompletion((3, 4, 5))
    assert learned.learns_noise
    assert [n for n, _ in learned.named_parameters()] == ["log_noise"]


def test_fixed_noise_is_exact_in_float64():
    model = TensorCompletion((3, 4, 5), noise=0.3).double()
    assert model.noise.dtype == D
    assert abs(model.noise.item() - 0.3) < 1e-12


@pytest.mark.parametrize("noise", [-1, 0, 0.0, float("nan"), float("inf"), "0.1"])
def test_bad_noise(noise):
    with pytest.raises(ValueError, match="noise"):
        TensorCompletion((3, 4, 5), noise=noise)


def _good():
    index = torch.tensor([[0, 1, 2], [2, 3, 4], [1, 0, 0]])
    values = torch.tensor([0.5, -1.0, 2.0])
    return index, values


def test_check_data_accepts_good_data():
    model = TensorCompletion((3, 4, 5))
    index, values = _good()
    got_index, got_values = model.check_data(index.int(), values)
    assert got_index.dtype == torch.long and torch.equal(got_index, index)
    assert torch.equal(got_values, values)
    got_index, none = model.check_data(index)
    assert none is None


@pytest.mark.parametrize(
    "change, error, name",
    [
        (lambda i, v: (i.index_put((torch.tensor([1]), torch.tensor([2])), torch.tensor(5)), v), ValueError, "index"),
        (lambda i, v: (i.index_put((torch.tensor([0]), torch.tensor([0])), torch.tensor(-1)), v), ValueError, "index"),
        (lambda i, v: (i[:, :2], v), ValueError, "index"),
        (lambda i, v: (torch.cat([i, i[:, :1]], 1), v), ValueError, "index"),
        (lambda i, v: (i[0], v), ValueError, "index"),
        (lambda i, v: (i.double(), v), TypeError, "index"),
        (lambda i, v: (i, v.index_put((torch.tensor([1]),), torch.tensor(float("nan")))), ValueError, "values"),
        (lambda i, v: (i, v.index_put((torch.tensor([2]),), torch.tensor(float("inf")))), ValueError, "values"),
        (lambda i, v: (i, v[:2]), ValueError, "values"),
        (lambda i, v: (i, v.reshape(3, 1)), ValueError, "values"),
        (lambda i, v: (i, torch.tensor([1, 2, 3])), TypeError, "values"),
    ],
    ids=[
        "index-too-big",
        "index-negative",
        "too-few-columns",
        "too-many-columns",
        "1d-index",
        "float-index",
        "nan-values",
        "inf-values",
        "short-values",
        "2d-values",
        "int-values",
    ],
)
def test_check_data_errors_name_the_argument(change, error, name):
    model = TensorCompletion((3, 4, 5))
    index, values = change(*_good())
    with pytest.raises(error, match=name):
        model.check_data(index, values)


@pytest.mark.parametrize("num_data", [2, 0, -30, 30.0, True])
def test_forward_refuses_a_num_data_that_is_not_a_data_set_size(num_data):
    # a num_data below the batch (or 0, negative, not an int) scaled the likelihood by a
    # meaningless factor without a word: -30 made it negative, 0 fell back to the batch
    planted, _, conditioned = _fixed_model()
    index, values = planted.train_index[:3], planted.train_values[:3]
    with pytest.raises(ValueError, match="num_data must be an int at least the batch size"):
        conditioned(index, values, num_data=num_data)


@pytest.mark.parametrize(
    "index, values, error, match",
    [
        (torch.tensor([[0, 1, 2], [2, 3, 4]]), torch.tensor([[0.5], [1.0]], dtype=D), ValueError, r"values.*\(2,\)"),
        (torch.tensor([[0, 1, 2], [2, 3, 4]]), torch.tensor([0.5, 1.0, 2.0], dtype=D), ValueError, r"values.*\(2,\)"),
        (torch.tensor([[0, 1, 2], [2, 3, 4]]), torch.tensor([1, 2]), TypeError, "values must be a floating point"),
        (torch.tensor([[0, 1, 2], [2, 3, 4]]), [0.5, 1.0], TypeError, "values must be a floating point"),
        (torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, dtype=D), ValueError, "index.*batch >= 1"),
        ([[0, 1, 2]], None, TypeError, "index must be an integer tensor"),
    ],
    ids=["values-column", "values-too-long", "int-values", "list-values", "empty-batch", "list-index"],
)
def test_forward_refuses_values_that_are_not_one_per_index(index, values, error, match):
    # values of shape (batch, 1) broadcast against the (batch,) entries to a (batch, batch)
    # likelihood, which MeanFieldELBO summed into a wrong loss without a word
    _, model, conditioned = _fixed_model()
    with pytest.raises(error, match=match):
        conditioned(index, values)
    guide = MeanField(model, seed=0).double()
    with pytest.raises(error, match=match):
        MeanFieldELBO().loss(model, guide, index, values)
