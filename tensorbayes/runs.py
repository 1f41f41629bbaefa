"""
Training runs of tensorized classifiers, as the ``tensorbayes train`` command makes them.

A run is a folder. :func:`train` builds a Bayesian tensorized classifier for a data set (the
generated teacher-student task or Fashion-MNIST), fits it with :func:`~tensorbayes.fit`
(checkpointing every epoch, so an interrupted run resumes), reads and prunes the ranks,
exports the compact network and writes, beside the checkpoint:

- ``config.json``: the settings of the run (what :func:`build` needs to rebuild the model);
- ``checkpoint.pt``: :func:`~tensorbayes.fit`'s checkpoint after the last epoch (before pruning);
- ``summary.json``: accuracy (posterior predictive and exported network), ranks, parameter
  counts and compression, the time per epoch.

:func:`load_run` rebuilds the model and guide from a run folder and restores them, for
``tensorbayes report`` and notebooks.

Usage::

    from tensorbayes.runs import RunConfig, train, load_run
    summary = train(RunConfig(data="teacher", format="ttm", max_rank=6, epochs=20), "runs/ttm")
    run = load_run("runs/ttm")      # run.model, run.guide, run.history, run.config, run.summary
"""

import dataclasses
import json
import math
import os
import time
import warnings
from dataclasses import dataclass

import pyro
import torch
from pyro.nn import PyroModule

from .checks import check_int, check_number
from .compact import export
from .data import load_fashion_mnist, teacher_student
from .formats import FORMATS
from .guides import MeanField
from .infer import fit, load_checkpoint
from .infer.distributed import is_main
from .models import BayesianClassifier, TensorizedLinear, tensorize
from .models.tensor import low_rank_tensors
from .priors import PRIORS
from .rank import compression_report, prune

__all__ = [
    "DATA_SETS",
    "TEACHER_NUM_TRAIN",
    "Run",
    "RunConfig",
    "build",
    "check_run",
    "describe_training_set",
    "fit_run",
    "load_data",
    "load_run",
    "train",
]

#: The data sets a run can train on.
DATA_SETS = ("teacher", "fashion-mnist")

#: Training examples generated for the teacher-student task when ``num_train`` is ``None``.
TEACHER_NUM_TRAIN = 4096


@dataclass
class RunConfig:
    """
    The settings of a training run.

    :param str data: "teacher" (the generated teacher-student task, :func:`~tensorbayes.data.teacher_student`)
        or "fashion-mnist" (Debian's ``dataset-fashion-mnist``, or ``data_root``).
    :param str format: "cp", "tucker", "tt" or "ttm", for every tensorized layer.
    :param int max_rank: the rank bound of every tensorized layer.
    :param str prior: the rank prior: "half_cauchy", "log_uniform" or "gamma".
    :param int epochs: SVI epochs.
    :param int batch_size: examples per step.
    :param float lr: Adam's learning rate (``None``: :func:`~tensorbayes.fit`'s default).
    :param int hidden: the hidden width of the Fashion-MNIST MLP (784-hidden-10, ReLU).
    :param str teacher_format: the format of the teacher's planted weight ("ttm" or "tt").
    :param teacher_ranks: the planted ranks (``None``: 3 for every TTM bond, ``(3, 6, 6, 3)`` for TT).
    :param int num_train: training examples: for "fashion-mnist" the first ``num_train`` of its
        60,000 training images (``None``, the default: all of them); for "teacher" the number
        generated (``None``: :data:`TEACHER_NUM_TRAIN`).
    :param int seed: seeds the data, the guide's initialization and the fit.
    :param str data_root: the Fashion-MNIST folder (``None``: the Debian location).
    :param int eval_samples: posterior draws per evaluation.
    """

    data: str = "teacher"
    format: str = "ttm"
    max_rank: int = 6
    prior: str = "half_cauchy"
    epochs: int = 20
    batch_size: int = 256
    lr: float = None
    hidden: int = 625
    teacher_format: str = None
    teacher_ranks: tuple = None
    num_train: int = None
    seed: int = 0
    data_root: str = None
    eval_samples: int = 10

    def __post_init__(self):
        if self.data not in DATA_SETS:
            raise ValueError(f"data must be one of {DATA_SETS}, got {self.data!r}")
        for name in ("max_rank", "epochs", "batch_size", "hidden", "num_train", "eval_samples"):
            value = getattr(self, name)
            if name == "num_train" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"{name} must be a positive int{' or None' if name == 'num_train' else ''}, got {value!r}"
                )
        for name, allowed in (
            ("format", tuple(FORMATS)),
            ("prior", tuple(PRIORS)),
            ("teacher_format", (None, "ttm", "tt")),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.lr is not None:
            check_number(self.lr, "lr", "(0, inf)", "a positive number or None")
        check_int(self.seed, "seed", low=0)
        if self.data_root is not None and not isinstance(self.data_root, (str, os.PathLike)):
            raise ValueError(f"data_root must be a folder's path or None, got {self.data_root!r}")
        if self.teacher_ranks is not None:
            self.teacher_ranks = tuple(self.teacher_ranks)


@dataclass
class Run:
    """
    A restored run: the model and guide at the last checkpoint, its history, config and
    summary, and its held-out ``eval_data = (x_test, y_test)``.
    """

    model: object
    guide: object
    history: object
    config: RunConfig
    summary: dict
    eval_data: tuple = None


def _teacher_settings(config):
    fmt = config.teacher_format or (config.format if config.format in ("tt", "ttm") else "ttm")
    if fmt == "tt":
        return fmt, (4, 4), config.teacher_ranks or (3, 6, 6, 3)
    return fmt, (4, 4, 4), config.teacher_ranks or 3


def load_data(config):
    """
    ``(x_train, y_train, x_test, y_test, info)`` for a run; ``info`` describes the data, with
    ``num_train`` (the training examples used) and ``available`` (those the data set has).
    """
    if config.data == "teacher":
        fmt, out_shape, ranks = _teacher_settings(config)
        num_train = TEACHER_NUM_TRAIN if config.num_train is None else config.num_train
        task = teacher_student(num_train=num_train, format=fmt, out_shape=out_shape, ranks=ranks, seed=config.seed)
        info = {
            "planted_ranks": list(task.ranks),
            "teacher_format": fmt,
            "in_shape": list(task.in_shape),
            "out_shape": list(task.out_shape),
            "num_classes": task.num_classes,
            "num_train": len(task.y_train),
            "available": len(task.y_train),
        }
        return task.x_train, task.y_train, task.x_test, task.y_test, info
    x_train, y_train = load_fashion_mnist("train", root=config.data_root)
    x_test, y_test = load_fashion_mnist("test", root=config.data_root)
    available = len(y_train)
    if config.num_train is not None:
        if config.num_train > available:
            raise ValueError(
                f"num_train must be at most the {available} training images of Fashion-MNIST, got {config.num_train}"
            )
        x_train, y_train = x_train[: config.num_train], y_train[: config.num_train]
    return x_train, y_train, x_test, y_test, {"num_classes": 10, "num_train": len(y_train), "available": available}


def describe_training_set(config, info):
    """One line saying how many training examples a run uses, e.g. for the console."""
    if config.data == "teacher":
        return f"training on {info['num_train']} generated teacher-student examples"
    return f"training on {info['num_train']} of the {info['available']} Fashion-MNIST training images"


def build(config, info):
    """The Bayesian classifier of a run (its tensorized layers at ``config.max_rank``)."""
    if config.data == "teacher":
        layer = TensorizedLinear(
            math.prod(info["in_shape"]),
            math.prod(info["out_shape"]),
            format=config.format,
            max_rank=config.max_rank,
            prior=config.prior,
            in_shape=tuple(info["in_shape"]),
            out_shape=tuple(info["out_shape"]),
        )
        net = PyroModule[torch.nn.Sequential](layer)
    else:
        dense = torch.nn.Sequential(
            torch.nn.Linear(784, config.hidden), torch.nn.ReLU(), torch.nn.Linear(config.hidden, 10)
        )
        # the hidden layer is tensorized at any width (tensorize's size rule alone would leave a
        # narrow one dense, and a network without a low-rank tensor has nothing to fit)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            net = tensorize(
                dense,
                format=config.format,
                max_rank=config.max_rank,
                prior=config.prior,
                min_features=min(128, config.hidden),
            )
        if not low_rank_tensors(net):
            reason = str(caught[0].message).split(": ", 1)[-1].split("; pass ")[0] if caught else "left dense"
            raise ValueError(
                f"hidden must be a width that tensorize can split into balanced modes (such as 16 = 4 x 4, or "
                f"the default 625 = 25 x 25), got {config.hidden}: tensorize {reason}"
            )
        for warning in caught:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return BayesianClassifier(net, info["num_classes"])


def _accuracy(logits_or_probs, y):
    return float((logits_or_probs.argmax(-1) == y).double().mean())


def fit_run(config, checkpoint=None, progress=True, callbacks=(), distributed=False, data=None, log=None):
    """
    Build and fit the classifier of ``config``, read and prune its ranks and export it.

    :param RunConfig config: the settings.
    :param str checkpoint: a checkpoint file for :func:`~tensorbayes.fit` (resumed if present).
    :param bool progress: show tqdm bars.
    :param callbacks: extra ``callback(epoch, history)`` for :func:`~tensorbayes.fit`.
    :param bool distributed: data-parallel SVI under ``torchrun`` (:func:`~tensorbayes.fit`'s switch).
    :param tuple data: what :func:`load_data` returns for ``config``, if already loaded.
    :param log: a function given one line of text (how many training examples are used), or ``None``.
    :returns: ``(model, guide, history, summary)``, the model and guide pruned.
    """
    x_train, y_train, x_test, y_test, info = load_data(config) if data is None else data
    if log is not None:
        log(describe_training_set(config, info))
    pyro.clear_param_store()
    pyro.set_rng_seed(config.seed)
    model = build(config, info)
    guide = MeanField(model, seed=config.seed)
    start = time.perf_counter()
    history = fit(
        model,
        guide,
        (x_train, y_train),
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        eval_data=(x_test, y_test),
        eval_samples=config.eval_samples,
        checkpoint=checkpoint,
        resume=checkpoint is not None,
        callbacks=callbacks,
        seed=config.seed,
        progress=progress,
        distributed=distributed,
    )
    seconds = time.perf_counter() - start
    before = {row["tensor"]: row for row in compression_report(model)}
    found = prune(model, guide)
    report = compression_report(model)
    net = export(model, guide).eval()
    with torch.no_grad():
        exported = _accuracy(net(x_test), y_test)
    summary = {
        "config": dataclasses.asdict(config),
        "data": info,
        "accuracy": history.accuracy[-1],
        "exported_accuracy": exported,
        "elbo": history.elbo[-1],
        "ranks": {k: list(v) for k, v in found.items()},
        "tensors": [{**row, "params_max": before[row["tensor"]]["params_max"]} for row in report],
        "params": {
            "tensorized": sum(r["params"] for r in report),
            "tensorized_max": sum(before[r["tensor"]]["params_max"] for r in report),
            "network": sum(p.numel() for p in net.parameters()),
        },
        "seconds": seconds,
        "epochs_run": len(history),
    }
    return model, guide, history, summary


def train(config, out_dir, progress=True, callbacks=(), distributed=False, log=None):
    """
    Train (or resume) the run of ``config`` in the folder ``out_dir`` (created): writes
    ``config.json``, ``checkpoint.pt`` and ``summary.json`` (from process 0 only when
    ``distributed``); returns the summary dict. The data are loaded, the model built and a
    checkpoint there checked first, so that data that cannot be loaded, settings the model cannot
    be built with, or a run folder of another model or other settings leave ``out_dir``
    untouched. ``log`` is given one line: the training examples used.
    """
    data = check_run(config, out_dir)
    os.makedirs(out_dir, exist_ok=True)
    if is_main():
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            json.dump(dataclasses.asdict(config), f, indent=2)
    *_, summary = fit_run(
        config, os.path.join(out_dir, "checkpoint.pt"), progress, callbacks, distributed, data=data, log=log
    )
    if is_main():
        with open(os.path.join(out_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2, default=list)
    return summary


def check_run(config, out_dir):
    """
    The checks :func:`train` makes before it writes anything: ``out_dir`` is a folder or missing,
    a run there is of the same model and settings and its checkpoint can be restored, the data
    can be loaded and the model built. Raises the error :func:`train` would; returns the data
    (what :func:`load_data` returns).
    """
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"out_dir (--out) must be a folder, but {os.fspath(out_dir)!r} is a file")
    _check_same_model(config, out_dir)
    data = load_data(config)
    _check_resumable(config, data[-1], os.path.join(out_dir, "checkpoint.pt"))
    return data


#: The settings that decide a run's model: a run folder of another model cannot be resumed.
MODEL_SETTINGS = ("data", "format", "max_rank", "prior", "hidden", "teacher_format", "teacher_ranks")

#: The settings a run folder may be resumed with when they differ from its own (where the data lie).
FREE_SETTINGS = ("data_root",)


def _check_same_model(config, out_dir):
    """Refuse, before anything is written, to overwrite a config.json that is not a run's, or to resume
    a run folder whose checkpoint is of another model or was trained with other settings (a resumed run
    equals an uninterrupted one only with the same)."""
    path = os.path.join(out_dir, "config.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        try:
            saved = json.load(f)
        except ValueError as error:
            raise ValueError(f"{path!r} is not a run's config: {error}") from None
    if not isinstance(saved, dict):
        raise ValueError(f"{path!r} is not a run's config: it holds a JSON {type(saved).__name__}, not an object")
    try:
        RunConfig(**saved)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path!r} is not a run's config: {error}; choose another out_dir (--out)") from None
    if not os.path.exists(os.path.join(out_dir, "checkpoint.pt")):
        return  # nothing to resume: the run starts afresh
    ours = dataclasses.asdict(config)
    differ = [
        name
        for name in ours
        if name not in FREE_SETTINGS
        and name in saved
        and (tuple(saved[name]) if isinstance(saved[name], list) else saved[name]) != ours[name]
    ]
    if differ:
        there = ", ".join(f"{name}={saved[name]!r}" for name in differ)
        here = ", ".join(f"{name}={ours[name]!r}" for name in differ)
        if any(name in MODEL_SETTINGS for name in differ):
            raise ValueError(
                f"{out_dir!r} holds a run of another model ({there}; asked for {here}): its checkpoint "
                f"cannot be resumed; choose another out_dir (--out) or the run's settings"
            )
        raise ValueError(
            f"{out_dir!r} holds a run trained with other settings ({there}; asked for {here}): resuming it "
            f"would mix the two; choose another out_dir (--out) or the run's settings"
        )


def _check_resumable(config, info, checkpoint):
    """Build the run's model (refusing settings it cannot be built with) and, when ``checkpoint``
    exists, check that it can be restored into it: before anything is written."""
    model = build(config, info)
    guide = MeanField(model, seed=config.seed)
    if os.path.exists(checkpoint):
        load_checkpoint(checkpoint, model, guide, map_location="cpu")  # a run trains on the CPU


def load_run(run_dir):
    """
    Rebuild and restore the model and guide of a run folder written by :func:`train`.

    :returns: a :class:`Run` (model and guide as at the last checkpoint, before pruning).
    :raises FileNotFoundError: when the folder lacks ``config.json`` or ``checkpoint.pt``.
    """
    paths = {name: os.path.join(run_dir, name) for name in ("config.json", "checkpoint.pt", "summary.json")}
    for name in ("config.json", "checkpoint.pt"):
        if not os.path.exists(paths[name]):
            raise FileNotFoundError(
                f"{run_dir!r} is not a training run: {name} is missing (write one with tensorbayes train)"
            )
    with open(paths["config.json"]) as f:
        try:
            config = RunConfig(**json.load(f))
        except (TypeError, ValueError) as error:
            raise ValueError(f"{paths['config.json']!r} is not a run's config: {error}") from None
    summary = {}
    if os.path.exists(paths["summary.json"]):
        with open(paths["summary.json"]) as f:
            try:
                summary = json.load(f)
            except ValueError as error:
                raise ValueError(f"{paths['summary.json']!r} is not a run's summary: {error}") from None
    _, _, x_test, y_test, info = load_data(config)
    model = build(config, info)
    guide = MeanField(model, seed=config.seed)
    state = load_checkpoint(paths["checkpoint.pt"], model, guide, map_location="cpu")  # wherever it was written
    return Run(
        model=model, guide=guide, history=state["history"], config=config, summary=summary, eval_data=(x_test, y_test)
    )
