"""
A Pyro autoguide read as a tensor guide takes the whole posterior that ``set_posterior`` gives it
(factor locs, scales, λ), as :class:`~tensorbayes.guides.MeanField` does, so that ``tb.prune``
resets an autoguide's scales and λ as its docstring says; a value it cannot hold is refused by name.
"""

import copy

import pyro
import pytest
import torch
from pyro.infer.autoguide import AutoDelta, AutoMultivariateNormal, AutoNormal

import tensorbayes as tb
from tensorbayes.guides import GuideError, MeanField, as_tensor_guide
from tensorbayes.models import TensorCompletion
from tensorbayes.priors import init_improper_to_feasible

D = torch.float32


def _model():
    torch.manual_seed(0)
    return TensorCompletion((6, 7, 8), format="tt", max_rank=3)


def _called(model, guide):
    """``guide`` after one call, so that its sites exist."""
    guide(torch.zeros(3, 3, dtype=torch.long), torch.zeros(3, dtype=D))
    return guide


def _random_posterior(tensor):
    generator = torch.Generator().manual_seed(1)
    locs = [torch.randn(s, generator=generator, dtype=D) for s in tensor.layout.factor_shapes]
    scales = [torch.rand(s, generator=generator, dtype=D) + 0.2 for s in tensor.layout.factor_shapes]
    lambdas = [torch.rand(r, generator=generator, dtype=D) + 0.5 for r in tensor.layout.ranks]
    return locs, scales, lambdas


def _params(auto):
    return {k: v.detach().clone() for k, v in auto.named_parameters()}


def test_set_posterior_of_an_autonormal_takes_scales_and_lambdas():
    pyro.clear_param_store()
    model = _model()
    auto = _called(model, AutoNormal(model, init_scale=0.05))
    guide, tensor = as_tensor_guide(model, auto), model.tensor
    locs, scales, lambdas = _random_posterior(tensor)
    guide.set_posterior(tensor, locs, scales, lambdas)
    for a, b in zip(guide.factor_means(tensor), locs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0)
    for a, b in zip(guide.factor_scales(tensor), scales):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=0)
    for a, b in zip(guide.lambdas("tensor"), lambdas):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0)
    medians = auto.median()  # the autoguide itself answers with them
    for b, lam in enumerate(lambdas):
        torch.testing.assert_close(medians[tensor.lambda_site(b)], lam, rtol=1e-6, atol=0)


def test_set_posterior_of_an_autonormal_checks_every_value_before_taking_any():
    pyro.clear_param_store()
    model = _model()
    auto = _called(model, AutoNormal(model))
    guide, tensor = as_tensor_guide(model, auto), model.tensor
    locs, scales, lambdas = _random_posterior(tensor)
    before = _params(auto)
    bad = [
        (dict(locs=locs[:2]), r"locs must be a list of 3 tensors, one per factor, got 2"),
        (dict(locs=locs[:2] + [locs[2][:2]]), r"locs must keep the posterior's shapes.*\(locs\[2\]\)"),
        (dict(locs=locs, scales=scales[:2] + [-scales[2]]), r"scales\[2\] must be non-negative and finite"),
        (dict(locs=locs, scales=scales, lambdas=lambdas[:1]), r"lambdas must be a list of 2 tensors, one per bond"),
        (dict(locs=locs, scales=scales, lambdas=[lambdas[0], 0 * lambdas[1]]), r"lambdas\[1\] must be positive"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            guide.set_posterior(tensor, **kwargs)
        after = _params(auto)
        assert after.keys() == before.keys() and all(torch.equal(v, before[k]) for k, v in after.items()), kwargs


def test_prune_with_an_autonormal_resets_its_scales_and_lambdas_as_with_meanfield():
    pyro.clear_param_store()
    model = _model()
    twin = copy.deepcopy(model)
    auto = _called(model, AutoNormal(model, init_scale=0.05))
    guide, reference = as_tensor_guide(model, auto), MeanField(twin, seed=0)
    posterior = _random_posterior(model.tensor)
    guide.set_posterior(model.tensor, *posterior)
    reference.set_posterior(twin.tensor, *posterior)
    assert tb.prune(model, auto, ranks={"tensor": (2, 2)}) == tb.prune(twin, reference, ranks={"tensor": (2, 2)})
    means, scales = guide.factor_means(model.tensor), guide.factor_scales(model.tensor)
    for m, s, expected in zip(means, scales, reference.factor_scales(twin.tensor)):
        torch.testing.assert_close(s, tb.rank.CUT_SCALE * m.pow(2).mean().sqrt().expand_as(m), rtol=1e-5, atol=0)
        torch.testing.assert_close(s, expected, rtol=1e-4, atol=0)
    for lam, expected in zip(guide.lambdas("tensor"), reference.lambdas("tensor")):
        torch.testing.assert_close(lam, expected, rtol=1e-4, atol=0)


def test_a_point_mass_takes_locs_and_lambdas_and_has_no_spread_to_set():
    pyro.clear_param_store()
    model = _model()
    auto = _called(model, AutoDelta(model, init_loc_fn=init_improper_to_feasible))
    guide, tensor = as_tensor_guide(model, auto), model.tensor
    locs, scales, lambdas = _random_posterior(tensor)
    guide.set_posterior(tensor, locs, scales, lambdas)
    assert all(torch.equal(a, b) for a, b in zip(guide.factor_means(tensor), locs))
    for a, b in zip(guide.lambdas("tensor"), lambdas):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0)


def test_an_autoguide_with_no_per_site_loc_is_refused_by_name():
    pyro.clear_param_store()
    model = _model()
    auto = _called(model, AutoMultivariateNormal(model))
    guide, tensor = as_tensor_guide(model, auto), model.tensor
    before = _params(auto)
    with pytest.raises(GuideError, match="locs cannot be set: AutoMultivariateNormal has no per-site loc"):
        guide.set_posterior(tensor, guide.factor_means(tensor))
    assert all(torch.equal(v, before[k]) for k, v in _params(auto).items())


def test_prune_with_an_autoguide_that_cannot_be_cut_changes_nothing():
    # truncate skipped an AutoMultivariateNormal's joint parameters without a word, and prune then
    # failed in set_posterior with the model's layout already cut
    pyro.clear_param_store()
    model = _model()
    auto = _called(model, AutoMultivariateNormal(model))
    guide, tensor = as_tensor_guide(model, auto), model.tensor
    ranks, before = tensor.layout.ranks, _params(auto)
    with pytest.raises(GuideError, match="AutoMultivariateNormal cannot be cut to other ranks"):
        tb.prune(model, auto, ranks={"tensor": (1, 1)})
    assert tensor.layout.ranks == ranks
    assert all(torch.equal(v, before[k]) for k, v in _params(auto).items())
    with pytest.raises(GuideError, match="cannot be cut"):
        guide.truncate(tensor, [torch.tensor([0]), torch.tensor([0])])
