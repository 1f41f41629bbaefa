"""The Normal likelihood with one shared scale: the same distribution as Pyro's Normal, checked in float64."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from tensorbayes.models.noise import SharedScaleNormal

D = torch.float64


def _inputs(seed=0, shape=(5, 7)):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(shape, generator=g, dtype=D).requires_grad_()
    scale = torch.tensor(0.7, dtype=D, requires_grad=True)
    value = torch.randn(shape, generator=g, dtype=D)
    return loc, scale, value


def test_log_prob_and_its_gradients_equal_pyros_normal():
    loc, scale, value = _inputs()
    ref = dist.Normal(loc, scale).to_event(1).log_prob(value)
    got = SharedScaleNormal(loc, scale).to_event(1).log_prob(value)
    assert got.shape == ref.shape == (5,)
    # a sum of 7 terms of size ~1 in float64: agreement to a few ulps of the sum
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
    for g_got, g_ref in zip(torch.autograd.grad(got.sum(), (loc, scale)), torch.autograd.grad(ref.sum(), (loc, scale))):
        torch.testing.assert_close(g_got, g_ref, rtol=0, atol=1e-11)


def test_a_number_scale_and_the_moments_are_those_of_normal():
    loc, _, value = _inputs(1)
    d = SharedScaleNormal(loc, 2.0)
    torch.testing.assert_close(d.log_prob(value), dist.Normal(loc, 2.0).log_prob(value), rtol=0, atol=1e-12)
    assert d.scale.shape == loc.shape and torch.all(d.scale == 2.0)
    torch.testing.assert_close(d.entropy(), dist.Normal(loc, 2.0).entropy(), rtol=0, atol=1e-12)


def test_expanded_under_a_plate_it_keeps_its_scale():
    loc, scale, value = _inputs(2, shape=(7,))

    def model():
        with pyro.plate("rows", 4):
            pyro.sample("obs", SharedScaleNormal(loc, scale).to_event(1), obs=value.expand(4, 7))

    site = poutine.trace(model).get_trace().nodes["obs"]
    assert site["fn"].batch_shape == (4,)
    expected = dist.Normal(loc, scale).to_event(1).log_prob(value).expand(4)
    torch.testing.assert_close(site["fn"].log_prob(site["value"]), expected, rtol=0, atol=1e-12)


def test_samples_have_the_shape_and_spread_of_loc_and_scale():
    loc = torch.zeros(20_000, dtype=D)
    torch.manual_seed(0)
    x = SharedScaleNormal(loc, 3.0).sample()
    assert x.shape == loc.shape
    # the sample sd of 20,000 draws is within 3% of 3.0 with overwhelming probability (se ~ 0.5%)
    assert abs(x.std().item() - 3.0) < 0.09


@pytest.mark.parametrize(
    "loc, scale, match",
    [
        (torch.tensor([0.0, float("nan")]), 1.0, "loc"),
        (torch.zeros(2), 0.0, "scale"),
        (torch.zeros(2), -1.0, "scale"),
        (torch.zeros(2), torch.ones(2), "0-d"),
    ],
)
def test_bad_parameters_are_named(loc, scale, match):
    with pytest.raises(ValueError, match=match):
        SharedScaleNormal(loc, scale, validate_args=True)


@pytest.mark.parametrize("loc", [[0.0, 1.0], torch.tensor([0, 1])], ids=["list", "int64"])
def test_a_loc_that_is_no_floating_tensor_is_refused(loc):
    # an integer loc truncated the shared scale to its dtype (0.5 -> 0: NaN log densities); a list
    # raised an AttributeError
    with pytest.raises(TypeError, match="loc must be a floating point tensor"):
        SharedScaleNormal(loc, 0.5, validate_args=False)


def test_a_value_outside_the_support_is_refused_when_validating():
    d = SharedScaleNormal(torch.zeros(2), 1.0, validate_args=True)
    with pytest.raises(ValueError, match="support"):
        d.log_prob(torch.tensor([0.0, float("nan")]))


def test_validation_follows_torchs_default_when_not_given():
    saved = torch.distributions.Distribution._validate_args
    try:
        torch.distributions.Distribution.set_default_validate_args(False)
        d = SharedScaleNormal(torch.tensor([float("nan")]), 1.0)  # not checked, as torch's Normal would not
        assert not d._validate_args
    finally:
        torch.distributions.Distribution.set_default_validate_args(saved)
    assert SharedScaleNormal(torch.zeros(1), 1.0)._validate_args == saved


@pytest.mark.parametrize("model", ["completion", "regressor"])
def test_a_numpy_scalar_noise_is_a_positive_number(model):
    # noise=np.std(y) of float32 data is a np.float32, which was refused as "not a positive number"
    import numpy as np

    from tensorbayes.models import BayesianRegressor, TensorCompletion, tensorize

    def build(noise):
        if model == "completion":
            return TensorCompletion((3, 4, 5), noise=noise)
        net = tensorize(torch.nn.Sequential(torch.nn.Linear(16, 16)), format="tt", max_rank=2, min_features=16)
        return BayesianRegressor(net, noise=noise)

    built = build(np.float32(0.25))
    assert not built.learns_noise and built.fixed_noise == 0.25 and type(built.fixed_noise) is float
    for bad in (np.float32(0.0), np.float64(-1.0), np.float32("nan"), np.bool_(True)):
        with pytest.raises(ValueError, match="noise must be None"):
            build(bad)
