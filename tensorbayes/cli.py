"""
The ``tensorbayes`` command.

- ``tensorbayes demo`` trains a tensorized classifier on the generated teacher-student task
  (a teacher whose weight has planted TTM, then TT, ranks labels Gaussian inputs), starting
  from larger ranks, and prints the planted and found ranks, the test accuracy of the Bayesian
  model and of its pruned, exported network, the compression and the time. ``--completion``
  runs the tensor-completion demo instead (one planted tensor per format).
- ``tensorbayes train`` trains one run (teacher-student or Fashion-MNIST), printing accuracy,
  ELBO and ranks per epoch, and writes a checkpoint and a JSON summary to ``--out``; with
  ``--nproc K`` it relaunches itself under ``torchrun`` for data-parallel SVI.
- ``tensorbayes report RUN_DIR`` writes the figures and a Markdown summary of a run.
"""

import argparse
import importlib.metadata
import json
import os
import sys
import time

import torch

from .data import planted_tensor
from .data.fashion_mnist import DEFAULT_ROOT as FASHION_MNIST_ROOT
from .data.fashion_mnist import ENV_VAR as FASHION_MNIST_VAR
from .guides import MeanField
from .infer import distributed, fit
from .infer.fit import MAX_SEED
from .models import TensorCompletion
from .rank import compression_report, prune, ranks
from .report import add_report_parser, path_argument
from .runs import DATA_SETS, TEACHER_NUM_TRAIN, RunConfig, check_run, fit_run
from .runs import train as train_run

__all__ = ["main"]

#: format, shape, planted ranks, max rank: the completion demo's problems.
DEMO_CASES = (
    ("cp", (20, 12, 14), (4,), 8),
    ("tucker", (10, 12, 14), (3, 4, 2), 8),
    ("tt", (10, 12, 14, 16), (3, 4, 2), 8),
    ("ttm", (10, 12, 14, 16), (3,), 8),
)

#: format, max rank: the network demo's students (the teacher has the same format).
NETWORK_DEMO = (("ttm", 6), ("tt", 8))


def run_network_demo(seed=0, epochs=20, progress=False, out=sys.stdout):
    """Train the demo's teacher-student students; returns one summary dict per format."""
    header = (
        f"{'format':<8}{'planted':<16}{'max':<16}{'found':<16}{'accuracy':>9}{'exported':>10}"
        f"{'compression':>13}{'seconds':>9}"
    )
    print(
        "teacher-student: a softmax teacher whose 64x64 weight has planted ranks labels 4096 Gaussian inputs", file=out
    )
    print(header, file=out)
    print("-" * len(header), file=out)
    results = []
    for fmt, max_rank in NETWORK_DEMO:
        start = time.perf_counter()
        model, guide, history, summary = fit_run(
            RunConfig(data="teacher", format=fmt, max_rank=max_rank, epochs=epochs, seed=seed), progress=progress
        )
        (row,) = summary["tensors"]
        summary.update(
            format=fmt,
            planted=tuple(summary["data"]["planted_ranks"]),
            found=tuple(row["ranks"]),
            max_ranks=tuple(row["max_ranks"]),
            compression=row["compression"],
            seconds=time.perf_counter() - start,
        )
        results.append(summary)
        print(
            f"{fmt:<8}{str(summary['planted']):<16}{str(summary['max_ranks']):<16}{str(summary['found']):<16}"
            f"{summary['accuracy']:>9.1%}{summary['exported_accuracy']:>10.1%}{summary['compression']:>12.1f}x"
            f"{summary['seconds']:>9.1f}",
            file=out,
        )
    hits = sum(r["found"] == r["planted"] for r in results)
    print(
        f"\nranks recovered exactly for {hits} of {len(results)} formats "
        "(accuracy: posterior predictive; exported: the pruned network at the posterior mean)",
        file=out,
    )
    return results


def run_demo(seed=0, epochs=3, progress=False, out=sys.stdout):
    """Fit the completion demo's planted tensors; returns one result dict per format."""
    results = []
    header = (
        f"{'format':<8}{'shape':<20}{'planted':<12}{'found':<12}{'held-out err':>13}{'compression':>13}{'seconds':>9}"
    )
    print(header, file=out)
    print("-" * len(header), file=out)
    for fmt, shape, planted_ranks, max_rank in DEMO_CASES:
        start = time.perf_counter()
        planted = planted_tensor(shape, fmt, planted_ranks, observed=0.3, noise=0.01, seed=seed, dtype=torch.float32)
        model = TensorCompletion(shape, format=fmt, max_rank=max_rank)
        guide = MeanField(model, seed=seed)
        fit(
            model,
            guide,
            (planted.train_index, planted.train_values),
            epochs=epochs,
            batch_size=1024,
            seed=seed,
            progress=progress,
        )
        found = ranks(model, guide)["tensor"]
        prune(model, guide)
        prediction = model.tensor.layout.entries(guide.factor_means(model.tensor), planted.test_index)
        report = compression_report(model)[0]
        row = {
            "format": fmt,
            "shape": shape,
            "planted": planted.ranks,
            "found": found,
            "error": planted.relative_error(prediction),
            "compression": report["compression"],
            "seconds": time.perf_counter() - start,
        }
        results.append(row)
        print(
            f"{fmt:<8}{'x'.join(map(str, shape)):<20}{str(planted.ranks):<12}{str(found):<12}"
            f"{row['error']:>12.2%}{row['compression']:>12.1f}x{row['seconds']:>9.1f}",
            file=out,
        )
    hits = sum(r["found"] == r["planted"] for r in results)
    print(f"\nranks recovered exactly for {hits} of {len(results)} formats", file=out)
    return results


def _positive(value):
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive int, got {value}")
    return number


def _learning_rate(value):
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    if not 0 < number < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {value}")
    if number > 1:  # Adam moves every parameter by about lr a step: beyond 1 the fit diverges or overflows
        raise argparse.ArgumentTypeError(
            f"must be at most 1 (Adam moves every parameter by about lr a step), got {value}"
        )
    return number


def _seed(value):
    try:
        number = int(value)
    except ValueError:
        number = -1
    if not 0 <= number <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be an int in [0, 2**32 - 1], got {value}")
    return number


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (the usage is in ``--help``); its
    sub-command parsers are of the same class."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


#: Set to 1 to see the traceback of an unexpected error instead of its one-line summary.
DEBUG_VAR = "TENSORBAYES_DEBUG"

#: Errors of bad input or a missing or unreadable file: reported in one line.
_USER_ERRORS = (ValueError, TypeError, OSError, FloatingPointError)


def _one_line(error):
    text = " ".join(str(error).split())
    return text or type(error).__name__


def _parser():
    parser = _Parser(
        prog="tensorbayes", description="Bayesian low-rank tensors whose ranks are learned by shrinkage priors."
    )
    version = importlib.metadata.version("tensorbayes")
    parser.add_argument("--version", action="version", version=f"tensorbayes {version}")
    commands = parser.add_subparsers(dest="command")  # required, checked in main: an unknown option is named first
    demo = commands.add_parser(
        "demo",
        help="train tensorized students on a teacher with planted ranks and print the ranks found",
        description="Teacher-student: a softmax teacher whose 64x64 weight has planted TTM (then TT) ranks labels "
        "Gaussian inputs; a Bayesian tensorized student starts from larger ranks. Prints planted and found "
        "ranks, accuracy, compression and time. --completion runs the tensor-completion demo instead.",
    )
    demo.add_argument("--seed", type=_seed, default=0, help="seed of the data and the fits (default 0)")
    demo.add_argument(
        "--epochs",
        type=_positive,
        default=None,
        help="SVI epochs (default 20; 3 after the closed-form start with --completion)",
    )
    demo.add_argument("--completion", action="store_true", help="tensor completion of one planted tensor per format")
    demo.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=True, help="show progress bars (default on)"
    )
    _train_parser(commands)
    add_report_parser(commands)
    return parser


def _train_parser(commands):
    defaults = RunConfig()
    train = commands.add_parser(
        "train",
        help="train a tensorized classifier and save a checkpoint and a JSON summary",
        description="Train a Bayesian tensorized classifier by SVI: the generated teacher-student task, or the "
        "784-hidden-10 MLP on Fashion-MNIST (Debian's dataset-fashion-mnist). Prints accuracy, ELBO and ranks "
        "per epoch; writes config.json, checkpoint.pt (every epoch; a rerun resumes it) and summary.json to --out.",
    )
    train.add_argument("--data", choices=DATA_SETS, default=defaults.data, help="the data set (default %(default)s)")
    train.add_argument(
        "--format",
        choices=("cp", "tucker", "tt", "ttm"),
        default=defaults.format,
        help="format of every tensorized layer (default %(default)s)",
    )
    train.add_argument(
        "--max-rank",
        type=_positive,
        default=defaults.max_rank,
        help="rank bound of every tensorized layer (default %(default)s)",
    )
    train.add_argument(
        "--prior",
        choices=("half_cauchy", "log_uniform", "gamma"),
        default=defaults.prior,
        help="the rank-shrinkage prior (default %(default)s)",
    )
    train.add_argument("--epochs", type=_positive, default=defaults.epochs, help="SVI epochs (default %(default)s)")
    train.add_argument(
        "--batch-size", type=_positive, default=defaults.batch_size, help="examples per step (default %(default)s)"
    )
    train.add_argument(
        "--lr", type=_learning_rate, default=None, help="Adam's learning rate, in (0, 1] (default: tb.fit's, 0.01)"
    )
    train.add_argument(
        "--hidden",
        type=_positive,
        default=defaults.hidden,
        help="hidden width of the Fashion-MNIST MLP (default %(default)s)",
    )
    train.add_argument(
        "--num-train",
        type=_positive,
        default=defaults.num_train,
        help="training examples: the first N of Fashion-MNIST's 60,000 training images (default: "
        f"all), or the number of teacher-student examples generated (default {TEACHER_NUM_TRAIN})",
    )
    train.add_argument(
        "--data-root",
        type=path_argument,
        default=None,
        help=f"folder of the Fashion-MNIST idx files (default: ${FASHION_MNIST_VAR} if set, else {FASHION_MNIST_ROOT})",
    )
    train.add_argument("--seed", type=_seed, default=defaults.seed, help="seed of data, initialization and fit")
    train.add_argument("--out", type=path_argument, default="runs/latest", help="the run folder (default %(default)s)")
    train.add_argument(
        "--nproc",
        type=_positive,
        default=1,
        help="data-parallel processes on this machine, started with torchrun --standalone (default 1)",
    )
    train.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="show a progress bar within each epoch (default on)",
    )


def _print_epoch(epoch, history):
    accuracy = f"{history.accuracy[-1]:.2%}" if history.accuracy else "-"
    found = " ".join(f"{name}={tuple(r)}" for name, r in history.ranks[-1].items()) if history.ranks else ""
    print(f"epoch {epoch + 1:>3}  accuracy {accuracy}  elbo {history.elbo[-1]:.6g}  ranks {found}", flush=True)


def _config(args):
    return RunConfig(
        data=args.data,
        format=args.format,
        max_rank=args.max_rank,
        prior=args.prior,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        hidden=args.hidden,
        num_train=args.num_train,
        seed=args.seed,
        data_root=args.data_root,
    )


def _train(args):
    config = _config(args)
    log = (lambda line: print(line, flush=True)) if distributed.is_main() else None
    summary = train_run(
        config,
        args.out,
        progress=args.progress,
        callbacks=[_print_epoch],
        distributed=distributed.in_torchrun(),
        log=log,
    )
    if distributed.is_main():
        print(json.dumps({k: summary[k] for k in ("accuracy", "exported_accuracy", "ranks", "params")}, indent=2))
        print(f"wrote {args.out}/config.json, checkpoint.pt and summary.json")


def main(argv=None):
    """
    Run the ``tensorbayes`` command with ``argv`` (default ``sys.argv[1:]``); returns the exit
    status. An error is one line on stderr and a non-zero exit (``SystemExit``), never a
    traceback: 2 for bad arguments, 1 for bad input found later (a missing data folder, a
    checkpoint of another model, ...), 130 when interrupted. With the environment variable
    ``TENSORBAYES_DEBUG=1`` an unexpected error shows its traceback.
    """
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
        parser.error("the following arguments are required: command")
    try:
        return _run(args, argv)
    except KeyboardInterrupt:
        print(
            f"tensorbayes {args.command}: interrupted"
            + (" (rerun the same command to resume from the last checkpoint)" if args.command == "train" else ""),
            file=sys.stderr,
        )
        raise SystemExit(130) from None
    except _USER_ERRORS as error:
        raise SystemExit(f"tensorbayes {args.command}: {_one_line(error)}") from None
    except Exception as error:
        if os.environ.get(DEBUG_VAR):
            raise
        raise SystemExit(
            f"tensorbayes {args.command}: unexpected {type(error).__name__}: {_one_line(error)} "
            f"(set {DEBUG_VAR}=1 for the traceback)"
        ) from None


def _run(args, argv):
    if args.command == "demo":
        if args.completion:
            run_demo(seed=args.seed, epochs=args.epochs or 3, progress=args.progress)
        else:
            run_network_demo(seed=args.seed, epochs=args.epochs or 20, progress=args.progress)
    elif args.command == "train":
        if args.nproc > 1 and not distributed.in_torchrun():
            # bad input is refused here, in one line: each process would fail alike, under torchrun's report
            check_run(_config(args), args.out)
            return distributed.launch(sys.argv[1:] if argv is None else list(argv), args.nproc)
        _train(args)
    elif args.command == "report":
        return args.handler(args) or 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
