"""
The training paths on a CUDA device (skipped without one): a model and guide moved to the GPU
keep every parameter and buffer there, and compute what they compute on the CPU.

Random draws differ between devices, so the losses are compared at the same draw: the guide's
factor sites are drawn as ``loc + scale * eps`` with ``eps`` made on the CPU (:class:`_FixedNoise`),
the reparameterized draw itself, so that losses and gradients are the same functions of the
parameters on both devices. Everything runs in float64 (the default dtype is switched for each
test, so that the rank priors are float64 too), where the two devices agree to rounding.
"""

import importlib

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO
from pyro.poutine.messenger import Messenger

import tensorbayes as tb
from tensorbayes.data import planted_tensor
from tensorbayes.guides import MeanField, auto_mean_field
from tensorbayes.infer.calibration import expected_calibration_error
from tensorbayes.models import BayesianRegressor, TensorCompletion, TensorizedLinear
from tensorbayes.models.embedding_bag import TensorizedEmbeddingBag
from tests.common import EMBEDDED_CASES, embedded_completion, tiny_dlrm

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DEVICE = torch.device("cuda")
FORMATS = ["cp", "tucker", "tt", "ttm"]
RTOL = 1e-10  # float64: the devices differ by the order of their sums, a few ulps per operation


@pytest.fixture(autouse=True)
def float64_default():
    """float64 as torch's default dtype for the test (the rank priors' hyperparameters take it)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


class _FixedNoise(Messenger):
    """Draw the sites named in ``eps`` (Normal, possibly ``to_event``) as ``loc + scale * eps``."""

    def __init__(self, eps):
        super().__init__()
        self.eps = eps

    def _pyro_sample(self, msg):
        if msg["name"] in self.eps and not msg["is_observed"]:
            fn = msg["fn"]
            while not isinstance(fn, pyro.distributions.Normal):
                fn = fn.base_dist
            msg["value"] = fn.loc + fn.scale * self.eps[msg["name"]].to(fn.loc)
            msg["done"] = True


def _eps(guide, *args, **kwargs):
    """Standard normal noise, made on the CPU, for every Normal site of the guide."""
    trace = poutine.trace(guide).get_trace(*args, **kwargs)
    gen = torch.Generator().manual_seed(0)
    eps = {}
    for name, site in trace.nodes.items():
        fn = site.get("fn")
        while fn is not None and not isinstance(fn, pyro.distributions.Normal):
            fn = getattr(fn, "base_dist", None)
        if site["type"] == "sample" and fn is not None:
            eps[name] = torch.randn(site["value"].shape, generator=gen, dtype=torch.float64)
    assert eps, "the guide has no Normal site"
    return eps


def _loss_and_grads(model, guide, eps, *args, **kwargs):
    """The mean-field ELBO loss at the draw ``eps`` and its gradients, by parameter name."""
    params = dict(model.named_parameters(prefix="model"))
    params.update(guide.named_parameters(prefix="guide"))
    loss = TraceMeanField_ELBO().differentiable_loss(model, _FixedNoise(eps)(guide), *args, **kwargs)
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return loss.detach(), {name: g for name, g in zip(params, grads) if g is not None}


def _assert_close(actual, expected, rtol=RTOL, atol=0.0):
    assert actual.device.type == DEVICE.type, f"{actual.device} is not {DEVICE}"
    torch.testing.assert_close(actual.cpu(), expected.cpu(), rtol=rtol, atol=atol)


def _assert_on_device(*modules):
    for module in modules:
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            assert t.device.type == DEVICE.type, f"{type(module).__name__}.{name} is on {t.device}"


def _twins(build, seed=0):
    """``(model, guide)`` on the CPU and the same on DEVICE (the guide built from the moved model)."""
    model = build()
    guide = MeanField(model, seed=seed)
    model_dev = build().to(DEVICE)
    model_dev.load_state_dict(model.state_dict())
    guide_dev = MeanField(model_dev, seed=seed)
    return model, guide, model_dev, guide_dev


# ----- a tensorized linear layer in a regressor


def _regressor(fmt):
    return lambda: BayesianRegressor(
        TensorizedLinear(16, 12, format=fmt, max_rank=3, in_shape=(4, 4), out_shape=(3, 4))
    )


@pytest.mark.parametrize("path", ["contract", "dense"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_tensorized_linear_regressor_matches_cpu(fmt, path):
    model, guide, model_dev, guide_dev = _twins(_regressor(fmt))
    model.net.path = model_dev.net.path = path
    _assert_on_device(model_dev, guide_dev)
    assert model_dev.net.weight.device.type == DEVICE.type
    # MeanField's initial locs are drawn on the CPU and moved: the same on every device
    for (name, a), (_, b) in zip(guide.state_dict().items(), guide_dev.state_dict().items()):
        assert torch.equal(b.cpu(), a), name

    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(10, 16, generator=gen), torch.randn(10, 12, generator=gen)
    eps = _eps(guide, x, y)
    loss, grads = _loss_and_grads(model, guide, eps, x, y, num_data=100)
    loss_dev, grads_dev = _loss_and_grads(model_dev, guide_dev, eps, x.to(DEVICE), y.to(DEVICE), num_data=100)
    assert torch.isfinite(loss)
    _assert_close(loss_dev, loss)
    assert grads.keys() == grads_dev.keys() and any(k.startswith("guide.locs.") for k in grads)
    for name in grads:
        _assert_close(grads_dev[name], grads[name], atol=1e-12 * grads[name].abs().max().item(), rtol=1e-9)

    # the closed-form λ step
    guide.update_lambdas(0.1)
    guide_dev.update_lambdas(0.1)
    _assert_on_device(guide_dev)
    for lam, lam_dev in zip(guide.lambdas("net.weight"), guide_dev.lambdas("net.weight")):
        _assert_close(lam_dev, lam)

    # the deterministic network at the posterior means, and predictions
    net, net_dev = tb.export(model, guide), tb.export(model_dev, guide_dev)
    _assert_on_device(net_dev)
    _assert_close(net_dev(x.to(DEVICE)), net(x))
    pyro.set_rng_seed(0)
    mean, std = tb.predict(model_dev, guide_dev, x.to(DEVICE), num_samples=3)
    assert mean.device.type == DEVICE.type and mean.shape == (10, 12) and torch.isfinite(std).all()


# ----- embedding bags


def _bags():
    """A 1-d input with offsets: repeated ids, an empty bag, the last row; per-sample weights."""
    input = torch.tensor([3, 7, 7, 0, 999, 3, 512, 7])
    offsets = torch.tensor([0, 3, 5, 5])  # bags [3, 7, 7], [0, 999], [], [3, 512, 7]
    weights = torch.linspace(-1.0, 2.0, len(input))
    return input, offsets, weights


@pytest.mark.parametrize("fmt", FORMATS)
def test_embedding_bag_matches_cpu(fmt):
    shapes = {"row_shape": (10, 10, 10), "col_shape": (2, 2, 2)}
    layer = TensorizedEmbeddingBag(1000, 8, format=fmt, max_rank=3, **shapes)
    layer_dev = TensorizedEmbeddingBag(1000, 8, format=fmt, max_rank=3, **shapes).to(DEVICE)
    gen = torch.Generator().manual_seed(0)
    factors = [torch.randn(s, generator=gen) for s in layer.layout.factor_shapes]
    factors_dev = [f.to(DEVICE) for f in factors]
    table = layer.layout.to_matrix(factors_dev)[:1000]
    input, offsets, weights = _bags()
    for mode, w in (("sum", None), ("sum", weights), ("mean", None)):
        layer.mode = layer_dev.mode = mode
        out = layer.bag(factors, input, offsets, w)
        out_dev = layer_dev.bag(factors_dev, input.to(DEVICE), offsets.to(DEVICE), None if w is None else w.to(DEVICE))
        assert out_dev.shape == (4, 8) and (out_dev[2] == 0).all()
        _assert_close(out_dev, out)
        dense = torch.nn.functional.embedding_bag(
            input.to(DEVICE),
            table,
            offsets.to(DEVICE),
            mode=mode,
            per_sample_weights=None if w is None else w.to(DEVICE),
        )
        _assert_close(out_dev, dense, rtol=1e-12, atol=1e-12)
    # a 2-d input (bags of fixed length) and the forward pass under the guide
    layer_dev.mode = "mean"
    guide_dev = MeanField(layer_dev, seed=0)
    _assert_on_device(guide_dev)
    bags = torch.tensor([[1, 2, 3], [999, 0, 999]], device=DEVICE)
    trace = poutine.trace(guide_dev).get_trace(bags)
    out = poutine.replay(layer_dev, trace=trace)(bags)
    drawn = [trace.nodes[layer_dev.weight.factor_site(k)]["value"] for k in range(len(factors))]
    assert out.device.type == DEVICE.type
    torch.testing.assert_close(out, layer_dev.layout.to_matrix(drawn)[bags].mean(1), rtol=1e-12, atol=1e-12)


def test_a_virtual_table_of_10_to_the_12_rows_looks_up_on_the_device():
    layer = TensorizedEmbeddingBag(10**12, 8, format="ttm", max_rank=4, row_shape=(10**4,) * 3, col_shape=(2, 2, 2))
    layer_dev = TensorizedEmbeddingBag(
        10**12, 8, format="ttm", max_rank=4, row_shape=(10**4,) * 3, col_shape=(2, 2, 2)
    ).to(DEVICE)
    guide, guide_dev = MeanField(layer, seed=0), MeanField(layer_dev, seed=0)
    factors, factors_dev = guide.factor_means(layer.weight), guide_dev.factor_means(layer_dev.weight)
    assert all(f.device.type == DEVICE.type for f in factors_dev)
    rows = torch.tensor([0, 10**12 - 1, 123_456_789_012, 10**12 - 1])
    offsets = torch.tensor([0, 2])
    out = layer.bag(factors, rows, offsets)
    out_dev = layer_dev.bag(factors_dev, rows.to(DEVICE), offsets.to(DEVICE))
    _assert_close(out_dev, out)
    # each row, entry by entry through the other gather (every mode indexed)
    layout = layer_dev.layout
    for i in rows.tolist():
        digits = layout.unravel(torch.tensor([i], device=DEVICE), layout.row_shape).expand(8, -1)
        cols = layout.unravel(torch.arange(8, device=DEVICE), layout.col_shape)
        entries = layout.entries(factors_dev, torch.cat([digits, cols], dim=1))
        _assert_close(layout.rows(factors_dev, torch.tensor([i], device=DEVICE))[0], entries, rtol=1e-12)


# ----- DLRM


def _dlrm():
    return tiny_dlrm()[0], lambda: tiny_dlrm()[1]


def test_dlrm_matches_cpu():
    gen, build = _dlrm()
    model, guide, model_dev, guide_dev = _twins(build)
    _assert_on_device(model_dev, guide_dev)
    dense, sparse, clicks = gen.stream(64)[:]
    dense = dense.double()
    data_dev = model_dev.check_data(dense.to(DEVICE), sparse.to(DEVICE), clicks.to(DEVICE))
    assert all(t.device.type == DEVICE.type for t in data_dev)
    bad = sparse.clone()
    bad[0, 4] = gen.cardinalities[4]
    with pytest.raises(ValueError, match=r"sparse\[:, 4\] must hold ids in \[0, 50\) \(table C5\)"):
        model_dev.check_data(dense.to(DEVICE), bad.to(DEVICE))

    eps = _eps(guide, dense, sparse, clicks)
    loss, grads = _loss_and_grads(model, guide, eps, dense, sparse, clicks, num_data=6400)
    loss_dev, grads_dev = _loss_and_grads(model_dev, guide_dev, eps, *data_dev, num_data=6400)
    assert torch.isfinite(loss)
    _assert_close(loss_dev, loss)
    assert grads.keys() == grads_dev.keys() and any(".locs." in k for k in grads)
    for name in grads:
        _assert_close(grads_dev[name], grads[name], atol=1e-12 * grads[name].abs().max().item(), rtol=1e-9)

    guide.update_lambdas(0.1)
    guide_dev.update_lambdas(0.1)
    _assert_on_device(guide_dev)
    for name, lams in guide.lambdas().items():
        for lam, lam_dev in zip(lams, guide_dev.lambdas(name)):
            _assert_close(lam_dev, lam)

    net, net_dev = model.export(guide), model_dev.export(guide_dev)
    _assert_on_device(net_dev)
    _assert_close(net_dev(*data_dev[:2]), net(dense, sparse))

    # the SVI loop itself, its batches on the CPU (tb.fit moves each to the model's device):
    # parameters stay on the device
    history = tb.fit(model_dev, guide_dev, (dense, sparse, clicks), epochs=1, batch_size=32, progress=False, seed=0)
    assert len(history.elbo) == 1 and torch.isfinite(torch.tensor(history.elbo)).all()
    _assert_on_device(model_dev, guide_dev)


# ----- pruning, the closed-form start, auto guides


@pytest.mark.parametrize("fmt, shape, ranks, max_rank", EMBEDDED_CASES, ids=[c[0] for c in EMBEDDED_CASES])
def test_prune_keeps_everything_on_the_device(fmt, shape, ranks, max_rank):
    planted, model, guide = embedded_completion(fmt, shape, ranks, max_rank)
    _, model_dev, guide_dev = embedded_completion(fmt, shape, ranks, max_rank)
    model_dev.to(DEVICE)
    guide_dev.to(DEVICE)
    assert model_dev.tensor.device.type == DEVICE.type
    assert tb.ranks(model_dev, guide_dev) == tb.ranks(model, guide) == {"tensor": tuple(ranks)}
    assert tb.prune(model_dev, guide_dev) == tb.prune(model, guide) == {"tensor": tuple(ranks)}
    _assert_on_device(model_dev, guide_dev)
    assert model_dev.tensor.layout.ranks == tuple(ranks)
    # the pruned posterior mean (gauge-free) is the CPU's
    full = model.tensor.layout.full(guide.factor_means(model.tensor))
    full_dev = model_dev.tensor.layout.full(guide_dev.factor_means(model_dev.tensor))
    _assert_close(full_dev, full, rtol=1e-9, atol=1e-12 * full.abs().max().item())
    # and the pruned model and guide still train together on the device
    index, values = planted.train_index.to(DEVICE), planted.train_values.to(DEVICE)
    pyro.set_rng_seed(0)
    loss = TraceMeanField_ELBO().differentiable_loss(model_dev, guide_dev, index, values)
    loss.backward()
    assert loss.device.type == DEVICE.type and torch.isfinite(loss)
    guide_dev.update_lambdas(0.1)
    _assert_on_device(guide_dev)


@pytest.mark.parametrize("fmt", ["tucker", "tt"])
def test_coordinate_ascent_matches_cpu_and_fit_runs(fmt, monkeypatch):
    cavi = importlib.import_module("tensorbayes.infer.cavi")
    monkeypatch.setattr(cavi, "MATRIX_FREE_BLOCK", 0)  # a Tucker core by conjugate gradients
    ranks = (2, 2, 2) if fmt == "tucker" else (2, 2)
    planted = planted_tensor((4, 5, 6), fmt, ranks, observed=0.7, noise=0.01, seed=0, dtype=torch.float64)
    model, guide, model_dev, guide_dev = _twins(lambda: TensorCompletion((4, 5, 6), format=fmt, max_rank=3))
    data = (planted.train_index, planted.train_values)
    data_dev = tuple(t.to(DEVICE) for t in data)
    # no random draws in these sweeps (Tucker, TT): the devices differ by rounding only
    noises = cavi.coordinate_ascent(model, guide, *data, sweeps=8, warmup=2)
    noises_dev = cavi.coordinate_ascent(model_dev, guide_dev, *data_dev, sweeps=8, warmup=2)
    assert noises_dev == pytest.approx(noises, rel=1e-8)
    _assert_on_device(model_dev, guide_dev)
    full = model.tensor.layout.full(guide.factor_means(model.tensor))
    full_dev = model_dev.tensor.layout.full(guide_dev.factor_means(model_dev.tensor))
    _assert_close(full_dev, full, rtol=1e-8, atol=1e-10 * full.abs().max().item())
    assert (
        planted.relative_error(
            model_dev.tensor.layout.entries(
                guide_dev.factor_means(model_dev.tensor), planted.test_index.to(DEVICE)
            ).cpu()
        )
        < 0.1
    )
    # tb.fit's closed-form start (coordinate ascent, pruning, again), SVI, held-out error, the
    # data and held-out data on the CPU (tb.fit moves them to the model's device)
    history = tb.fit(
        model_dev,
        guide_dev,
        data,
        epochs=1,
        batch_size=64,
        init="cavi",
        init_sweeps=4,
        progress=False,
        seed=0,
        eval_data=(planted.test_index, planted.test_values),
    )
    assert len(history.elbo) == 1 and torch.isfinite(torch.tensor(history.elbo + history.error)).all()
    _assert_on_device(model_dev, guide_dev)


def test_auto_mean_field_on_the_device():
    planted = planted_tensor((4, 5, 6), "cp", 2, observed=0.5, noise=0.05, seed=0, dtype=torch.float64)
    model = TensorCompletion((4, 5, 6), format="tt", max_rank=3, noise=0.1).to(DEVICE)
    guide = auto_mean_field(model, init_scale=0.05)
    args = (planted.train_index.to(DEVICE), planted.train_values.to(DEVICE))
    loss = TraceMeanField_ELBO().differentiable_loss(model, guide, *args)
    loss.backward()
    assert loss.device.type == DEVICE.type and torch.isfinite(loss)
    params = dict(pyro.get_param_store().named_parameters())
    assert params and all(p.device.type == DEVICE.type for p in params.values())


def test_calibration_on_the_device():
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(50, 3, generator=gen), -1)
    labels = torch.randint(0, 3, (50,), generator=gen)
    ece = expected_calibration_error(probs.to(DEVICE), labels.to(DEVICE))
    assert ece == pytest.approx(expected_calibration_error(probs, labels), rel=1e-12)
