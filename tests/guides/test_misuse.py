"""
A guide used by hand: what a researcher may pass to its methods, or do to it (cut its model with
another guide, copy it, read it before its first call), gets the result it asks for or an error
that names the problem, before anything changes.
"""

import copy
import pickle

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoNormal

import tensorbayes as tb
from tensorbayes.data import planted_tensor
from tensorbayes.guides import GuideNotReady, MeanField, as_tensor_guide
from tensorbayes.models import LowRankTensor, TensorCompletion

D = torch.float64
SHAPE = (4, 5, 6)


def _data():
    planted = planted_tensor(SHAPE, "cp", 2, observed=0.4, noise=0.05, seed=0, dtype=D)
    return planted.train_index, planted.train_values


def _model(fmt="tt"):
    return TensorCompletion(SHAPE, format=fmt, max_rank=3, noise=0.1).double()


def _state(guide):
    return {k: v.clone() for k, v in guide.state_dict().items()}


def _unchanged(guide, state):
    now = guide.state_dict()
    return now.keys() == state.keys() and all(torch.equal(v, state[k]) for k, v in now.items())


def _random_lambdas(guide, tensor):
    generator = torch.Generator().manual_seed(2)  # every λ distinct, so that a wrong index would show
    lambdas = [torch.rand(r, generator=generator, dtype=D) + 0.5 for r in tensor.layout.ranks]
    guide.set_posterior(tensor, guide.factor_means(tensor), lambdas=lambdas)
    return lambdas


def _autonormal_guide(model):
    pyro.clear_param_store()
    autoguide = AutoNormal(model)
    autoguide(*_data())
    return as_tensor_guide(model, autoguide)


# keep as the layout's truncate reads it: a sequence of indices per bond, an index tensor of any
# shape (flattened), the whole given as an iterator
KEEPS = [
    pytest.param(lambda: [(2, 0)], id="tuple-of-ints"),
    pytest.param(lambda: [torch.tensor([[2, 0]])], id="2d-index-tensor"),
    pytest.param(lambda: (k for k in [torch.tensor([2, 0])]), id="iterator"),
]


@pytest.mark.parametrize("make_keep", KEEPS)
@pytest.mark.parametrize("lambda_guide", ["delta", "lognormal"])
def test_truncate_cuts_lambda_at_the_indices_that_cut_the_factors(make_keep, lambda_guide):
    model = _model("cp")
    guide = MeanField(model, seed=0, lambda_guide=lambda_guide).double()
    tensor = model.tensor
    lambdas = _random_lambdas(guide, tensor)
    _, expected = tensor.layout.truncate(guide.factor_means(tensor), [torch.tensor([2, 0])])
    guide.truncate(tensor, make_keep())
    assert all(torch.equal(a, b) for a, b in zip(guide.factor_means(tensor), expected))
    (lam,) = guide.lambdas("tensor")
    torch.testing.assert_close(lam, lambdas[0][[2, 0]], rtol=1e-14, atol=0)


@pytest.mark.parametrize("make_keep", KEEPS)
def test_truncate_of_an_autoguide_cuts_lambda_at_the_indices_that_cut_the_factors(make_keep):
    model = _model("cp")
    guide = _autonormal_guide(model)
    tensor = model.tensor
    (lam,), means = guide.lambdas("tensor"), guide.factor_means(tensor)
    _, expected = tensor.layout.truncate(means, [torch.tensor([2, 0])])
    guide.truncate(tensor, make_keep())
    assert all(torch.equal(a, b) for a, b in zip(guide.factor_means(tensor), expected))
    torch.testing.assert_close(guide.lambdas("tensor")[0], lam[[2, 0]], rtol=1e-6, atol=0)


@pytest.mark.parametrize("keep", [[torch.tensor([0, 3])], [(0, 0)], 3, []])
def test_truncate_with_a_bad_keep_changes_nothing(keep):
    model = _model("cp")
    guide = MeanField(model, seed=0)
    state = _state(guide)
    with pytest.raises((ValueError, TypeError), match="keep"):
        guide.truncate(model.tensor, keep)
    assert _unchanged(guide, state)


def _function_model():
    tensor = LowRankTensor(SHAPE, format="cp", max_rank=3).double()

    def model(index, values):
        factors, _ = tensor()
        with pyro.plate("data", len(values)):
            pyro.sample("obs", dist.Normal(tensor.layout.entries(factors, index), 0.1), obs=values)

    return model, tensor


@pytest.mark.parametrize(
    "call",
    [
        lambda guide, tensor: guide.factor_means(tensor),
        lambda guide, tensor: guide.factor_scales(tensor),
        lambda guide, tensor: guide.set_posterior(tensor, [torch.zeros(4, 3, dtype=D)]),
        lambda guide, tensor: guide.truncate(tensor, [[0]]),
        lambda guide, tensor: guide.quantiles([0.5]),
    ],
    ids=["factor_means", "factor_scales", "set_posterior", "truncate", "quantiles"],
)
def test_a_guide_not_called_yet_says_so(call):
    model, tensor = _function_model()
    guide = MeanField(model, seed=0)
    with pytest.raises(GuideNotReady, match="call it"):
        call(guide, tensor)
    assert sorted(guide(*_data())) == ["factor0", "factor1", "factor2", "lambda0"]  # and works once called


def test_a_guide_of_a_model_cut_without_it_refuses_to_fit_it():
    pyro.clear_param_store()
    model = _model("tt")
    pruner, other = MeanField(model, seed=0), MeanField(model, seed=1)
    tb.prune(model, pruner, ranks={"tensor": (2, 2)})
    state = _state(other)
    message = r"site 'tensor.factor0' has shape \(1, 4, 3\), the model's tensor is at ranks \(2, 2\)"
    for call in (lambda: other(*_data()), other.draws, other.update_lambdas):
        with pytest.raises(ValueError, match=message):
            call()
        assert _unchanged(other, state)
    assert [f.shape[-1] for f in other.factor_means(model.tensor)] == [3, 3, 1]  # its own posterior reads
    assert [v.shape[-1] for v in pruner(*_data()).values()][:2] == [2, 2]  # the guide that cut it fits it


@pytest.mark.parametrize("copy_of", [copy.deepcopy, lambda guide: pickle.loads(pickle.dumps(guide))])
def test_copying_a_guide_leaves_it_its_model(copy_of):
    model = _model("tt")
    guide = MeanField(model, seed=0)
    duplicate = copy_of(guide)
    assert guide.model is model
    assert [f.shape for f in duplicate.lambdas("tensor")] == [f.shape for f in guide.lambdas("tensor")]


def test_a_guide_of_a_model_function_copied_before_its_first_call():
    model, _ = _function_model()
    guide = MeanField(model, seed=0)
    duplicate = copy.deepcopy(guide)
    assert sorted(guide(*_data())) == ["factor0", "factor1", "factor2", "lambda0"]  # the original keeps its model
    with pytest.raises(GuideNotReady, match="copied .* before its first call"):
        duplicate(*_data())


@pytest.mark.parametrize("autoguide", [False, True], ids=["MeanField", "AutoNormal"])
def test_lambdas_names_a_tensor_name_it_does_not_know(autoguide):
    model = _model("tt")
    guide = _autonormal_guide(model) if autoguide else MeanField(model, seed=0)
    with pytest.raises(
        TypeError, match=r"tensor_name must be None or a name of the guide's tensors \('tensor'\), got a LowRankTensor"
    ):
        guide.lambdas(model.tensor)
    with pytest.raises(KeyError, match=r"tensor_name must be .*\('tensor'\), got 'tensr'"):
        guide.lambdas("tensr")
    assert len(guide.lambdas("tensor")) == 2
