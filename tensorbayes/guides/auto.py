"""
The mean-field family of :class:`~tensorbayes.guides.MeanField`, built from Pyro's autoguides.

For users who prefer Pyro's own guides (or want to mix them into a larger model), an
:class:`~pyro.infer.autoguide.AutoGuideList` of an :class:`~pyro.infer.autoguide.AutoDelta` on
every rank scale λ and an :class:`~pyro.infer.autoguide.AutoNormal` on everything else (the
factors) is the same variational family with λ fitted by gradient.
"""

from pyro import poutine
from pyro.infer.autoguide import AutoDelta, AutoGuideList, AutoNormal
from pyro.infer.autoguide.initialization import InitMessenger

from ..priors import init_improper_to_feasible
from .meanfield import low_rank_tensors

__all__ = ["auto_mean_field", "lambda_sites", "tensor_sites"]


def lambda_sites(model):
    """The names of the λ sample sites of every low-rank tensor in ``model``."""
    return [t.lambda_site(b) for t in low_rank_tensors(model).values() for b in range(len(t.layout.ranks))]


def tensor_sites(model):
    """The names of every sample site of ``model``'s low-rank tensors (λ and factors): what a
    :class:`~tensorbayes.guides.MeanField` inside an :class:`~pyro.infer.autoguide.AutoGuideList`
    exposes, ``MeanField(poutine.block(model, expose=tensor_sites(model)))``, and the other parts hide."""
    return [
        site
        for t in low_rank_tensors(model).values()
        for site in [t.lambda_site(b) for b in range(len(t.layout.ranks))]
        + [t.factor_site(k) for k in range(len(t.layout.factor_shapes))]
    ]


def auto_mean_field(model, init_scale=0.1):
    """
    ``AutoGuideList([AutoDelta(λ sites), AutoNormal(other sites)])`` for ``model``.

    Usage::

        guide = auto_mean_field(model)
        svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), pyro.infer.TraceMeanField_ELBO())

    :param model: a model holding :class:`~tensorbayes.models.LowRankTensor` modules.
    :param float init_scale: the AutoNormal's initial scale.
    """
    sites = lambda_sites(model)
    if not sites:
        raise ValueError("model holds no LowRankTensor with a rank bond: there is no λ to put a point mass on")
    # the autoguides trace the model to find their sites: start λ where an improper prior
    # (log-uniform) cannot be sampled
    prototype = InitMessenger(init_improper_to_feasible)(model)
    guide = AutoGuideList(prototype)
    guide.append(AutoDelta(poutine.block(prototype, expose=sites), init_loc_fn=init_improper_to_feasible))
    guide.append(AutoNormal(poutine.block(prototype, hide=sites), init_scale=init_scale))
    return guide
