"""
Export of a trained Bayesian tensorized network as a compact, deterministic torch module.

:func:`export` fixes every low-rank tensor of a network at its posterior-mean factors and
returns a plain :class:`torch.nn.Module` that needs neither Pyro nor a guide to run: no
:class:`~pyro.nn.PyroModule` anywhere in it, no sample sites, no param-store entries, and a
plain ``state_dict``. It walks the network and asks each module for its export:

- a Bayesian module whose class defines ``export(guide)`` exports itself. The tensorized layers
  do: they return :class:`CompactLinear`, :class:`CompactConv2d`, :class:`CompactEmbedding` and
  :class:`CompactEmbeddingBag`, the deterministic counterparts of
  :class:`~tensorbayes.models.TensorizedLinear`, :class:`~tensorbayes.models.TensorizedConv2d`,
  :class:`~tensorbayes.models.TensorizedEmbedding` and
  :class:`~tensorbayes.models.TensorizedEmbeddingBag`. Each holds its weight as a
  :class:`CompactTensor` (the factors as :class:`torch.nn.Parameter` s and their layout) and runs
  the forward pass of the Bayesian layer itself (its methods are borrowed, not copied), so a
  linear layer still picks the cheaper of contracting the input with the factors and
  reconstructing ``W`` by FLOP count, and an embedding still gathers only the rows it is asked
  for. :meth:`DLRM.export <tensorbayes.models.DLRM.export>` returns a plain
  :class:`~tensorbayes.models.DLRMNet`;
- a model whose class names an ``export_child`` is exported as that child: a
  :class:`~tensorbayes.models.BayesianClassifier` or
  :class:`~tensorbayes.models.BayesianRegressor` as its network ``net`` (the likelihood has no
  deterministic counterpart);
- every other module is copied and converted back from ``PyroModule[cls]`` to its torch class
  ``cls``, with its parameters, buffers and attributes, its children exported in turn.

So this module knows no model class: a new tensorized layer becomes exportable by defining its
own ``export(guide)`` beside it, in :mod:`tensorbayes.models`.

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

(``tb.export`` is the function; the classes are offered by this module, though they are defined
beside their Bayesian layers in :mod:`tensorbayes.models`:
``from tensorbayes.compact import CompactLinear, num_params``.)
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import pyro
import torch
from pyro.nn import PyroModule
from torch.distributions import transform_to

# the deterministic counterparts live beside their Bayesian layers (each layer's export(guide)
# makes its own); they are offered here too, where the export's users look for them
from .guides.base import as_tensor_guide
from .models.embedding_bag import CompactEmbeddingBag
from .models.layers import CompactConv2d, CompactEmbedding, CompactLinear
from .models.tensor import CompactTensor, LowRankTensor

__all__ = [
    "CompactConv2d",
    "CompactEmbedding",
    "CompactEmbeddingBag",
    "CompactLinear",
    "CompactTensor",
    "export",
    "num_params",
]

# the attributes PyroModule adds to a torch module's __dict__
_PYRO_ATTRS = ("_pyro_name", "_pyro_context", "_pyro_params", "_pyro_samples")


# ----- converting a network -----


def _wrapped_torch_class(cls):
    """``base`` when ``cls`` is ``PyroModule[base]`` for a torch class ``base``, else ``None``."""
    base = cls.__bases__[0]  # PyroModule[cls] subclasses cls first, then the PyroModule[...] of its bases
    if not issubclass(base, PyroModule) and PyroModule[base] is cls:
        return base
    return None


def _own_export(module):
    """
    ``module.export`` when ``module`` is a Bayesian module that exports itself: a
    :class:`~pyro.nn.PyroModule` whose class defines ``export(guide)`` (not a ``PyroModule[cls]``
    of a torch class, whose ``export`` would be the torch class's own); else ``None``.
    """
    cls = type(module)
    if not isinstance(module, PyroModule) or not callable(getattr(cls, "export", None)):
        return None
    if cls is PyroModule or _wrapped_torch_class(cls) is not None:
        return None
    return module.export


def _torch_class(module):
    """The class of ``module``'s copy: ``cls`` for a ``PyroModule[cls]``, ``torch.nn.Module`` for a
    bare ``PyroModule``, its own class otherwise (a torch module, or a PyroModule subclass of the
    user's own, whose forward may hold its own Pyro statements: it is kept, its layers swapped)."""
    cls = type(module)
    if cls is PyroModule:
        return torch.nn.Module
    if not isinstance(module, PyroModule):
        return cls
    return _wrapped_torch_class(cls) or cls


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
    own = _own_export(module)
    if own is not None:
        try:
            memo[id(module)] = new = own(guide)
        except ValueError as error:  # a guide pruned apart from the model: name the layer it does not fit
            raise ValueError(
                f"export cannot fix {path or type(module).__name__} at the guide's factors: {error}"
            ) from error
        return new
    if isinstance(module, LowRankTensor):
        raise TypeError(
            f"export cannot convert {path or 'the model'}: a LowRankTensor outside a tensorized layer has no "
            "deterministic forward pass (its posterior mean is layout.full(guide.factor_means(tensor)))"
        )
    cls = _torch_class(module)
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
    if isinstance(new, PyroModule):  # the user's own class: a PyroModule again, its PyroParams plain parameters
        new.__dict__.update(
            _pyro_name=module._pyro_name,
            _pyro_context=type(module._pyro_context)(),
            _pyro_params=OrderedDict(),
            _pyro_samples=OrderedDict(),
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
def export(model: torch.nn.Module, guide) -> torch.nn.Module:
    """
    The network of ``model`` as a plain, deterministic :class:`torch.nn.Module`, every low-rank
    tensor fixed at its posterior-mean factors ``guide.factor_means(tensor)``, at the ranks the
    tensor has now (call :func:`tensorbayes.prune` first to drop the inactive rank indices).

    Tensorized layers become :class:`CompactLinear`, :class:`CompactConv2d`,
    :class:`CompactEmbedding` and :class:`CompactEmbeddingBag` (each layer's own
    ``export(guide)``); every other module is copied (parameters, buffers, attributes, training
    flag) and converted from ``PyroModule[cls]`` back to ``cls``. A
    :class:`~pyro.nn.PyroModule` subclass of your own keeps its class, with its tensorized
    layers swapped in place and its ``PyroParam`` attributes fixed at their values as plain
    parameters; the Pyro statements of its own ``forward`` (an observation site, say) stay.
    Nothing is shared with ``model`` or ``guide``, which are left unchanged.

    For a :class:`~tensorbayes.models.BayesianClassifier` or
    :class:`~tensorbayes.models.BayesianRegressor` the export is its network ``model.net`` (the
    child its class names as ``export_child``), so it returns what the network returns: a
    classifier's *logits* (``torch.softmax(net(x), -1)`` are the probabilities the model returns
    at the posterior mean), a regressor's mean. For a :class:`~tensorbayes.models.DLRM` it is
    :meth:`DLRM.export <tensorbayes.models.DLRM.export>`, a :class:`~tensorbayes.models.DLRMNet`
    returning click logits.

    Usage::

        tb.prune(model, guide)
        net = tb.export(model, guide)
        probs = torch.softmax(net(x), dim=-1)

    :param model: a network (a :class:`~pyro.nn.PyroModule`, e.g. from
        :func:`~tensorbayes.models.tensorize`) or a model wrapping one.
    :param guide: its guide: a :class:`~tensorbayes.guides.MeanField` (or another
        :class:`~tensorbayes.guides.TensorGuide`), an :class:`~pyro.infer.autoguide.AutoGuideList`
        holding one, or a Pyro autoguide (read through its medians).
    :returns: a :class:`torch.nn.Module` with no Pyro module in it, but for the user's own
        ``PyroModule`` subclasses.
    :raises TypeError: for a model part that has no deterministic torch counterpart (a
        ``PyroSample`` weight, a bare :class:`~tensorbayes.models.LowRankTensor`), naming it.
    :raises ValueError: when the guide's factors do not fit a tensor's layout (a guide of
        another model, or one pruned apart from it).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    guide = as_tensor_guide(model, guide)
    child = getattr(type(model), "export_child", None)
    if child is not None:
        return _convert(getattr(model, child), guide, child, {})
    try:
        return _convert(model, guide, "", {})
    except TypeError as error:  # named after the model, as its user wrote it
        raise TypeError(f"{type(model).__name__}: {error}") from None


def num_params(module: torch.nn.Module) -> int:
    """
    The number of parameters ``module`` holds (each shared parameter once; buffers such as
    batch-norm statistics not counted). For an export, ``sum(layout.num_params())`` over its
    low-rank tensors plus its plain parameters.
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    return sum(p.numel() for p in module.parameters())
