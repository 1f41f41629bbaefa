"""auto_mean_field: Pyro's autoguides assembled into the MeanField family (λ as Delta sites)."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoDelta, AutoGuideList, AutoNormal

from tensorbayes.data import planted_tensor
from tensorbayes.guides import auto_mean_field, lambda_sites
from tensorbayes.models import TensorCompletion


@pytest.mark.parametrize("fmt, prior", [("tt", "half_cauchy"), ("tucker", "gamma"), ("cp", "log_uniform")])
def test_auto_mean_field_structure_and_svi(fmt, prior):
    shape = (4, 5, 6)
    planted = planted_tensor(shape, "cp", 2, observed=0.5, noise=0.05, seed=0, dtype=torch.float32)
    model = TensorCompletion(shape, format=fmt, max_rank=3, prior=prior, noise=0.1)
    guide = auto_mean_field(model, init_scale=0.05)
    assert isinstance(guide, AutoGuideList)
    assert isinstance(guide[0], AutoDelta) and isinstance(guide[1], AutoNormal)
    sites = lambda_sites(model)
    assert sites == [f"tensor.lambda{b}" for b in range(model.tensor.layout.num_bonds)]

    args = (planted.train_index, planted.train_values)
    trace = poutine.trace(guide).get_trace(*args)
    for name in sites:
        assert isinstance(trace.nodes[name]["fn"], dist.Delta), name
        assert (trace.nodes[name]["value"] > 0).all()
    for k, s in enumerate(model.tensor.layout.factor_shapes):
        node = trace.nodes[f"tensor.factor{k}"]
        assert tuple(node["value"].shape) == s
        # the factor is sampled from AutoNormal's Normal (through its unconstrained site)
        base = trace.nodes[f"tensor.factor{k}_unconstrained"]["fn"]
        assert isinstance(base.base_dist, dist.Normal)

    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), TraceMeanField_ELBO())
    before = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    assert any("lambda" in k for k in before) and any("locs" in k for k in before)
    losses = [svi.step(*args, num_data=4 * len(planted.train_values)) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(loss)) for loss in losses)
    store = pyro.get_param_store()
    for name in sites:
        value = guide[0].median()[name]
        assert (value > 0).all() and torch.isfinite(value).all()
    for k, v in store.items():
        assert not torch.equal(v.detach(), before[k]), f"{k} did not move"


def test_auto_mean_field_rejects_a_model_without_tensors():
    class Empty(pyro.nn.PyroModule):
        def forward(self):
            pyro.sample("x", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="LowRankTensor"):
        auto_mean_field(Empty())
