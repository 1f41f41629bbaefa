"""
The mean-field ELBO of :func:`~tensorbayes.fit`: Pyro's estimator, without the tracing where the
guide can say what it drew.

:class:`MeanFieldELBO` is :class:`pyro.infer.TraceMeanField_ELBO`: the same estimator (the
observed sites' log-likelihood, minus the analytic KL of every latent site that has one, minus
a one-sample estimate of the others' KL) and the same values; while Pyro's validation is on it
checks that model and guide match, that the guide is reparameterized and, for every density it
computes, the site's shape, as Pyro does. Pyro's ELBOs compute the log density of every sample
site of the model's trace and of the guide's before they know which ones the estimator needs;
in a low-rank model every factor site has an analytic KL, so those densities are computed and
dropped at each step, work for nothing. This class computes a site's log density only where the estimator
uses it, and also returns the log-likelihood it summed
(:meth:`MeanFieldELBO.loss_and_log_likelihood`), so that a training loop does not compute it
again to report it.

Where the guide offers every draw at once (:meth:`~tensorbayes.guides.TensorGuide.draws`, as
:class:`~tensorbayes.guides.MeanField` does), the guide is not traced at all: its draws go
straight into the model's sites as the model runs, the KL of every factor is computed in closed
form from its loc and scale, and the log-likelihood is summed on the way; the values and
gradients are Pyro's (the same random numbers, in the same order). A model with latent sites
the guide does not draw, a guide that draws sites the model lacks, and
``vectorize_particles=True`` go through Pyro's traces, as does everything when ``fast=False``
(with Pyro's validation on, that path also checks that model and guide match).

Usage::

    elbo = MeanFieldELBO()
    loss, log_likelihood = elbo.loss_and_log_likelihood(model, guide, x, y, num_data=N)
    loss.backward()
"""

import torch
from pyro import poutine
from pyro.distributions import Independent, Normal
from pyro.distributions.util import scale_and_mask
from pyro.infer import TraceMeanField_ELBO
from pyro.infer.trace_mean_field_elbo import _check_mean_field_requirement
from pyro.infer.util import is_validation_enabled, torch_item
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample
from pyro.poutine.util import prune_subsample_sites
from pyro.util import check_model_guide_match, check_site_shape, warn_if_nan
from torch.distributions import kl_divergence

__all__ = ["MeanFieldELBO"]


def _log_prob_sum(site, max_plate_nesting=None):
    """A sample site's scaled and masked log density, summed; stored in the site as Pyro does, and
    its shape checked against ``max_plate_nesting`` unless that is ``None``."""
    log_p = scale_and_mask(
        site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"]), site["scale"], site["mask"]
    )
    site["log_prob"] = log_p
    if max_plate_nesting is not None:
        check_site_shape(site, max_plate_nesting)
    return log_p.sum()


def _normal_prior(fn):
    """The Normal under an ``Independent(Normal)`` prior, or ``None``."""
    while isinstance(fn, Independent):
        fn = fn.base_dist
    return fn if isinstance(fn, Normal) else None


def _site_kl(draw, prior):
    """The KL term of one latent site, elementwise or summed: in closed form for a Normal draw
    under a Normal prior (as :func:`torch.distributions.kl_divergence`), else estimated from the
    draw (``log q - log p``; ``log q = 0`` for a point mass, as Pyro's ``Delta``)."""
    base = _normal_prior(prior) if draw.loc is not None else None
    if base is not None:
        var_ratio = (draw.scale / base.scale).pow(2)
        t1 = ((draw.loc - base.loc) / base.scale).pow(2)
        return 0.5 * (var_ratio + t1 - 1 - var_ratio.log())
    log_p = prior.log_prob(draw.value)
    if draw.loc is not None:
        return Normal(draw.loc, draw.scale).to_event(draw.loc.dim()).log_prob(draw.value) - log_p
    return (draw.dist.log_prob(draw.value) if draw.dist is not None else 0.0) - log_p


class _DrawsIntoModel(Messenger):
    """
    Put a guide's draws into the model's latent sites and sum the ELBO's two terms as the model
    runs: the scaled log density of the observed sites and the scaled KL of the drawn ones.
    ``foreign`` lists the latent sites it had no draw for (and masked ones). An observed site's
    shape is checked against ``max_plate_nesting`` unless that is ``None``, as Pyro's validation does.
    """

    def __init__(self, draws, max_plate_nesting=None):
        super().__init__()
        self.draws, self.used, self.foreign = draws, set(), []
        self.max_plate_nesting = max_plate_nesting
        self.log_likelihood = self.kl = 0.0

    def _process_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"] and msg["name"] in self.draws:
            msg["value"] = self.draws[msg["name"]].value

    def _postprocess_message(self, msg):
        if msg["type"] != "sample" or isinstance(msg["fn"], _Subsample):
            return
        if msg["is_observed"]:
            self.log_likelihood = self.log_likelihood + _log_prob_sum(msg, self.max_plate_nesting)
        elif msg["name"] in self.draws and msg["mask"] is None:
            self.used.add(msg["name"])
            self.kl = self.kl + scale_and_mask(_site_kl(self.draws[msg["name"]], msg["fn"]), msg["scale"]).sum()
        else:
            self.foreign.append(msg["name"])


#: What the draws of a guide return where they do not fit the model: that pair is traced from then on.
_MISFIT = object()


class MeanFieldELBO(TraceMeanField_ELBO):
    """
    :class:`pyro.infer.TraceMeanField_ELBO` that computes a site's log density only where its
    estimator uses it, and does not trace a guide that offers its draws. Takes the same
    arguments (``num_particles``, ``vectorize_particles``, ``max_plate_nesting``, ...) and gives
    the same losses and gradients; works in :class:`pyro.infer.SVI` as Pyro's ELBOs do.

    :param bool fast: put the draws of a guide that offers them (``guide.draws()``) straight
        into the model (default); ``False`` traces every guide, as Pyro does (a debug switch:
        with Pyro's validation on, it checks that model and guide match).
    """

    def __init__(self, *args, fast=True, **kwargs):
        super().__init__(*args, **kwargs)
        self.fast = fast
        self._traced = set()  # ids of (model, guide) pairs the draws did not fit

    def loss(self, model, guide, *args, **kwargs):
        with torch.no_grad():
            return torch_item(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model, guide, *args, **kwargs):
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward(retain_graph=self.retain_graph)
        return torch_item(loss)

    def loss_and_log_likelihood(self, model, guide, *args, **kwargs):
        """
        :returns: ``(loss, log_likelihood)``: the differentiable negative ELBO (as
            :meth:`differentiable_loss`) and its log-likelihood part, the scaled log density of
            the observed sites, detached; both averaged over the particles.
        """
        if self.fast and not self.vectorize_particles and (id(model), id(guide)) not in self._traced:
            result = self._from_draws(model, guide, args, kwargs)
            if isinstance(result, tuple):
                return result
            if result is _MISFIT:  # not a guide that is not set up yet (its first call traces it)
                self._traced.add((id(model), id(guide)))
        loss = log_likelihood = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            particle_likelihood, particle_kl = self._elbo_terms(model_trace, guide_trace)
            loss = loss + (particle_kl - particle_likelihood) / self.num_particles
            log_likelihood = log_likelihood + particle_likelihood.detach() / self.num_particles
        warn_if_nan(loss, "loss")
        return loss, log_likelihood

    def differentiable_loss(self, model, guide, *args, **kwargs):
        return self.loss_and_log_likelihood(model, guide, *args, **kwargs)[0]

    def _from_draws(self, model, guide, args, kwargs):
        """``(loss, log_likelihood)`` from the guide's draws; ``None`` where the guide offers none
        (yet), :data:`_MISFIT` where they do not fit the model's sites."""
        draw = getattr(guide, "draws", None)
        nesting = self.max_plate_nesting if is_validation_enabled() else None
        loss = log_likelihood = 0.0
        for _ in range(self.num_particles):
            draws = draw() if callable(draw) else None
            if draws is None:
                return _MISFIT if not callable(draw) else None
            with _DrawsIntoModel(draws, nesting) as run:
                model(*args, **kwargs)
            if run.foreign or run.used != set(draws):
                return _MISFIT
            loss = loss + (run.kl - run.log_likelihood) / self.num_particles
            log_likelihood = log_likelihood + torch.as_tensor(run.log_likelihood).detach() / self.num_particles
        loss = torch.as_tensor(loss)
        warn_if_nan(loss, "loss")
        return loss, log_likelihood

    def _get_trace(self, model, guide, args, kwargs):
        guide_trace = poutine.trace(guide, graph_type="flat").get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace), graph_type="flat").get_trace(
            *args, **kwargs
        )
        if is_validation_enabled():
            check_model_guide_match(model_trace, guide_trace, self.max_plate_nesting)
            _check_mean_field_requirement(model_trace, guide_trace)
        return prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)

    def _elbo_terms(self, model_trace, guide_trace):
        """``(log-likelihood, KL)`` of one particle: the observed sites' log density, and the
        latent sites' analytic KL or, where there is none, its one-sample estimate."""
        nesting = self.max_plate_nesting if is_validation_enabled() else None
        likelihood = kl = 0.0
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample":
                continue
            if site["is_observed"]:
                likelihood = likelihood + _log_prob_sum(site, nesting)
                continue
            if name not in guide_trace.nodes:
                raise ValueError(
                    f"the model samples the latent site {name!r} and the guide has no site of that name: every "
                    "latent site of the model needs one in the guide (an observed site whose data the model was "
                    "not given, such as labels missing from the data, is latent)"
                )
            guide_site = guide_trace.nodes[name]
            if is_validation_enabled() and not guide_site["fn"].has_rsample:
                raise NotImplementedError(
                    f"All distributions in the guide must be fully reparameterized; site '{name}' is not"
                )
            try:
                site_kl = kl_divergence(guide_site["fn"], site["fn"])
            except NotImplementedError:
                kl = kl + _log_prob_sum(guide_site, nesting) - _log_prob_sum(site, nesting)
                continue
            site_kl = scale_and_mask(site_kl, scale=guide_site["scale"], mask=guide_site["mask"])
            kl = kl + (
                site_kl.sum()
                if torch.is_tensor(site_kl)
                else site_kl * torch.Size(guide_site["fn"].batch_shape).numel()
            )
        for name, guide_site in guide_trace.nodes.items():  # auxiliary guide sites, as Pyro's
            if guide_site["type"] == "sample" and name not in model_trace.nodes:
                kl = kl + _log_prob_sum(guide_site, nesting)
        return torch.as_tensor(likelihood), torch.as_tensor(kl)

    def _differentiable_loss_particle(self, model_trace, guide_trace):  # Pyro's loss() and loss_and_grads() (SVI)
        likelihood, kl = self._elbo_terms(model_trace, guide_trace)
        loss = kl - likelihood
        return torch_item(loss), loss
