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
