"""
Export of a trained Bayesian tensorized network as a compact, deterministic torch module.

:func:`export` fixes every low-rank tensor of a network at its posterior-mean factors and
returns a plain :class:`torch.nn.Module` that needs neither Pyro nor a guide to run: no
:class:`~pyro.nn.PyroModule` anywhere in it, no sample sites, no param-store entries, and a
plain ``state_dict``. Its tensorized layers become

- :class:`CompactLinear`, :class:`CompactConv2d`, :class:`CompactEmbedding`: the deterministic
  counterparts of :class:`~tensorbayes.models.TensorizedLinear`,
  :class:`~tensorbayes.models.TensorizedConv2d` and :class:`~tensorbayes.models.TensorizedEmbedding`.
  Each holds its weight as a :class:`CompactTensor` (the factors as :class:`torch.nn.Parameter` s
  and their layout) and runs the forward pass of the Bayesian layer itself (its methods are
  borrowed, not copied), so a linear layer still picks the cheaper of contracting the input
  with the factors and reconstructing ``W`` by FLOP count, and an embedding still gathers only
  the rows it is asked for;

and every other module is copied and converted back from ``PyroModule[cls]`` to its torch class
``cls``, with its parameters, buffers and attributes.

The factors are kept at the ranks the tensors have *now*: call :func:`tensorbayes.prune` first
to remove the rank indices the posterior switched off, so that the export is as small as the
ranks :func:`tensorbayes.ranks` reads out. :func:`num_params` counts what the export holds:
``sum(layout.num_params())`` over the tensors plus the plain parameters (biases, small dense
layers).

Usage::

    tb.prune(model, guide)
    net = tb.export(model, guide)               # a torch.nn.Module
    logits = net(x)                             # for a BayesianClassifier: softmax for probabilities
    torch.save(net.state_dict(), "net.pt")

(``tb.export`` is the function; the classes live in this module:
``from tensorbayes.compact import CompactLinear, num_params``.)
"""

import copy
from collections import OrderedDict

import pyro
import torch
from pyro.nn import PyroModule
from torch.distributions import transform_to

from .models.dlrm import DLRM
from .models.embedding_bag import CompactEmbeddingBag, TensorizedEmbeddingBag
from .models.layers import TensorizedConv2d, TensorizedEmbedding, TensorizedLinear
from .models.networks import BayesianClassifier, BayesianRegressor
from .models.tensor import LowRankTensor

__all__ = ["CompactConv2d", "CompactEmbedding", "CompactLinear", "CompactTensor", "export", "num_params"]

# the attributes PyroModule adds to a torch module's __dict__
_PYRO_ATTRS = ("_pyro_name", "_pyro_context", "_pyro_params", "_pyro_samples")


class CompactTensor(torch.nn.Module):
    """
    A low-rank tensor fixed at given factors: the deterministic counterpart of a
    :class:`~tensorbayes.models.LowRankTensor`. Calling it returns ``(factors, None)``, as a
    draw of a :class:`~tensorbayes.models.LowRankTensor` returns ``(factors, lambdas)``, so that
    the tensorized layers' forward passes run on it unchanged.

    Usage::

        weight = CompactTensor(model.tensor.layout, guide.factor_means(model.tensor))
        dense = weight.full()

    :param layout: the :class:`~tensorbayes.formats.TensorFormat` of the factors.
    :param list factors: the factors, one tensor per factor of ``layout`` (copied).
    """

    def __init__(self, layout, factors):
        super().__init__()
        factors = layout.check_factors(factors)
        self.layout = layout
        self.factors = torch.nn.ParameterList([torch.nn.Parameter(f.detach().clone()) for f in factors])

    @property
    def format(self):
        return self.layout.name

    @property
    def ranks(self):
        return self.layout.ranks

    def full(self):
        """The dense tensor."""
        return self.layout.full(list(self.factors))

    def forward(self):
        """``(factors, None)``: the factors, and no rank scales."""
        return list(self.factors), None

    def extra_repr(self):
        return f"format={self.layout.name!r}, shape={self.layout.shape}, ranks={self.layout.ranks}"


def _copy_bias(layer):
    bias = layer._parameters.get("bias")
    return None if bias is None else torch.nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)


def _check_layer(layer, cls):
    if not isinstance(layer, cls):
        raise TypeError(f"layer must be a {cls.__name__}, got {type(layer).__name__}")


class CompactLinear(torch.nn.Module):
    """
    ``y = x W^T + b`` with ``W`` a low-rank tensor fixed at given factors: a
    :class:`~tensorbayes.models.TensorizedLinear` without its priors. The forward pass is the
    Bayesian layer's: by FLOP count (:meth:`choose_path`), the input is contracted with the
    factors or ``W`` is reconstructed once; :attr:`path` forces either.

    Usage::

        layer = CompactLinear(model.fc, guide.factor_means(model.fc.weight))
        y = layer(x)

    :param layer: the :class:`~tensorbayes.models.TensorizedLinear` whose sizes, shapes, path
        and bias (copied) to take.
    :param list factors: the factors of ``layer.weight``'s layout (copied).
    """

    def __init__(self, layer, factors):
        super().__init__()
        _check_layer(layer, TensorizedLinear)
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.in_shape, self.out_shape = layer.in_shape, layer.out_shape
        self.weight = CompactTensor(layer.layout, factors)
        self.bias = _copy_bias(layer)
        self.path = layer.path

    path = TensorizedLinear.path
    layout = TensorizedLinear.layout
    flop_counts = TensorizedLinear.flop_counts
    choose_path = TensorizedLinear.choose_path
    _check_input = TensorizedLinear._check_input
    forward = TensorizedLinear.forward
    extra_repr = TensorizedLinear.extra_repr


class CompactConv2d(torch.nn.Module):
    """
    A 2-d convolution whose kernel is a low-rank tensor fixed at given factors: a
    :class:`~tensorbayes.models.TensorizedConv2d` without its priors (the kernel is
    reconstructed and :func:`torch.nn.functional.conv2d` called, as there).

    Usage::

        conv = CompactConv2d(model.conv, guide.factor_means(model.conv.weight))

    :param layer: the :class:`~tensorbayes.models.TensorizedConv2d` whose sizes, shapes,
        stride, padding, dilation and bias (copied) to take.
    :param list factors: the factors of ``layer.weight``'s layout (copied).
    """

    def __init__(self, layer, factors):
        super().__init__()
        _check_layer(layer, TensorizedConv2d)
        for name in (
            "in_channels",
            "out_channels",
            "kernel_size",
            "stride",
            "padding",
            "dilation",
            "in_shape",
            "out_shape",
        ):
            setattr(self, name, getattr(layer, name))
        self.weight = CompactTensor(layer.layout, factors)
        self.bias = _copy_bias(layer)

    layout = TensorizedConv2d.layout
    kernel = TensorizedConv2d.kernel
    forward = TensorizedConv2d.forward
    extra_repr = TensorizedConv2d.extra_repr


class CompactEmbedding(torch.nn.Module):
    """
    An embedding table held as a low-rank tensor fixed at given factors: a
    :class:`~tensorbayes.models.TensorizedEmbedding` without its priors (a lookup gathers only
    the rows it needs, by mixed-radix indexing into the factors).

    Usage::

        emb = CompactEmbedding(model.emb, guide.factor_means(model.emb.weight))

    :param layer: the :class:`~tensorbayes.models.TensorizedEmbedding` whose sizes and shapes
        to take.
    :param list factors: the factors of ``layer.weight``'s layout (copied).
    """

    def __init__(self, layer, factors):
        super().__init__()
        _check_layer(layer, TensorizedEmbedding)
        for name in ("num_embeddings", "embedding_dim", "row_shape", "col_shape"):
            setattr(self, name, getattr(layer, name))
        self.weight = CompactTensor(layer.layout, factors)

    layout = TensorizedEmbedding.layout
    num_padding_rows = TensorizedEmbedding.num_padding_rows
    _check_indices = TensorizedEmbedding._check_indices
    forward = TensorizedEmbedding.forward
    extra_repr = TensorizedEmbedding.extra_repr


# subclasses before their bases: the first isinstance match wins
_COMPACT = {
    TensorizedEmbeddingBag: CompactEmbeddingBag,
    TensorizedLinear: CompactLinear,
    TensorizedConv2d: CompactConv2d,
    TensorizedEmbedding: CompactEmbedding,
}


# ----- converting a network -----


def _torch_class(module, path):
    """The torch class of ``module``: ``cls`` for a ``PyroModule[cls]``, its own class otherwise."""
    cls = type(module)
    if not isinstance(module, PyroModule):
        return cls
    if cls is PyroModule:
        return torch.nn.Module
    base = cls.__bases__[0]  # PyroModule[cls] subclasses cls first, then the PyroModule[...] of its bases
    if not issubclass(base, PyroModule) and PyroModule[base] is cls:
        return base
    raise TypeError(
        f"export cannot convert {path or 'the network'} ({cls.__name__}): a PyroModule subclass of its own has "
        "no torch class to go back to; define the network as a torch.nn.Module and tensorize it "
        "(tb.models.tensorize), or hold the tensorized layers in PyroModule[torch class] containers"
    )


def _pyro_param_value(module, name):
    """The constrained value of a :class:`~pyro.nn.PyroParam` attribute, as the model sees it."""
    constraint, _ = module._pyro_params[name]
    fullname = f"{module._pyro_name}.{name}" if module._pyro_name else name  # as PyroModule names it
    store = pyro.get_param_store()
    if fullname in store:
        return store[fullname]
    return transform_to(constraint)(module._parameters[name + "_unconstrained"])


def _convert(module, guide, path, memo):
    """
    A Pyro-free copy of ``module`` with its low-rank tensors at the guide's posterior means.
    ``memo`` maps the ids of modules and tensors already copied to their copies, so that a
    module or a parameter used in two places is one module or parameter in the copy.
    """
    if id(module) in memo:
        return memo[id(module)]
    for cls, compact in _COMPACT.items():
        if isinstance(module, cls):
            memo[id(module)] = new = compact(module, guide.factor_means(module.weight))
            return new
    if isinstance(module, LowRankTensor):
        raise TypeError(
            f"export cannot convert {path or 'the model'}: a LowRankTensor outside a tensorized layer has no "
            "deterministic forward pass (its posterior mean is layout.full(guide.factor_means(tensor)))"
        )
    cls = _torch_class(module, path)
    samples = module.__dict__.get("_pyro_samples") or {}
    if samples:
        raise TypeError(
            f"export cannot fix {', '.join(_join(path, n) for n in samples)}: a PyroSample attribute is a random "
            "weight that no low-rank tensor holds, so it has no posterior-mean factors"
        )
    pyro_params = module.__dict__.get("_pyro_params") or {}
    new = cls.__new__(cls)
    memo[id(module)] = new
    state = {
        k: v
        for k, v in module.__dict__.items()
        if k not in _PYRO_ATTRS and k not in ("_parameters", "_buffers", "_modules")
    }
    new.__dict__.update(copy.deepcopy(state))
    parameters = OrderedDict()
    for name, p in module._parameters.items():
        if name.endswith("_unconstrained") and name[: -len("_unconstrained")] in pyro_params:
            continue
        parameters[name] = _copy_tensor(p, memo)
    for name in pyro_params:
        parameters[name] = torch.nn.Parameter(_pyro_param_value(module, name).detach().clone())
    new.__dict__["_parameters"] = parameters
    new.__dict__["_buffers"] = OrderedDict((name, _copy_tensor(b, memo)) for name, b in module._buffers.items())
    new.__dict__["_modules"] = OrderedDict(
        (name, None if child is None else _convert(child, guide, _join(path, name), memo))
        for name, child in module._modules.items()
    )
    return new


def _copy_tensor(t, memo):
    """A detached copy of a parameter (as a parameter) or a buffer, once per tensor."""
    if t is None:
        return None
    if id(t) not in memo:
        copied = t.detach().clone()
        memo[id(t)] = (
            torch.nn.Parameter(copied, requires_grad=t.requires_grad) if isinstance(t, torch.nn.Parameter) else copied
        )
    return memo[id(t)]


def _join(path, name):
    return f"{path}.{name}" if path else name


@torch.no_grad()
def export(model, guide):
    """
    The network of ``model`` as a plain, deterministic :class:`torch.nn.Module`, every low-rank
    tensor fixed at its posterior-mean factors ``guide.factor_means(tensor)``, at the ranks the
    tensor has now (call :func:`tensorbayes.prune` first to drop the inactive rank indices).

    Tensorized layers become :class:`CompactLinear`, :class:`CompactConv2d` and
    :class:`CompactEmbedding`; every other module is copied (parameters, buffers, attributes,
    training flag) and converted from ``PyroModule[cls]`` back to ``cls``. Nothing is shared
    with ``model`` or ``guide``, which are left unchanged.

    For a :class:`~tensorbayes.models.BayesianClassifier` or
    :class:`~tensorbayes.models.BayesianRegressor` the export is its network ``model.net``, so it
    returns what the network returns: a classifier's *logits* (``torch.softmax(net(x), -1)`` are
    the probabilities the model returns at the posterior mean), a regressor's mean.

    Usage::

        tb.prune(model, guide)
        net = tb.export(model, guide)
        probs = torch.softmax(net(x), dim=-1)

    :param model: a network (a :class:`~pyro.nn.PyroModule`, e.g. from
        :func:`~tensorbayes.models.tensorize`) or a model wrapping one.
    :param guide: its guide: anything with ``factor_means(tensor)``, such as
        :class:`~tensorbayes.guides.MeanField`.
    :returns: a :class:`torch.nn.Module` with no Pyro module in it.
    :raises TypeError: for a model part that has no deterministic torch counterpart (a
        ``PyroSample`` weight, a :class:`~pyro.nn.PyroModule` subclass of its own, a bare
        :class:`~tensorbayes.models.LowRankTensor`), naming it.
    :raises ValueError: when the guide's factors do not fit a tensor's layout (a guide of
        another model, or one pruned apart from it).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(getattr(guide, "factor_means", None)):
        raise TypeError(
            f"guide must offer factor_means(tensor), as tb.guides.MeanField does, got {type(guide).__name__}"
        )
    if isinstance(model, (BayesianClassifier, BayesianRegressor, DLRM)):
        return _convert(model.net, guide, "net", {})
    return _convert(model, guide, "", {})


def num_params(module):
    """
    The number of parameters ``module`` holds (each shared parameter once; buffers such as
    batch-norm statistics not counted). For an export, ``sum(layout.num_params())`` over its
    low-rank tensors plus its plain parameters.
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    return sum(p.numel() for p in module.parameters())
