"""
The SVI engine: one object that takes one step of stochastic variational inference at a time.

:class:`SVIEngine` is :class:`pyro.infer.SVI` plus what a tensorbayes guide owns: it computes
the ELBO (:class:`~tensorbayes.infer.MeanFieldELBO` by default, or any Pyro ELBO), steps the
optimizer, follows the :class:`Schedule` (the KL warm-up and ramp, the learning rate's rise and
decay), takes the guide's closed-form λ step after each optimizer step, and watches for values
that stop being finite and gradients that die (:mod:`~tensorbayes.infer.diagnostics`). The
loop over the data is the caller's: :func:`~tensorbayes.fit` is one such loop, the Lightning
module another. ``state_dict()`` and ``load_state_dict()`` resume it exactly.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import pyro
import torch
from pyro.poutine.messenger import Messenger

from ..checks import check_int, check_number
from ..guides.base import GuideError, TensorGuide, as_tensor_guide
from . import distributed as _distributed
from .diagnostics import (
    DeadGradients,
    NonFiniteError,
    check_norms,
    diagnose,
    gradients,
    guide_parameters,
    model_parameters,
    named_parameters,
    non_finite_parameter,
    read_norms,
)
from .elbo import MeanFieldELBO

__all__ = [
    "KLScale",
    "SVIEngine",
    "Schedule",
    "SCALE_LR",
    "SparseAndDenseAdam",
    "check_engine_arguments",
    "make_optimizer",
    "sparse_tables",
]


class KLScale(Messenger):
    """Multiply the log density of every latent (unobserved) site by ``beta``: a KL warm-up."""

    def __init__(self, beta):
        super().__init__()
        self.beta = beta

    def _process_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = msg["scale"] * self.beta


@dataclass
class Schedule:
    """
    The schedule of an SVI run, in steps.

    For ``warmup`` steps the KL term is off (β = 0), λ is not updated and a learned noise is
    held at its initial value, so that the factors first fit the data. β then ramps linearly
    to ``kl_weight`` over ``ramp`` steps; the λ M-step and the noise start with it. The
    learning rate rises linearly over the first ``lr_warmup`` steps, is constant, and falls
    linearly over the last ``decay`` of the ``total`` steps. ``Schedule()`` is none of these:
    β = 1 and a constant learning rate from the first step.

    ``kl_weight`` (default 1: the ELBO) is the KL term's weight after the ramp. Below 1 the KL
    term is tempered: the posterior keeps rank indices that the full KL term would shrink away
    (docs/method.md, "The KL weight").
    """

    warmup: int = 0
    ramp: int = 0
    total: int = 0
    decay: int = 0
    lr_warmup: int = 0
    kl_weight: float = 1.0

    def __post_init__(self):
        for name in ("warmup", "ramp", "total", "decay", "lr_warmup"):
            setattr(self, name, check_int(getattr(self, name), name, low=0))
        self.kl_weight = check_number(self.kl_weight, "kl_weight", "(0, inf)", "a positive number")
        if self.decay > self.total:
            raise ValueError(
                f"decay must be at most total: the learning rate falls over the last decay of the total steps, "
                f"got decay={self.decay}, total={self.total}"
            )

    def beta(self, step: int) -> float:
        if step < self.warmup:
            return 0.0
        return self.kl_weight * min(1.0, (step - self.warmup + 1) / max(1, self.ramp))

    def lr_factor(self, step: int) -> float:
        """The learning rate's share at ``step``: rising linearly from ``1 / lr_warmup`` at the
        first step to 1, then falling linearly over the last ``decay`` steps to ``1 / decay`` at
        the last one; 0 past the ``total`` steps (a rate below zero would climb the loss)."""
        rise = min(1.0, (step + 1) / self.lr_warmup) if self.lr_warmup else 1.0
        return rise * (min(1.0, max(0.0, (self.total - step) / self.decay)) if self.decay else 1.0)


def sparse_tables(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The weights of ``model``'s :class:`torch.nn.Embedding` and :class:`torch.nn.EmbeddingBag`
    tables built with ``sparse=True``, whose gradients are sparse tensors."""
    if not isinstance(model, torch.nn.Module):
        return []
    return [
        m.weight
        for m in model.modules()
        if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag)) and m.sparse and m.weight.requires_grad
    ]


class SparseAndDenseAdam:
    """
    An optimizer over dense parameters and :class:`torch.optim.SparseAdam` over sparse embedding
    tables, stepped, zeroed, saved and restored as one optimizer. Its ``param_groups`` are the
    dense optimizer's followed by SparseAdam's, so the group indices of a model without sparse
    tables keep their meaning.

    :param torch.optim.Optimizer dense: the optimizer of the dense parameters.
    :param torch.optim.SparseAdam sparse: that of the sparse tables.
    """

    def __init__(self, dense, sparse):
        self.dense, self.sparse = dense, sparse

    @property
    def param_groups(self):
        return self.dense.param_groups + self.sparse.param_groups

    def zero_grad(self, set_to_none=True):
        self.dense.zero_grad(set_to_none)
        self.sparse.zero_grad(set_to_none)

    def step(self):
        self.dense.step()
        self.sparse.step()

    def state_dict(self):
        return {"adam": self.dense.state_dict(), "sparse_adam": self.sparse.state_dict()}

    def load_state_dict(self, state):
        if set(state) != {"adam", "sparse_adam"}:
            raise ValueError("the optimizer state was saved for a model without sparse embedding tables")
        self.dense.load_state_dict(state["adam"])
        self.sparse.load_state_dict(state["sparse_adam"])


def _optimizer_class(optim):
    """``(constructor, default arguments)`` of ``optim``: a Pyro optimizer (its torch optimizer and
    arguments), a :class:`torch.optim.Optimizer` subclass, or a callable ``optim(groups, lr=...)``."""
    if optim is None:  # one call per group for every parameter, not a Python loop over them (torch's CPU default)
        return torch.optim.Adam, {"foreach": True}
    if isinstance(optim, pyro.optim.PyroOptim):
        _check_pyro_optimizer(optim)
        return optim.pt_optim_constructor, dict(optim.pt_optim_args)
    if isinstance(optim, torch.optim.Optimizer):
        raise TypeError(
            f"optim must be an optimizer's class or a factory, not an optimizer built over parameters: the engine "
            f"builds it over its own parameter groups; pass torch.optim.{type(optim).__name__}, got an instance"
        )
    if callable(optim) and not isinstance(optim, type) and getattr(optim, "__module__", "").startswith("pyro.optim"):
        raise TypeError(
            "optim: a Pyro optimizer is made by calling Pyro's factory with the optimizer's arguments, as "
            "pyro.optim.Adam({'lr': 0.01}); got the factory itself"
        )
    if callable(optim):
        return optim, {}
    raise TypeError(
        "optim must be a Pyro optimizer (pyro.optim.Adam({'lr': 0.01})), a torch.optim.Optimizer class, or a "
        f"callable optim(param_groups, lr=...) returning one; got {type(optim).__name__}"
    )


def _check_pyro_optimizer(optim):
    """Refuse what of a Pyro optimizer the engine would not apply: per-parameter arguments, gradient
    clipping (``clip_args``) and a learning-rate scheduler (the :class:`Schedule` sets the rate)."""
    if isinstance(optim, pyro.optim.PyroLRScheduler):
        raise ValueError(
            "optim: a Pyro learning-rate scheduler is not supported: the engine's tb.infer.Schedule sets the "
            "learning rate (lr_warmup, decay, total); pass the optimizer itself, as pyro.optim.Adam({'lr': 0.01})"
        )
    if callable(optim.pt_optim_args):
        raise ValueError("optim: a Pyro optimizer with per-parameter arguments (a callable) is not supported")
    if optim.pt_clip_args:
        raise ValueError(
            f"optim: a Pyro optimizer's gradient clipping (clip_args={optim.pt_clip_args!r}) is not applied by the "
            "engine; clip with pyro.optim.ClippedAdam({'lr': 0.01, 'clip_norm': 10.0}), or pass no clip_args"
        )


#: The share of the learning rate at which a tensor guide's posterior scales are stepped
#: (:meth:`~tensorbayes.guides.TensorGuide.scale_parameters`). The scales are stored raw and
#: softplus-constrained, so for the small scales of a trained posterior the rate is a relative step
#: of each scale; once the KL term is on, every scale of a tensor is pushed up together, and the
#: weight's noise compounds over the factors of a train. At the full rate (1e-2) the noise of the
#: 7-core TT layers of a deep Fashion-MNIST MLP outgrew the fit within two epochs of the ramp's end
#: and the network lost 6 points (docs/method.md, "Learning rates").
SCALE_LR = 0.3


def make_optimizer(model, guide, lr, optim=None, previous=None, scale_lr=SCALE_LR):
    """
    The optimizer of an SVI run: ``optim`` (Adam by default) over the guide's and the model's
    parameters, a learned noise in a group of its own (held during the warm-up), a tensor
    guide's posterior scales in a third at ``scale_lr`` of the rate (:data:`SCALE_LR`), and
    :class:`torch.optim.SparseAdam` over the weights of embedding tables built with
    ``sparse=True`` (their gradients hold only the rows a batch looked up), the two stepped as
    one :class:`SparseAndDenseAdam`. With ``previous``, parameters it already optimized keep
    their state and the noise group its current learning rate; a parameter that pruning
    replaced starts with a fresh state: its moment estimates belonged to the old gauge, and
    carried over they slowed the cut network's recovery.
    """
    constructor, defaults = _optimizer_class(optim)
    if lr is not None:
        defaults["lr"] = lr
    tables = sparse_tables(model)
    table_ids = {id(t) for t in tables}
    named = [(n, p) for n, p in model_parameters(model, guide) if p.requires_grad and id(p) not in table_ids]
    noise = [p for n, p in named if n.endswith("log_noise")]
    others = [p for n, p in named if not n.endswith("log_noise")]
    tensor_guide = _tensor_guide_or_none(model, guide)
    scales = tensor_guide.scale_parameters() if tensor_guide is not None else []
    scale_ids = {id(p) for p in scales}
    guide_params = [p for _, p in guide_parameters(guide, model) if p.requires_grad and id(p) not in scale_ids]
    dense = constructor([{"params": guide_params + others}, {"params": noise}, {"params": scales}], **defaults)
    if not callable(getattr(dense, "step", None)) or not isinstance(getattr(dense, "param_groups", None), list):
        raise TypeError(f"optim must return a torch optimizer from (param_groups, lr=...), got {type(dense).__name__}")
    dense.param_groups[2]["lr"] *= scale_lr
    for group in dense.param_groups:
        group.setdefault("base_lr", group["lr"])
    if previous is not None:
        old_dense = previous.dense if isinstance(previous, SparseAndDenseAdam) else previous
        dense.param_groups[1]["lr"] = old_dense.param_groups[1]["lr"]
        for group, old_group in zip(dense.param_groups, old_dense.param_groups):
            for p, old in zip(group["params"], old_group["params"]):
                if p is old and old in old_dense.state:  # a parameter pruning replaced starts afresh
                    dense.state[p] = old_dense.state[old]
    if not tables:
        return dense
    sparse = torch.optim.SparseAdam(tables, lr=dense.param_groups[0]["base_lr"])
    sparse.param_groups[0]["base_lr"] = sparse.param_groups[0]["lr"]
    if isinstance(previous, SparseAndDenseAdam):  # pruning leaves the embedding tables as they are
        sparse.load_state_dict(previous.sparse.state_dict())
    return SparseAndDenseAdam(dense, sparse)


def check_engine_arguments(
    num_data=None, lr=None, optim=None, loss=None, schedule=None, lambda_step=0.1, num_particles=1, scale_lr=SCALE_LR
):
    """Refuse a bad argument of :class:`SVIEngine` with an error that names it: what a loop around
    the engine (:func:`~tensorbayes.fit`) calls before it changes anything."""
    if num_data is not None:
        check_int(num_data, "num_data")
    if lr is not None:
        check_number(lr, "lr", "(0, inf)", "a positive number")
    check_number(lambda_step, "lambda_step", "(0, 1]")
    check_number(scale_lr, "scale_lr", "(0, inf)", "a positive number")
    check_int(num_particles, "num_particles")
    if loss is not None and not callable(getattr(loss, "differentiable_loss", None)):
        raise TypeError(f"loss must be a Pyro ELBO (with differentiable_loss), got {type(loss).__name__}")
    if loss is not None and num_particles != 1:
        raise ValueError(
            f"num_particles={num_particles} is that of the default loss, and a loss was given: give the loss its "
            f"particles, as {type(loss).__name__}(num_particles={num_particles})"
        )
    if schedule is not None and not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a tb.infer.Schedule, got {type(schedule).__name__}")
    _optimizer_class(optim)


def _trainable(model, guide):
    params = [p for _, p in guide_parameters(guide, model) + model_parameters(model, guide)]
    return [p for p in params if p.requires_grad]


class SVIEngine:
    """
    Stochastic variational inference of ``guide`` to the posterior of ``model``, one
    :meth:`step` at a time, in the manner of :class:`pyro.infer.SVI`.

    Usage::

        engine = tb.infer.SVIEngine(model, guide, num_data=len(x), lr=0.01)
        for epoch in range(10):
            for xb, yb in loader:
                loss = engine.step(xb, yb)      # model(xb, yb, num_data=len(x)) under the guide

    Each step computes the loss (its KL term weighted by the schedule's β), the gradients, and
    stops with :class:`~tensorbayes.infer.NonFiniteError` naming the first parameter or site
    that is not finite; steps the optimizer at the schedule's learning rate; and takes the
    guide's closed-form λ step (after the warm-up). The optimizer follows the parameters: one
    that pruning replaced, or a guide's that first appeared in a step (Pyro's autoguides make
    theirs on their first call), is optimized from the next step on.

    :param model: a Pyro model, called as ``model(*args, num_data=num_data, **kwargs)``.
    :param guide: its guide: a :class:`~tensorbayes.guides.MeanField`, an
        :class:`~pyro.infer.autoguide.AutoGuideList` holding one, or any Pyro guide.
    :param int num_data: passed to the model as ``num_data`` (the size of the data set, which
        scales a minibatch's likelihood); ``None`` passes nothing.
    :param float lr: the learning rate (default 0.01, or the Pyro optimizer's own ``lr``).
    :param optim: the optimizer: ``None`` (Adam), a Pyro optimizer such as
        ``pyro.optim.ClippedAdam({"lr": 0.01})`` (not a scheduler, nor one with ``clip_args``
        or per-parameter arguments), a :class:`torch.optim.Optimizer` subclass, or a callable
        ``optim(param_groups, lr=...)``. Sparse embedding tables always get
        :class:`torch.optim.SparseAdam`.
    :param loss: the ELBO: :class:`~tensorbayes.infer.MeanFieldELBO` (default) or any Pyro ELBO
        with ``differentiable_loss`` (then the log-likelihood is not split out: ``nan``).
    :param Schedule schedule: warm-up, ramp and learning-rate schedule (default: none).
    :param float lambda_step: damping of the guide's closed-form λ step, in (0, 1].
    :param float scale_lr: the share of the learning rate at which a tensor guide's posterior
        scales are stepped (default :data:`SCALE_LR`; 1 steps them as :class:`pyro.infer.SVI` would).
    :param int num_particles: samples per ELBO estimate of the default loss, drawn in turn (a
        ``loss`` given takes its own).
    :param process_group: a :mod:`~tensorbayes.infer.distributed` context: the gradients, loss
        and log-likelihood are averaged over its processes before the checks and the step.
    :param backward: how the loss's gradients are computed (default ``loss.backward()``; a
        Lightning module passes its ``manual_backward``).
    """

    def __init__(
        self,
        model,
        guide,
        num_data: int | None = None,
        *,
        lr: float | None = None,
        optim=None,
        loss=None,
        schedule: Schedule | None = None,
        lambda_step: float = 0.1,
        num_particles: int = 1,
        scale_lr: float = SCALE_LR,
        process_group=None,
        backward=None,
    ) -> None:
        check_engine_arguments(num_data, lr, optim, loss, schedule, lambda_step, num_particles, scale_lr)
        self.model, self.guide, self.num_data = model, guide, num_data
        self.scale_lr = scale_lr
        self.optim, self.lambda_step, self.process_group = optim, lambda_step, process_group
        self.backward = backward or torch.Tensor.backward
        if lr is None and not isinstance(optim, pyro.optim.PyroOptim):
            lr = 1e-2
        self.lr = lr
        self.loss = loss if loss is not None else MeanFieldELBO(num_particles=num_particles)
        self.schedule = schedule or Schedule()
        self.num_steps = 0
        self.epoch = None  # set by a loop that counts epochs: errors then name it
        self.watch_gradients = process_group is None or process_group.is_main
        self.dead_gradients = DeadGradients()
        self.log_likelihood = math.nan
        self.optimizer = None
        self._called = False  # whether the guide has been called (an autoguide's parameters exist)
        self._tensor_guide = _tensor_guide_or_none(model, guide)
        if self._tensor_guide is not None:
            self._tensor_guide.keep_lambdas()
        if _trainable(model, guide):
            self.optimizer = make_optimizer(model, guide, lr, optim, scale_lr=scale_lr)

    @property
    def beta(self) -> float:
        """The KL weight of the next step."""
        return self.schedule.beta(self.num_steps)

    def step(self, *args, **kwargs) -> float:
        """
        Take one SVI step on the model's arguments ``args``, ``kwargs``.

        :returns: the loss (the negative ELBO, its KL term weighted by β) as a float; its
            log-likelihood part is left in ``engine.log_likelihood``.
        """
        if not torch.is_grad_enabled():
            raise RuntimeError("step computes gradients: it was called under torch.no_grad() or torch.inference_mode()")
        if self.num_data is not None:
            kwargs.setdefault("num_data", self.num_data)
        step = self.num_steps
        if self.optimizer is not None:
            self.follow_parameters()  # pruned since the last step: before the guide draws
        loss, likelihood = self._loss(args, kwargs)
        if not getattr(loss, "requires_grad", False):
            raise ValueError("model and guide hold no trainable parameter: the loss depends on none, nothing to fit")
        if self.optimizer is None or not self._called:  # a guide makes its parameters at its first call
            self.follow_parameters()
            self._called = True
        self._set_learning_rates(step)
        self.optimizer.zero_grad()
        self.backward(loss)
        if self.process_group is not None:  # the same gradients, loss and likelihood on every process
            loss, likelihood = _distributed.all_reduce_step(self._stepped(), loss, likelihood, self.process_group)
        grads = gradients(self.model, self.guide)
        (value, likelihood), norms = read_norms(grads, loss, likelihood)  # one read to the host a step
        if not math.isfinite(value):  # on every process alike: a reduced loss is the same everywhere
            raise NonFiniteError(diagnose(self.model, self.guide, args, kwargs, step, self.epoch))
        norms = check_norms(grads, norms, step, self.epoch)
        if self.watch_gradients:
            self.dead_gradients.update(norms, step, self.epoch)
        self.optimizer.step()
        self._lambda_step(step)
        self.num_steps += 1
        self.log_likelihood = float(likelihood)
        return value

    def _loss(self, args, kwargs):
        """``(loss, log-likelihood)`` of one step, the KL weighted by the schedule's β."""
        beta = self.schedule.beta(self.num_steps)
        try:
            with KLScale(beta) if beta != 1 else nullcontext():
                if isinstance(self.loss, MeanFieldELBO):
                    return self.loss.loss_and_log_likelihood(self.model, self.guide, *args, **kwargs)
                return self.loss.differentiable_loss(self.model, self.guide, *args, **kwargs), math.nan
        except ValueError as error:  # Pyro's validation refuses a NaN parameter of a distribution
            if non_finite_parameter(self.model, self.guide) is None:
                raise
            raise NonFiniteError(diagnose(self.model, self.guide, args, kwargs, self.num_steps, self.epoch)) from error

    def _lambda_step(self, step):
        guide = self._tensor_guide
        if guide is None or not guide.has_closed_form_lambdas:
            return
        if step >= self.schedule.warmup:
            guide.update_lambdas(self.lambda_step)
        else:
            guide.keep_lambdas()  # the warm-up holds λ: the guide must not take the step itself

    def _set_learning_rates(self, step):
        """Every group at its base rate times the schedule's factor; the learned noise's (group 1)
        at 0 during the warm-up."""
        factor = self.schedule.lr_factor(step)
        hold_noise = step < self.schedule.warmup
        for i, group in enumerate(self.optimizer.param_groups):
            group["lr"] = 0.0 if i == 1 and hold_noise else group.get("base_lr", self.lr) * factor

    def _stepped(self):
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def follow_parameters(self):
        """
        The optimizer, rebuilt where the parameters are no longer those it steps (after pruning,
        or a guide's first call): parameters it stepped keep their state.
        """
        if self.optimizer is None:
            self.optimizer = make_optimizer(self.model, self.guide, self.lr, self.optim, scale_lr=self.scale_lr)
        elif {id(p) for p in self._stepped()} != {id(p) for p in _trainable(self.model, self.guide)}:
            self.optimizer = make_optimizer(
                self.model, self.guide, self.lr, self.optim, previous=self.optimizer, scale_lr=self.scale_lr
            )
            self._tensor_guide = _tensor_guide_or_none(self.model, self.guide)
            if self._tensor_guide is not None:
                self._tensor_guide.keep_lambdas()  # λ was set with the cut: the engine times the next step
        return self.optimizer

    def state_dict(self) -> dict:
        """What resumes the engine exactly: the optimizer's state and the step count (and the shapes of
        the parameters it steps, which :meth:`load_state_dict` checks)."""
        return {
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "num_steps": self.num_steps,
            "parameter_shapes": [tuple(p.shape) for p in self._stepped()] if self.optimizer else [],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (into an engine over the same model and guide, restored first: a
        pruned model pruned to the same ranks). A state that does not fit is refused, and nothing changes."""
        if not isinstance(state, dict) or not {"optimizer", "num_steps"} <= set(state):
            found = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"state must be what SVIEngine.state_dict() returned (optimizer, num_steps), got {found}")
        num_steps = check_int(state["num_steps"], "num_steps", low=0)
        self.follow_parameters()
        if state["optimizer"] is not None:
            self._check_shapes(state.get("parameter_shapes"))  # absent from a tb.fit checkpoint's
            try:
                self.optimizer.load_state_dict(state["optimizer"])
            except (KeyError, ValueError) as error:
                raise ValueError(
                    f"the optimizer state does not fit this engine's optimizer ({error!r}): it was saved for another "
                    "model, guide or optimizer, or by a tensorbayes whose optimizer grouped the parameters otherwise "
                    "(before SCALE_LR the posterior scales had no group of their own); start afresh without it"
                    + self._uncalled_hint()
                ) from error
        self.num_steps = num_steps
        if self._tensor_guide is not None:
            self._tensor_guide.keep_lambdas()

    def _check_shapes(self, saved):
        """Refuse an optimizer state saved for parameters of other shapes or number (torch's own
        load takes it, and the next step fails deep inside the optimizer)."""
        params = self._stepped()
        if saved is None or [tuple(s) for s in saved] == [tuple(p.shape) for p in params]:
            return
        names = {id(p): f"{owner} parameter '{name}'" for owner, name, p in named_parameters(self.model, self.guide)}
        bad = next(((p, tuple(s)) for p, s in zip(params, saved) if tuple(s) != tuple(p.shape)), None)
        where = (
            f"{names.get(id(bad[0]), 'a parameter')} has shape {tuple(bad[0].shape)}, the state's {bad[1]}"
            if bad is not None
            else f"the optimizer steps {len(params)} parameters, the state was saved for {len(saved)}"
        )
        raise ValueError(
            f"the optimizer state does not fit this engine's parameters ({where}): it was saved for another model or "
            "guide, or for a model pruned to other ranks (restore or prune this one to them first: tb.load restores "
            "a pruned model); start afresh without it" + self._uncalled_hint()
        )

    def _uncalled_hint(self):
        if self._called or guide_parameters(self.guide, self.model):
            return ""
        return (
            ". A guide that makes its parameters at its first call (Pyro's autoguides) has none before it: "
            "call it once with the model's arguments before load_state_dict"
        )


def _tensor_guide_or_none(model, guide):
    """The tensor guide of ``model`` in ``guide``, or ``None``: a guide that holds none (a Pyro
    guide of a model without low-rank tensors, which no :class:`~tensorbayes.guides.MedianGuide`
    can read, included)."""
    try:
        return as_tensor_guide(model, guide)
    except GuideError:
        return None
    except ValueError:  # "model holds no LowRankTensor", or a tensor guide built for another model
        if isinstance(guide, torch.nn.Module) and any(isinstance(m, TensorGuide) for m in guide.modules()):
            raise
        return None
