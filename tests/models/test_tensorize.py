"""
tensorize: which layers are replaced (the size rule), the original left unchanged, biases
copied, unfactorable layers left dense with a warning, and the copy running under Pyro with
hierarchical site names that a MeanField guide follows.
"""

import copy
import warnings

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO
from pyro.nn import PyroModule

import tensorbayes as tb
from tensorbayes.guides import MeanField
from tensorbayes.models import TensorizedConv2d, TensorizedEmbedding, TensorizedLinear, tensorize
from tensorbayes.models.tensorize import weight_matrix_shape


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(1024, 128)
        self.small_conv = torch.nn.Conv2d(3, 16, 3, padding=1)  # (16, 27): stays
        self.conv = torch.nn.Conv2d(16, 128, 3, stride=2, padding=1)  # (128, 144): replaced
        self.head = torch.nn.Sequential(torch.nn.Linear(128 * 2 * 2, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))

    def forward(self, images, tokens):
        h = torch.relu(self.conv(torch.relu(self.small_conv(images)))).flatten(1)
        return self.head(h) + self.emb(tokens).mean(1)[:, :10]


def _sites(trace, kind):
    return [name for name, site in trace.nodes.items() if site["type"] == kind]


def test_replaces_only_big_layers_and_leaves_the_original_alone():
    net = Net()
    before = copy.deepcopy(net.state_dict())
    model = tensorize(net, format="ttm", max_rank=4, min_features=128)
    # the size rule, on the weight as a matrix
    assert weight_matrix_shape(net.conv) == (128, 144) and weight_matrix_shape(net.small_conv) == (16, 27)
    assert isinstance(model.emb, TensorizedEmbedding)
    assert isinstance(model.conv, TensorizedConv2d) and model.conv.stride == (2, 2) and model.conv.padding == (1, 1)
    assert isinstance(model.head[0], TensorizedLinear)
    assert type(model.small_conv) is PyroModule[torch.nn.Conv2d]
    assert type(model.head[2]) is PyroModule[torch.nn.Linear]
    assert isinstance(model, PyroModule) and isinstance(model, Net)
    # biases copied (values, not the same tensors)
    torch.testing.assert_close(model.conv.bias.detach(), net.conv.bias.detach())
    torch.testing.assert_close(model.head[0].bias.detach(), net.head[0].bias.detach())
    assert model.head[0].bias.data_ptr() != net.head[0].bias.data_ptr()
    # the original: same classes, same values
    assert type(net) is Net and not any(isinstance(m, PyroModule) for m in net.modules())
    assert type(net.conv) is torch.nn.Conv2d and type(net.head[0]) is torch.nn.Linear
    after = net.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_runs_under_pyro_with_hierarchical_site_names():
    model = tensorize(Net(), format="tt", max_rank=2, min_features=128)
    images, tokens = torch.randn(2, 3, 4, 4), torch.randint(0, 1024, (2, 3))
    trace = poutine.trace(model).get_trace(images, tokens)
    samples = _sites(trace, "sample")
    for layer in ["emb", "conv", "head.0"]:
        tensor = model.get_submodule(layer).weight
        expected = [f"{layer}.weight.lambda{b}" for b in range(tensor.layout.num_bonds)]
        expected += [f"{layer}.weight.factor{k}" for k in range(len(tensor.layout.labels))]
        assert [s for s in samples if s.startswith(layer + ".")] == expected
    assert len(samples) == sum(
        m.layout.num_bonds + len(m.layout.labels) for m in (model.emb.weight, model.conv.weight, model.head[0].weight)
    )
    params = _sites(trace, "param")
    assert {"conv.bias", "head.0.bias", "small_conv.weight", "small_conv.bias", "head.2.weight"} <= set(params)
    assert trace.nodes["_RETURN"]["value"].shape == (2, 10)


def test_mean_field_guide_on_a_tensorized_network():
    net = torch.nn.Sequential(torch.nn.Linear(256, 128), torch.nn.ReLU(), torch.nn.Linear(128, 3))
    body = tensorize(net, format="cp", max_rank=3)

    class Model(PyroModule):
        def __init__(self):
            super().__init__()
            self.body = body

        def forward(self, x, y=None):
            logits = self.body(x)
            with pyro.plate("data", 50, subsample=torch.arange(len(x))):
                pyro.sample("obs", pyro.distributions.Categorical(logits=logits), obs=y)

    model = Model()
    guide = MeanField(model, seed=0)
    assert list(guide.tensors()) == ["body.0.weight"]
    guide_sites = _sites(poutine.trace(guide).get_trace(), "sample")
    assert guide_sites == ["body.0.weight.lambda0"] + [
        f"body.0.weight.factor{k}" for k in range(len(body[0].layout.labels))
    ]
    loss = TraceMeanField_ELBO().differentiable_loss(model, guide, torch.randn(4, 256), torch.tensor([0, 1, 2, 0]))
    assert torch.isfinite(loss)
    loss.backward()
    locs = [p for n, p in guide.named_parameters() if n.startswith("locs.body.0.weight.factor")]
    assert locs and all(p.grad is not None for p in locs)


def test_a_layer_that_does_not_factor_stays_dense_with_a_warning():
    net = torch.nn.Sequential(torch.nn.Linear(131, 128), torch.nn.Linear(128, 128))
    with pytest.warns(UserWarning, match=r"left 0 \(Linear\) dense: .*in_features=131 is prime"):
        model = tensorize(net, min_features=128)
    assert type(model[0]) is PyroModule[torch.nn.Linear]
    assert isinstance(model[1], TensorizedLinear)
    grouped = torch.nn.Sequential(torch.nn.Conv2d(128, 128, 3, groups=2))
    with pytest.warns(UserWarning, match="groups=2"):
        assert type(tensorize(grouped)[0]) is PyroModule[torch.nn.Conv2d]


def test_subclasses_and_pyro_modules():
    attention = torch.nn.MultiheadAttention(128, 4)  # its out_proj (a Linear subclass) is read directly
    model = tensorize(attention)
    assert not any(isinstance(m, TensorizedLinear) for m in model.modules())
    x = torch.randn(3, 1, 128)
    torch.testing.assert_close(model(x, x, x)[0], attention(x, x, x)[0])
    already = torch.nn.Sequential(torch.nn.Linear(128, 128))
    pyro.nn.module.to_pyro_module_(already)  # a network already converted to Pyro
    assert isinstance(tensorize(already)[0], TensorizedLinear)


def test_a_big_module_at_the_root_and_the_threshold():
    linear = torch.nn.Linear(256, 256)
    layer = tensorize(linear, format="tucker", max_rank=2)
    assert isinstance(layer, TensorizedLinear) and type(linear) is torch.nn.Linear
    assert _sites(poutine.trace(layer).get_trace(torch.randn(1, 256)), "sample")[-1].startswith("weight.factor")
    assert isinstance(tensorize(linear, min_features=257), PyroModule[torch.nn.Linear])
    # keyword arguments reach the layers
    assert len(tensorize(linear, order=2).in_shape) == 2


def test_bad_arguments():
    net = torch.nn.Linear(256, 256)
    with pytest.raises(ValueError, match="min_features"):
        tensorize(net, min_features=0)
    with pytest.raises(ValueError, match="format"):
        tensorize(net, format="svd")
    with pytest.raises(ValueError, match="prior"):
        tensorize(net, prior="laplace")
    with pytest.raises(TypeError, match="module"):
        tensorize("net")
    assert type(net) is torch.nn.Linear


def test_a_network_with_nothing_to_tensorize_warns_naming_the_size_rule():
    # warned, not refused: returning the copy is what a network without large layers asks for
    # (test_subclasses_and_pyro_modules, test_a_big_module_at_the_root_and_the_threshold), and the
    # MeanField guide that needs a low-rank tensor says so itself
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    with pytest.warns(
        UserWarning,
        match=r"replaced nothing: the size rule .* at least min_features=128; the layers "
        r"seen were 0 \(Linear, 64x64\), 2 \(Linear, 10x64\); pass a smaller "
        r"min_features",
    ) as caught:
        model = tensorize(net)
    assert len(caught) == 1 and caught[0].filename == __file__  # it points at the caller
    assert not any(isinstance(m, TensorizedLinear) for m in model.modules())
    with pytest.raises(ValueError, match="no LowRankTensor.*min_features"):
        MeanField(model)
    with pytest.warns(UserWarning, match=r"no torch.nn.Linear, Conv2d or Embedding"):
        tensorize(torch.nn.Sequential(torch.nn.ReLU()))
    with pytest.warns(UserWarning) as caught:  # one that met the rule but did not factor
        tensorize(torch.nn.Sequential(torch.nn.Linear(131, 128)))
    assert "1 of them met the rule but was left dense, as warned" in str(caught[-1].message)


def test_no_warning_when_something_is_tensorized():
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = tensorize(net, min_features=64)
    assert isinstance(model[0], TensorizedLinear)


def _at_means(net, guide, x):
    """``net`` with every factor site conditioned to the guide's posterior mean."""
    data = {}
    for tensor in guide.tensors().values():
        data.update({tensor.factor_site(k): m for k, m in enumerate(guide.factor_means(tensor))})
    return poutine.condition(net, data=data)(x)


def test_a_network_already_under_pyro_keeps_the_order_of_its_layers():
    # a PyroModule's setattr moves a replaced child to the end: the Sequential ran Tanh, ReLU, then the layers
    net = torch.nn.Sequential(
        torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64)
    ).double()
    pyro.nn.module.to_pyro_module_(net)
    model = tensorize(net, format="ttm", max_rank=2, min_features=64)
    assert [name for name, _ in model.named_children()] == ["0", "1", "2", "3", "4"]
    assert [type(m) for m in model] == [TensorizedLinear, PyroModule[torch.nn.Tanh], TensorizedLinear] + [
        PyroModule[torch.nn.ReLU],
        TensorizedLinear,
    ]
    guide = MeanField(model, seed=0)
    guide.double()
    x = torch.randn(5, 64, dtype=torch.float64)
    exported = tb.export(model, guide)
    expected = x
    for layer in exported:  # in index order
        expected = layer(expected)
    torch.testing.assert_close(_at_means(model, guide, x), expected, rtol=0, atol=1e-10)


def test_shared_layers_and_tied_weights_stay_dense_with_a_warning():
    class Shared(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(128, 128)
            self.b = self.a  # the same layer twice
            self.c, self.d = torch.nn.Linear(128, 128), torch.nn.Linear(128, 128, bias=False)
            self.d.weight = self.c.weight  # tied weights
            self.e = torch.nn.Linear(128, 128)

        def forward(self, x):
            return self.e(self.d(self.c(self.b(self.a(x)))))

    net = Shared()
    with pytest.warns(UserWarning) as caught:
        model = tensorize(net)
    messages = [str(w.message) for w in caught]
    assert any(m.startswith("tensorize: left a (Linear) dense: it is held in 2 places (a, b)") for m in messages)
    assert any("left c (Linear) dense: its weight is tied, held by c, d" in m for m in messages)
    assert any("left d (Linear) dense: its weight is tied, held by c, d" in m for m in messages)
    assert model.a is model.b and type(model.a) is PyroModule[torch.nn.Linear]
    assert model.d.weight is model.c.weight and type(model.c) is PyroModule[torch.nn.Linear]
    assert isinstance(model.e, TensorizedLinear)
    # the dense layers compute what the original's do
    x = torch.randn(3, 128)
    torch.testing.assert_close(model.c(model.a(x)), net.c(net.a(x)))


def test_a_tensorized_network_tensorized_again_and_an_eval_network():
    net = torch.nn.Sequential(torch.nn.Linear(128, 128), torch.nn.Dropout(0.5), torch.nn.Linear(128, 10)).eval()
    model = tensorize(net)
    assert not any(m.training for m in model.modules())  # the replaced layer too
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not "replaced nothing ... a MeanField guide will refuse the model"
        again = tensorize(model)
    assert isinstance(again[0], TensorizedLinear) and again[0] is not model[0]
    assert not any(m.training for m in tb.export(again, MeanField(again, seed=0)).modules())


def test_a_network_of_other_layer_kinds_is_told_which_it_holds():
    """Conv1d, ConvTranspose2d or EmbeddingBag are not replaced: the warning names them, not only the size rule."""
    net = torch.nn.Sequential(torch.nn.Conv1d(64, 64, 3), torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with pytest.warns(UserWarning, match=r"the layers seen were 2 \(Linear, 10x64\); .*such as 0 \(Conv1d\)\."):
        tensorize(net)
    with pytest.warns(UserWarning, match=r"no torch.nn.Linear.*such as the module \(EmbeddingBag\), so it has"):
        tensorize(torch.nn.EmbeddingBag(1000, 64))


def test_frozen_layers_stay_dense_and_frozen_through_a_fit():
    """Pyro's param store makes a PyroModule's parameters trainable: a frozen one is held as a buffer."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4)
    )
    net[2].requires_grad_(False)  # a frozen layer that meets the size rule
    net[4].requires_grad_(False)  # a frozen head too small to be tensorized
    frozen = {k: v.clone() for k, v in net.state_dict().items() if k.startswith(("2.", "4."))}
    with pytest.warns(UserWarning, match=r"left 2 \(Linear\) dense: its weight, bias are frozen"):
        model = tensorize(net, format="tt", min_features=32)
    assert isinstance(model[0], TensorizedLinear) and not isinstance(model[2], TensorizedLinear)
    classifier = tb.models.BayesianClassifier(model, num_classes=4)
    guide = MeanField(classifier, seed=0)
    x, y = torch.randn(256, 64), torch.randint(0, 4, (256,))
    tb.fit(classifier, guide, (x, y), epochs=2, batch_size=64, progress=False, seed=0, tolerance=None)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items())  # the same keys, the same values
    assert all(not name.startswith(("2.", "4.")) for name, _ in classifier.named_parameters())


def test_an_argument_a_layer_refuses_is_raised_naming_the_layer():
    net = torch.nn.Sequential(torch.nn.Conv2d(16, 32, 3), torch.nn.Flatten(), torch.nn.Linear(128, 256))
    # a max_rank tuple of the linear layer's bonds does not fit the convolution's
    with pytest.raises(ValueError, match=r"could not replace 0 \(Conv2d, 32x144\): max_rank must be .* per bond"):
        tensorize(net, format="ttm", max_rank=(4, 4, 4), min_features=16)
    with pytest.raises(ValueError, match=r"could not replace 2 \(Linear, 256x128\): in_shape=\(4, 4\)"):
        tensorize(net[1:], in_shape=(4, 4), min_features=16)
    with pytest.raises(TypeError, match=r"could not replace 0 \(Conv2d, 32x144\): .*'interleave'"):
        tensorize(net, format="tt", interleave=False, min_features=16)
    assert type(net[0]) is torch.nn.Conv2d  # the original is left alone
