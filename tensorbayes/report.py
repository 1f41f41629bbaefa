"""
A report of a training run: the figures of :mod:`tensorbayes.plots` as PNG files and a short
Markdown summary (ranks, parameter counts, compression, accuracy) beside them.

:func:`write_report_for` writes the report of a fitted model, guide and history;
:func:`write_report` does the same for a run directory written by ``tensorbayes train --out
RUN_DIR`` (restored with :func:`tensorbayes.runs.load_run`), and is what ``tensorbayes report
RUN_DIR`` runs (:func:`add_report_parser` adds that sub-command to an argparse parser).

Files written (those whose inputs exist):

- ``rank_shrinkage.png``: bond weights against the pruning threshold, per tensor;
- ``lambda_trajectories.png``: every λ over training;
- ``training_curves.png``: ELBO, held-out accuracy or error, active parameters per epoch;
- ``factor_posterior-<tensor>.png``: slice norms with credible bands, one file per tensor;
- ``compression_vs_accuracy.png``: when the summary holds ``"results"`` (see
  :func:`tensorbayes.plots.compression_vs_accuracy`);
- ``reliability.png``: when held-out data of a classifier is given;
- ``report.md``: the summary, linking the figures.

Usage::

    paths = write_report_for(model, guide, history, {"seed": 0}, "out/report")
    paths = write_report("runs/ttm-r16")            # into runs/ttm-r16/report/

or, from a shell::

    tensorbayes report runs/ttm-r16 --out runs/ttm-r16/report
"""

import argparse
import dataclasses
import json
import os
import re

import torch

from . import plots
from .checks import check_number
from .guides.meanfield import low_rank_tensors
from .infer import predict
from .infer.calibration import expected_calibration_error
from .rank import DEFAULT_GAP, DEFAULT_THRESHOLD, compression_report, ranks
from .runs import load_run

__all__ = ["add_report_parser", "run_report", "write_report", "write_report_for"]

#: Name of the Markdown file of a report.
REPORT_NAME = "report.md"


def _save(axes, path):
    fig = (axes[0] if isinstance(axes, list) else axes).figure
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt  # lazily, as tensorbayes.plots imports pyplot: on the first figure

    plt.close(fig)
    return path


def _file_name(name):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name or "tensor")


def _figures(model, guide, history, summary, probs, labels, out_dir, threshold):
    """Draw and save every figure the inputs allow; returns their paths."""
    written = [
        _save(plots.rank_shrinkage(model, guide, threshold=threshold), os.path.join(out_dir, "rank_shrinkage.png"))
    ]
    if history is not None and (
        getattr(history, "lambdas", None) or (getattr(history, "lambda_trace", None) or {}).get("lambdas")
    ):
        written.append(_save(plots.lambda_trajectories(history), os.path.join(out_dir, "lambda_trajectories.png")))
    if history is not None and getattr(history, "elbo", None):
        written.append(_save(plots.training_curves(history, model), os.path.join(out_dir, "training_curves.png")))
    for name in low_rank_tensors(model):
        path = os.path.join(out_dir, f"factor_posterior-{_file_name(name)}.png")
        written.append(_save(plots.factor_posterior(model, guide, name), path))
    if summary.get("results"):
        written.append(
            _save(
                plots.compression_vs_accuracy(summary["results"]), os.path.join(out_dir, "compression_vs_accuracy.png")
            )
        )
    if probs is not None:
        written.append(_save(plots.reliability(probs, labels), os.path.join(out_dir, "reliability.png")))
    return written


def _class_probs(model, guide, eval_data, num_samples=20):
    """Posterior predictive class probabilities on held-out data, or ``None`` if not a classifier."""
    if eval_data is None:
        return None
    *inputs, target = eval_data
    if target.is_floating_point():
        return None
    mean, _ = predict(model, guide, *inputs, num_samples=num_samples)
    return mean if mean.dim() == 2 else None


def _value_text(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)}" if value.numel() > 8 else str(value.tolist())
    if isinstance(value, (list, tuple, dict)):
        try:
            text = json.dumps(value, default=str)
        except (TypeError, ValueError):
            text = str(value)
        return text if len(text) <= 80 else text[:77] + "..."
    return str(value)


def _markdown(model, guide, history, summary, figures, out_dir, threshold, probs, labels):
    rows = compression_report(model, guide, threshold)
    chosen = ranks(model, guide, threshold)
    lines = ["# tensorbayes report", ""]
    if summary:
        lines += ["## Summary", "", "| key | value |", "|---|---|"]
        lines += [f"| {k} | {_value_text(v)} |" for k, v in summary.items() if k != "results"]
        lines.append("")
    lines += [
        "## Ranks and compression",
        "",
        f"A rank index is active when its canonical bond weight exceeds {threshold:g} x its bond's largest "
        f"and no drop by {DEFAULT_GAP:g}x or more separates it from the largest (tb.ranks).",
        "",
        "| tensor | format | shape | max ranks | ranks now | ranks chosen | params (max -> chosen) "
        "| dense | compression |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    tensors = low_rank_tensors(model)
    for row, (name, tensor) in zip(rows, tensors.items()):
        lines.append(
            f"| {row['tensor']} | {row['format']} | {'x'.join(map(str, row['shape']))} | {row['max_ranks']} "
            f"| {tensor.layout.ranks} | {chosen[name]} | {row['params_max']:,} -> {row['params']:,} "
            f"| {row['dense']:,} | {row['compression']:.1f}x |"
        )
    params = sum(r["params"] for r in rows)
    dense = sum(r["dense"] for r in rows)
    lines += [
        "",
        f"All tensors: {params:,} parameters at the chosen ranks against {dense:,} dense ({dense / params:.1f}x).",
        "",
    ]
    lines += _training_lines(history)
    if probs is not None:
        accuracy = (probs.argmax(-1) == labels).double().mean().item()
        lines += [
            f"Held-out data ({len(labels)} examples): posterior predictive accuracy {accuracy:.4f}, "
            f"expected calibration error (15 bins) {expected_calibration_error(probs, labels):.4f}.",
            "",
        ]
    lines += ["## Figures", ""]
    for p in figures:
        lines += [f"![{os.path.splitext(os.path.basename(p))[0]}]({os.path.relpath(p, out_dir)})", ""]
    return "\n".join(lines).rstrip() + "\n"


def _training_lines(history):
    if history is None or not getattr(history, "elbo", None):
        return []
    lines = [
        "## Training",
        "",
        f"- {len(history.elbo)} epochs, {getattr(history, 'steps', 0)} steps; final ELBO {history.elbo[-1]:.6g}.",
    ]
    if getattr(history, "accuracy", None):
        lines.append(f"- Held-out accuracy: {history.accuracy[-1]:.4f} (best {max(history.accuracy):.4f}).")
    if getattr(history, "error", None):
        lines.append(f"- Held-out relative error: {history.error[-1]:.4g} (best {min(history.error):.4g}).")
    return lines + [""]


def write_report_for(
    model, guide, history=None, summary=None, out_dir=".", eval_data=None, threshold=DEFAULT_THRESHOLD
):
    """
    Write the report of a fitted model: PNG figures and ``report.md`` in ``out_dir``.

    Usage::

        history = tb.fit(model, guide, data, epochs=10, eval_data=(x_test, y_test))
        paths = write_report_for(model, guide, history, {"format": "ttm"}, "report",
                                 eval_data=(x_test, y_test))

    :param model: the fitted model (holding :class:`~tensorbayes.models.LowRankTensor` modules).
    :param guide: its :class:`~tensorbayes.guides.MeanField` guide.
    :param history: the :class:`~tensorbayes.infer.History` of the fit, or ``None``.
    :param dict summary: what to list at the top of the report (e.g. a run's configuration and
        results); a ``"results"`` entry (a list of dicts) is drawn with
        :func:`~tensorbayes.plots.compression_vs_accuracy`.
    :param str out_dir: the folder to write into (created if missing).
    :param tuple eval_data: held-out ``(*inputs, labels)`` of a classifier, for the
        reliability diagram and the expected calibration error.
    :param float threshold: the rank readout's relative threshold.
    :returns: the paths written, the figures first and ``report.md`` last.
    :raises ValueError: for an argument of the wrong form, before anything is written.
    """
    check_number(threshold, "threshold", "(0, 1)")
    if summary is None:
        summary = {}
    if not isinstance(summary, dict):
        raise TypeError(f"summary must be a dict (or None), got {type(summary).__name__}")
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"out_dir must be a path, got {type(out_dir).__name__}")
    if eval_data is not None and (not isinstance(eval_data, (tuple, list)) or len(eval_data) < 2):
        raise ValueError("eval_data must be (*inputs, labels): at least two tensors")
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"out_dir must be a folder, but {out_dir!r} is a file")
    os.makedirs(out_dir, exist_ok=True)
    probs = _class_probs(model, guide, eval_data)
    labels = None if probs is None else eval_data[-1]
    figures = _figures(model, guide, history, summary, probs, labels, out_dir, threshold)
    path = os.path.join(out_dir, REPORT_NAME)
    with open(path, "w", encoding="utf-8") as f:
        f.write(_markdown(model, guide, history, summary, figures, out_dir, threshold, probs, labels))
    return figures + [path]


def write_report(run_dir, out_dir=None, threshold=DEFAULT_THRESHOLD):
    """
    Write the report of a run directory (as ``tensorbayes train --out RUN_DIR`` writes it),
    restored with :func:`tensorbayes.runs.load_run`: its model, guide, history, config and
    summary (and its held-out data, if the run object has ``eval_data``).

    :param str run_dir: the run directory.
    :param str out_dir: where to write (default ``RUN_DIR/report``).
    :param float threshold: the rank readout's relative threshold.
    :returns: the paths written, ``report.md`` last.
    """
    if not isinstance(run_dir, (str, os.PathLike)):
        raise TypeError(f"run_dir must be a path, got {type(run_dir).__name__}")
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(
            f"run_dir must be a run directory (from tensorbayes train --out), "
            f"but {os.fspath(run_dir)!r} is not a directory"
        )
    check_number(threshold, "threshold", "(0, 1)")
    run = load_run(run_dir)
    summary = {f"config.{k}": v for k, v in dataclasses.asdict(run.config).items() if v is not None}
    summary.update(_run_results(run.summary or {}, run_dir))
    out_dir = os.path.join(os.fspath(run_dir), "report") if out_dir is None else out_dir
    return write_report_for(
        run.model,
        run.guide,
        getattr(run, "history", None),
        summary,
        out_dir,
        eval_data=getattr(run, "eval_data", None),
        threshold=threshold,
    )


def _run_results(found, run_dir):
    """What a run's ``summary.json`` (read as ``found``) adds to the report's summary; a
    ValueError names the file where it is not a JSON object of the form ``train`` writes."""
    data = found.get("data", {}) if isinstance(found, dict) else None
    planted = data.get("planted_ranks", ()) if isinstance(data, dict) else None
    if not isinstance(planted, (list, tuple)):
        raise ValueError(
            f"{os.path.join(os.fspath(run_dir), 'summary.json')!r} is not a run's summary: it must hold a JSON "
            'object whose "data" is an object (with a list "planted_ranks", if any)'
        )
    results = {k: found[k] for k in ("accuracy", "exported_accuracy", "seconds", "epochs_run") if k in found}
    return {**results, "planted ranks": tuple(planted)} if "planted_ranks" in data else results


def path_argument(value):
    """An argparse ``type`` for a path: ``~`` expanded (as a shell does not, e.g. in
    ``--out=~/runs``); an empty path is refused."""
    if not value.strip():
        raise argparse.ArgumentTypeError("must be a path, got an empty string")
    return os.path.expanduser(value)


def _threshold(value):
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not 0 < number < 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1), got {value}")
    return number


def run_report(args):
    """Run the ``report`` sub-command from its parsed arguments; prints the paths written."""
    if not (0 < args.threshold < 1):
        raise SystemExit(f"tensorbayes report: --threshold must be in (0, 1), got {args.threshold}")
    try:
        paths = write_report(args.run_dir, args.out, threshold=args.threshold)
    except FileNotFoundError as error:
        raise SystemExit(f"tensorbayes report: {error}") from None
    for path in paths:
        print(path)
    return 0


def add_report_parser(subparsers):
    """
    Add the ``report`` sub-command to an argparse ``subparsers`` object (from
    ``parser.add_subparsers()``). The sub-parser's default ``handler`` is :func:`run_report`.

    :returns: the sub-parser.
    """
    parser = subparsers.add_parser(
        "report",
        help="write the figures and a Markdown summary of a training run",
        description="Restore a run directory written by `tensorbayes train --out RUN_DIR` and write PNG figures "
        "(rank shrinkage against the pruning threshold, λ over training, ELBO/accuracy/active parameters "
        "per epoch, the factors' posterior) and report.md (ranks, parameter counts, compression, accuracy).",
    )
    parser.add_argument("run_dir", type=path_argument, help="the run directory (from tensorbayes train --out RUN_DIR)")
    parser.add_argument(
        "--out", type=path_argument, default=None, help="folder to write the report into (default RUN_DIR/report)"
    )
    parser.add_argument(
        "--threshold",
        type=_threshold,
        default=DEFAULT_THRESHOLD,
        help=f"relative bond weight below which a rank index is inactive (default {DEFAULT_THRESHOLD:g})",
    )
    parser.set_defaults(handler=run_report)
    return parser
