"""
The guide contract: what :func:`~tensorbayes.fit`, the rank readout, pruning, the plots and the
export may ask of a guide over a model's low-rank tensors.

:class:`TensorGuide` states it, in the manner of Pyro's :class:`~pyro.infer.autoguide.AutoGuide`:
a guide is a :class:`~pyro.nn.PyroModule` called with the model's arguments, and a tensor
guide also answers, for every :class:`~tensorbayes.models.LowRankTensor` of its model, the
posterior's factor means and scales and its rank scales λ, and can be cut to fewer rank
indices. :class:`~tensorbayes.guides.MeanField` fulfils it with trainable parameters;
:class:`MedianGuide` reads any Pyro autoguide fitted to a tensorbayes model through its
medians, and :func:`as_tensor_guide` finds the tensor guide inside whatever a user passes
(a tensor guide, an :class:`~pyro.infer.autoguide.AutoGuideList` holding one, or an autoguide).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import pyro
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoCallable, AutoGuide, AutoGuideList
from torch.distributions import biject_to

from ..models.tensor import low_rank_tensors, traced_tensors

__all__ = ["Draw", "GuideError", "GuideNotReady", "MedianGuide", "TensorGuide", "as_tensor_guide"]


class Draw(NamedTuple):
    """
    One latent site's draw from a guide, with what its KL term needs: a factor's Normal ``loc``
    and ``scale`` (the KL is then computed in closed form), or the distribution ``dist`` it was
    drawn from (the KL is then estimated from the draw), or neither (a point mass: the KL is
    minus the prior's log density at ``value``).
    """

    value: torch.Tensor
    loc: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    dist: object | None = None


class GuideError(TypeError):
    """A guide that cannot answer what the rank readout, pruning, the plots or the export ask."""


class GuideNotReady(GuideError):
    """A guide that can answer once it has been called (or fitted): an autoguide, or a guide of a
    model written as a function, before its first call."""


class TensorGuide(AutoGuide):
    """
    Base class of guides over the low-rank tensors of a model: a Pyro
    :class:`~pyro.infer.autoguide.AutoGuide`, so that it goes into an
    :class:`~pyro.infer.autoguide.AutoGuideList` beside Pyro's own guides for the other sites
    (``guide.append(MeanField(poutine.block(model, expose=tb.guides.tensor_sites(model))))``).

    A subclass implements :meth:`forward` (the variational draw, as any Pyro guide),
    :meth:`factor_means`, :meth:`factor_scales`, :meth:`lambdas` and :meth:`truncate`; it may
    override :meth:`update_lambdas` (a closed-form λ step, run by the guide itself or by the
    SVI engine after each optimizer step) and :meth:`draws` (every latent site's draw at once,
    which the fast ELBO uses instead of tracing the guide).

    :param model: the model whose :class:`~tensorbayes.models.LowRankTensor` modules it covers.
    """

    def __init__(self, model):
        if not callable(model):
            raise TypeError(
                "model must be a Pyro model: a PyroModule holding LowRankTensor modules, such a model under Pyro's "
                f"handlers, or a model function that calls them; got {type(model).__name__}"
            )
        super().__init__(model)
        module = model_module(model)
        self._model_tensors = None  # plain dict: not registered as submodules of the guide
        if isinstance(module, torch.nn.Module):
            self._set_tensors(low_rank_tensors(module))

    def _set_tensors(self, tensors):
        if not tensors:
            raise ValueError(
                "model holds no LowRankTensor: the guide has nothing to approximate (build the model "
                "from tensorbayes layers, or tensorize a network whose layers meet tensorize's size "
                "rule, min_features)"
            )
        self._model_tensors = tensors

    def __getstate__(self):
        """The state to copy or pickle, without the model, as Pyro's autoguides leave it out; unlike
        theirs, the guide itself keeps its model (``copy.deepcopy(guide)`` leaves ``guide`` whole)."""
        model, master = self._model, self.master
        state = dict(super().__getstate__())
        self._model, self.master = model, master
        return state

    def _find_tensors(self, *args, **kwargs):
        """Trace a model written as a function once, as Pyro's autoguides do, for its tensors."""
        if self._model is None:
            raise GuideNotReady(
                f"this {type(self).__name__} was copied (or unpickled) before its first call: a copy has no model "
                "to find its tensors in; build a guide of the model instead"
            )
        with torch.no_grad(), poutine.block():
            trace = poutine.trace(self.model).get_trace(*args, **kwargs)
        self._set_tensors(traced_tensors(trace))

    @property
    def ready(self):
        """Whether the guide knows its tensors (a guide of a model function learns them at its first call)."""
        return self._model_tensors is not None

    def tensors(self):
        """``{name in the model: LowRankTensor}`` of every tensor the guide covers."""
        if self._model_tensors is None:
            raise GuideNotReady(
                f"{type(self).__name__} of a model function finds its tensors when it is first called: call it "
                "(or take an SVI step) with the model's arguments first"
            )
        return dict(self._model_tensors)

    def factor_means(self, tensor):
        """The posterior means (or medians) of ``tensor``'s factors, detached."""
        raise NotImplementedError

    def factor_scales(self, tensor):
        """The posterior standard deviations of ``tensor``'s factors, detached."""
        raise NotImplementedError

    def lambdas(self, tensor_name=None):
        """λ per tensor and bond, ``{name: [λ of each bond]}`` (or one tensor's list)."""
        raise NotImplementedError

    def truncate(self, tensor, keep):
        """Keep the rank indices ``keep`` (one index tensor per bond) of ``tensor``'s posterior."""
        raise NotImplementedError

    def set_posterior(self, tensor, locs, scales=None, lambdas=None):
        """Overwrite the posterior of ``tensor``: factor means, optionally scales and λ."""
        raise NotImplementedError

    def update_lambdas(self, step_size=1.0):
        """One closed-form step of λ (none by default: λ is fitted with the other parameters)."""

    def keep_lambdas(self):
        """Mark λ as up to date with the current posterior (no update is pending)."""

    @property
    def has_closed_form_lambdas(self):
        """Whether :meth:`update_lambdas` does something (λ is not fitted by gradient)."""
        return False

    def scale_parameters(self):
        """The trainable parameters of the posterior's scales, which an SVI loop may step more
        slowly than the means (:func:`~tensorbayes.fit` does); none by default."""
        return []

    def draws(self):
        """``{site: draw}`` of every latent site, or ``None`` where the guide must be traced."""
        return None

    def median(self, *args, **kwargs):
        """``{site: posterior median}`` of every factor and λ site, as Pyro's autoguides give it."""
        out = {}
        for name, tensor in self.tensors().items():
            out.update({tensor.factor_site(k): m for k, m in enumerate(self.factor_means(tensor))})
            out.update({tensor.lambda_site(b): lam for b, lam in enumerate(self.lambdas(name))})
        return out


def check_tensor_name(tensor_name, tensors):
    """Raise unless ``tensor_name`` is ``None`` or a key of ``tensors`` (a guide's :meth:`~TensorGuide.tensors`):
    a :class:`TypeError` for what is no name (a tensor itself), a :class:`KeyError` for another name."""
    if tensor_name is None or (isinstance(tensor_name, str) and tensor_name in tensors):
        return
    names = ", ".join(map(repr, tensors))
    if not isinstance(tensor_name, str):
        raise TypeError(
            f"tensor_name must be None or a name of the guide's tensors ({names}), got a {type(tensor_name).__name__}"
        )
    raise KeyError(f"tensor_name must be None or a name of the guide's tensors ({names}), got {tensor_name!r}")


def flat_indices(keep):
    """``keep``, one sequence of rank indices per bond that a layout's ``truncate`` has accepted, as
    one flat index tensor per bond, as the layout reads it (so that λ is cut as the factors are)."""
    return [torch.as_tensor(k).reshape(-1) for k in keep]


def model_module(model):
    """The module under Pyro's handlers (``poutine.block(model, ...)`` wraps a model's module), or
    ``model`` itself (a module, or a model written as a function)."""
    while not isinstance(model, torch.nn.Module) and getattr(model, "args", None):
        model = model.args[-1]  # a handler's bound partial: (messenger, fn)
    return model


def _autoguide_parts(guide):
    """The parts of an :class:`AutoGuideList` (recursively, callables unwrapped), or ``[guide]``."""
    if isinstance(guide, AutoGuideList):
        return [p for part in guide for p in _autoguide_parts(part)]
    if isinstance(guide, AutoCallable):
        return [guide._guide]
    return [guide]


class MedianGuide(TensorGuide):
    """
    Read a Pyro autoguide fitted to a tensorbayes model as a tensor guide: the factor means are
    the autoguide's medians of the factor sites, λ its medians of the λ sites, and the scales
    (where the autoguide has a per-site Normal, as :class:`~pyro.infer.autoguide.AutoNormal`)
    its scales. It holds no parameters of its own; :meth:`truncate` cuts the autoguide's
    per-site parameters where it has them (``AutoNormal``, ``AutoDelta``).

    :param model: the model the autoguide was fitted to.
    :param guide: the autoguide (it must offer ``median()``; it has been called once, so that
        its sites exist).
    """

    def __init__(self, model, guide):
        super().__init__(model)
        if not self.ready and getattr(guide, "prototype_trace", None) is not None:
            self._set_tensors(traced_tensors(guide.prototype_trace))
        if not callable(getattr(guide, "median", None)):
            raise GuideError(f"{type(guide).__name__} offers no median(): it cannot be read as a tensor guide")
        if isinstance(guide, AutoGuide) and getattr(guide, "prototype_trace", True) is None:
            raise GuideNotReady(
                f"guide must offer factor_means(tensor): this {type(guide).__name__} has not been called yet, so it "
                "has no sites to read (fit it first, or call it once with the model's arguments)"
            )
        self.__dict__["autoguide"] = guide  # not a submodule: the autoguide owns its parameters

    def _medians(self):
        with torch.no_grad():
            return self.autoguide.median()

    def _sites(self, sites):
        """The autoguide's medians of ``sites``, from one call of its ``median()``."""
        medians = self._medians()
        missing = [site for site in sites if site not in medians]
        if missing:
            raise GuideError(
                f"{type(self.autoguide).__name__} has no site {missing[0]!r}: call it (or fit it) once first, and "
                "make sure it covers the model's factor and λ sites"
            )
        return [medians[site].detach() for site in sites]

    def factor_means(self, tensor):
        return self._sites([tensor.factor_site(k) for k in range(len(tensor.layout.factor_shapes))])

    def factor_scales(self, tensor):
        out = []
        for k in range(len(tensor.layout.factor_shapes)):
            part = self._part_with(tensor.factor_site(k), "scales")
            if part is None:
                raise GuideError(
                    f"{type(self.autoguide).__name__} has no per-site scale for {tensor.factor_site(k)!r} "
                    "(an AutoNormal or a tb.guides.MeanField has)"
                )
            out.append(_deep_getattr(part.scales, tensor.factor_site(k)).detach())
        return out

    def lambdas(self, tensor_name=None):
        tensors = self.tensors()
        check_tensor_name(tensor_name, tensors)
        out = {
            name: self._sites([t.lambda_site(b) for b in range(len(t.layout.ranks))])
            for name, t in tensors.items()
            if tensor_name is None or name == tensor_name
        }
        return out if tensor_name is None else out[tensor_name]

    def _part_with(self, site, attribute):
        """The part of the autoguide holding ``site`` under ``attribute`` (``locs``, ``scales``)."""
        for part in _autoguide_parts(self.autoguide):
            holder = getattr(part, attribute, None) if attribute else part
            if holder is not None and _deep_has(holder, site):
                return part
        return None

    @torch.no_grad()
    def truncate(self, tensor, keep):
        layout = tensor.layout
        sites = [tensor.factor_site(k) for k in range(len(layout.factor_shapes))]
        keep = list(keep) if isinstance(keep, Iterable) else keep  # an iterator is read once
        layout.truncate(self.factor_means(tensor), keep)  # checks keep before anything is cut
        if not any(all(self._part_with(s, attribute) is not None for s in sites) for attribute in ("locs", None)):
            raise GuideError(
                f"{type(self.autoguide).__name__} cannot be cut to other ranks: it has no per-site loc or point mass "
                f"for {sites[0]!r} (an AutoNormal, an AutoDelta or a tb.guides.MeanField has): fit one to prune"
            )
        keep = flat_indices(keep)
        for attribute in ("locs", "scales", None):
            parts = [self._part_with(s, attribute) for s in sites]
            if any(p is None for p in parts):
                continue
            values = [
                _deep_getattr(getattr(p, attribute) if attribute else p, s).detach() for p, s in zip(parts, sites)
            ]
            _, cut = layout.truncate(values, keep)
            for p, s, v in zip(parts, sites, cut):
                _deep_setparam(getattr(p, attribute) if attribute else p, s, v.clone())
        for b, idx in enumerate(keep):
            site = tensor.lambda_site(b)
            for attribute in ("locs", "scales", None):
                part = self._part_with(site, attribute)
                if part is not None:
                    holder = getattr(part, attribute) if attribute else part
                    _deep_setparam(holder, site, _deep_getattr(holder, site).detach()[idx].clone())

    @torch.no_grad()
    def set_posterior(self, tensor, locs, scales=None, lambdas=None):
        """Overwrite the autoguide's posterior of ``tensor``: its factor locs (one tensor per factor),
        optionally scales (one per factor, non-negative: its per-site scales, as an AutoNormal's; a point
        mass, as an AutoDelta's, has no spread to set) and λ (one per bond, positive: its λ sites' locs or
        point masses), each of the shape it has; every value is checked before any is taken."""
        factors = [tensor.factor_site(k) for k in range(len(tensor.layout.factor_shapes))]
        means = self._sites(factors)
        sets = self._loc_sets(factors, checked_values(locs, means, "locs", "factor"), "locs")
        if scales is not None:
            for site, scale in zip(factors, checked_values(scales, means, "scales", "factor", "non-negative")):
                part = self._part_with(site, "scales")
                if part is not None:
                    sets.append((part.scales, site, scale.clamp_min(1e-12)))
                elif self._part_with(site, None) is None:  # neither per-site scales nor a point mass
                    raise GuideError(
                        f"scales cannot be set: {type(self.autoguide).__name__} has no per-site scale for {site!r} "
                        "(an AutoNormal or a tb.guides.MeanField has)"
                    )
        if lambdas is not None:
            bonds = [tensor.lambda_site(b) for b in range(len(tensor.layout.ranks))]
            lambdas = checked_values(lambdas, self._sites(bonds), "lambdas", "bond", "positive")
            sets += self._loc_sets(bonds, lambdas, "lambdas")
        for holder, site, value in sets:
            _deep_setparam(holder, site, value.clone())

    def _loc_sets(self, sites, values, what):
        """``(holder, site, value)`` that put each of ``sites`` at its (constrained) value: an AutoNormal's
        loc, in its unconstrained space, or an AutoDelta's point mass."""
        out = []
        for site, value in zip(sites, values):
            part = self._part_with(site, "locs")
            if part is not None:
                out.append((part.locs, site, biject_to(part.prototype_trace.nodes[site]["fn"].support).inv(value)))
            elif (part := self._part_with(site, None)) is not None:
                out.append((part, site, value))
            else:
                raise GuideError(
                    f"{what} cannot be set: {type(self.autoguide).__name__} has no per-site loc for {site!r} "
                    "(an AutoNormal, an AutoDelta or a tb.guides.MeanField has)"
                )
        return out


def checked_values(values, params, what, per, sign=None):
    """
    ``values``, one tensor per tensor of ``params`` (each of its shape, finite, and with ``sign``
    "positive" or "non-negative"), in the dtype and device of ``params``; a :class:`ValueError`
    names the first that is not, before anything is taken.
    """
    if not isinstance(values, (list, tuple)) or len(values) != len(params):
        got = f"{len(values)}" if isinstance(values, (list, tuple)) else f"a {type(values).__name__}"
        raise ValueError(f"{what} must be a list of {len(params)} tensors, one per {per}, got {got}")
    out = []
    for k, (value, param) in enumerate(zip(values, params)):
        value = torch.as_tensor(value).to(param)
        if tuple(value.shape) != tuple(param.shape):
            raise ValueError(
                f"{what} must keep the posterior's shapes: got {tuple(value.shape)} for {tuple(param.shape)} "
                f"({what}[{k}])"
            )
        bad = ~torch.isfinite(value)
        if sign is not None:
            bad |= value <= 0 if sign == "positive" else value < 0
        if bool(bad.any()):
            need = "finite" if sign is None else f"{sign} and finite"
            raise ValueError(f"{what}[{k}] must be {need}: found other values")
        out.append(value)
    return out


def _deep_getattr(obj, dotted):
    for name in dotted.split("."):
        obj = getattr(obj, name)
    return obj


def _deep_has(obj, dotted):
    try:
        _deep_getattr(obj, dotted)
    except AttributeError:
        return False
    return True


def _deep_setparam(obj, dotted, value):
    """Replace the parameter at ``dotted`` under ``obj`` by ``value``, given as its constrained value:
    a :class:`~pyro.nn.PyroParam` keeps its constraint (an AutoNormal's positive scales stay
    positive); its param store entry goes with the old one, so Pyro registers the new one."""
    *path, last = dotted.split(".")
    for name in path:
        obj = getattr(obj, name)
    constraint, event_dim = getattr(obj, "_pyro_params", {}).get(last, (None, None))
    delattr(obj, last)
    if constraint is not None:
        setattr(obj, last, pyro.nn.PyroParam(value, constraint=constraint, event_dim=event_dim))
    else:
        setattr(obj, last, torch.nn.Parameter(value))


def _check_guide_of(model, guide):
    """``guide``, once it is seen to cover a tensor of ``model`` (a model function is not checked)."""
    module = model_module(model)
    if guide.ready and isinstance(module, torch.nn.Module):
        held = low_rank_tensors(module)
        ids = {id(t) for t in held.values()}
        if not any(id(t) in ids for t in guide.tensors().values()):
            raise ValueError(
                f"guide was built for another model: its tensors ({', '.join(map(repr, guide.tensors()))}) are not "
                f"part of the model given (whose tensors are {', '.join(map(repr, held)) or 'none'}, other objects); "
                "pass the model the guide was built for (a copy of a model holds tensors of its own)"
            )
    return guide


def as_tensor_guide(model: torch.nn.Module, guide) -> TensorGuide:
    """
    The :class:`TensorGuide` to read ``model``'s tensors from: ``guide`` itself, the one inside an
    :class:`~pyro.infer.autoguide.AutoGuideList`, or a :class:`MedianGuide` over a Pyro
    autoguide. Raises :class:`GuideError` naming what is missing.
    """
    if isinstance(guide, TensorGuide):
        return _check_guide_of(model, guide)
    if isinstance(guide, AutoGuideList):
        inner = [p for p in _autoguide_parts(guide) if isinstance(p, TensorGuide)]
        if len(inner) == 1:
            return _check_guide_of(model, inner[0])
    if isinstance(guide, AutoGuide) or callable(getattr(guide, "median", None)):
        return MedianGuide(model, guide)
    raise GuideError(
        "guide must be a tb.guides.MeanField (or another TensorGuide, with factor_means and lambdas), an "
        f"AutoGuideList holding one, or a Pyro autoguide with median(); got {type(guide).__name__}"
    )
