"""
Turn an ordinary torch network into a Bayesian tensorized one.

:func:`tensorize` copies a :class:`torch.nn.Module` and swaps its large
:class:`torch.nn.Linear`, :class:`torch.nn.Conv2d` and :class:`torch.nn.Embedding` layers for
:class:`~.layers.TensorizedLinear`, :class:`~.layers.TensorizedConv2d` and
:class:`~.layers.TensorizedEmbedding`, whose weights are low-rank tensors with rank-shrinkage
priors; the copy is then made a :class:`~pyro.nn.PyroModule` throughout
(:func:`pyro.nn.module.to_pyro_module_`), so it runs as a Pyro model whose sample sites have
hierarchical names (``"0.weight.factor0"``) and whose remaining plain weights are
``pyro.param`` point estimates.
"""

from __future__ import annotations

import copy
import math
import warnings

import torch
from pyro.nn import PyroModule
from pyro.nn.module import to_pyro_module_

from ..checks import check_int
from ..formats import get_format
from .layers import FactorizationError, TensorizedConv2d, TensorizedEmbedding, TensorizedLinear
from .tensor import LowRankTensor, prior_from

__all__ = ["tensorize", "weight_matrix_shape"]


_REPLACED = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Embedding)


def _replaceable_type(module):
    """``module``'s class if it is exactly one of the replaced classes (or its PyroModule form);
    a subclass may override ``forward`` or have its weight read directly by its parent (as
    :class:`torch.nn.MultiheadAttention` reads ``out_proj.weight``), so it is left alone."""
    for cls in _REPLACED:
        if type(module) is cls or type(module) is PyroModule[cls]:
            return cls
    return None


#: Layers with a weight that :func:`tensorize` does not replace: named when it replaces nothing.
OTHER_WEIGHTED = (
    torch.nn.Conv1d,
    torch.nn.Conv3d,
    torch.nn.ConvTranspose1d,
    torch.nn.ConvTranspose2d,
    torch.nn.ConvTranspose3d,
    torch.nn.EmbeddingBag,
    torch.nn.Bilinear,
)


def weight_matrix_shape(module):
    """
    The ``(rows, cols)`` of a layer's weight as a matrix, which the size rule of
    :func:`tensorize` reads: ``(out_features, in_features)`` for a linear layer,
    ``(out_channels, in_channels * kh * kw / groups)`` for a convolution, and
    ``(num_embeddings, embedding_dim)`` for an embedding; ``None`` for any other module.
    """
    if isinstance(module, torch.nn.Linear):
        return module.out_features, module.in_features
    if isinstance(module, torch.nn.Conv2d):
        return module.out_channels, math.prod(module.weight.shape[1:])
    if isinstance(module, torch.nn.Embedding):
        return module.num_embeddings, module.embedding_dim
    return None


def _unsupported(module):
    """Why a layer of a supported type cannot be replaced faithfully, or ``None``."""
    if isinstance(module, torch.nn.Conv2d):
        if module.groups != 1:
            return f"groups={module.groups} (only groups=1 is tensorized)"
        if module.padding_mode != "zeros":
            return f"padding_mode={module.padding_mode!r} (only 'zeros' is tensorized)"
    if isinstance(module, torch.nn.Embedding):
        for attr, default in (
            ("padding_idx", None),
            ("max_norm", None),
            ("scale_grad_by_freq", False),
            ("sparse", False),
        ):
            if getattr(module, attr) != default:
                return f"{attr}={getattr(module, attr)!r} (not supported by TensorizedEmbedding)"
    return None


def _parameter_holders(root):
    """The paths of the modules of ``root`` that hold each parameter, by the parameter's id."""
    holders = {}
    for path, module in root.named_modules():
        for p in module._parameters.values():
            if p is not None:
                holders.setdefault(id(p), []).append(path or "the module")
    return holders


def _shared(module, paths):
    """Why ``module`` cannot be replaced because the network holds it in two places, or ``None``."""
    where = paths.get(id(module), [])
    if len(where) > 1:
        return (
            f"it is held in {len(where)} places ({', '.join(where)}); a forward pass through two of them would "
            "meet its weight's sample sites twice"
        )
    return None


def _tied(module, holders):
    """Why ``module`` cannot be replaced because another module holds one of its parameters (tied
    weights, as a language model's embedding and output layer), or ``None``."""
    for name, p in module._parameters.items():
        others = holders.get(id(p), []) if p is not None else []
        if len(others) > 1:
            return f"its {name} is tied, held by {', '.join(others)} (tied parameters are not tensorized)"
    return None


def _replacement(module, format, max_rank, prior, kwargs):
    weight = module.weight
    factory = dict(dtype=weight.dtype, device=weight.device)
    if isinstance(module, torch.nn.Linear):
        new = TensorizedLinear(
            module.in_features,
            module.out_features,
            format=format,
            max_rank=max_rank,
            prior=prior,
            bias=module.bias is not None,
            **kwargs,
        )
    elif isinstance(module, torch.nn.Conv2d):
        new = TensorizedConv2d(
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            bias=module.bias is not None,
            format=format,
            max_rank=max_rank,
            prior=prior,
            **kwargs,
        )
    else:
        new = TensorizedEmbedding(
            module.num_embeddings, module.embedding_dim, format=format, max_rank=max_rank, prior=prior, **kwargs
        )
    new.to(**factory)
    new.train(module.training)
    if getattr(module, "bias", None) is not None:
        new.bias = torch.nn.Parameter(module.bias.detach().clone())
    return new


def tensorize(
    module: torch.nn.Module,
    format: str = "ttm",
    max_rank: int | tuple[int, ...] | None = None,
    prior: str = "half_cauchy",
    min_features: int = 128,
    **kwargs,
) -> torch.nn.Module:
    """
    A Bayesian tensorized copy of ``module``: every large :class:`~torch.nn.Linear`,
    :class:`~torch.nn.Conv2d` and :class:`~torch.nn.Embedding` is replaced by its tensorized
    equivalent, and the copy is converted to run under Pyro. ``module`` itself is not changed.
    Only those exact classes (or their ``PyroModule[...]`` forms) are replaced, not subclasses,
    which may override ``forward`` or have their weight read directly by their parent (as
    :class:`torch.nn.MultiheadAttention` reads ``out_proj.weight``).

    **Size rule**: a layer is replaced when both sides of its weight as a matrix
    (:func:`weight_matrix_shape`: ``(out, in)``, ``(out_channels, in_channels * kh * kw)``,
    ``(num_embeddings, embedding_dim)``) are at least ``min_features``; smaller layers stay
    dense (as ``pyro.param`` point estimates, like every other parameter of the copy). When no
    layer is replaced (every one below the rule, or none of a supported class), the copy is
    still returned, with a warning that names the layers seen and what the rule asks.

    A replaced layer keeps its sizes, stride/padding/dilation and its bias (copied as the
    initial value of a plain parameter); its weight is not copied: it becomes a low-rank
    tensor whose initial posterior is set by the guide (Kaiming-scaled, see
    :mod:`~tensorbayes.models.layers`). A layer whose sizes cannot be factored into balanced
    modes (e.g. a prime width), with options the tensorized layers do not reproduce
    (grouped convolutions, ``padding_idx``, ...), is left dense with a warning naming it; so is
    a layer with a frozen parameter, and a shared layer, held in two places (the same module
    twice, or inside a module held twice) or whose weight or bias another module holds too
    (tied parameters), where a tensorized weight would be a sample site met twice. (A layer held
    once but called twice by its parent's ``forward`` cannot be seen here: tensorized, it meets
    its sample sites twice.) A frozen parameter (``requires_grad=False``) stays frozen: it is
    held as a buffer of the same name, since Pyro's param store makes every parameter of a
    :class:`~pyro.nn.PyroModule` trainable. A network that already holds tensorized layers
    keeps them.

    Usage::

        net = torch.nn.Sequential(torch.nn.Linear(784, 625), torch.nn.ReLU(), torch.nn.Linear(625, 10))
        model = tensorize(net, format="ttm", max_rank=16)   # 784 -> 625 tensorized, 625 -> 10 kept
        guide = tb.guides.MeanField(model)                   # sites "0.weight.factor0", ...

    :param torch.nn.Module module: the network (not modified).
    :param str format: "cp", "tucker", "tt" or "ttm", for every replaced layer.
    :param max_rank: the rank bound of every replaced layer (default ``None``: each layer's own,
        :func:`~.layers.default_max_rank` for linear and convolution layers, a twentieth of the
        dense weight's entries or up to a quarter for a small layer, and
        :data:`~.layers.EMBEDDING_MAX_RANK` for embeddings).
    :param prior: the rank prior of every replaced layer.
    :param int min_features: the size rule's threshold.
    :param kwargs: passed to every replaced layer's constructor (keywords that all three
        take: ``order``, ``prior_kwargs``, ``init_variance``). An argument a layer refuses (a
        ``max_rank`` tuple of another number of bonds than the layer's) raises its error, with the
        layer's path in front.
    :returns: the tensorized copy, a :class:`~pyro.nn.PyroModule` (of ``module``'s class).
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    check_int(min_features, "min_features")
    get_format(format)  # fail early, before copying, on a bad format or prior
    prior_from(prior, kwargs.get("prior_kwargs"))
    if isinstance(module, (TensorizedLinear, TensorizedConv2d, TensorizedEmbedding)):
        new = copy.deepcopy(module)
        to_pyro_module_(new)
        return new

    root = copy.deepcopy(module)
    seen, others = [], []
    holders = _parameter_holders(root)
    paths = {}  # id of a module -> every path that reaches it (a module held in two places has two)
    for path, m in root.named_modules(remove_duplicate=False):
        paths.setdefault(id(m), []).append(path or "the module")

    def replace(child, path):
        """The tensorized layer for ``child`` (at ``path``), or ``None`` to keep it."""
        if _replaceable_type(child) is None:
            if isinstance(child, OTHER_WEIGHTED):
                others.append(f"{path or 'the module'} ({type(child).__name__})")
            return None
        rows, cols = weight_matrix_shape(child)
        name = f"{path or 'the module'} ({type(child).__name__}, {rows}x{cols})"
        seen.append((name, min(rows, cols) >= min_features))
        if min(rows, cols) < min_features:
            return None
        reason = _unsupported(child) or _frozen(child) or _shared(child, paths) or _tied(child, holders)
        if reason is None:
            try:
                return _replacement(child, format, max_rank, prior, kwargs)
            except FactorizationError as e:
                reason = str(e)
            except (TypeError, ValueError) as e:  # an argument that does not fit this layer (say, max_rank's bonds)
                raise (ValueError if isinstance(e, ValueError) else TypeError)(
                    f"tensorize could not replace {name}: {e}"
                ) from e
        warnings.warn(f"tensorize: left {path or 'the module'} ({type(child).__name__}) dense: {reason}", stacklevel=3)
        return None

    top = replace(root, "")
    if top is not None:
        root = top
    else:
        done = set()  # a shared layer is decided (and warned about) once
        for path, parent in list(root.named_modules()):
            for name, child in list(parent._modules.items()):
                if child is None or id(child) in done:
                    continue
                done.add(id(child))
                new = replace(child, f"{path}.{name}" if path else name)
                if new is not None:  # in place: a PyroModule's setattr would move it to the end of a Sequential
                    parent._modules[name] = new
    if not any(isinstance(m, LowRankTensor) for m in root.modules()):
        warnings.warn(_nothing_tensorized(seen, others, min_features), stacklevel=2)
    _keep_frozen(root)
    to_pyro_module_(root)
    return root


def _frozen(module):
    """Why ``module`` is not replaced because a parameter of it is frozen, or ``None``."""
    frozen = [name for name, p in module.named_parameters() if not p.requires_grad]
    if frozen:
        return f"its {', '.join(frozen)} {'is' if len(frozen) == 1 else 'are'} frozen (requires_grad=False)"
    return None


def _keep_frozen(root):
    """Hold every frozen parameter of ``root`` (``requires_grad=False``) as a buffer of the same name:
    Pyro's param store makes any parameter a module registers trainable, a buffer it leaves alone."""
    for module in root.modules():
        for name, p in list(module._parameters.items()):
            if p is not None and not p.requires_grad:
                del module._parameters[name]
                module.register_buffer(name, p.detach())


def _nothing_tensorized(seen, others, min_features):
    """The warning of a :func:`tensorize` call that replaced no layer: what it saw, what the rule asks."""
    kinds = f"; it does not replace layers of other kinds, such as {_listed(others)}" if others else ""
    if not seen:
        return (
            "tensorize replaced nothing: the module holds no torch.nn.Linear, Conv2d or Embedding (subclasses "
            f"are left alone){kinds}, so it has no low-rank tensor and a MeanField guide will refuse it"
        )
    met = sum(ok for _, ok in seen)
    return (
        f"tensorize replaced nothing: the size rule replaces a layer when both sides of its weight as a matrix "
        f"are at least min_features={min_features}; the layers seen were {_listed([name for name, _ in seen])}"
        + (f" ({met} of them met the rule but {'was' if met == 1 else 'were'} left dense, as warned)" if met else "")
        + f"; pass a smaller min_features to tensorize them{kinds}. Without a low-rank tensor a MeanField guide "
        "will refuse the model"
    )


def _listed(names, most=6):
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")
