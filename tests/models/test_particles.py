"""
Vectorized particles: the guide's draws with leading particle dims ``(S, 1, *factor_shape)`` (the
particle plate at dim -2, left of the data plate) run through the models, one pass per particle,
so that ``Predictive(parallel=True)`` and ``vectorize_particles=True`` work; each particle's
result equals the model run alone on that particle's draw, and a plain draw takes the unchanged
path (bit-identical to the layout's own contraction).
"""

import copy

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Predictive, TraceMeanField_ELBO
from pyro.nn import PyroModule

from tensorbayes.guides import MeanField
from tensorbayes.models import (
    BayesianClassifier,
    BayesianRegressor,
    TensorCompletion,
    TensorizedConv2d,
    TensorizedEmbedding,
    TensorizedLinear,
    tensorize,
)
from tensorbayes.models.tensor import particle_dims

D = torch.float64
FORMATS = ["cp", "tucker", "tt", "ttm"]
S = 8  # particles


def _net(format, two=False):
    """Linear(16, 16) tensorized (and a second one with ``two``), ReLU, a dense Linear(16, 3)."""
    layers = [torch.nn.Linear(16, 16), torch.nn.ReLU()]
    if two:
        layers += [torch.nn.Linear(16, 16), torch.nn.ReLU()]
    net = torch.nn.Sequential(*layers, torch.nn.Linear(16, 3))
    return tensorize(net, format=format, max_rank=3, min_features=16, order=2)


def _data(n=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 16, generator=gen, dtype=D), torch.randint(0, 3, (n,), generator=gen)


def _ready(model, *args):
    """A MeanField guide of ``model`` in float64, built by one call."""
    guide = MeanField(model, seed=0)
    model.double()
    guide.double()
    guide(*args)
    return guide


def _classifier(format, two=False):
    """A fresh param store, the data, a classifier of :func:`_net` and its ready guide."""
    pyro.clear_param_store()
    x, y = _data()
    model = BayesianClassifier(_net(format, two=two), num_classes=3)
    return model, _ready(model, x, y), x, y


def _vectorized_draw(guide, *args, n=S, name="particles"):
    with torch.no_grad(), pyro.plate(name, n, dim=-2):
        return poutine.trace(guide).get_trace(*args)


def _slice(trace, plain, s):
    """``plain`` (a single-draw trace of the guide) with every site's value particle ``s`` of ``trace``."""
    out = copy.copy(plain)
    out.nodes = {k: dict(v) for k, v in plain.nodes.items()}
    for name, site in out.nodes.items():
        if site["type"] == "sample":
            site["value"] = trace.nodes[name]["value"][s, 0]
    return out


def _replay_each(model, guide, args, draws):
    """The model's return value and trace on the vectorized draws, and on each particle's draw in turn."""
    with torch.no_grad():
        with pyro.plate("particles", S, dim=-2):
            vec = poutine.trace(poutine.replay(model, trace=draws)).get_trace(*args)
        plain = poutine.trace(guide).get_trace(*args)
        each = [poutine.trace(poutine.replay(model, trace=_slice(draws, plain, s))).get_trace(*args) for s in range(S)]
    return vec, each


@pytest.mark.parametrize("format", FORMATS)
def test_classifier_parallel_predictive_matches_each_particle(format):
    model, guide, x, y = _classifier(format)
    layout = model.net[0].layout

    samples = Predictive(model, guide=guide, num_samples=S, parallel=True)(x)
    assert samples["obs"].shape == (S, x.shape[0])
    assert ((samples["obs"] >= 0) & (samples["obs"] < 3)).all()
    for k, shape in enumerate(layout.factor_shapes):
        assert samples[f"net.0.weight.factor{k}"].shape == (S, 1, *shape)

    draws = _vectorized_draw(guide, x, y)
    vec, each = _replay_each(model, guide, (x, y), draws)
    probs = vec.nodes["_RETURN"]["value"]
    assert probs.shape == (S, x.shape[0], 3)  # the batch takes the data plate's dim, -1
    obs_lp = vec.nodes["obs"]["fn"].log_prob(y)
    assert obs_lp.shape == (S, x.shape[0])
    for s, tr in enumerate(each):
        assert tr.nodes["_RETURN"]["value"].shape == (x.shape[0], 3)
        torch.testing.assert_close(probs[s], tr.nodes["_RETURN"]["value"], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(obs_lp[s], tr.nodes["obs"]["fn"].log_prob(y), rtol=1e-12, atol=1e-12)
    # the particles differ: a loop that reused one draw would pass the comparison above only by luck
    assert not torch.allclose(probs[0], probs[1])


def test_two_tensorized_layers_pass_the_particles_along():
    """The second layer takes the first one's (S, 1, batch, 16) output particle by particle."""
    model, guide, x, y = _classifier("tt", two=True)
    draws = _vectorized_draw(guide, x, y)
    vec, each = _replay_each(model, guide, (x, y), draws)
    probs = vec.nodes["_RETURN"]["value"]
    assert probs.shape == (S, x.shape[0], 3)  # the batch takes the data plate's dim, -1
    for s, tr in enumerate(each):
        torch.testing.assert_close(probs[s], tr.nodes["_RETURN"]["value"], rtol=1e-12, atol=1e-14)


def _elbo_vectorized_vs_each(model, guide, args, n=4):
    """Pyro's vectorized ELBO, and the mean of the single-particle ELBOs on the same draws: the same
    seed makes the same guide draws (the vectorized ELBO draws the guide first, under its plate at -2)."""
    pyro.set_rng_seed(3)
    draws = _vectorized_draw(guide, *args, n=n, name="num_particles_vectorized")
    vec_elbo = TraceMeanField_ELBO(vectorize_particles=True, num_particles=n, max_plate_nesting=1)
    one_elbo = TraceMeanField_ELBO(num_particles=1, max_plate_nesting=1)
    with torch.no_grad():
        pyro.set_rng_seed(3)
        vec = vec_elbo.differentiable_loss(model, guide, *args)
        plain = poutine.trace(guide).get_trace(*args)
        losses = []
        for s in range(n):
            one = _slice(draws, plain, s)
            losses.append(one_elbo.differentiable_loss(poutine.replay(model, one), poutine.replay(guide, one), *args))
    return vec, torch.stack(losses)


@pytest.mark.parametrize("format", FORMATS)
def test_vectorized_elbo_is_the_mean_of_single_particle_elbos(format):
    """Exact on the same draws (replayed): float64 sums in another order differ by roundoff only."""
    model, guide, x, y = _classifier(format)
    vec, losses = _elbo_vectorized_vs_each(model, guide, (x, y))
    torch.testing.assert_close(vec, losses.mean(), rtol=1e-10, atol=1e-10)
    assert losses.std() > 1e-6  # distinct draws: the comparison would catch a particle mix-up
    # and Pyro's own vectorized ELBO (its own draws) runs and is finite
    loss = TraceMeanField_ELBO(vectorize_particles=True, num_particles=4, max_plate_nesting=1).differentiable_loss(
        model, guide, x, y
    )
    assert torch.isfinite(loss)


@pytest.mark.parametrize("format", FORMATS)
def test_completion_vectorized_elbo_and_predictive(format):
    pyro.clear_param_store()
    gen = torch.Generator().manual_seed(1)
    index = torch.stack([torch.randint(0, n, (10,), generator=gen) for n in (4, 5, 6)], dim=1)
    values = torch.randn(10, generator=gen, dtype=D)
    model = TensorCompletion((4, 5, 6), format=format, max_rank=3, noise=0.5)
    guide = _ready(model, index, values)
    vec, losses = _elbo_vectorized_vs_each(model, guide, (index, values))
    torch.testing.assert_close(vec, losses.mean(), rtol=1e-10, atol=1e-10)
    assert losses.std() > 1e-6

    samples = Predictive(model, guide=guide, num_samples=S, parallel=True)(index)
    assert samples["obs"].shape == (S, 10)
    draws = _vectorized_draw(guide, index, values)
    vec_tr, each = _replay_each(model, guide, (index, values), draws)
    mean = vec_tr.nodes["_RETURN"]["value"]
    assert mean.shape == (S, 10)
    for s, tr in enumerate(each):
        torch.testing.assert_close(mean[s], tr.nodes["_RETURN"]["value"], rtol=1e-12, atol=1e-14)


def test_regressor_parallel_predictive():
    pyro.clear_param_store()
    x, _ = _data()
    y = torch.randn(x.shape[0], 3, dtype=D)
    model = BayesianRegressor(_net("ttm"), noise=0.3)
    guide = _ready(model, x, y)
    samples = Predictive(model, guide=guide, num_samples=S, parallel=True)(x)
    assert samples["obs"].shape == (S, x.shape[0], 3)
    draws = _vectorized_draw(guide, x, y)
    vec, each = _replay_each(model, guide, (x, y), draws)
    assert vec.nodes["obs"]["fn"].log_prob(y).shape == (S, x.shape[0])
    for s, tr in enumerate(each):
        torch.testing.assert_close(
            vec.nodes["_RETURN"]["value"][s], tr.nodes["_RETURN"]["value"], rtol=1e-12, atol=1e-14
        )
        torch.testing.assert_close(
            vec.nodes["obs"]["fn"].log_prob(y)[s], tr.nodes["obs"]["fn"].log_prob(y), rtol=1e-12, atol=1e-12
        )


class _Wrap(PyroModule):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)


def _conv():
    return TensorizedConv2d(4, 6, 3, padding=1, format="tt", max_rank=2), torch.randn(3, 4, 5, 5, dtype=D)


def _embedding():
    return TensorizedEmbedding(20, 6, format="ttm", max_rank=2), torch.tensor([[0, 3, 19], [7, 7, 1]])


@pytest.mark.parametrize("make", [_conv, _embedding], ids=["conv2d", "embedding"])
def test_conv_and_embedding_per_particle(make):
    layer, x = make()
    pyro.clear_param_store()
    model = _Wrap(layer)
    guide = _ready(model, x)
    draws = _vectorized_draw(guide, x)
    vec, each = _replay_each(model, guide, (x,), draws)
    out = vec.nodes["_RETURN"]["value"]
    assert out.shape[:2] == (S, 1)
    for s, tr in enumerate(each):
        assert out.shape[2:] == tr.nodes["_RETURN"]["value"].shape
        torch.testing.assert_close(out[s, 0], tr.nodes["_RETURN"]["value"], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("format", FORMATS)
def test_plain_draw_takes_the_unchanged_path(format):
    """Without particles: the layer's output is the layout's contraction bit for bit, the prior's
    scale is the product of the λ's as before, and the completion's mean is ``layout.entries``."""
    pyro.clear_param_store()
    layer = TensorizedLinear(16, 12, format=format, max_rank=3, order=2)
    layer.path = "contract"
    model = _Wrap(layer)
    x = torch.randn(5, 16, dtype=D)
    guide = _ready(model, x)
    with torch.no_grad():
        draw = poutine.trace(guide).get_trace(x)
        tr = poutine.trace(poutine.replay(model, trace=draw)).get_trace(x)
    factors = [tr.nodes[layer.weight.factor_site(k)]["value"] for k in range(len(layer.layout.factor_shapes))]
    lambdas = [tr.nodes[layer.weight.lambda_site(b)]["value"] for b in range(len(layer.layout.ranks))]
    assert all(f.shape == tuple(s) for f, s in zip(factors, layer.layout.factor_shapes))
    expected = layer.layout.contract(x, factors) + layer.bias
    assert torch.equal(tr.nodes["_RETURN"]["value"], expected)
    for k, labels in enumerate(layer.layout.labels):
        var = torch.ones([1] * len(labels), dtype=D)
        for d, lab in enumerate(labels):
            if lab[0] == "b":
                view = [1] * len(labels)
                view[d] = -1
                var = var * lambdas[int(lab[1:])].reshape(view)
        fn = tr.nodes[layer.weight.factor_site(k)]["fn"]
        assert fn.batch_shape == () and fn.event_shape == layer.layout.factor_shapes[k]
        assert torch.equal(fn.base_dist.scale, var.sqrt().expand(layer.layout.factor_shapes[k]))

    pyro.clear_param_store()
    completion = TensorCompletion((4, 5, 6), format=format, max_rank=3, noise=0.5)
    index = torch.tensor([[0, 1, 2], [3, 4, 5], [1, 0, 0]])
    guide = _ready(completion, index)
    with torch.no_grad():
        draw = poutine.trace(guide).get_trace(index)
        tr = poutine.trace(poutine.replay(completion, trace=draw)).get_trace(index)
    factors = [tr.nodes[completion.tensor.factor_site(k)]["value"] for k in range(len(completion.tensor.layout.labels))]
    assert torch.equal(tr.nodes["_RETURN"]["value"], completion.tensor.layout.entries(factors, index))


def test_particle_dims_must_agree():
    layer = TensorizedLinear(16, 12, format="tt", max_rank=2, order=2)
    shapes = layer.layout.factor_shapes
    good = [torch.zeros(4, 1, *s) for s in shapes]
    assert particle_dims(layer.layout, good) == (4, 1)
    assert particle_dims(layer.layout, [torch.zeros(s) for s in shapes]) == ()
    with pytest.raises(ValueError, match="share their leading"):
        particle_dims(layer.layout, [good[0]] + [torch.zeros(3, 1, *s) for s in shapes[1:]])
    with pytest.raises(ValueError, match="factor 1 must have shape"):
        particle_dims(layer.layout, [good[0], torch.zeros(4, 1, 7)] + good[2:])
