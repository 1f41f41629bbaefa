"""
Fitting a tensorbayes model: stochastic variational inference over minibatches.

:func:`fit` is the training loop: it draws minibatches, computes the ELBO with
:class:`~tensorbayes.infer.elbo.MeanFieldELBO` (Pyro's ``TraceMeanField_ELBO``; the likelihood
scaled by ``num_data / batch`` through the model's data plate), steps a torch Adam optimizer
on the model's and the guide's parameters (and :class:`torch.optim.SparseAdam` on embedding
tables built with ``sparse=True``), ramps the KL term in after a warm-up, applies the
closed-form λ M-step, records a :class:`History`, stops with :class:`NonFiniteError`
naming the first site that turned NaN, and warns with :class:`DeadGradientWarning` of
parameters whose gradients stayed exactly zero for :data:`DEAD_GRADIENT_STEPS` steps after
nonzero ones. With ``distributed=True`` it runs data-parallel over the processes of a
:mod:`torch.distributed` group (see :mod:`tensorbayes.infer.distributed`).
"""

import math
import os
import tempfile
import warnings
from dataclasses import dataclass, field

import pyro
import torch
from pyro.poutine.messenger import Messenger
from tqdm.auto import tqdm

from . import distributed as _distributed
from .batches import TensorBatches, as_tensors, module_device, to_device
from .elbo import MeanFieldELBO
from .predict import held_out_metric

__all__ = ["DeadGradientWarning", "History", "NonFiniteError", "fit"]

#: The share of the steps the KL warm-up takes by default, and then the ramp.
WARMUP_SHARE = 0.2

#: The default share of the data :func:`fit` holds out for its rank search.
DEFAULT_VALIDATION = 0.1

#: The rank search runs at the ends of the epochs between the end of the KL ramp and this share
#: of the steps, so that the epochs after it train the cut network.
SEARCH_UNTIL = 0.8

#: The held-out score the rank search may give up for smaller ranks: half a point of accuracy
#: for a classifier, 0.005 of relative error otherwise (:func:`tensorbayes.rank.search_ranks`).
DEFAULT_TOLERANCE = 0.005

#: Steps in a row with an exactly zero gradient, after nonzero ones, before :func:`fit` warns.
DEAD_GRADIENT_STEPS = 100


class NonFiniteError(FloatingPointError):
    """The ELBO or a gradient became NaN or infinite during :func:`fit`."""


class DeadGradientWarning(RuntimeWarning):
    """
    Parameters that had gradients got exactly zero ones for :data:`DEAD_GRADIENT_STEPS` steps in
    a row during :func:`fit`: the loss no longer depends on them, as after every unit of a ReLU
    layer went dark. A fit that goes on from there predicts without that part of the model (a
    classifier whose hidden units all died predicts a constant). Make it an error with
    ``warnings.simplefilter("error", tb.infer.DeadGradientWarning)``.

    :ivar list parameters: the parameters' names, ``"model.<name>"`` or ``"guide.<name>"``.
    """

    def __init__(self, message, parameters=()):
        super().__init__(message)
        self.parameters = list(parameters)


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
    The default schedule of the SVI loop, in steps.

    For ``warmup`` steps the KL term is off (β = 0), λ is not updated and a learned noise is
    held at its initial value, so that the factors first fit the data. β then ramps linearly
    to 1 over ``ramp`` steps; the λ M-step and the noise start with it. The learning rate
    rises linearly over the first ``lr_warmup`` steps, is constant, and falls linearly over
    the last ``decay`` of the ``total`` steps.
    """

    warmup: int
    ramp: int
    total: int = 0
    decay: int = 0
    lr_warmup: int = 0

    def beta(self, step):
        if step < self.warmup:
            return 0.0
        return min(1.0, (step - self.warmup + 1) / max(1, self.ramp))

    def lr_factor(self, step):
        """The learning rate's share at ``step``: rising linearly from ``1 / lr_warmup`` at the
        first step to 1, then falling linearly over the last ``decay`` steps to ``1 / decay`` at
        the last one."""
        rise = min(1.0, (step + 1) / self.lr_warmup) if self.lr_warmup else 1.0
        return rise * (min(1.0, (self.total - step) / self.decay) if self.decay else 1.0)


def _set_learning_rates(optimizer, lr, hold_noise):
    """Every group at ``lr``, but the learned noise's (group 1) at 0 while ``hold_noise``."""
    for i, group in enumerate(optimizer.param_groups):
        group["lr"] = 0.0 if i == 1 and hold_noise else lr


def _check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


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


def fit(
    model,
    guide,
    data,
    *,
    epochs=100,
    batch_size=1024,
    lr=None,
    lr_decay=0.5,
    lr_warmup=0,
    warmup=None,
    ramp=None,
    lambda_step=0.1,
    num_particles=1,
    init="auto",
    init_sweeps=None,
    eval_data=None,
    eval_samples=20,
    checkpoint=None,
    resume=False,
    callbacks=(),
    trace_every=None,
    seed=None,
    progress=True,
    distributed=False,
    tolerance=DEFAULT_TOLERANCE,
    validation=DEFAULT_VALIDATION,
):
    """
    Fit ``guide`` to the posterior of ``model`` by SVI on minibatches of ``data``.

    The model is called as ``model(*batch, num_data=N)``: it must put its likelihood under a
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
    :param float lr: Adam's learning rate, SparseAdam's too for the model's sparse embedding
        tables (default 0.01, or 0.001 after the closed-form start,
        whose fit larger steps would first undo).
    :param float lr_decay: the share of the steps, at the end of the fit, over which the learning
        rate falls linearly to zero, in ``[0, 1]`` (default 0.5: held for the first half, then
        annealed). SVI's steps are noisy, and a constant rate leaves the factors as noisy as
        its steps: on Fashion-MNIST a constant rate cost about two points of accuracy.
    :param int lr_warmup: steps over which the learning rate rises linearly from ``lr /
        lr_warmup`` to ``lr`` (default 0: none). Adam's first steps move every parameter by
        about ``lr`` at once; in a wide ReLU layer that can switch most units off for good
        within a few steps.
    :param int warmup: steps with no KL term and no λ update (default: 20 % of the steps).
    :param int ramp: steps over which β rises from 0 to 1 after the warm-up (default: 20 %).
    :param float lambda_step: damping of the closed-form λ update, in (0, 1].
    :param int num_particles: samples per ELBO estimate, drawn one after the other.
    :param str init: "auto" (default) starts a :class:`~tensorbayes.models.TensorCompletion`
        with a :class:`~tensorbayes.guides.MeanField` guide by closed-form coordinate ascent
        (:func:`~tensorbayes.infer.cavi.coordinate_ascent`), prunes the rank indices it
        switched off and re-fits at the pruned ranks before SVI, which then needs no warm-up;
        "cavi" insists on it, "none" goes straight to SVI.
    :param int init_sweeps: coordinate-ascent sweeps before pruning, half as many after (default:
        :data:`~tensorbayes.infer.cavi.DEFAULT_SWEEPS` of the format).
    :param tuple eval_data: held-out ``(*inputs, target)`` evaluated after every epoch with
        :func:`~tensorbayes.infer.predict` (``eval_samples`` draws): accuracy when the model
        returns class probabilities, relative error otherwise.
    :param checkpoint: a file written after every epoch (to a temporary file, then renamed, so
        a crash never leaves it half-written): model, guide, optimizer, random states, history.
    :param bool resume: continue from ``checkpoint`` if it exists (the same seed and data then
        give the same parameters as an uninterrupted run).
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
        learning is not cut), :func:`~tensorbayes.rank.search_ranks` finds the smallest ranks,
        along the posterior's ordering of the rank indices, whose network scores within
        ``tolerance`` of the best score of the uncut network so far, and the model and guide
        are cut to them
        (:func:`~tensorbayes.prune` with ``ranks=``; the optimizer follows), so that later
        epochs run at the smaller ranks. After the last search the held-out share joins the
        training data. Each search is recorded in ``history.rank_search``. None runs where the
        held-out share would hold fewer than ``2 / tolerance`` examples (400 at the default:
        one example then weighs at most half the tolerance), in a fit too short for a search
        epoch, nor with a DataLoader (which warns: pass tensors, or
        ``tolerance=None``). With ``distributed=True`` every process runs the same search.
    :param float validation: the share of ``data`` held out for the rank search, in (0, 0.5].
    :returns: the :class:`History` of the fit.
    """
    for value, name in (
        (epochs, "epochs"),
        (batch_size, "batch_size"),
        (num_particles, "num_particles"),
        (eval_samples, "eval_samples"),
    ):
        _check_positive_int(value, name)
    if lr is not None and not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if isinstance(lr_decay, bool) or not (isinstance(lr_decay, (int, float)) and 0 <= lr_decay <= 1):
        raise ValueError(f"lr_decay must be a number in [0, 1], got {lr_decay!r}")
    if isinstance(lr_warmup, bool) or not isinstance(lr_warmup, int) or lr_warmup < 0:
        raise ValueError(f"lr_warmup must be a non-negative int (steps), got {lr_warmup!r}")
    if not (isinstance(lambda_step, (int, float)) and 0 < lambda_step <= 1):
        raise ValueError(f"lambda_step must be in (0, 1], got {lambda_step!r}")
    if init not in ("auto", "cavi", "none"):
        raise ValueError(f"init must be 'auto', 'cavi' or 'none', got {init!r}")
    if init_sweeps is not None:
        _check_positive_int(init_sweeps, "init_sweeps")
    if trace_every is not None:
        _check_positive_int(trace_every, "trace_every")
    if not all(callable(c) for c in callbacks):
        raise TypeError("callbacks must be a sequence of callables callback(epoch, history)")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs a checkpoint path")
    if not isinstance(distributed, bool):
        raise TypeError(f"distributed must be True or False, got {distributed!r}")
    if tolerance is not None and (
        isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 < tolerance < 1
    ):
        raise ValueError(f"tolerance must be a number in (0, 1) or None, got {tolerance!r}")
    if isinstance(validation, bool) or not isinstance(validation, (int, float)) or not 0 < validation <= 0.5:
        raise ValueError(f"validation must be a share of the data in (0, 0.5], got {validation!r}")
    if eval_data is not None:
        eval_data, _ = as_tensors(eval_data, "eval_data")
        if len(eval_data) < 2:
            raise ValueError("eval_data must be (*inputs, target): at least two tensors")
    if distributed and sparse_tables(model):
        raise ValueError(
            "distributed=True averages dense gradients only: build the model's embedding tables with sparse=False"
        )
    ctx = _distributed.init() if distributed else None
    if ctx is not None:
        seed = _distributed.broadcast_seed(seed, ctx, [model, guide])  # every rank draws the same batches and samples
    generator = torch.Generator().manual_seed(seed if seed is not None else int(torch.randint(2**31, ())))
    if isinstance(data, torch.utils.data.DataLoader):
        if ctx is not None:
            _distributed.check_loader(data, ctx)
        batches = _LoaderBatches(data)
    else:
        batches = (
            TensorBatches(data, batch_size, generator)
            if ctx is None
            else _distributed.ShardedTensorBatches(data, batch_size, generator, ctx)
        )
        if hasattr(model, "check_data"):
            batches.data = tuple(t for t in model.check_data(*batches.data) if t is not None)
    search = None
    if tolerance is not None and batches.data is None:
        warnings.warn(
            "fit: no rank search over a DataLoader (it cannot hold a share out): pass the data as tensors, "
            "or tolerance=None to keep the ranks",
            stacklevel=2,
        )
    elif tolerance is not None:
        search = _RankSearch.plan(batches, epochs, validation, tolerance, generator, warmup, ramp, ctx)
        if search is not None:
            batches = search.train_batches
    _check_finite_parameters(model, guide)
    device = module_device(model, guide)  # every batch is moved there, as the held-out data
    if eval_data is not None:
        eval_data = to_device(eval_data, device)
    if seed is not None:
        pyro.set_rng_seed(seed)

    state = _load_checkpoint(checkpoint, model, guide) if resume and os.path.exists(checkpoint) else None
    if state is None:
        initialized = (
            init != "none"
            and batches.data is not None
            and _coordinate_ascent_init(model, guide, to_device(batches.data, device), init, init_sweeps, progress)
        )
    else:
        initialized = state["initialized"]
    if ctx is not None:
        _distributed.broadcast_state([model, guide], ctx)  # as DDP: every rank starts from rank 0's
    if lr is None:
        lr = 1e-3 if initialized else 1e-2
    total = epochs * len(batches) if search is None else search.total_steps(epochs)
    default = 0 if initialized else int(WARMUP_SHARE * total)
    schedule = Schedule(
        warmup=default if warmup is None else warmup,
        ramp=default if ramp is None else ramp,
        total=total,
        decay=round(lr_decay * total),
        lr_warmup=lr_warmup,
    )

    elbo = MeanFieldELBO(num_particles=num_particles)  # particles in turn: the models hold no particle dim
    optimizer = _adam(model, guide, lr)
    closed_form = getattr(guide, "lambda_update", None) == "closed_form"
    history, step, first_epoch = History(), 0, 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        history, step, first_epoch = state["history"], state["step"], state["epoch"] + 1
        if search is not None:
            batches = search.resume(history)
        generator.set_state(state["generator"])
        pyro.util.set_rng_state(state["rng"])
    trace_every = trace_every or max(1, len(batches) // 10)
    main = ctx is None or ctx.is_main
    dead_gradients = _DeadGradients()
    bar = tqdm(total=total, initial=step, disable=not (progress and main), desc="fit", leave=False)
    for epoch in range(first_epoch, epochs):
        epoch_loss = epoch_likelihood = 0.0
        for batch, share in _shares(batches, epoch):
            batch = to_device(batch, device)
            beta = schedule.beta(step)
            _set_learning_rates(optimizer, lr * schedule.lr_factor(step), hold_noise=step < schedule.warmup)
            loss, likelihood, norms = _step(
                model,
                guide,
                elbo,
                optimizer,
                batch,
                batches.num_data,
                beta,
                step,
                epoch,
                **_parallel(ctx, optimizer, share),
            )
            if main:  # the gradients are the same on every rank: warn once
                dead_gradients.update(norms, step, epoch)
            if closed_form and step >= schedule.warmup:
                guide.update_lambdas(lambda_step)
            epoch_loss += loss
            epoch_likelihood += likelihood
            step += 1
            if step % trace_every == 0 and hasattr(guide, "lambdas"):
                history.lambda_trace["step"].append(step)
                history.lambda_trace["lambdas"].append(_lambdas(guide))
            bar.update()
        if ctx is not None:
            _distributed.check_in_sync([model, guide], ctx, f"after epoch {epoch}")
        _record(
            history,
            model,
            guide,
            -epoch_loss / len(batches),
            epoch_likelihood / len(batches),
            beta,
            eval_data,
            eval_samples,
            ctx,
        )
        history.lr.append(optimizer.param_groups[0]["lr"])
        if search is not None and epoch in search.epochs:  # the same on every rank: no communication
            history.rank_search.append(search.run(model, guide, epoch, device))
            if _stale(optimizer, model, guide):
                optimizer = _adam(model, guide, lr, previous=optimizer)
        if search is not None and epoch >= search.epochs[-1]:
            batches = search.all_batches  # the held-out share joins the training data
        bar.set_postfix(elbo=f"{history.elbo[-1]:.4g}", beta=f"{beta:.2f}")
        history.steps = step
        if checkpoint is not None and main:
            _save_checkpoint(checkpoint, model, guide, optimizer, history, step, epoch, generator, initialized)
        if checkpoint is not None and ctx is not None:
            ctx.barrier()  # no rank runs ahead of a checkpoint being written
        for callback in callbacks if main else ():
            callback(epoch, history)
        if _stale(optimizer, model, guide):  # a callback pruned: optimize the new parameters
            optimizer = _adam(model, guide, lr, previous=optimizer)
    bar.close()
    return history


def _adam(model, guide, lr, previous=None):
    """
    Adam over the guide's and the model's parameters, a learned noise in a group of its own
    (held during the warm-up), and :class:`torch.optim.SparseAdam` over the weights of
    embedding tables built with ``sparse=True`` (their gradients hold only the rows a batch
    looked up), the two stepped as one :class:`SparseAndDenseAdam`. With ``previous``,
    parameters it already optimized keep their state and the noise group its current learning
    rate; a parameter that pruning replaced starts with a fresh state: its moment estimates
    belonged to the old gauge, and carried over they slowed the cut network's recovery.
    """
    tables = sparse_tables(model)
    table_ids = {id(t) for t in tables}
    noise = [p for name, p in model.named_parameters() if name.endswith("log_noise")]
    others = [p for name, p in model.named_parameters() if not name.endswith("log_noise") and id(p) not in table_ids]
    dense = torch.optim.Adam([{"params": list(guide.parameters()) + others}, {"params": noise}], lr=lr)
    if previous is not None:
        old_dense = previous.dense if isinstance(previous, SparseAndDenseAdam) else previous
        dense.param_groups[1]["lr"] = old_dense.param_groups[1]["lr"]
        for group, old_group in zip(dense.param_groups, old_dense.param_groups):
            for p, old in zip(group["params"], old_group["params"]):
                if p is old and old in old_dense.state:  # a parameter pruning replaced starts afresh
                    dense.state[p] = old_dense.state[old]
    if not tables:
        return dense
    sparse = torch.optim.SparseAdam(tables, lr=lr)
    if isinstance(previous, SparseAndDenseAdam):  # pruning leaves the embedding tables as they are
        sparse.load_state_dict(previous.sparse.state_dict())
    return SparseAndDenseAdam(dense, sparse)


def sparse_tables(model):
    """The weights of ``model``'s :class:`torch.nn.Embedding` and :class:`torch.nn.EmbeddingBag`
    tables built with ``sparse=True``, whose gradients are sparse tensors."""
    return [
        m.weight
        for m in model.modules()
        if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag)) and m.sparse and m.weight.requires_grad
    ]


class SparseAndDenseAdam:
    """
    :class:`torch.optim.Adam` over dense parameters and :class:`torch.optim.SparseAdam` over
    sparse embedding tables, stepped, zeroed, saved and restored as one optimizer. Its
    ``param_groups`` are Adam's followed by SparseAdam's, so the group indices of a model
    without sparse tables keep their meaning.

    :param torch.optim.Adam dense: the optimizer of the dense parameters.
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


def _stale(optimizer, model, guide):
    """Whether the model's or guide's parameters are no longer those ``optimizer`` steps."""
    stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
    return stepped != {id(p) for p in list(guide.parameters()) + list(model.parameters())}


def _shares(batches, epoch):
    """``(batch, likelihood share)`` pairs of one epoch (the share is 1 but on a sharded rank)."""
    if isinstance(batches, _distributed.ShardedTensorBatches):
        return iter(batches)
    sampler = getattr(getattr(batches, "loader", None), "sampler", None)
    if isinstance(sampler, torch.utils.data.DistributedSampler):
        sampler.set_epoch(epoch)
    return ((batch, 1.0) for batch in batches)


def _parallel(ctx, optimizer, share):
    """The extra arguments of :func:`_step` on a rank of a distributed fit (none on one process)."""
    if ctx is None:
        return {}
    params = [p for group in optimizer.param_groups for p in group["params"]]

    def reduce(loss, likelihood):
        return _distributed.all_reduce_step(params, loss, likelihood, ctx)

    return {"share": share, "reduce": reduce}


def _step(model, guide, elbo, optimizer, batch, num_data, beta, step, epoch, *, share=1.0, reduce=None):
    """
    One SVI step; returns the loss and the log-likelihood, averaged over the particles, and the
    norms of the gradients (:func:`_gradient_norms`). Stops with :class:`NonFiniteError` naming
    where a NaN began. On a rank of a distributed fit the likelihood is weighted by the rank's
    ``share`` of the global batch and ``reduce`` averages the gradients, the loss and the
    likelihood over the ranks before the finiteness checks.
    """
    try:
        with KLScale(beta), _distributed.LikelihoodScale(share):
            loss, likelihood = elbo.loss_and_log_likelihood(model, guide, *batch, num_data=num_data)
    except ValueError as error:  # Pyro's validation refuses a NaN parameter of a distribution
        if _non_finite_parameter(model, guide) is None:
            raise
        raise NonFiniteError(_diagnose(model, guide, batch, num_data, step, epoch)) from error
    optimizer.zero_grad()
    loss.backward()
    value, likelihood = (loss.item(), float(likelihood)) if reduce is None else reduce(loss, float(likelihood))
    if not math.isfinite(value):  # on every rank alike: a reduced loss is the same everywhere
        raise NonFiniteError(_diagnose(model, guide, batch, num_data, step, epoch))
    norms = _gradient_norms(model, guide, step, epoch)
    optimizer.step()
    return value, likelihood, norms


def _lambdas(guide):
    return {name: [v.clone() for v in vs] for name, vs in guide.lambdas().items()}


def _record(history, model, guide, elbo, likelihood, beta, eval_data, eval_samples, ctx=None):
    """Append one epoch's summaries to ``history``."""
    from ..rank import ranks
    from .predict import predict

    history.elbo.append(elbo)
    history.log_likelihood.append(likelihood)
    history.kl.append(likelihood - elbo)
    history.beta.append(beta)
    history.noise.append(model.noise.item() if hasattr(model, "noise") else None)
    if hasattr(guide, "lambdas"):
        history.lambdas.append(_lambdas(guide))
        history.ranks.append(ranks(model, guide))
    if eval_data is not None and ctx is not None:
        name, value = _distributed.evaluate(model, guide, eval_data, eval_samples, ctx)
        getattr(history, name).append(value)
    elif eval_data is not None:
        *inputs, target = eval_data
        mean, _ = predict(model, guide, *inputs, num_samples=eval_samples)
        name, value = held_out_metric(mean, target)
        getattr(history, name).append(value.item())


def _save_checkpoint(path, model, guide, optimizer, history, step, epoch, generator, initialized):
    """Write atomically: to a temporary file in the same folder, then rename over ``path``."""
    state = {
        "model": model.state_dict(),
        "guide": guide.state_dict(),
        "optimizer": optimizer.state_dict(),
        "ranks": {name: t.layout.ranks for name, t in _low_rank_tensors(model).items()},
        "history": history,
        "step": step,
        "epoch": epoch,
        "generator": generator.get_state(),
        "rng": pyro.util.get_rng_state(),
        "initialized": initialized,
    }
    folder = os.path.dirname(os.path.abspath(path))
    handle, tmp = tempfile.mkstemp(dir=folder, prefix=".checkpoint-", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as f:
            torch.save(state, f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _load_checkpoint(path, model, guide):
    """Restore model and guide (shrinking them first to the checkpoint's pruned ranks)."""
    try:
        state = torch.load(path, weights_only=False)
    except Exception as error:
        raise ValueError(f"checkpoint {path!r} cannot be read: {error}") from error
    _check_checkpoint_fits(path, state, model, guide)  # before anything changes
    for name, tensor in _low_rank_tensors(model).items():
        ranks = state["ranks"].get(name)
        if ranks is not None and tuple(ranks) != tensor.layout.ranks:
            keep = [torch.arange(r, device=tensor.device) for r in ranks]
            guide.truncate(tensor, keep)
            tensor.set_layout(tensor.layout.with_ranks(ranks))
    model.load_state_dict(state["model"])
    guide.load_state_dict(state["guide"])
    return state


def _describe(tensor):
    layout = tensor.layout
    return (
        f"a {layout.name} tensor of shape {layout.shape} with {layout.num_bonds} "
        f"bond{'s' if layout.num_bonds != 1 else ''} at ranks {layout.ranks}"
    )


def _listed_shapes(shapes):
    return ", ".join(f"{key} {tuple(shape)}" for key, shape in list(shapes.items())[:4]) + (
        f" and {len(shapes) - 4} more" if len(shapes) > 4 else ""
    )


def _check_checkpoint_fits(path, state, model, guide):
    """
    Raise a :class:`ValueError` naming the first mismatch between the checkpoint ``state``
    and the model and guide (a tensor of another format, shape or ranks; another network),
    before either is changed. A checkpoint may hold lower ranks than the model (pruned): the
    model is shrunk to them; it may not hold more bonds, other bonds or higher ranks.
    """
    from ..guides.meanfield import _key

    fields = ("model", "guide", "ranks")
    if not isinstance(state, dict) or any(not isinstance(state.get(k), dict) for k in fields):
        raise ValueError(f"checkpoint {path!r} is not a tb.fit checkpoint: it lacks {', '.join(fields)}")
    fits = f"checkpoint {path!r} does not fit this model"
    tensors, saved = _low_rank_tensors(model), state["ranks"]
    extra = sorted(set(saved) - set(tensors))
    missing = sorted(set(tensors) - set(saved))
    if extra or missing:
        raise ValueError(
            f"{fits}: the checkpoint holds low-rank tensors {sorted(saved)}, the model "
            f"{sorted(tensors)} (missing from the checkpoint: {missing}, not in the model: {extra})"
        )
    expected_guide = {key: tuple(value.shape) for key, value in guide.state_dict().items() if torch.is_tensor(value)}
    for name, tensor in tensors.items():
        ranks = tuple(int(r) for r in saved[name])
        layout = tensor.layout
        if len(ranks) != layout.num_bonds:
            raise ValueError(
                f"{fits}: tensor {name!r}: the checkpoint holds {len(ranks)} bond"
                f"{'s' if len(ranks) != 1 else ''} at ranks {ranks}, the model {_describe(tensor)}"
            )
        if any(r < 1 or r > m for r, m in zip(ranks, layout.ranks)):
            raise ValueError(
                f"{fits}: tensor {name!r}: the checkpoint holds ranks {ranks}, the model "
                f"{_describe(tensor)} (a model is shrunk to a checkpoint's ranks, never grown)"
            )
        prefix = f"posteriors.{_key(name)}."
        shapes = layout.with_ranks(ranks).factor_shapes
        for key in expected_guide:
            if not key.startswith(prefix):
                continue
            head, _, tail = key[len(prefix) :].rpartition(".")
            if head in ("locs", "raw_scales"):
                expected_guide[key] = shapes[int(tail)]
            elif head in ("log_lambdas", "raw_lambda_scales"):
                expected_guide[key] = (ranks[int(tail)],)
            elif tail.startswith("log_lambda"):
                expected_guide[key] = (ranks[int(tail[len("log_lambda") :])],)
        factors = {k: tuple(v.shape) for k, v in state["guide"].items() if k.startswith(prefix + "locs.")}
        wanted = {k: v for k, v in expected_guide.items() if k.startswith(prefix + "locs.")}
        if factors != wanted:
            raise ValueError(
                f"{fits}: tensor {name!r}: the checkpoint's factors are {_listed_shapes(factors)}; "
                f"the model's, {_describe(tensor)} shrunk to the checkpoint's ranks {ranks}, "
                f"would be {_listed_shapes(wanted)}"
            )
    for what, expected in (
        ("model", {k: tuple(v.shape) for k, v in model.state_dict().items() if torch.is_tensor(v)}),
        ("guide", expected_guide),
    ):
        found = {k: tuple(v.shape) for k, v in state[what].items() if torch.is_tensor(v)}
        if set(found) != set(expected) or any(found[k] != expected[k] for k in expected):
            only_saved = {k: found[k] for k in sorted(set(found) - set(expected))}
            only_here = {k: expected[k] for k in sorted(set(expected) - set(found))}
            differ = sorted(k for k in set(found) & set(expected) if found[k] != expected[k])
            parts = (
                [f"{k}: the checkpoint's {found[k]}, the {what}'s {expected[k]}" for k in differ[:4]]
                + ([f"only in the checkpoint: {_listed_shapes(only_saved)}"] if only_saved else [])
                + ([f"only in the {what}: {_listed_shapes(only_here)}"] if only_here else [])
            )
            raise ValueError(f"{fits}: the {what}'s state differs: " + "; ".join(parts))


def _low_rank_tensors(model):
    from ..guides.meanfield import low_rank_tensors

    return low_rank_tensors(model)


def _coordinate_ascent_init(model, guide, data, init, sweeps, progress):
    """Run the closed-form initialization where the model and guide allow it."""
    from ..guides import MeanField
    from ..models import TensorCompletion
    from ..rank import prune
    from .cavi import DEFAULT_SWEEPS, coordinate_ascent

    fits = isinstance(model, TensorCompletion) and isinstance(guide, MeanField) and guide.lambda_update == "closed_form"
    if not fits:
        if init == "cavi":
            raise ValueError("init='cavi' needs a TensorCompletion model and a MeanField guide with closed-form λ")
        return False
    sweeps = sweeps or DEFAULT_SWEEPS[model.tensor.layout.name]
    coordinate_ascent(model, guide, *data, sweeps=sweeps, progress=progress)
    prune(model, guide)
    coordinate_ascent(model, guide, *data, sweeps=max(1, sweeps // 2), warmup=0, progress=progress)
    return True


def _non_finite_parameter(model, guide):
    """``(owner, name)`` of the first parameter holding NaN or infinite values, or ``None``."""
    for owner, module in (("guide", guide), ("model", model)):
        for name, p in module.named_parameters():
            if not torch.isfinite(p).all():
                return owner, name
    return None


def _gradient_norms(model, guide, step, epoch):
    """
    ``{"model.<name>" or "guide.<name>": 2-norm of its gradient}`` over the parameters that have
    a gradient; stops with :class:`NonFiniteError` naming the first whose gradient is not finite.
    """
    grads = []
    for owner, module in (("guide", guide), ("model", model)):
        for name, p in module.named_parameters():
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                p.grad = p.grad.coalesce()  # once: SparseAdam's own coalesce then finds it done
            grads.append((owner, name, p.grad.values() if p.grad.is_sparse else p.grad))
    if not grads:
        return {}
    # One pass per gradient and one read to the host: a 2-norm is finite when every entry is
    # (torch.isfinite would write a mask as large as the gradient, dear on a DLRM's
    # tables). A norm whose squares overflowed is told apart from a NaN or infinite entry by the
    # exact check.
    norms = torch.stack([torch.linalg.vector_norm(g.detach()).float() for *_, g in grads]).tolist()
    if not all(math.isfinite(n) for n in norms):
        for owner, name, grad in grads:
            if not torch.isfinite(grad).all():
                raise NonFiniteError(
                    f"gradient is not finite at step {step} (epoch {epoch}): {owner} parameter '{name}'"
                )
    return {f"{owner}.{name}": norm for (owner, name, _), norm in zip(grads, norms)}


class _DeadGradients:
    """
    Per parameter, the steps in a row whose gradient was exactly zero after a nonzero one; warns
    with :class:`DeadGradientWarning` when a run reaches :data:`DEAD_GRADIENT_STEPS`. A parameter
    that never had a gradient (one that only a KL term still off reaches) is not counted.
    """

    def __init__(self):
        self.zero_steps = {}  # parameters that had a nonzero gradient: steps at zero since

    def update(self, norms, step, epoch):
        for name, norm in norms.items():
            if norm != 0:
                self.zero_steps[name] = 0
            elif name in self.zero_steps:
                self.zero_steps[name] += 1
        dead = [name for name, steps in self.zero_steps.items() if steps == DEAD_GRADIENT_STEPS]
        if dead:
            message = (
                f"fit: at step {step} (epoch {epoch}), {len(dead)} parameter{'s' if len(dead) > 1 else ''} "
                f"had an exactly zero gradient for {DEAD_GRADIENT_STEPS} steps in a row, after nonzero "
                f"ones: {_listed(dead)}. The loss no longer depends on them (as when every unit of a ReLU "
                "layer has gone dark)"
            )
            warnings.warn(DeadGradientWarning(message, dead), stacklevel=3)


def _listed(names, most=4):
    shown = ", ".join(names[:most])
    return shown if len(names) <= most else f"{shown} and {len(names) - most} more"


def _check_finite_parameters(model, guide):
    found = _non_finite_parameter(model, guide)
    if found is not None:
        raise NonFiniteError(f"before fitting: {found[0]} parameter '{found[1]}' holds NaN or infinite values")


def _diagnose(model, guide, batch, num_data, step, epoch):
    """Name the first parameter or sample site that is not finite."""
    where = f"at step {step} (epoch {epoch})"
    found = _non_finite_parameter(model, guide)
    if found is not None:
        return f"ELBO is not finite {where}: {found[0]} parameter '{found[1]}' holds NaN or infinite values"
    with torch.no_grad():
        guide_trace = pyro.poutine.trace(guide).get_trace(*batch, num_data=num_data)
        model_trace = pyro.poutine.trace(pyro.poutine.replay(model, trace=guide_trace)).get_trace(
            *batch, num_data=num_data
        )
        for trace, owner in ((guide_trace, "guide"), (model_trace, "model")):
            for name, site in trace.nodes.items():
                if site["type"] != "sample":
                    continue
                if not torch.isfinite(site["value"]).all():
                    return f"ELBO is not finite {where}: the {owner}'s sample site '{name}' has a NaN or infinite value"
                log_p = site["fn"].log_prob(site["value"])
                if not torch.isfinite(log_p).all():
                    return f"ELBO is not finite {where}: the {owner}'s log density at site '{name}' is not finite"
    return f"ELBO is not finite {where}, though every parameter and site is finite (overflow in the loss)"


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
        qualifies (or the data are too few to hold a share out)."""
        n = batches.num_data
        n_held = int(round(validation * n))
        if n_held < math.ceil(2 / tolerance) or n - n_held < 1:  # too few to resolve the tolerance
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
        and cut the model and guide to the ranks found. Returns the record.
        """
        from ..rank import mean_score, prune, search_ranks

        *inputs, target = to_device(self.held_out, device)
        full = mean_score(model, guide, inputs, target)
        learning = self.last is None or full - self.last > self.tolerance
        self.last = full
        if learning:
            ranks = {name: t.layout.ranks for name, t in _low_rank_tensors(model).items()}
            scores = {"full": full, "found": full}
        else:
            ranks, scores = search_ranks(model, guide, inputs, target, self.tolerance, reference=self.reference)
            prune(model, guide, ranks=ranks)
        self.reference = max(self.reference, full)
        return {"epoch": epoch, "ranks": ranks, "reference": self.reference, **scores, "cut": not learning}
