"""
Fitting a tensorbayes model: stochastic variational inference over minibatches.

:func:`fit` is a short loop around :class:`~tensorbayes.infer.SVIEngine`, which takes the steps
(the ELBO, the optimizer, the KL warm-up and ramp, the learning-rate schedule, the λ M-step and
the checks for values that are not finite or gradients that died). The loop draws the
minibatches, records a :class:`History`, runs the rank search between epochs, writes
checkpoints (:mod:`~tensorbayes.infer.checkpoint`) and calls the callbacks. With
``distributed=True`` it runs data-parallel over the processes of a :mod:`torch.distributed`
group (see :mod:`tensorbayes.infer.distributed`).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import pyro
import torch
from tqdm.auto import tqdm

from ..checks import check_int, check_number
from ..guides.base import GuideError, GuideNotReady, as_tensor_guide
from ..rank import DEFAULT_TOLERANCE, held_out_metric, mean_score, min_held_out, prune, ranks, search_ranks
from . import distributed as _distributed
from .batches import TensorBatches, as_tensors, module_device, to_device
from .cavi import closed_form_start
from .checkpoint import check_file_path, load_checkpoint, save_checkpoint
from .diagnostics import DeadGradientWarning, NonFiniteError, check_finite_parameters
from .engine import SCALE_LR, Schedule, SVIEngine, check_engine_arguments, sparse_tables
from .predict import predict

__all__ = ["DeadGradientWarning", "History", "NonFiniteError", "fit"]

#: The share of the steps the KL warm-up takes by default, and then the ramp.
WARMUP_SHARE = 0.2

#: The default share of the data :func:`fit` holds out for its rank search.
DEFAULT_VALIDATION = 0.1

#: The rank search runs at the ends of the epochs between the end of the KL ramp and this share
#: of the steps, so that the epochs after it train the cut network.
SEARCH_UNTIL = 0.8


@dataclass
class History:
    """
    What :func:`fit` recorded, one entry per epoch: ``elbo`` (mean over the epoch's steps) and
    its two parts ``log_likelihood`` (the expected log-likelihood of the data, scaled to the
    whole data set) and ``kl`` (the KL term as it entered the objective, weighted by β), so
    that ``elbo = log_likelihood - kl``; ``beta``, ``noise``, ``lambdas`` and ``ranks`` (per
    tensor, for a :class:`~tensorbayes.guides.MeanField` guide), ``lr`` (the learning rate of the
    epoch's last step), and with ``eval_data`` the
    held-out ``accuracy`` (a classifier) or relative ``error`` (a regression or completion).

    ``rank_search`` holds one entry per rank search (see ``tolerance`` in :func:`fit`):
    ``{"epoch", "ranks" (per tensor, after the cut), "reference" (the best held-out score of
    the uncut network so far), "full" (its score now), "found" (the cut network's score),
    "cut" (whether it searched: not at the first, nor while the network still gained more
    than the tolerance since the last)}``.

    ``lambda_trace`` holds λ at a finer grain, every ``trace_every`` steps:
    ``{"step": [step, ...], "lambdas": [{tensor name: [λ of each bond]}, ...]}``.
    """

    elbo: list = field(default_factory=list)
    log_likelihood: list = field(default_factory=list)
    kl: list = field(default_factory=list)
    beta: list = field(default_factory=list)
    noise: list = field(default_factory=list)
    lambdas: list = field(default_factory=list)
    ranks: list = field(default_factory=list)
    lr: list = field(default_factory=list)
    accuracy: list = field(default_factory=list)
    error: list = field(default_factory=list)
    lambda_trace: dict = field(default_factory=lambda: {"step": [], "lambdas": []})
    rank_search: list = field(default_factory=list)
    steps: int = 0

    def __len__(self):
        return len(self.elbo)


def fit(
    model,
    guide,
    data,
    *,
    epochs: int = 100,
    batch_size: int = 1024,
    lr: float | None = None,
    lr_decay: float = 0.5,
    lr_warmup: int = 0,
    warmup: int | None = None,
    ramp: int | None = None,
    kl_weight: float = 1.0,
    lambda_step: float = 0.1,
    scale_lr: float = SCALE_LR,
    num_particles: int = 1,
    init: str = "auto",
    init_sweeps: int | None = None,
    eval_data: tuple | None = None,
    eval_samples: int = 20,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    callbacks: Sequence[Callable] = (),
    trace_every: int | None = None,
    seed: int | None = None,
    progress: bool = True,
    distributed: bool = False,
    tolerance: float | None = DEFAULT_TOLERANCE,
    validation: float = DEFAULT_VALIDATION,
    optim=None,
    loss=None,
) -> History:
    """
    Fit ``guide`` to the posterior of ``model`` by SVI on minibatches of ``data``.

    A short loop around :class:`~tensorbayes.infer.SVIEngine`: minibatches, epochs, the rank
    search, the record, checkpoints and callbacks. The model is called as
    ``model(*batch, num_data=N)``: it must put its likelihood under a
    ``pyro.plate("data", num_data, subsample=...)`` so that the minibatch ELBO is the full-data
    ELBO in expectation. Every batch (and ``eval_data``) is moved to the device of the model's
    and guide's parameters, as Lightning does: move them (``model.to("cuda")``, then build the
    guide) to train on a GPU, and keep the data where it is.

    :param model: a tensorbayes model (e.g. :class:`~tensorbayes.models.TensorCompletion`).
    :param guide: its guide (e.g. :class:`~tensorbayes.guides.MeanField`).
    :param data: a tuple of tensors sharing their first (example) dimension, or a
        :class:`torch.utils.data.DataLoader` of such tuples (``batch_size`` is then the loader's,
        and its sampler decides the order: seed it for reproducible runs).
    :param int epochs: passes over the data.
    :param int batch_size: examples per step (clipped to the data size).
    :param float lr: the learning rate, SparseAdam's too for the model's sparse embedding
        tables (default 0.01, or 0.001 after the closed-form start, whose fit larger steps
        would first undo; or the Pyro optimizer's own ``lr``).
    :param float lr_decay: the share of the steps, at the end of the fit, over which the learning
        rate falls linearly to zero, in ``[0, 1]`` (default 0.5: held for the first half, then
        annealed). SVI's steps are noisy, and a constant rate leaves the factors as noisy as
        its steps: on Fashion-MNIST a constant rate cost about two points of accuracy.
    :param int lr_warmup: steps over which the learning rate rises linearly from ``lr /
        lr_warmup`` to ``lr`` (default 0: none). Adam's first steps move every parameter by
        about ``lr`` at once; in a wide ReLU layer that can switch most units off for good
        within a few steps.
    :param int warmup: steps with no KL term and no λ update (default: 20 % of the steps).
    :param int ramp: steps over which β rises from 0 to ``kl_weight`` after the warm-up
        (default: 20 %).
    :param float kl_weight: the KL term's weight after the ramp (default 1: the ELBO). Below 1
        the posterior keeps rank indices the full KL term shrinks away: for a network that ends
        smaller and less accurate than the tolerance asks (docs/method.md, "The KL weight").
    :param float lambda_step: damping of the closed-form λ update, in (0, 1].
    :param float scale_lr: the share of ``lr`` at which a tensor guide's posterior scales are
        stepped (default :data:`~tensorbayes.infer.engine.SCALE_LR`, 0.3; see
        :class:`~tensorbayes.infer.SVIEngine`).
    :param int num_particles: samples per ELBO estimate, drawn one after the other.
    :param str init: "auto" (default) starts the model and guide with their closed-form
        initialization where they offer one (:func:`~tensorbayes.infer.closed_form_start`: a
        :class:`~tensorbayes.models.TensorCompletion` with a :class:`~tensorbayes.guides.MeanField`
        guide, by coordinate ascent), after which SVI needs no warm-up; "cavi" insists on it,
        "none" goes straight to SVI.
    :param int init_sweeps: coordinate-ascent sweeps before pruning, half as many after (default:
        :data:`~tensorbayes.infer.cavi.DEFAULT_SWEEPS` of the format).
    :param tuple eval_data: held-out ``(*inputs, target)`` evaluated after every epoch with
        :func:`~tensorbayes.infer.predict` (``eval_samples`` draws): accuracy when the model
        returns class probabilities, relative error otherwise.
    :param checkpoint: a file written after every epoch (to a temporary file, then renamed, so
        a crash never leaves it half-written): model, guide, optimizer, random states, history.
    :param bool resume: continue from ``checkpoint`` if it exists (the same seed and data then
        give the same parameters as an uninterrupted run). Its tensors are read onto the device
        of the model's parameters, so that a checkpoint written on a GPU resumes without one.
    :param callbacks: callables ``callback(epoch, history)`` run after every epoch (after the
        checkpoint), e.g. to print or log progress, or to prune (:func:`tensorbayes.prune`):
        the optimizer then follows the pruned parameters (those pruning replaced start with a
        fresh Adam state); not with ``distributed=True``, where callbacks run on process 0 only.
    :param int trace_every: record λ into ``history.lambda_trace`` every this many steps
        (default: about ten times per epoch; copying λ costs microseconds).
    :param int seed: seeds the minibatch order and the ELBO's samples.
    :param bool progress: show a tqdm progress bar.
    :param bool distributed: data-parallel SVI over the processes of a :mod:`torch.distributed`
        group (initialized from ``torchrun``'s environment if need be): ``batch_size`` is then
        the *global* batch, cut into one shard per process, and one epoch on K processes makes
        the same steps as on one process (same ``seed``; without ``eval_data``, to rounding).
        A DataLoader must shard with a :class:`~torch.utils.data.DistributedSampler` (its
        ``batch_size`` is per process). Rank 0 alone writes the checkpoint, shows progress, warns
        (:class:`DeadGradientWarning`) and runs ``callbacks``; ``eval_data`` is evaluated in
        shards. Every process returns the same :class:`History`. See
        :mod:`tensorbayes.infer.distributed`.
    :param float tolerance: the rank search's tolerance (default :data:`DEFAULT_TOLERANCE`:
        half a point of accuracy, or 0.005 of relative error); ``None`` keeps the ranks the model
        has. At the end of every epoch from the end of the KL ramp until :data:`SEARCH_UNTIL` of
        the steps, the posterior-mean network is scored on a held-out ``validation`` share of
        ``data``; where it gained at most ``tolerance`` since the last epoch (a network still
        learning is not cut, but at the last search epoch it is),
        :func:`~tensorbayes.rank.search_ranks` finds the smallest ranks,
        along the posterior's ordering of the rank indices, whose network scores within
        ``tolerance`` of the best score of the uncut network so far, and the model and guide
        are cut to them
        (:func:`~tensorbayes.prune` with ``ranks=``; the optimizer follows), so that later
        epochs run at the smaller ranks. After the last search the held-out share joins the
        training data. Each search is recorded in ``history.rank_search``. None runs where the
        held-out share would hold fewer than ``2 / tolerance`` examples
        (:func:`~tensorbayes.rank.min_held_out`, 400 at the default: one example then weighs at
        most half the tolerance), in a fit too short for a search epoch, nor with a DataLoader
        (which warns: pass tensors, or ``tolerance=None``). With ``distributed=True`` every
        process runs the same search.
    :param float validation: the share of ``data`` held out for the rank search, in (0, 0.5].
    :param optim: the optimizer (default Adam): a Pyro optimizer such as
        ``pyro.optim.ClippedAdam({"lr": 0.01})``, a :class:`torch.optim.Optimizer` subclass, or a
        callable ``optim(param_groups, lr=...)`` (see :class:`~tensorbayes.infer.SVIEngine`).
    :param loss: the ELBO (default :class:`~tensorbayes.infer.MeanFieldELBO` with
        ``num_particles``), or any Pyro ELBO such as ``pyro.infer.TraceMeanField_ELBO()``.
    :returns: the :class:`History` of the fit.
    """
    callbacks = _check_callbacks(callbacks)  # a generator is read once: by the check, then never run
    _check_arguments(**{k: v for k, v in locals().items() if k not in ("model", "guide", "data")})
    seed = None if seed is None else int(seed)  # a NumPy int, which torch's manual_seed refuses
    eval_data = None if eval_data is None else _check_eval_data(model, eval_data)
    if distributed and sparse_tables(model):
        raise ValueError("distributed=True averages dense gradients only: build the embedding tables with sparse=False")
    ctx = _distributed.init() if distributed else None
    if ctx is not None:
        _distributed.check_same_settings(_shared_settings(locals(), data), ctx)
        seed = _distributed.broadcast_seed(seed, ctx, [model, guide])  # every rank draws the same batches and samples
    generator = torch.Generator().manual_seed(seed if seed is not None else int(torch.randint(2**31, ())))
    batches = _batches(model, data, batch_size, generator, ctx)
    search = _RankSearch.plan(batches, epochs, validation, tolerance, generator, warmup, ramp, ctx)
    batches = batches if search is None else search.train_batches
    check_finite_parameters(model, guide)
    device = module_device(model, guide)  # every batch is moved there, as the held-out data
    eval_data = None if eval_data is None else to_device(eval_data, device)
    if seed is not None:
        pyro.set_rng_seed(seed)
    resuming = resume and os.path.exists(checkpoint)  # read onto the model's device: a GPU's resumes on a CPU
    state = load_checkpoint(checkpoint, model, guide, map_location=device) if resuming else None
    initialized = (
        state["initialized"] if state else _initialize(model, guide, batches, device, init, init_sweeps, progress)
    )
    if ctx is not None:
        _distributed.broadcast_state([model, guide], ctx)  # as DDP: every rank starts from rank 0's
    total = epochs * len(batches) if search is None else search.total_steps(epochs)
    schedule = default_schedule(total, initialized, warmup, ramp, lr_decay, lr_warmup, kl_weight)
    if lr is None and optim is None:
        lr = 1e-3 if initialized else 1e-2  # a closed-form start's fit, which larger steps would first undo
    engine = SVIEngine(
        model, guide, batches.num_data, lr=lr, optim=optim, loss=loss, schedule=schedule,
        lambda_step=lambda_step, scale_lr=scale_lr, num_particles=num_particles, process_group=ctx,
    )  # fmt: skip
    history, first_epoch = History(), 0
    if state is not None:
        engine.load_state_dict({"optimizer": state["optimizer"], "num_steps": state["step"]})
        history, first_epoch = state["history"], state["epoch"] + 1
        batches = search.resume(history) if search is not None else batches
        generator.set_state(state["generator"])
        pyro.util.set_rng_state(state["rng"])
    main = ctx is None or ctx.is_main
    loop = _Loop(engine, history, trace_every or max(1, len(batches) // 10), eval_data, eval_samples, ctx, progress)
    for epoch in range(first_epoch, epochs):
        loop.run_epoch(batches, epoch)
        if search is not None and epoch in search.epochs:  # the same on every rank: no communication
            history.rank_search.append(search.run(model, guide, epoch, device))
        if search is not None and epoch >= search.epochs[-1]:
            batches = search.all_batches  # the held-out share joins the training data
        if checkpoint is not None and main:
            save_checkpoint(checkpoint, model, guide, engine.follow_parameters(), history,
                            engine.num_steps, epoch, generator, initialized)  # fmt: skip
        if checkpoint is not None and ctx is not None:
            ctx.barrier()  # no rank runs ahead of a checkpoint being written
        for callback in callbacks if main else ():
            callback(epoch, history)
    loop.close()
    return history


def default_schedule(
    total: int,
    initialized: bool = False,
    warmup: int | None = None,
    ramp: int | None = None,
    lr_decay: float = 0.5,
    lr_warmup: int = 0,
    kl_weight: float = 1.0,
) -> Schedule:
    """
    The :class:`~tensorbayes.infer.Schedule` of :func:`fit` over ``total`` steps: a KL warm-up and a
    ramp (to ``kl_weight``) of :data:`WARMUP_SHARE` of the steps each (none after a closed-form
    start), unless given, and the learning rate's decay over the last ``lr_decay`` share.
    """
    default = 0 if initialized else int(WARMUP_SHARE * total)
    schedule = Schedule(
        warmup=default if warmup is None else warmup,
        ramp=default if ramp is None else ramp,
        total=total,
        decay=round(lr_decay * total),
        lr_warmup=lr_warmup,
        kl_weight=kl_weight,
    )
    if total and schedule.warmup + schedule.ramp > total:
        reached = schedule.beta(total - 1)
        warnings.warn(
            f"the KL warm-up ({schedule.warmup} steps) and ramp ({schedule.ramp}) outlast the run ({total} steps): "
            + (
                "the KL term never comes on and λ is never updated"
                if reached == 0
                else f"the KL term's weight reaches only {reached:.3g} of {kl_weight:g}"
            ),
            stacklevel=3,
        )
    return schedule


def _check_arguments(
    *, epochs, batch_size, lr, lr_decay, lr_warmup, warmup, ramp, kl_weight, lambda_step, scale_lr, num_particles, init,
    init_sweeps, eval_data, eval_samples, checkpoint, resume, callbacks, trace_every, seed, progress, distributed,
    tolerance, validation, optim, loss,
):  # fmt: skip
    """Refuse a bad argument of :func:`fit` with an error that names it, before anything changes."""
    for value, name in ((epochs, "epochs"), (batch_size, "batch_size"), (eval_samples, "eval_samples")):
        check_int(value, name)
    check_engine_arguments(None, lr, optim, loss, None, lambda_step, num_particles, scale_lr)
    check_number(lr_decay, "lr_decay", "[0, 1]")
    check_int(lr_warmup, "lr_warmup (steps)", low=0)
    check_number(kl_weight, "kl_weight", "(0, inf)", "a positive number")
    if init not in ("auto", "cavi", "none"):
        raise ValueError(f"init must be 'auto', 'cavi' or 'none', got {init!r}")
    for value, name in ((init_sweeps, "init_sweeps"), (trace_every, "trace_every")):
        if value is not None:
            check_int(value, name)
    for value, name in ((warmup, "warmup"), (ramp, "ramp")):
        if value is not None:
            check_int(value, f"{name} (steps)", low=0)
    if seed is not None:
        check_int(seed, "seed", low=0)
        if seed > MAX_SEED:
            raise ValueError(f"seed must be an int in [0, 2**32 - 1] (pyro.set_rng_seed seeds NumPy), got {seed!r}")
    if checkpoint is not None:  # written after the first epoch: refused now, before anything changes
        check_file_path(checkpoint, "checkpoint")
    for value, name in ((resume, "resume"), (progress, "progress"), (distributed, "distributed")):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {value!r}")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs a checkpoint path")
    if tolerance is not None:
        check_number(tolerance, "tolerance", "(0, 1)", "a number in (0, 1) or None")
    check_number(validation, "validation", "(0, 0.5]", "a share of the data in (0, 0.5]")


#: The arguments of :func:`fit` that every process of a distributed fit must be given alike.
SHARED_SETTINGS = (
    "epochs", "batch_size", "lr", "lr_decay", "lr_warmup", "warmup", "ramp", "kl_weight", "lambda_step", "scale_lr",
    "num_particles", "init", "init_sweeps", "eval_samples", "tolerance", "validation", "trace_every",
)  # fmt: skip


def _shared_settings(arguments, data):
    """What the processes of a distributed fit must agree on: :data:`SHARED_SETTINGS`, the size of
    the data set, and whether there are held-out data and a checkpoint."""
    settings = {name: arguments[name] for name in SHARED_SETTINGS}
    loader = isinstance(data, torch.utils.data.DataLoader)
    settings["len(data)"] = len(getattr(data, "dataset", ())) if loader else len(as_tensors(data, "data")[0][0])
    settings["eval_data given"] = arguments["eval_data"] is not None
    settings["checkpoint given"] = arguments["checkpoint"] is not None
    return settings


#: The largest seed :func:`fit` takes (``pyro.set_rng_seed`` seeds NumPy, which takes no more).
MAX_SEED = 2**32 - 1


def _check_callbacks(callbacks):
    """``callbacks`` as a list of callables (read once, so that a generator is not used up by the check)."""
    if callable(callbacks) or isinstance(callbacks, (str, bytes)):
        raise TypeError(f"callbacks must be a sequence of callables callback(epoch, history), got {callbacks!r}")
    try:
        callbacks = list(callbacks)
    except TypeError:
        raise TypeError(
            f"callbacks must be a sequence of callables callback(epoch, history), got {type(callbacks).__name__}"
        ) from None
    if not all(callable(c) for c in callbacks):
        raise TypeError("callbacks must be a sequence of callables callback(epoch, history)")
    return callbacks


def _check_eval_data(model, eval_data):
    """``eval_data`` as a tuple of tensors, checked by the model as the data are (a ``ValueError`` or
    ``TypeError`` that names ``eval_data``), before anything changes."""
    eval_data, _ = as_tensors(eval_data, "eval_data")
    if len(eval_data) < 2:
        raise ValueError("eval_data must be (*inputs, target): at least two tensors")
    if hasattr(model, "check_data"):
        try:
            eval_data = tuple(model.check_data(*eval_data))
        except (TypeError, ValueError) as error:
            raise _naming(error, "eval_data") from error
    return eval_data


def _naming(error, name):
    """A ``TypeError`` or ``ValueError`` like ``error`` whose message starts with ``name``."""
    return (TypeError if isinstance(error, TypeError) else ValueError)(f"{name}: {error}")


def _batches(model, data, batch_size, generator, ctx):
    """The minibatches of ``data``: a DataLoader's, or the tensors' (checked by the model)."""
    if isinstance(data, torch.utils.data.DataLoader):
        if ctx is not None:
            _distributed.check_loader(data, ctx)
        batches = _LoaderBatches(data)
        if batches.num_data == 0 or len(batches) == 0:
            raise ValueError(
                f"data: the DataLoader yields no batches ({batches.num_data} examples, batch_size "
                f"{data.batch_size}, drop_last={data.drop_last}): give it at least one full batch"
            )
        return batches
    batches = (
        TensorBatches(data, batch_size, generator)
        if ctx is None
        else _distributed.ShardedTensorBatches(data, batch_size, generator, ctx)
    )
    if hasattr(model, "check_data"):
        batches.data = tuple(t for t in model.check_data(*batches.data) if t is not None)
    return batches


def _initialize(model, guide, batches, device, init, sweeps, progress):
    """Run the closed-form start where ``init`` asks for it and the model and guide offer one."""
    if init == "none" or batches.data is None:
        return False
    return closed_form_start(model, guide, *to_device(batches.data, device), sweeps=sweeps, progress=progress,
                             required=init == "cavi")  # fmt: skip


class _Loop:
    """The epochs of :func:`fit`: the engine's steps over the batches, the progress bar and the record."""

    def __init__(self, engine, history, trace_every, eval_data, eval_samples, ctx, progress):
        self.engine, self.history, self.trace_every = engine, history, trace_every
        self.eval_data, self.eval_samples, self.ctx = eval_data, eval_samples, ctx
        self.device = module_device(engine.model, engine.guide)
        main = ctx is None or ctx.is_main
        total = engine.schedule.total
        self.bar = tqdm(total=total, initial=engine.num_steps, disable=not (progress and main), desc="fit", leave=False)
        self.guide, self.unreadable = None, False

    def readable_guide(self):
        """The tensor guide to record λ and ranks from (an autoguide is readable once it has been
        called), or ``None``: warned once per fit."""
        if self.guide is None and not self.unreadable:
            try:
                guide = as_tensor_guide(self.engine.model, self.engine.guide)
                guide.tensors()  # a guide of a model function knows them after its first call
                self.guide = guide
            except GuideNotReady:
                pass  # not called yet: read it at the end of the epoch
            except GuideError as error:
                self.unreadable = True
                warnings.warn(f"fit: no ranks or λ are recorded: {error}", stacklevel=4)
        return self.guide

    def run_epoch(self, batches, epoch):
        engine, history = self.engine, self.history
        engine.epoch = epoch
        engine.num_data = batches.num_data  # the held-out share joins the data after the last rank search
        loss = likelihood = 0.0
        for batch, share in _shares(batches, epoch):
            beta = engine.beta
            with _distributed.LikelihoodScale(share) if share != 1.0 else nullcontext():
                loss += engine.step(*to_device(batch, self.device))
            likelihood += engine.log_likelihood
            if engine.num_steps % self.trace_every == 0 and self.readable_guide() is not None:
                history.lambda_trace["step"].append(engine.num_steps)
                history.lambda_trace["lambdas"].append(_lambdas(self.guide))
            self.bar.update()
        if self.ctx is not None:
            _distributed.check_in_sync([engine.model, engine.guide], self.ctx, f"after epoch {epoch}")
        summary = (-loss / len(batches), likelihood / len(batches), beta)
        _record(history, engine.model, engine.guide, self.readable_guide(), *summary, self.eval_data, self.eval_samples,
                self.ctx)  # fmt: skip
        history.lr.append(engine.optimizer.param_groups[0]["lr"])
        history.steps = engine.num_steps
        self.bar.set_postfix(elbo=f"{history.elbo[-1]:.4g}", beta=f"{beta:.2f}")

    def close(self):
        self.bar.close()


class _LoaderBatches:
    """Minibatches of a :class:`torch.utils.data.DataLoader` (its own sampler decides the order)."""

    def __init__(self, loader):
        self.loader = loader
        self.num_data = len(loader.dataset)
        self.data = None

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            yield list(batch) if isinstance(batch, (tuple, list)) else [batch]


def _shares(batches, epoch):
    """``(batch, likelihood share)`` pairs of one epoch (the share is 1 but on a sharded rank)."""
    if isinstance(batches, _distributed.ShardedTensorBatches):
        return iter(batches)
    sampler = getattr(getattr(batches, "loader", None), "sampler", None)
    if isinstance(sampler, torch.utils.data.DistributedSampler):
        sampler.set_epoch(epoch)
    return ((batch, 1.0) for batch in batches)


def _lambdas(guide):
    return {name: [v.clone() for v in vs] for name, vs in guide.lambdas().items()}


def _record(history, model, guide, tensor_guide, elbo, likelihood, beta, eval_data, eval_samples, ctx=None):
    """Append one epoch's summaries to ``history`` (λ and ranks from ``tensor_guide``, unless ``None``)."""
    history.elbo.append(elbo)
    history.log_likelihood.append(likelihood)
    history.kl.append(likelihood - elbo)
    history.beta.append(beta)
    history.noise.append(model.noise.item() if hasattr(model, "noise") else None)
    if tensor_guide is not None:
        history.lambdas.append(_lambdas(tensor_guide))
        history.ranks.append(ranks(model, tensor_guide))
    if eval_data is None:
        return
    try:
        if ctx is not None:
            name, value = _distributed.evaluate(model, guide, eval_data, eval_samples, ctx)
        else:
            *inputs, target = eval_data
            mean, _ = predict(model, guide, *inputs, num_samples=eval_samples)
            name, value = held_out_metric(mean, target)
            value = value.item()
    except (TypeError, ValueError) as error:  # what the model's check_data could not see (its shapes)
        if type(error) not in (TypeError, ValueError):  # the library's own (a guide's) errors say what they are
            raise
        raise _naming(error, "eval_data") from error
    getattr(history, name).append(value)


class _RankSearch:
    """
    The rank search of :func:`fit`: the held-out share of the data, the epochs at whose ends it
    runs, the best held-out score of the uncut network seen so far (the reference) and its last
    score (a network still gaining more than the tolerance an epoch is not cut).
    """

    def __init__(self, train_batches, all_batches, held_out, epochs, tolerance):
        self.train_batches, self.all_batches, self.held_out = train_batches, all_batches, held_out
        self.epochs, self.tolerance, self.reference, self.last = epochs, tolerance, -math.inf, None

    @classmethod
    def plan(cls, batches, epochs, validation, tolerance, generator, warmup, ramp, ctx=None):
        """The search of a fit of ``epochs`` epochs over ``batches``, or ``None`` when no epoch
        qualifies, the data are too few to hold a share out, ``tolerance`` is ``None``, or the
        data come from a DataLoader (which warns)."""
        if tolerance is None:
            return None
        if batches.data is None:
            warnings.warn(
                "fit: no rank search over a DataLoader (it cannot hold a share out): pass the data as tensors, "
                "or tolerance=None to keep the ranks",
                stacklevel=3,
            )
            return None
        n = batches.num_data
        n_held = int(round(validation * n))
        if n_held < min_held_out(tolerance) or n - n_held < 1:  # too few to resolve the tolerance
            return None
        train_size = min(batches.batch_size, n - n_held)
        per_epoch = math.ceil((n - n_held) / train_size)
        total = epochs * per_epoch
        default = int(WARMUP_SHARE * total)  # as fit's, which a closed-form start sets to 0 (not known yet)
        ramp_end = (default if warmup is None else warmup) + (default if ramp is None else ramp)
        chosen = [e for e in range(epochs) if ramp_end <= (e + 1) * per_epoch <= SEARCH_UNTIL * total]
        if not chosen:
            return None
        order = torch.randperm(n, generator=generator)
        train, held = order[n_held:], order[:n_held]
        train_data = tuple(t[train] for t in batches.data)
        train_batches = (
            TensorBatches(train_data, train_size, generator)
            if ctx is None
            else _distributed.ShardedTensorBatches(train_data, train_size, generator, ctx)
        )
        held_out = tuple(t[held] for t in batches.data)
        return cls(train_batches, batches, held_out, chosen, tolerance)

    def total_steps(self, epochs):
        """
        The steps of a fit of ``epochs`` epochs: on the training share up to the last search, then
        on all the data.
        """
        last = self.epochs[-1]
        return sum(len(self.train_batches) if e <= last else len(self.all_batches) for e in range(epochs))

    def resume(self, history):
        """The batches and reference of a fit resumed after ``history``'s epochs."""
        self.reference = max([r["reference"] for r in history.rank_search], default=-math.inf)
        self.last = history.rank_search[-1]["full"] if history.rank_search else None
        return self.train_batches if len(history) <= self.epochs[-1] else self.all_batches

    def run(self, model, guide, epoch, device):
        """
        Score the uncut network; unless it is the first score or the network gained more than
        the tolerance since the last one (a cut would cost capacity it is still using), search
        and cut the model and guide to the ranks found. The last search epoch always searches:
        a network that kept learning until then is cut there, or never. Returns the record.
        """
        *inputs, target = to_device(self.held_out, device)
        full = mean_score(model, guide, inputs, target)
        last_chance = epoch == self.epochs[-1]
        learning = not last_chance and (self.last is None or full - self.last > self.tolerance)
        self.last = full
        self.reference = max(self.reference, full)  # the best uncut score so far, this one included
        if learning:
            ranks = {name: t.layout.ranks for name, t in as_tensor_guide(model, guide).tensors().items()}
            scores = {"full": full, "found": full}
        else:
            ranks, scores = search_ranks(model, guide, inputs, target, self.tolerance, reference=self.reference)
            prune(model, guide, ranks=ranks)
        return {"epoch": epoch, "ranks": ranks, "reference": self.reference, **scores, "cut": not learning}
