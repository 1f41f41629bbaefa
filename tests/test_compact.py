"""
tb.export: the exported torch module computes the Bayesian network at the posterior-mean
factors (exactly, in float64), keeps doing so after pruning at the smaller size, holds no Pyro
module and round-trips through a plain state_dict; parts it cannot fix are refused by name.
"""

import io

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule, PyroParam, PyroSample

import tensorbayes as tb
from tensorbayes.compact import CompactConv2d, CompactEmbedding, CompactLinear, CompactTensor, num_params
from tensorbayes.data import teacher_student
from tensorbayes.guides import MeanField
from tensorbayes.guides.meanfield import low_rank_tensors
from tensorbayes.models import BayesianClassifier, BayesianRegressor, TensorCompletion, TensorizedLinear, tensorize
from tests.common import embed

D = torch.float64
FORMATS = ["cp", "tucker", "tt", "ttm"]
PLAIN = 16 + 16 * 3 + 3  # the first layer's bias and the dense head


def _classifier(format, max_rank=4, seed=0):
    """Linear(16, 16) tensorized as (4, 4) -> (4, 4), ReLU, a dense Linear(16, 3) head."""
    net = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    model = BayesianClassifier(tensorize(net, format=format, max_rank=max_rank, min_features=16, order=2), 3)
    guide = MeanField(model, seed=seed)
    model.double()
    guide.double()
    return model, guide


def _at_means(model, guide, *inputs):
    """The model run with every factor site conditioned to the guide's posterior mean."""
    data = {}
    for tensor in low_rank_tensors(model).values():
        data.update({tensor.factor_site(k): m for k, m in enumerate(guide.factor_means(tensor))})
    return poutine.condition(model, data=data)(*inputs)


def _x(n=6, seed=0):
    return torch.randn(n, 16, generator=torch.Generator().manual_seed(seed), dtype=D)


@pytest.mark.parametrize("format", FORMATS)
def test_export_is_the_network_at_the_posterior_mean(format):
    model, guide = _classifier(format)
    net = tb.export(model, guide)
    assert type(net) is torch.nn.Sequential
    assert type(net[0]) is CompactLinear and type(net[1]) is torch.nn.ReLU and type(net[2]) is torch.nn.Linear
    assert net[0].layout.ranks == model.net[0].layout.ranks
    for n in (1, 5, 300):  # both paths of the FLOP rule
        x = _x(n)
        torch.testing.assert_close(net(x), _at_means(model.net, guide, x), rtol=0, atol=1e-10)
        torch.testing.assert_close(torch.softmax(net(x), -1), _at_means(model, guide, x), rtol=0, atol=1e-10)
        assert net[0].choose_path(n) == model.net[0].choose_path(n)
    x = _x(7)
    net[0].path = "contract"
    contracted = net(x)
    net[0].path = "dense"
    torch.testing.assert_close(net(x), contracted, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="path"):
        net[0].path = "fast"
    # the bias and the head are the model's values, copied
    torch.testing.assert_close(net[0].bias, model.net[0].bias, rtol=0, atol=0)
    assert net[0].bias.data_ptr() != model.net[0].bias.data_ptr()
    torch.testing.assert_close(net[2].weight, model.net[2].weight, rtol=0, atol=0)
    assert num_params(net) == net[0].layout.num_params() + PLAIN


def _hand_count(format):
    """Factor entries of a (4, 4, 4, 4) weight at rank 2 on every bond, written out."""
    return {
        "cp": 2 * 16,
        "tucker": 2**4 + 4 * 4 * 2,
        "tt": 4 * 2 + 2 * 4 * 2 + 2 * 4 * 2 + 2 * 4,
        "ttm": 2 * (4 * 4 * 2),
    }[format]


@pytest.mark.parametrize("format", FORMATS)
def test_export_after_prune(format):
    model, guide = _classifier(format, max_rank=4)
    layer = model.net[0]
    task = teacher_student(num_train=1, num_test=1, in_shape=(4, 4), out_shape=(4, 4), format=format, ranks=2, dtype=D)
    assert task.format.shape == layer.layout.shape
    locs = embed(layer.layout, task.factors)
    guide.set_posterior(layer.weight, locs)
    torch.testing.assert_close(layer.layout.to_matrix(locs), task.weight, rtol=1e-12, atol=1e-12)
    x = _x(9)
    before = tb.export(model, guide)
    expected = before(x)
    assert num_params(before) == layer.layout.num_params() + PLAIN > _hand_count(format) + PLAIN

    ranks = tb.prune(model, guide)
    assert ranks == {"net.0.weight": (2,) * layer.layout.num_bonds}
    after = tb.export(model, guide)
    assert after[0].layout.ranks == (2,) * layer.layout.num_bonds
    assert all(tuple(f.shape) == s for f, s in zip(after[0].weight.factors, layer.layout.factor_shapes))
    torch.testing.assert_close(after(x), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(after(x), _at_means(model.net, guide, x), rtol=0, atol=1e-10)
    # the parameter count: the hand count, and the report's count plus the plain parameters
    assert num_params(after) == _hand_count(format) + PLAIN
    assert num_params(after) == sum(row["params"] for row in tb.compression_report(model)) + PLAIN
    assert num_params(after) < num_params(before)


class ConvEmbedNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 6, 3, padding=1)
        self.emb = torch.nn.Embedding(30, 12)
        self.fc = torch.nn.Linear(6 * 4 * 4, 12)
        self.norm = torch.nn.BatchNorm1d(12)
        self.out = torch.nn.Linear(12, 3)  # (3, 12): stays dense

    def forward(self, images, tokens):
        h = torch.relu(self.conv(images)).flatten(1)
        h = self.norm(torch.relu(self.fc(h)) + self.emb(tokens).mean(1))
        return self.out(h)


@pytest.mark.parametrize("format", FORMATS)
def test_export_conv_and_embedding(format):
    net = tensorize(ConvEmbedNet(), format=format, max_rank=2, min_features=4, order=2)
    with torch.no_grad():
        net.norm.running_mean.uniform_(-1, 1)
        net.norm.running_var.uniform_(0.5, 2)
    net.eval()
    guide = MeanField(net, seed=0)
    net.double()
    guide.double()
    out = tb.export(net, guide)
    assert type(out) is ConvEmbedNet and not out.training
    assert type(out.conv) is CompactConv2d and type(out.emb) is CompactEmbedding and type(out.fc) is CompactLinear
    assert type(out.norm) is torch.nn.BatchNorm1d and type(out.out) is torch.nn.Linear
    assert out.conv.padding == (1, 1) and out.conv.kernel_size == (3, 3)
    torch.testing.assert_close(out.norm.running_var, net.norm.running_var, rtol=0, atol=0)
    gen = torch.Generator().manual_seed(0)
    images, tokens = torch.randn(5, 4, 4, 4, generator=gen, dtype=D), torch.randint(0, 30, (5, 3), generator=gen)
    torch.testing.assert_close(out(images, tokens), _at_means(net, guide, images, tokens), rtol=0, atol=1e-10)
    tensors = low_rank_tensors(net).values()
    plain = sum(
        p.numel()
        for name, p in net.named_parameters()
        if name.endswith("bias") or name.split(".")[0] in ("norm", "out")
    )
    assert num_params(out) == sum(t.layout.num_params() for t in tensors) + plain
    with pytest.raises(ValueError, match="num_embeddings=30"):
        out(images, tokens + 27)


def test_export_holds_no_pyro_and_round_trips_a_state_dict():
    model, guide = _classifier("tt")
    store = dict(pyro.get_param_store().items())
    model_state = {k: v.clone() for k, v in model.state_dict().items()}
    net = tb.export(model, guide)
    assert not any(isinstance(m, PyroModule) for m in net.modules())
    assert set(net.state_dict()) == {f"0.weight.factors.{k}" for k in range(4)} | {"0.bias", "2.weight", "2.bias"}
    # nothing changed in the model, the guide or the param store; nothing shared with them
    assert dict(pyro.get_param_store().items()).keys() == store.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in model_state.items())
    means = [m.clone() for m in guide.factor_means(model.net[0].weight)]
    with torch.no_grad():
        net[0].weight.factors[0].add_(1.0)
        net[2].weight.add_(1.0)
    assert all(torch.equal(a, b) for a, b in zip(guide.factor_means(model.net[0].weight), means))
    assert torch.equal(model.net[2].weight, model_state["net.2.weight"])
    net = tb.export(model, guide)
    # it runs without Pyro: no sample or param site under a trace
    x = _x(4)
    trace = poutine.trace(net).get_trace(x)
    assert not [name for name, site in trace.nodes.items() if site["type"] in ("sample", "param")]
    # a plain state_dict round trip into a fresh export of another posterior
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    buffer.seek(0)
    other = tb.export(model, MeanField(model, seed=1).double())
    assert not torch.allclose(other(x), net(x))
    other.load_state_dict(torch.load(buffer))
    torch.testing.assert_close(other(x), net(x), rtol=0, atol=0)
    # and the whole module pickles
    buffer = io.BytesIO()
    torch.save(net, buffer)
    buffer.seek(0)
    torch.testing.assert_close(torch.load(buffer, weights_only=False)(x), net(x), rtol=0, atol=0)


def test_export_of_a_regressor_and_of_pyro_params():
    net = tensorize(
        torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)),
        format="ttm",
        max_rank=3,
        min_features=16,
        order=2,
    )
    model = BayesianRegressor(net, noise=0.5)
    model.net[2].bias = PyroParam(torch.full((2,), 0.5, dtype=D), constraint=constraints.positive)
    guide = MeanField(model, seed=0)
    model.double()
    guide.double()
    out = tb.export(model, guide)  # before the model ever ran: the module's own value
    assert type(out[2]) is torch.nn.Linear and set(dict(out[2].named_parameters())) == {"weight", "bias"}
    torch.testing.assert_close(out[2].bias, torch.full((2,), 0.5, dtype=D), rtol=1e-12, atol=0)
    x = _x(3)
    torch.testing.assert_close(out(x), _at_means(model, guide, x), rtol=0, atol=1e-10)
    # after a run the param store holds the value; a changed one is what the model and the export use
    pyro.get_param_store()["net.2.bias"] = torch.full((2,), 2.0, dtype=D)
    out = tb.export(model, guide)
    torch.testing.assert_close(out[2].bias, torch.full((2,), 2.0, dtype=D), rtol=1e-12, atol=0)
    torch.testing.assert_close(out(x), _at_means(model, guide, x), rtol=0, atol=1e-10)


def test_export_keeps_shared_modules_and_tied_parameters_shared():
    model, guide = _classifier("tt")
    model.net.add_module("3", model.net[2])  # the same head twice (not run: only the structure is checked)
    model.net[1].tied = model.net[2].weight  # a parameter registered in a second module
    out = tb.export(model, guide)
    assert out[3] is out[2] and out[1].tied is out[2].weight
    assert num_params(out) == out[0].layout.num_params() + PLAIN


def test_compact_tensor():
    model, guide = _classifier("tucker")
    tensor = model.net[0].weight
    compact = CompactTensor(tensor.layout, guide.factor_means(tensor))
    assert compact.format == "tucker" and compact.ranks == tensor.layout.ranks
    torch.testing.assert_close(compact.full(), tensor.layout.full(guide.factor_means(tensor)), rtol=0, atol=0)
    with pytest.raises(ValueError, match="factors"):
        CompactTensor(tensor.layout, guide.factor_means(tensor)[:-1])
    with pytest.raises(TypeError, match="layer must be a TensorizedLinear"):
        CompactLinear(torch.nn.Linear(4, 4), [])


@pytest.mark.parametrize("format", FORMATS)
def test_compact_tensor_refuses_factors_of_mixed_dtypes(format):
    """One float32 factor among float64 ones is refused where the factors enter, not promoted
    (CP's dense tensor came out float64) or failed on deep in the forward pass."""
    layout = tb.formats.get_format(format)((2, 3, 2, 3), 2)
    factors = [torch.randn(shape, dtype=D) for shape in layout.factor_shapes]
    factors[0] = factors[0].float()
    with pytest.raises(TypeError, match="factors must share one dtype and device"):
        CompactTensor(layout, factors)


def test_export_refuses_what_it_cannot_fix():
    model, guide = _classifier("cp")
    with pytest.raises(TypeError, match="guide must offer factor_means"):
        tb.export(model, AutoNormal(model))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        tb.export(lambda x: x, guide)
    other, other_guide = _classifier("cp")
    with pytest.raises(ValueError, match="not part of the model"):
        tb.export(model, other_guide)
    completion = TensorCompletion((3, 4, 5))
    with pytest.raises(TypeError, match="TensorCompletion"):
        tb.export(completion, MeanField(completion))
    model.net[2].weight = PyroSample(dist.Normal(0.0, 1.0).expand([3, 16]).to_event(2))
    with pytest.raises(TypeError, match=r"net\.2\.weight"):
        tb.export(model, guide)
    with pytest.raises(TypeError, match="module must be a torch.nn.Module"):
        num_params("net")


# ----- gaps found by mutation testing (benchmarks/mutation.py) -----


def test_the_export_carries_no_pyro_attributes():
    model, guide = _classifier("tt")
    model.net[2].bias = PyroParam(torch.full((3,), 0.5, dtype=D), constraint=constraints.positive)
    net = tb.export(model, guide)
    leftovers = [(name, k) for name, m in net.named_modules() for k in vars(m) if k.startswith("_pyro")]
    assert leftovers == []


def test_export_names_the_whole_model_when_the_top_cannot_be_converted():
    tensor = TensorCompletion((3, 4, 5)).tensor
    with pytest.raises(TypeError, match="export cannot convert the model: a LowRankTensor"):
        tb.export(tensor, MeanField(tensor))


class HeteroscedasticNet(PyroModule):
    """A researcher's own model: a PyroModule subclass with a tensorized mean, a PyroParam and its
    own observation site."""

    def __init__(self):
        super().__init__()
        self.mean = TensorizedLinear(16, 16, format="tt", max_rank=3, in_shape=(4, 4), out_shape=(4, 4))
        self.log_scale = PyroParam(torch.full((16,), 0.3), constraints.positive)

    def forward(self, x, y=None):
        mean = self.mean(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mean, self.log_scale).to_event(1), obs=y)
        return mean


def test_export_swaps_the_tensorized_layers_of_a_pyro_module_of_your_own_in_place():
    pyro.clear_param_store()
    model = HeteroscedasticNet().double()
    guide = MeanField(model, seed=0)
    x = _x()
    guide(x)  # as after a fit: the guide and the PyroParam have met the param store
    net = tb.export(model, guide)
    assert type(net) is HeteroscedasticNet and type(net.mean) is tb.compact.CompactLinear
    assert dict(net.named_parameters()).keys() == {f"mean.weight.factors.{k}" for k in range(4)} | {
        "mean.bias",
        "log_scale",
    }
    torch.testing.assert_close(net.log_scale, model.log_scale.detach(), rtol=0, atol=0)
    # the posterior-mean network: the model with every factor site fixed at its mean
    tensor = model.mean.weight
    means = {tensor.factor_site(k): m for k, m in enumerate(guide.factor_means(tensor))}
    expected = poutine.condition(model, data=means)(x)
    torch.testing.assert_close(net(x), expected, rtol=1e-12, atol=1e-12)
    # its own observation site stays; the tensor's sites are gone
    trace = poutine.trace(net).get_trace(x)
    sampled = [n for n, site in trace.nodes.items() if site["type"] == "sample"]
    assert sampled == ["data", "obs"]  # the plate's subsample site, and the observation


class TorchAndPyro(torch.nn.Linear, PyroModule):
    """A PyroModule of its own that also subclasses a torch class: kept as its class."""


def test_export_keeps_a_pyro_module_of_its_own_over_a_torch_class():
    model, guide = _classifier("cp")
    head = TorchAndPyro(16, 3).double()
    model.net[2] = head
    net = tb.export(model, guide)
    assert type(net[2]) is TorchAndPyro and net[2] is not head
    torch.testing.assert_close(net[2].weight, head.weight, rtol=0, atol=0)


class WithExport(torch.nn.Linear):
    """A torch class with a method called export: a PyroModule[WithExport] is still converted."""

    def export(self, guide):
        raise AssertionError("a torch class's own export must not be called")


def test_export_converts_a_pyro_module_of_a_torch_class_that_has_an_export_method():
    model, guide = _classifier("cp")
    head = PyroModule[WithExport](16, 3).double()
    with torch.no_grad():
        head.weight.copy_(model.net[2].weight)
        head.bias.copy_(model.net[2].bias)
    model.net[2] = head
    net = tb.export(model, guide)
    assert type(net[2]) is WithExport
    torch.testing.assert_close(net[2].weight, head.weight, rtol=0, atol=0)
    torch.testing.assert_close(net[2].bias, head.bias, rtol=0, atol=0)


def test_export_copies_a_plain_parameter_whatever_its_name():
    # only a PyroParam's "<name>_unconstrained" is replaced by its constrained value
    model, guide = _classifier("tt")
    model.net[2].scale_unconstrained = torch.nn.Parameter(torch.full((3,), -1.0, dtype=D))
    net = tb.export(model, guide)
    assert set(dict(net[2].named_parameters())) == {"weight", "bias", "scale_unconstrained"}
    torch.testing.assert_close(net[2].scale_unconstrained, torch.full((3,), -1.0, dtype=D), rtol=0, atol=0)


# ----- a user's robustness sweep -----


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
@pytest.mark.parametrize("format", FORMATS)
def test_a_traced_export_computes_what_the_export_computes(format):
    # under torch.jit.trace the batch size that picks the linear path is a 0-d tensor
    model, guide = _classifier(format)
    net = tb.export(model, guide)
    traced = torch.jit.trace(net, _x(5))
    for n in (1, 5, 300):  # the path is fixed at tracing; both paths compute the same output
        torch.testing.assert_close(traced(_x(n, seed=1)), net(_x(n, seed=1)), rtol=0, atol=1e-12)


def test_export_names_the_layer_a_guide_pruned_apart_from_the_model_does_not_fit():
    model, guide = _classifier("tt")
    other = MeanField(model, seed=1).double()
    tb.prune(model, guide, ranks={"net.0.weight": (2, 2, 2)})
    with pytest.raises(ValueError, match=r"export cannot fix net\.0 at the guide's factors: factors\[0\]"):
        tb.export(model, other)
    assert model.net[0].layout.ranks == (2, 2, 2)  # nothing changed
    assert tb.export(model, guide)[0].layout.ranks == (2, 2, 2)


def test_a_layer_export_names_a_guide_without_factor_means():
    model, guide = _classifier("ttm")
    for bad in (None, "guide", model):
        with pytest.raises(TypeError, match=r"guide must offer factor_means\(tensor\).*tb\.export\(model, guide\)"):
            model.net[0].export(bad)
    torch.testing.assert_close(model.net[0].export(guide)(_x()), tb.export(model, guide)[0](_x()), rtol=0, atol=0)
