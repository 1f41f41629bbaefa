"""
Gaps that mutation testing (``python -m benchmarks.mutation``) found in the guides' tests: the
bounds of MeanField's ``lambda_step`` and ``quantiles``, the quantiles' values, and a Pyro
autoguide read as a tensor guide (its scales, its λ per tensor, no closed-form λ step).
"""

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoDelta, AutoNormal

import tensorbayes as tb
from tensorbayes.guides import GuideError, MeanField
from tensorbayes.models import TensorCompletion

#: Φ(-1) and Φ(1): the quantiles one standard deviation below and above the median.
ONE_SIGMA = [0.15865525393145707, 0.8413447460685429]


def _model():
    torch.manual_seed(0)
    return TensorCompletion((6, 7, 8), format="tt", max_rank=3)


def _called(guide):
    """``guide`` after one call, so that its sites exist."""
    guide(torch.zeros(3, 3, dtype=torch.long), torch.zeros(3))
    return guide


@pytest.mark.parametrize("lambda_step", [1.5, 2, 0, 0.0, -0.5])
def test_a_lambda_step_outside_zero_to_one_is_refused(lambda_step):
    with pytest.raises(ValueError, match="lambda_step"):
        MeanField(_model(), lambda_step=lambda_step)


@pytest.mark.parametrize("lambda_step", [1, 1.0, 0.25])
def test_a_lambda_step_in_zero_to_one_including_one_is_taken(lambda_step):
    assert MeanField(_model(), lambda_step=lambda_step).lambda_step == lambda_step


@pytest.mark.parametrize("quantiles", [[1.0], [0.5, 1.0], [0.0], [[0.5]]])
def test_quantiles_refuse_the_ends_and_a_nested_list(quantiles):
    with pytest.raises(ValueError, match="quantiles"):
        MeanField(_model(), seed=0).quantiles(quantiles)


@pytest.mark.parametrize("lambda_guide", ["lognormal", "delta"])
def test_quantiles_one_sigma_off_are_the_mean_plus_and_minus_the_scale(lambda_guide):
    model = _model()
    guide = MeanField(model, seed=0, lambda_guide=lambda_guide, init_scale=0.3)
    tensor = model.tensor
    q = guide.quantiles(ONE_SIGMA)
    for k, (m, s) in enumerate(zip(guide.factor_means(tensor), guide.factor_scales(tensor))):
        torch.testing.assert_close(q[tensor.factor_site(k)], torch.stack([m - s, m + s]), rtol=1e-5, atol=1e-6)
    for b, lam in enumerate(guide.lambdas("tensor")):
        post = guide.get_posterior(tensor.lambda_site(b))
        if lambda_guide == "delta":
            expected = torch.stack([lam, lam])
        else:  # a LogNormal: exp(log λ ± its scale)
            loc, scale = post.base_dist.loc, post.base_dist.scale
            expected = torch.stack([loc - scale, loc + scale]).exp()
        torch.testing.assert_close(q[tensor.lambda_site(b)], expected, rtol=1e-5, atol=1e-6)


def test_an_autonormal_read_as_a_tensor_guide_gives_its_scales_and_lambdas():
    model = _model()
    auto = _called(AutoNormal(model, init_scale=0.05))
    guide = tb.guides.as_tensor_guide(model, auto)
    tensor = model.tensor
    assert guide.has_closed_form_lambdas is False
    medians = auto.median()
    above = auto.quantiles(ONE_SIGMA[1:])
    scales = guide.factor_scales(tensor)
    assert [tuple(s.shape) for s in scales] == tensor.layout.factor_shapes
    for k, s in enumerate(scales):
        site = tensor.factor_site(k)
        torch.testing.assert_close(s, (above[site][0] - medians[site]).detach(), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(s, torch.full_like(s, 0.05))
    lambdas = guide.lambdas()
    assert set(lambdas) == {"tensor"}
    for b, lam in enumerate(guide.lambdas("tensor")):
        torch.testing.assert_close(lam, medians[tensor.lambda_site(b)].detach())
        torch.testing.assert_close(lam, lambdas["tensor"][b])


def test_an_autodelta_read_as_a_tensor_guide_has_no_scales():
    model = _model()
    guide = tb.guides.as_tensor_guide(model, _called(AutoDelta(model)))
    with pytest.raises(GuideError, match="AutoDelta has no per-site scale for 'tensor.factor0'"):
        guide.factor_scales(model.tensor)


def test_update_lambdas_takes_a_full_step_by_default():
    model = _model()
    one, full = MeanField(model, seed=0, lambda_guide="delta"), MeanField(model, seed=0, lambda_guide="delta")
    before = [lam.clone() for lam in one.lambdas("tensor")]
    one.update_lambdas()
    full.update_lambdas(step_size=1.0)
    for a, b, start in zip(one.lambdas("tensor"), full.lambdas("tensor"), before):
        torch.testing.assert_close(a, b)
        assert not torch.allclose(a, start)


@pytest.mark.parametrize("lambda_guide", ["lognormal", "delta"])
def test_draws_are_the_forward_passs_draws_from_the_same_seed(lambda_guide):
    model = _model()
    guide = MeanField(model, seed=0, lambda_guide=lambda_guide, init_scale=0.3)
    pyro.set_rng_seed(5)
    draws = guide.draws()
    pyro.set_rng_seed(5)
    trace = poutine.trace(guide).get_trace(torch.zeros(3, 3, dtype=torch.long), torch.zeros(3))
    assert set(draws) == {n for n, s in trace.nodes.items() if s["type"] == "sample"}
    for site, draw in draws.items():
        torch.testing.assert_close(draw.value, trace.nodes[site]["value"], rtol=0, atol=0)
