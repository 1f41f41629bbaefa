import pytest
import torch

import tensorbayes as tb
from tensorbayes.data import planted_tensor
from tensorbayes.guides import MeanField
from tensorbayes.models import TensorCompletion


def _model_and_guide(scale):
    model = TensorCompletion((5, 6, 7), format="tt", max_rank=3, noise=0.1).double()
    guide = MeanField(model, seed=0).double()
    post = guide.posteriors["tensor"]
    with torch.no_grad():
        for raw in post.raw_scales:
            raw.fill_(float(torch.log(torch.expm1(torch.tensor(scale, dtype=torch.float64)))))
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
    draws = torch.stack([
        layout.entries([l + s * torch.randn_like(s) for l, s in zip(locs, scales)], index) for _ in range(400)
    ])
    # two independent Monte Carlo estimates of the same moments: 400 draws, a few standard errors
    assert torch.allclose(mean, draws.mean(0), atol=5 * (draws.std(0).max() / 20).item())
    assert torch.allclose(std, draws.std(0), rtol=0.25)


@pytest.mark.parametrize("kwargs, match", [({"num_samples": 0}, "num_samples"), ({"chunk_size": 0}, "chunk_size")])
def test_predict_rejects_bad_arguments(kwargs, match):
    model, guide = _model_and_guide(0.1)
    with pytest.raises(ValueError, match=match):
        tb.predict(model, guide, torch.zeros(3, 3, dtype=torch.long), **kwargs)
