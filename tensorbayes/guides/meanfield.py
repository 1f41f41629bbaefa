"""
The mean-field guide of tensorbayes models, and the closed-form λ M-step.

:class:`MeanField` puts an independent Normal on every factor entry of every
:class:`~tensorbayes.models.LowRankTensor` in a model (learned loc and scale, reparameterized)
and a point mass (default) or a LogNormal on every rank scale λ. Its KL terms are analytic, so
it is meant for :class:`pyro.infer.TraceMeanField_ELBO` (or the library's
:class:`~tensorbayes.infer.MeanFieldELBO`, which gives the same values faster). With
``lambda_update="closed_form"`` (the default for point masses) λ is not a gradient parameter:
:meth:`MeanField.update_lambdas` sets it to the maximizer of ``E_q[log p(factors | λ)] + log
p(λ)``, damped (docs/method.md, "The λ M-step"). The guide runs that step itself, once each
time its parameters have changed, when it is called with gradients on: so the shrinkage works
in a plain :class:`pyro.infer.SVI` loop, with any Pyro optimizer, as under
:func:`~tensorbayes.fit`.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from numbers import Integral
from typing import NamedTuple

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from torch.autograd.graph import increment_version
from torch.optim.optimizer import register_optimizer_step_post_hook

from ..checks import check_number
from ..models.tensor import low_rank_tensors
from .base import Draw, TensorGuide, check_tensor_name, checked_values, flat_indices, model_module

__all__ = ["MeanField", "low_rank_tensors"]

_LAMBDA_GUIDES = ("delta", "lognormal")
_LAMBDA_UPDATES = ("closed_form", "gradient")
_M_STEPS = ("em", "mackay")

#: The damping of the closed-form λ step the guide runs itself (see :class:`MeanField`).
DEFAULT_LAMBDA_STEP = 0.1


def _inverse_softplus(x):
    return x + torch.log(-torch.expm1(-x))


#: Every parameter a guide registered in Pyro's param store, by id: an entry of the store that is
#: none of these was put there otherwise (a loaded store), and the guide takes its value.
_REGISTERED = weakref.WeakValueDictionary()


#: The guides' parameters, by id, that an optimizer step marks as changed (:func:`_mark_stepped`).
_STEPPED_BY_OPTIMIZERS = weakref.WeakValueDictionary()


def _mark_stepped(optimizer, args, kwargs):
    """
    After any torch optimizer's step, bump the version counter of each guide parameter it holds.
    The guide takes its λ step when a version changed, and an optimizer that writes through
    ``p.data`` (Pyro's ``ClippedAdam``, ``AdagradRMSProp``, ``DCTAdam``) bumps none: without this
    mark λ would never move under them.
    """
    if not _STEPPED_BY_OPTIMIZERS:  # no guide's parameters alive: nothing to look up in another model's step
        return
    for group in optimizer.param_groups:
        for p in group["params"]:
            if _STEPPED_BY_OPTIMIZERS.get(id(p)) is p:
                increment_version(p)


register_optimizer_step_post_hook(_mark_stepped)


def _set_site_parameter(root, site, value):
    """Put ``value`` at the dotted ``site`` under ``root`` (nested modules, as AutoNormal's
    ``locs.<site>``), as ``<leaf>_unconstrained``: a parameter, or a buffer where ``value`` is no
    :class:`~torch.nn.Parameter` (a λ that the closed-form step sets); replaces one already there."""
    *path, leaf = site.split(".")
    for name in path:
        if name not in root._modules:
            root.add_module(name, torch.nn.Module())
        root = root._modules[name]
    if isinstance(value, torch.nn.Parameter):
        root.register_parameter(f"{leaf}_unconstrained", value)
    else:
        root.register_buffer(f"{leaf}_unconstrained", value)


def _site_parameter(root, site):
    *path, leaf = site.split(".")
    for name in path:
        root = root._modules[name]
    key = f"{leaf}_unconstrained"
    return root._parameters[key] if key in root._parameters else root._buffers[key]


def _loaded(held, param):
    """Whether a param store entry ``held`` was put there otherwise than by a guide (a loaded store)."""
    return held is not None and held is not param and _REGISTERED.get(id(held)) is not held


class _Posterior(NamedTuple):
    """One tensor's variational parameters, unconstrained: its factors' locs and raw scales
    (softplus), its log λ, and, for a LogNormal λ, their raw scales."""

    locs: list[torch.nn.Parameter]
    raw_scales: list[torch.nn.Parameter]
    log_lambdas: list[torch.nn.Parameter]
    raw_lambda_scales: list[torch.nn.Parameter]

    def scales(self):
        return [F.softplus(raw) for raw in self.raw_scales]


class MeanField(TensorGuide):
    """
    Mean-field guide for every :class:`~tensorbayes.models.LowRankTensor` in ``model``.

    Usage, with :func:`tensorbayes.fit` or with Pyro's own SVI::

        guide = MeanField(model)
        svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), tb.infer.MeanFieldELBO())
        for step in range(2000):
            svi.step(index, values)            # λ takes its closed-form step inside the guide
        tb.ranks(model, guide)

    :param model: a Pyro model holding low-rank tensors: a :class:`~pyro.nn.PyroModule`, such a
        model under Pyro's handlers (``poutine.block(model, expose=...)``, to put the guide into
        an :class:`~pyro.infer.autoguide.AutoGuideList`), or a model function that calls them,
        whose tensors the guide finds by tracing it at its first call (as Pyro's autoguides).
    :param str lambda_guide: "delta" (a point estimate of λ, default) or "lognormal".
    :param str lambda_update: "closed_form" (the damped M-step; default with "delta") or
        "gradient" (λ is an ordinary variational parameter; forced with "lognormal").
    :param float init_scale: initial posterior standard deviation of a factor entry, relative
        to the spread of its initial loc.
    :param int seed: seed of the random initial locs (default: drawn from torch's generator).
    :param str m_step: the closed-form update of λ (:meth:`update_lambdas`): "em" (default) or
        "mackay", MacKay's update: the same stationary points, and λ moves where most entries of
        a slice sit at their prior and EM stalls.
    :param float lambda_step: the damping of the closed-form step the guide takes when it is
        called with gradients on after its parameters changed (an optimizer step), in (0, 1]
        (default :data:`DEFAULT_LAMBDA_STEP`). :func:`tensorbayes.fit` takes the step itself,
        with its own ``lambda_step`` and warm-up.
    """

    def __init__(
        self,
        model,
        lambda_guide="delta",
        lambda_update=None,
        init_scale=0.1,
        seed=None,
        m_step="em",
        lambda_step=DEFAULT_LAMBDA_STEP,
    ):
        if lambda_guide not in _LAMBDA_GUIDES:
            raise ValueError(f"lambda_guide must be one of {_LAMBDA_GUIDES}, got {lambda_guide!r}")
        if lambda_update is None:
            lambda_update = "closed_form" if lambda_guide == "delta" else "gradient"
        if lambda_update not in _LAMBDA_UPDATES:
            raise ValueError(f"lambda_update must be one of {_LAMBDA_UPDATES}, got {lambda_update!r}")
        if lambda_guide == "lognormal" and lambda_update == "closed_form":
            raise ValueError("lambda_update='closed_form' needs lambda_guide='delta'")
        check_number(init_scale, "init_scale", "(0, inf)", "a positive number")
        if m_step not in _M_STEPS:
            raise ValueError(f"m_step must be one of {_M_STEPS}, got {m_step!r}")
        if m_step != "em" and lambda_update != "closed_form":
            raise ValueError(f"m_step={m_step!r} needs lambda_update='closed_form'")
        check_number(lambda_step, "lambda_step", "(0, 1]")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, Integral) or not 0 <= seed < 2**64):
            raise ValueError(f"seed must be an int in [0, 2**64 - 1] or None, got {seed!r}")
        super().__init__(model)
        self.lambda_guide = lambda_guide
        self.lambda_update = lambda_update
        self.m_step = m_step
        self.init_scale = init_scale
        self.lambda_step = lambda_step
        self.seed = seed
        if self.ready:
            self._build()

    def _build(self):
        """
        The posteriors of the tensors, once they are known (at once for a module model): the
        parameters are named after the sample sites, ``locs.<site>`` and ``scales.<site>`` as
        Pyro's AutoNormal names them (a λ site's loc is its point estimate), each stored
        unconstrained as ``<site>_unconstrained``.
        """
        gen = None if self.seed is None else torch.Generator().manual_seed(self.seed)
        self.add_module("locs", torch.nn.Module())
        self.add_module("scales", torch.nn.Module())
        for tensor in self._model_tensors.values():
            self._init_posterior(tensor, gen)
        module = next(iter(self._model_tensors.values()))
        self.to(device=module.device, dtype=_tensor_dtype(self.model, module))
        self.keep_lambdas()

    def _init_posterior(self, tensor, gen):
        layout, loc_std = tensor.layout, tensor.init_loc_scale()
        locs, scales = self._modules["locs"], self._modules["scales"]
        raw = float(_inverse_softplus(torch.tensor(self.init_scale * loc_std)))
        for k, shape in enumerate(layout.factor_shapes):
            loc = torch.nn.Parameter(torch.randn(shape, generator=gen) * loc_std)
            _set_site_parameter(locs, tensor.factor_site(k), loc)
            _set_site_parameter(scales, tensor.factor_site(k), torch.nn.Parameter(torch.full(shape, raw)))
        raw_lambda_scale = float(_inverse_softplus(torch.tensor(0.1)))
        for b, r in enumerate(layout.ranks):
            log_lambda = torch.full((r,), loc_std**2).log()
            _set_site_parameter(locs, tensor.lambda_site(b), self._lambda_value(log_lambda))
            if self.lambda_guide == "lognormal":
                spread = torch.nn.Parameter(torch.full((r,), raw_lambda_scale))
                _set_site_parameter(scales, tensor.lambda_site(b), spread)

    def _lambda_value(self, log_lambda):
        """log λ as the guide holds it: a parameter fitted by gradient, or a buffer the closed-form
        step sets."""
        return torch.nn.Parameter(log_lambda) if self.lambda_update == "gradient" else log_lambda

    def _site_parameters(self, tensor):
        """``[(kind, site, parameter, constraint)]`` of ``tensor``'s posterior."""
        locs, scales = self._modules["locs"], self._modules["scales"]
        out = []
        for k in range(len(tensor.layout.factor_shapes)):
            site = tensor.factor_site(k)
            out.append(("locs", site, _site_parameter(locs, site), constraints.real))
            out.append(("scales", site, _site_parameter(scales, site), constraints.softplus_positive))
        for b in range(tensor.layout.num_bonds):
            site = tensor.lambda_site(b)
            out.append(("locs", site, _site_parameter(locs, site), constraints.positive))
            if self.lambda_guide == "lognormal":
                out.append(("scales", site, _site_parameter(scales, site), constraints.softplus_positive))
        return out

    def _posterior(self, tensor, register=False, fitted=False):
        """
        ``tensor``'s posterior parameters, after taking any value a loaded param store holds
        (:meth:`_sync_param_store`). With ``register`` (a call of the guide) they are registered
        in the store and each trainable one gets a ``pyro.param`` statement, so that Pyro's SVI
        finds and steps them. With ``register`` or ``fitted`` (what reads them with the
        tensor's layout: the model, the λ step) they must have its shapes (a model cut
        without this guide raises).
        """
        if tensor not in self.tensors().values():
            raise ValueError("tensor is not part of the model this guide was built for")
        entries = self._site_parameters(tensor)
        if register or fitted:
            _check_shapes(tensor, entries)
        self._sync_param_store(entries, register)
        if register and not pyro.settings.get("module_local_params"):
            for kind, site, param, _ in entries:
                if param.requires_grad:
                    pyro.param(f"{self._pyro_name}.{kind}.{site}")
        params = {(kind, site): p for kind, site, p, _ in entries}
        factors = [tensor.factor_site(k) for k in range(len(tensor.layout.factor_shapes))]
        bonds = [tensor.lambda_site(b) for b in range(tensor.layout.num_bonds)]
        return _Posterior(
            [params["locs", site] for site in factors],
            [params["scales", site] for site in factors],
            [params["locs", site] for site in bonds],
            [params["scales", site] for site in bonds] if self.lambda_guide == "lognormal" else [],
        )

    def pairs(self, register=False, fitted=False):
        """Pairs ``(model tensor, its posterior parameters)`` (``register``, ``fitted``: see :meth:`_posterior`)."""
        return [(t, self._posterior(t, register, fitted)) for t in self.tensors().values()]

    def _sync_param_store(self, entries, register):
        """
        Keep Pyro's param store and the guide's parameters one: each parameter is the store's
        entry ``<guide name>.locs.<site>`` (or ``scales``), as an AutoNormal's, so that
        ``pyro.get_param_store().save`` writes the whole posterior, λ included. An entry no guide
        put there (a loaded store) is taken into the parameter first, and the entry becomes the
        parameter. With ``register`` (a call of the guide, as Pyro registers a module's
        parameters when it runs) every parameter is put in the store, replacing an entry that
        another guide of the same names put there, so that guides never share values; a readout
        alone leaves the store as it is.
        """
        if pyro.settings.get("module_local_params"):
            return
        store = pyro.get_param_store()
        entries = [(f"{self._pyro_name}.{kind}.{site}", p, c) for kind, site, p, c in entries]
        loaded = {name for name, param, _ in entries if _loaded(store._params.get(name), param)}
        for name, param, _ in entries:  # every shape checked before any value is taken
            if name in loaded and store._params[name].shape != param.shape:
                raise ValueError(
                    f"Pyro's param store holds {name} of shape {tuple(store._params[name].shape)}, the guide's "
                    f"is {tuple(param.shape)}: a pruned guide is restored with tb.load, which rebuilds its shapes"
                )
        for name, param, constraint in entries:
            if name in loaded:
                with torch.no_grad():
                    param.copy_(store._params[name].detach().to(param))
            if name in loaded or (register and store._params.get(name) is not param):
                store._params[name], store._constraints[name] = param, constraint
                store._param_to_name[param] = name
                _REGISTERED[id(param)] = param

    # ----- the variational draw -----

    def forward(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """
        Sample λ and every factor from the variational distribution (without torch's argument
        checks, as the model's sites: λ = exp(.) and the scales softplus(.) are valid by
        construction, and each check would be a host synchronization). Called with gradients
        on after the parameters changed, it first takes the closed-form λ step. Returns
        ``{site: value}``, as Pyro's autoguides do.
        """
        if not self.ready:  # a model function: find its tensors, as Pyro's autoguides do
            self._find_tensors(*args, **kwargs)
            self._build()
        self._refresh_lambdas()
        values = {}
        for tensor, post in self.pairs(register=True):
            for b in range(len(tensor.layout.ranks)):
                values[tensor.lambda_site(b)] = pyro.sample(tensor.lambda_site(b), self._lambda_posterior(post, b))
            for k, (loc, scale) in enumerate(zip(post.locs, post.scales())):
                q = dist.Normal(loc, scale, validate_args=False).to_event(loc.dim())
                values[tensor.factor_site(k)] = pyro.sample(tensor.factor_site(k), q)
        return values

    def draws(self) -> dict[str, Draw] | None:
        """
        Every site's draw at once, without Pyro's tracing: ``{site: Draw}`` with the value and,
        for a factor, its loc and scale (so that the ELBO computes the KL in closed form). The
        same random numbers, in the same order, as :meth:`forward`.
        """
        if not self.ready:
            return None  # not called yet: the first step traces it
        with self._pyro_context:  # as a call: Pyro's handlers see the parameters (SVI steps those)
            self._refresh_lambdas()
            out = {}
            for tensor, post in self.pairs(register=True):
                for b in range(len(tensor.layout.ranks)):
                    q = self._lambda_posterior(post, b)
                    if self.lambda_guide == "delta":
                        out[tensor.lambda_site(b)] = Draw(q.v)
                    else:
                        out[tensor.lambda_site(b)] = Draw(q.rsample(), dist=q)
                for k, (loc, scale) in enumerate(zip(post.locs, post.scales())):
                    eps = torch.empty_like(loc).normal_()
                    out[tensor.factor_site(k)] = Draw(loc + eps * scale, loc=loc, scale=scale)
            return out

    def _lambda_posterior(self, post, b):
        log_lam = post.log_lambdas[b]
        if self.lambda_guide == "delta":
            return dist.Delta(log_lam.exp(), event_dim=1, validate_args=False)
        return dist.LogNormal(log_lam, F.softplus(post.raw_lambda_scales[b]), validate_args=False).to_event(1)

    def get_posterior(self, site: str):
        """The variational distribution of one sample site (a factor's or a λ's)."""
        for tensor, post in self.pairs():
            for b in range(len(tensor.layout.ranks)):
                if site == tensor.lambda_site(b):
                    return self._lambda_posterior(post, b)
            for k, (loc, scale) in enumerate(zip(post.locs, post.scales())):
                if site == tensor.factor_site(k):
                    return dist.Normal(loc, scale, validate_args=False).to_event(loc.dim())
        raise KeyError(f"site {site!r} is not one of the guide's (it covers {sorted(self.median())})")

    @torch.no_grad()
    def quantiles(self, quantiles, *args, **kwargs) -> dict[str, torch.Tensor]:
        """``{site: values}`` of every site at each of ``quantiles`` (stacked in the first
        dimension), as Pyro's autoguides give them."""
        pairs = self.pairs()  # a guide not called yet has no parameters: it says so
        qs = torch.as_tensor(quantiles, dtype=self._dtype())
        if qs.dim() != 1 or not bool(((qs > 0) & (qs < 1)).all()):
            raise ValueError(f"quantiles must be a list of numbers in (0, 1), got {quantiles!r}")
        out = {}
        for tensor, post in pairs:
            for b in range(len(tensor.layout.ranks)):
                log_lam = post.log_lambdas[b].detach()
                if self.lambda_guide == "delta":
                    spread = torch.zeros_like(log_lam)
                else:
                    spread = F.softplus(post.raw_lambda_scales[b]).detach()
                z = dist.Normal(0.0, 1.0).icdf(qs.to(log_lam)).reshape(-1, 1)
                out[tensor.lambda_site(b)] = (log_lam + z * spread).exp()
            for k, (loc, scale) in enumerate(zip(post.locs, post.scales())):
                z = dist.Normal(0.0, 1.0).icdf(qs.to(loc)).reshape((-1,) + (1,) * loc.dim())
                out[tensor.factor_site(k)] = loc.detach() + z * scale.detach()
        return out

    def _dtype(self):
        return next(iter(self.parameters())).dtype

    # ----- λ: the closed-form step the guide takes itself -----

    @property
    def has_closed_form_lambdas(self):
        return self.lambda_update == "closed_form"

    def scale_parameters(self):
        """The raw (softplus) scales of the factors and, for a LogNormal λ, of λ (none before a
        model function's first call has built them)."""
        scales = self._modules.get("scales")
        return [] if scales is None else [p for p in scales.parameters() if p.requires_grad]

    def _versions(self):
        params = list(self.parameters())
        for p in params:  # an optimizer's step marks them changed, whatever way it writes (_mark_stepped)
            _STEPPED_BY_OPTIMIZERS[id(p)] = p
        return tuple(p._version for p in params)

    def keep_lambdas(self):
        """Mark λ as up to date with the current parameters: the next call takes no λ step
        unless they change (what :func:`~tensorbayes.fit` does during its warm-up)."""
        self._seen_versions = self._versions()

    def _refresh_lambdas(self):
        """The closed-form λ step, once per change of the parameters, when gradients are on."""
        if self.has_closed_form_lambdas and torch.is_grad_enabled() and self._versions() != self._seen_versions:
            self.update_lambdas(self.lambda_step)

    # ----- summaries of the posterior -----

    def lambdas(self, tensor_name: str | None = None):
        """The point estimates (or LogNormal medians) of λ, per tensor and bond (or the list of the
        tensor named ``tensor_name``, a key of :meth:`tensors`)."""
        check_tensor_name(tensor_name, self.tensors())
        out = {
            name: [post.log_lambdas[b].detach().exp() for b in range(len(t.layout.ranks))]
            for (name, t), (_, post) in zip(self.tensors().items(), self.pairs())
        }
        return out if tensor_name is None else out[tensor_name]

    def factor_means(self, tensor) -> list[torch.Tensor]:
        return [loc.detach() for loc in self._posterior(tensor).locs]

    def factor_scales(self, tensor) -> list[torch.Tensor]:
        return [s.detach() for s in self._posterior(tensor).scales()]

    # ----- the closed-form M-step -----

    @torch.no_grad()
    def update_lambdas(self, step_size: float = 1.0) -> None:
        """
        One damped closed-form update of every λ point estimate (docs/method.md, "The λ M-step"):
        ``λ ← λ^(1-s) λ*^s``, bond by bond.

        With ``m_step="em"``, ``λ*`` maximizes ``E_q[log p(factors | λ)] + log p(λ)`` given the
        current factor posteriors: the prior's :meth:`~tensorbayes.priors.RankPrior.update` of
        ``M = E_q‖slice‖²`` over the slice's ``D`` entries (each divided by the other scales in
        its variance). An entry the data leave at its prior (``s² ≈ σ²``) adds ``λ`` to
        ``M / D`` whatever λ is, so where most entries of a slice are prior-dominated this
        step barely moves λ: the slow convergence of EM for ARD.

        With ``m_step="mackay"`` (MacKay 1992), ``M`` is the posterior means' squared norm
        ``‖loc‖²`` alone and ``D`` the number of well-determined entries
        ``γ = Σ (1 - s²/σ²)`` (each term clipped to ``[0, 1]``), so prior-dominated entries
        count for neither. Where no term is clipped, ``M - Dλ`` is the same for both pairs,
        so both steps have the same stationary points, priors included; this one moves λ where
        EM stalls. It never exceeds the EM step's ``λ*`` (which guards a slice whose entries are
        all prior-dominated, ``γ → 0``).

        :param float step_size: the damping ``s``, in (0, 1] (1: the full step to ``λ*``).
        """
        if self.lambda_update != "closed_form":
            raise RuntimeError("update_lambdas needs lambda_update='closed_form'")
        check_number(step_size, "step_size", "(0, 1]")
        for tensor, post in self.pairs(fitted=True):
            means2, variances = [loc**2 for loc in post.locs], [s**2 for s in post.scales()]
            second = [m + v for m, v in zip(means2, variances)]
            lambdas = [log_lambda.exp() for log_lambda in post.log_lambdas]
            for b in range(len(lambdas)):  # bond by bond, each seeing the ones updated before it
                ((m, d),) = tensor.slice_moments(second, lambdas, bonds=[b], check=False)  # made here
                if self.m_step == "mackay":
                    m, d = _mackay_moments(tensor, means2, variances, lambdas, b, m, d)
                lambdas[b] = tensor.prior.damped_update(lambdas[b], m, d, step_size, check=False)
                post.log_lambdas[b].copy_(lambdas[b].log())
        self.keep_lambdas()

    @torch.no_grad()
    def set_posterior(self, tensor, locs, scales=None, lambdas=None):
        """Overwrite the posterior of ``tensor``: its factor locs (one tensor per factor), optionally
        scales (one per factor, non-negative) and λ (one per bond, positive), each of the shape it
        has; every value is checked before any is taken."""
        post = self._posterior(tensor)
        locs = checked_values(locs, post.locs, "locs", "factor")  # every value checked before any is taken
        if scales is not None:
            scales = checked_values(scales, post.raw_scales, "scales", "factor", "non-negative")
        if lambdas is not None:
            lambdas = checked_values(lambdas, post.log_lambdas, "lambdas", "bond", "positive")
        for k, loc in enumerate(locs):
            post.locs[k].copy_(loc)
            if scales is not None:
                post.raw_scales[k].copy_(_inverse_softplus(scales[k].clamp_min(1e-12)))
        for b, lam in enumerate(lambdas or []):
            post.log_lambdas[b].copy_(lam.log())

    def truncate(self, tensor, keep: list[torch.Tensor]) -> None:
        """Keep the rank indices ``keep`` (one index tensor per bond) of ``tensor``'s posterior."""
        post = self._posterior(tensor)
        layout = tensor.layout
        keep = list(keep) if isinstance(keep, Iterable) else keep  # an iterator is read once
        _, locs = layout.truncate(list(post.locs), keep)  # checks keep before anything is cut
        _, raws = layout.truncate(list(post.raw_scales), keep)
        keep = flat_indices(keep)
        loc_root, scale_root = self._modules["locs"], self._modules["scales"]
        for k in range(len(locs)):
            site = tensor.factor_site(k)
            _set_site_parameter(loc_root, site, torch.nn.Parameter(locs[k].detach().clone()))
            _set_site_parameter(scale_root, site, torch.nn.Parameter(raws[k].detach().clone()))
        for b, idx in enumerate(keep):
            site = tensor.lambda_site(b)
            _set_site_parameter(loc_root, site, self._lambda_value(post.log_lambdas[b].detach()[idx].clone()))
            if self.lambda_guide == "lognormal":
                spread = torch.nn.Parameter(post.raw_lambda_scales[b].detach()[idx].clone())
                _set_site_parameter(scale_root, site, spread)


def _check_shapes(tensor, entries):
    """Raise unless ``tensor``'s posterior ``entries`` have the shapes of its layout: a model cut to
    other ranks without this guide (pruned or restored with another) does not fit it."""
    layout = tensor.layout
    shapes = {tensor.factor_site(k): shape for k, shape in enumerate(layout.factor_shapes)}
    shapes.update({tensor.lambda_site(b): (r,) for b, r in enumerate(layout.ranks)})
    for _, site, param, _ in entries:
        if tuple(param.shape) != shapes[site]:
            raise ValueError(
                f"the guide's posterior of site {site!r} has shape {tuple(param.shape)}, the model's tensor is at "
                f"ranks {layout.ranks} (shape {shapes[site]}): the model was cut without this guide; cut them together "
                "(tb.prune(model, guide), tb.load(path, model, guide)), or build a new guide for the model as it is"
            )


def _mackay_moments(tensor, means2, variances, lambdas, b, m, d):
    """
    ``(M, D)`` of MacKay's update for bond ``b`` (see :meth:`MeanField.update_lambdas`), or the
    EM pair ``(m, d)`` for the indices where MacKay's ``λ*`` would be the larger.
    """
    touched = {f for f, _ in tensor.layout.bonds[b]}  # slice_moments reads only the factors bond b touches
    clipped = [
        torch.minimum(v, tensor.prior_variance(f, lambdas)) if f in touched else None for f, v in enumerate(variances)
    ]
    ((m_loc, _),) = tensor.slice_moments(means2, lambdas, bonds=[b], check=False)
    ((spread, _),) = tensor.slice_moments(clipped, lambdas, bonds=[b], check=False)
    gamma = (d - spread / lambdas[b]).clamp(min=1e-3)  # a thousandth of an entry: keeps M / γ finite
    faster = tensor.prior.update(m_loc, gamma) < tensor.prior.update(m, d)
    return torch.where(faster, m_loc, m), torch.where(faster, gamma, torch.as_tensor(d, dtype=m.dtype, device=m.device))


def _tensor_dtype(model, tensor):
    """The floating dtype of the model's parameters and buffers (torch's default if it has none)."""
    model = model_module(model)
    model = model if isinstance(model, torch.nn.Module) else tensor
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.get_default_dtype()
