"""
A Lightning module for tensorbayes models: SVI with Lightning's Trainer, callbacks, loggers
and strategies (DDP on several GPUs or machines, checkpointing, early stopping, ...).

:class:`TensorBayesModule` holds a model, its guide and the :class:`~tensorbayes.infer.SVIEngine`
that :func:`tensorbayes.fit` uses: its ``training_step`` is the engine's step (Lightning's manual
optimization), so that both have the same ELBO, schedule (the KL warm-up and ramp, the learning
rate's rise and decay, a learned noise held during the warm-up), λ M-step and checks. It logs
``elbo``, ``log_likelihood``, ``kl`` and ``beta`` per epoch, the rank of every bond
(``rank/<tensor>/<bond>``) at the end of every epoch, and ``val_accuracy`` (a classifier) or
``val_error`` for validation batches (``test_*`` under ``Trainer.test``). ``Trainer.predict`` gives
the posterior predictive mean and spread of each batch.

Under Lightning's DDP each process's loss is its shard's ELBO (likelihood scaled by
``num_data`` over the *local* batch), and DDP averages the gradients, which is the gradient of
the ELBO of the global batch; the λ updates then agree on every process. This module needs the
optional extra ``lightning`` (``pip install "tensorbayes[lightning]"``).

Usage::

    import lightning.pytorch as pl
    from tensorbayes.lightning import TensorBayesModule

    module = TensorBayesModule(model, guide, num_data=len(x_train), lr=1e-2)
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=256, shuffle=True)
    trainer = pl.Trainer(max_epochs=20)
    trainer.fit(module, loader)                       # strategy="ddp", devices=4, ... as usual
    tb.ranks(module.model, module.guide)
    trainer.test(module, test_loader)                 # test_accuracy
    (mean, std), *_ = trainer.predict(module, test_loader)
"""

import math

import torch

try:
    import lightning.pytorch as pl
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "tensorbayes.lightning needs Lightning: pip install 'tensorbayes[lightning]' (or pip install lightning)"
    ) from error

from .checks import check_int, check_number
from .guides.base import as_tensor_guide
from .infer import SVIEngine, predict
from .infer.checkpoint import shrink_to_ranks
from .infer.engine import SCALE_LR, Schedule, sparse_tables
from .infer.fit import default_schedule
from .models.tensor import low_rank_tensors
from .rank import held_out_metric, ranks

__all__ = ["TensorBayesModule"]


class TensorBayesModule(pl.LightningModule):
    """
    SVI of ``guide`` to the posterior of ``model`` as a :class:`lightning.pytorch.LightningModule`.

    Batches are tuples ``(*inputs, target)`` (what a :class:`~torch.utils.data.TensorDataset`
    gives); the model is called as ``model(*batch, num_data=num_data)``.

    :param model: a tensorbayes model (e.g. :class:`~tensorbayes.models.BayesianClassifier`),
        available as ``module.model``.
    :param guide: its guide (e.g. :class:`~tensorbayes.guides.MeanField`), as ``module.guide``.
    :param int num_data: the size of the training set (the ELBO's likelihood scale).
    :param float lr: the learning rate over the model's and the guide's parameters.
    :param int warmup: steps with no KL term, no λ update and a frozen noise (default: 20 % of
        the Trainer's steps, as :func:`tensorbayes.fit`).
    :param int ramp: steps over which β rises to ``kl_weight`` after the warm-up (default: 20 %).
    :param float kl_weight: the KL term's weight after the ramp (default 1: the ELBO; as
        :func:`tensorbayes.fit`).
    :param float lr_decay: the share of the Trainer's steps, at the end, over which the learning
        rate falls linearly to zero (default 0.5, as :func:`tensorbayes.fit`).
    :param float lambda_step: damping of the closed-form λ update, in (0, 1].
    :param float scale_lr: the share of ``lr`` at which the posterior scales are stepped (as
        :func:`tensorbayes.fit`).
    :param int num_particles: samples per ELBO estimate.
    :param int eval_samples: posterior draws per validation batch.
    :param int lr_warmup: steps over which the learning rate rises (default 0, as :func:`tensorbayes.fit`).
    :param optim: the optimizer, as :class:`~tensorbayes.infer.SVIEngine` takes it (default Adam).
    :param loss: the ELBO, as :class:`~tensorbayes.infer.SVIEngine` takes it.
    """

    def __init__(
        self,
        model,
        guide,
        num_data,
        lr=1e-2,
        warmup=None,
        ramp=None,
        lambda_step=0.1,
        num_particles=1,
        eval_samples=10,
        lr_decay=0.5,
        lr_warmup=0,
        optim=None,
        loss=None,
        scale_lr=SCALE_LR,
        kl_weight=1.0,
    ):
        super().__init__()
        for value, name in ((model, "model"), (guide, "guide")):
            if not callable(value):
                raise TypeError(
                    f"{name} must be a callable Pyro {name} (a torch.nn.Module), got {type(value).__name__}"
                )
        check_int(num_data, "num_data")  # the engine takes None (no scale); the module needs the data size
        check_int(eval_samples, "eval_samples")
        check_number(lr_decay, "lr_decay", "[0, 1]")
        check_number(kl_weight, "kl_weight", "(0, inf)", "a positive number")
        for value, name in ((warmup, "warmup"), (ramp, "ramp"), (lr_warmup, "lr_warmup")):
            if value is not None:
                check_int(value, name, low=0)
        self.model = model
        self.guide = guide
        self.engine = SVIEngine(
            model, guide, num_data, lr=lr, optim=optim, loss=loss, lambda_step=lambda_step, scale_lr=scale_lr,
            num_particles=num_particles, backward=self.manual_backward,
        )  # fmt: skip
        self.automatic_optimization = False  # the engine steps: one copy of the step for fit and Lightning
        self.num_data = int(num_data)
        self.eval_samples = eval_samples
        self._schedule_args = dict(
            warmup=warmup, ramp=ramp, lr_decay=lr_decay, lr_warmup=lr_warmup, kl_weight=kl_weight
        )

    # ----- optimization -----

    def configure_optimizers(self):
        """The engine's optimizer (Adam over the model's and the guide's parameters by default)."""
        if sparse_tables(self.model):
            raise ValueError(
                "TensorBayesModule steps one dense Adam: build the model's embedding tables with "
                "sparse=False, or train with tensorbayes.fit, which steps them with SparseAdam"
            )
        return self.engine.follow_parameters()

    def on_fit_start(self):
        """Fix the default warm-up and ramp to 20 % of the Trainer's steps each, and the decay of the
        learning rate to its last ``lr_decay`` share (none where the Trainer's steps are not known)."""
        total = self.trainer.estimated_stepping_batches
        args = self._schedule_args
        if math.isfinite(total):
            self.engine.schedule = default_schedule(int(total), False, **args)
        else:  # an endless Trainer: no default warm-up, ramp or decay
            self.engine.schedule = Schedule(
                warmup=args["warmup"] or 0, ramp=args["ramp"] or 0, lr_warmup=args["lr_warmup"],
                kl_weight=args["kl_weight"],
            )  # fmt: skip

    def on_train_start(self):
        self.engine.optimizer = self.optimizers()  # Lightning's wrapper: it counts the steps
        # the schedule's position (a run resumed from a checkpoint goes on from the checkpoint's step,
        # a new fit starts afresh: continuing a finished schedule would step with a negative rate), and
        # λ marked as that of the (perhaps just restored) parameters; Lightning restored the optimizer
        self.engine.load_state_dict({"optimizer": None, "num_steps": self.__dict__.pop("_resumed_steps", 0)})

    def on_save_checkpoint(self, checkpoint):
        """Save what Lightning does not: the engine's step count (the schedule's position) and the
        random state (the ELBO's draws), so that a resumed run makes the uninterrupted run's steps."""
        rng = {"torch": torch.get_rng_state()}  # tensors: Lightning loads checkpoints with weights_only
        if torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        ranks = {name: t.layout.ranks for name, t in low_rank_tensors(self.model).items()}  # pruned ones
        checkpoint["tensorbayes"] = {"num_steps": self.engine.num_steps, "rng": rng, "ranks": ranks}

    def on_load_checkpoint(self, checkpoint):
        saved = checkpoint.get("tensorbayes")
        if saved is None:  # not saved by this module
            return
        shrink_to_ranks(self.model, self.guide, saved["ranks"])  # a pruned model's state fits it
        self._resumed_steps = saved["num_steps"]  # set at the start of training (a new fit starts at 0)
        torch.set_rng_state(saved["rng"]["torch"])  # the ELBO's draws of the uninterrupted run
        if "cuda" in saved["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["rng"]["cuda"])

    def _hand_over(self, optimizer):
        """Hand Lightning the engine's ``optimizer`` where the engine rebuilt it (after pruning, or a
        guide's first call), so that Lightning counts its steps and checkpoints its state."""
        previous = self.optimizers()
        if optimizer is not previous:
            self.trainer.strategy.optimizers = [optimizer]
            self.engine.optimizer = self.optimizers()
            # the hooks by which Lightning's manual optimization counts this batch's step
            self.engine.optimizer._on_before_step = previous._on_before_step
            self.engine.optimizer._on_after_step = previous._on_after_step

    def training_step(self, batch, batch_idx):
        """One step of the engine; logs the ELBO, its parts and β."""
        batch = list(batch) if isinstance(batch, (tuple, list)) else [batch]
        beta = self.engine.beta
        self._hand_over(self.engine.follow_parameters())  # pruned since the last step
        loss = self.engine.step(*batch)
        self._hand_over(self.engine.optimizer)  # a guide that made its parameters in the step
        size = len(batch[0])
        likelihood = self.engine.log_likelihood
        self.log("elbo", -loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=size, sync_dist=True)
        self.log("log_likelihood", likelihood, on_step=False, on_epoch=True, batch_size=size, sync_dist=True)
        self.log("kl", likelihood + loss, on_step=False, on_epoch=True, batch_size=size, sync_dist=True)
        self.log("beta", float(beta), on_step=False, on_epoch=True, batch_size=size)

    def on_train_epoch_end(self):
        for name, found in self.ranks().items():
            for b, r in enumerate(found):
                self.log(f"rank/{name or 'tensor'}/{b}", float(r), sync_dist=True)  # the same on every process

    # ----- evaluation -----

    def validation_step(self, batch, batch_idx):
        """Posterior predictive accuracy (integer targets) or relative error of the batch, as ``val_*``."""
        self._score(batch, "val")

    def test_step(self, batch, batch_idx):
        """As :meth:`validation_step`, logged as ``test_accuracy`` or ``test_error`` (``Trainer.test``)."""
        self._score(batch, "test")

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        """
        ``(mean, std)`` of the posterior predictive over ``eval_samples`` draws for a batch
        (``Trainer.predict`` collects them): :func:`tensorbayes.predict` of the batch's tensors, the
        model's inputs. A batch that ends with its targets, as the training batches do, is passed
        whole: the model then conditions on them instead of drawing them, which leaves its output
        (class probabilities, a regression mean) as it is.
        """
        inputs = list(batch) if isinstance(batch, (tuple, list)) else [batch]
        return predict(self.model, self.guide, *inputs, num_samples=self.eval_samples)

    def _score(self, batch, stage):
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            got = f"a {type(batch).__name__}" + (f" of {len(batch)}" if isinstance(batch, (tuple, list)) else "")
            raise ValueError(
                f"{stage} batches must be tuples (*inputs, target), as a TensorDataset of inputs and targets "
                f"gives, got {got}"
            )
        *inputs, target = batch
        mean, _ = predict(self.model, self.guide, *inputs, num_samples=self.eval_samples)
        name, value = held_out_metric(mean, target)
        self.log(f"{stage}_{name}", value, batch_size=len(target), prog_bar=True, sync_dist=True)

    # ----- summaries -----

    def ranks(self):
        """:func:`tensorbayes.ranks` of the model and guide."""
        return ranks(self.model, self.guide)

    def lambdas(self):
        """λ per tensor and bond (a copy), for a guide with rank scales."""
        lambdas = as_tensor_guide(self.model, self.guide).lambdas()
        return {name: [v.clone() for v in vs] for name, vs in lambdas.items()}
