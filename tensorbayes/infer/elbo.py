"""
The mean-field ELBO of :func:`~tensorbayes.fit`, with no log density computed that it does not use.

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

Usage::

    elbo = MeanFieldELBO()
    loss, log_likelihood = elbo.loss_and_log_likelihood(model, guide, x, y, num_data=N)
    loss.backward()
"""

import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer import TraceMeanField_ELBO
from pyro.infer.trace_mean_field_elbo import _check_mean_field_requirement
from pyro.infer.util import is_validation_enabled, torch_item
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


class MeanFieldELBO(TraceMeanField_ELBO):
    """
    :class:`pyro.infer.TraceMeanField_ELBO` that computes a site's log density only where its
    estimator uses it. Takes the same arguments (``num_particles``, ``vectorize_particles``,
    ``max_plate_nesting``, ...) and gives the same losses and gradients.
    """

    def loss_and_log_likelihood(self, model, guide, *args, **kwargs):
        """
        :returns: ``(loss, log_likelihood)``: the differentiable negative ELBO (as
            :meth:`differentiable_loss`) and its log-likelihood part, the scaled log density of
            the observed sites, detached; both averaged over the particles.
        """
        loss = log_likelihood = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            particle_likelihood, particle_kl = self._elbo_terms(model_trace, guide_trace)
            loss = loss + (particle_kl - particle_likelihood) / self.num_particles
            log_likelihood = log_likelihood + particle_likelihood.detach() / self.num_particles
        warn_if_nan(loss, "loss")
        return loss, log_likelihood

    def differentiable_loss(self, model, guide, *args, **kwargs):
        return self.loss_and_log_likelihood(model, guide, *args, **kwargs)[0]

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
