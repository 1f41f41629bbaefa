"""
A Lightning module for tensorbayes models: SVI with Lightning's Trainer, callbacks, loggers
and strategies (DDP on several GPUs or machines, checkpointing, early stopping, ...).

:class:`TensorBayesModule` holds a model and its guide. Its ``training_step`` is one step of
:func:`tensorbayes.fit`: the ELBO of :class:`~tensorbayes.infer.elbo.MeanFieldELBO` on the batch (the
likelihood scaled by ``num_data / batch`` through the model's data plate), the KL term weighted
by the warm-up β of :class:`~tensorbayes.infer.fit.Schedule`, a learned noise held during the
warm-up, and after every optimizer step the damped closed-form λ update of a
:class:`~tensorbayes.guides.MeanField` guide. It logs ``elbo``, ``log_likelihood``, ``kl`` and
``beta`` per epoch, the rank of every bond (``rank/<tensor>/<bond>``) at the end of every
epoch, and ``val_accuracy`` (a classifier) or ``val_error`` for validation batches.

Under Lightning's DDP each process's loss is its shard's ELBO (likelihood scaled by
``num_data`` over the *local* batch), and DDP averages the gradients, which is the gradient of
the ELBO of the global batch; the λ updates then agree on every process. This module needs the
optional extra ``lightning`` (``pip install "tensorbayes[lightning]"``).

Usage::

    import lightning.pytorch as pl
    from tensorbayes.lightning import TensorBayesModule

    module = TensorBayesModule(model, guide, num_data=len(x_train), lr=1e-2)
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=256, shuffle=True)
    pl.Trainer(max_epochs=20).fit(module, loader)     # strategy="ddp", devices=4, ... as usual
    tb.ranks(module.model, module.guide)
"""

import math

try:
    import lightning.pytorch as pl
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "tensorbayes.lightning needs Lightning: pip install 'tensorbayes[lightning]' (or pip install lightning)"
    ) from error

from .infer.elbo import MeanFieldELBO
from .infer.fit import (
    WARMUP_SHARE,
    KLScale,
    Schedule,
    _adam,
    _check_positive_int,
    _lambdas,
    _set_learning_rates,
    sparse_tables,
)
from .infer.predict import held_out_metric

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
    :param float lr: Adam's learning rate over the model's and the guide's parameters.
    :param int warmup: steps with no KL term, no λ update and a frozen noise (default: 20 % of
        the Trainer's steps, as :func:`tensorbayes.fit`).
    :param int ramp: steps over which β rises to 1 after the warm-up (default: 20 %).
    :param float lr_decay: the share of the Trainer's steps, at the end, over which the learning
        rate falls linearly to zero (default 0.5, as :func:`tensorbayes.fit`).
    :param float lambda_step: damping of the closed-form λ update, in (0, 1].
    :param int num_particles: samples per ELBO estimate.
    :param int eval_samples: posterior draws per validation batch.
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
    ):
        super().__init__()
        _check_positive_int(num_data, "num_data")
        _check_positive_int(num_particles, "num_particles")
        _check_positive_int(eval_samples, "eval_samples")
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        if not (isinstance(lambda_step, (int, float)) and 0 < lambda_step <= 1):
            raise ValueError(f"lambda_step must be in (0, 1], got {lambda_step!r}")
        if isinstance(lr_decay, bool) or not (isinstance(lr_decay, (int, float)) and 0 <= lr_decay <= 1):
            raise ValueError(f"lr_decay must be a number in [0, 1], got {lr_decay!r}")
        for value, name in ((warmup, "warmup"), (ramp, "ramp")):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a non-negative int or None, got {value!r}")
        self.model = model
        self.guide = guide
        self.num_data = int(num_data)
        self.lr = lr
        self.lambda_step = lambda_step
        self.lr_decay = lr_decay
        self.num_particles = num_particles
        self.eval_samples = eval_samples
        self._warmup, self._ramp = warmup, ramp
        self.schedule = Schedule(warmup=warmup or 0, ramp=ramp or 0)
        self.elbo = MeanFieldELBO(num_particles=num_particles)  # particles in turn, as tensorbayes.fit
        self.closed_form = getattr(guide, "lambda_update", None) == "closed_form"

    # ----- optimization -----

    def configure_optimizers(self):
        """Adam over the model's and the guide's parameters (a learned noise in its own group)."""
        if sparse_tables(self.model):
            raise ValueError(
                "TensorBayesModule steps one dense Adam: build the model's embedding tables with "
                "sparse=False, or train with tensorbayes.fit, which steps them with SparseAdam"
            )
        return _adam(self.model, self.guide, self.lr)

    def on_fit_start(self):
        """Fix the default warm-up and ramp to 20 % of the Trainer's steps each, and the decay of the
        learning rate to its last ``lr_decay`` share (none where the Trainer's steps are not known)."""
        total = self.trainer.estimated_stepping_batches
        known = math.isfinite(total)
        default = int(WARMUP_SHARE * total) if known else 0
        self.schedule = Schedule(
            warmup=default if self._warmup is None else self._warmup,
            ramp=default if self._ramp is None else self._ramp,
            total=int(total) if known else 0,
            decay=round(self.lr_decay * total) if known else 0,
        )

    def on_train_batch_start(self, batch, batch_idx):
        optimizer = self.optimizers(use_pl_optimizer=False)
        _set_learning_rates(
            optimizer,
            self.lr * self.schedule.lr_factor(self.global_step),
            hold_noise=self.global_step < self.schedule.warmup,
        )

    def training_step(self, batch, batch_idx):
        """The negative ELBO of the batch, its KL term weighted by the warm-up β."""
        batch = list(batch) if isinstance(batch, (tuple, list)) else [batch]
        beta = self.schedule.beta(self.global_step)
        with KLScale(beta):
            loss, likelihood = self.elbo.loss_and_log_likelihood(self.model, self.guide, *batch, num_data=self.num_data)
        size = len(batch[0])
        self.log("elbo", -loss.detach(), on_step=False, on_epoch=True, prog_bar=True, batch_size=size, sync_dist=True)
        self.log("log_likelihood", likelihood, on_step=False, on_epoch=True, batch_size=size, sync_dist=True)
        self.log("kl", likelihood + loss.detach(), on_step=False, on_epoch=True, batch_size=size, sync_dist=True)
        self.log("beta", float(beta), on_step=False, on_epoch=True, batch_size=size)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        """The closed-form λ update, after the optimizer step (``global_step`` counts it)."""
        if self.closed_form and self.global_step - 1 >= self.schedule.warmup:
            self.guide.update_lambdas(self.lambda_step)

    def on_train_epoch_end(self):
        for name, ranks in self.ranks().items():
            for b, r in enumerate(ranks):
                self.log(f"rank/{name or 'tensor'}/{b}", float(r), sync_dist=True)  # the same on every process

    # ----- evaluation -----

    def validation_step(self, batch, batch_idx):
        """Posterior predictive accuracy (integer targets) or relative error of the batch."""
        from .infer.predict import predict

        *inputs, target = batch
        mean, _ = predict(self.model, self.guide, *inputs, num_samples=self.eval_samples)
        name, value = held_out_metric(mean, target)
        self.log(f"val_{name}", value, batch_size=len(target), prog_bar=True, sync_dist=True)

    # ----- summaries -----

    def ranks(self):
        """:func:`tensorbayes.ranks` of the model and guide."""
        from .rank import ranks

        return ranks(self.model, self.guide)

    def lambdas(self):
        """λ per tensor and bond (a copy), for a :class:`~tensorbayes.guides.MeanField` guide."""
        return _lambdas(self.guide)
