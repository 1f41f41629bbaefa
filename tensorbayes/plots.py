"""
Figures of a fitted posterior: which ranks survived, how they got there, and what it cost.

Every function here only reads the model, the guide or the history it is given, draws with
matplotlib, and returns what it drew on (in the style of tensorly-viz):

- :func:`rank_shrinkage`: per low-rank tensor, the canonical weight of every rank index
  against the pruning threshold, exactly the quantity :func:`tensorbayes.ranks` reads;
- :func:`lambda_trajectories`: every rank scale λ over training;
- :func:`training_curves`: the ELBO (and its likelihood and KL parts), held-out accuracy or
  error, and the number of active parameters, per epoch;
- :func:`compression_vs_accuracy`: the frontier across formats and settings, dense baseline
  marked (or a measured frontier per format, with the results on it);
- :func:`factor_posterior`: posterior mean and credible band of each rank index's slice norm;
- :func:`reliability`: a reliability diagram of predicted class probabilities.

Functions with one panel take ``ax=None`` (a new figure) or a
:class:`~matplotlib.axes.Axes` and return the Axes. Functions with one panel per tensor, bond
or quantity take ``ax=None`` (a new figure), a :class:`~matplotlib.figure.Figure` to fill, or a
sequence of Axes with one per panel, and return the list of Axes they drew on. New figures use
``constrained_layout`` so that titles and labels do not overlap.

Usage::

    import tensorbayes as tb
    from tensorbayes import plots

    history = tb.fit(model, guide, data, epochs=5)
    axes = plots.rank_shrinkage(model, guide)
    axes[0].figure.savefig("ranks.png")
"""

import math
from numbers import Integral

import matplotlib
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .checks import check_int
from .guides.base import as_tensor_guide
from .guides.meanfield import low_rank_tensors
from .infer.calibration import calibration_bins
from .models.tensor import LowRankTensor
from .rank import DEFAULT_GAP, DEFAULT_THRESHOLD, active_ranks, bond_weights

__all__ = [
    "compression_vs_accuracy",
    "factor_posterior",
    "lambda_trajectories",
    "rank_shrinkage",
    "reliability",
    "training_curves",
]

ACTIVE_COLOR = "tab:blue"
PRUNED_COLOR = "tab:red"
THRESHOLD_COLOR = "0.3"
#: The lowest relative weight drawn: smaller ones (and exact zeros) are drawn at this floor.
FLOOR = 1e-8


# ----- panels -----


def _pyplot():
    """pyplot, imported when a figure is first made (importing this module draws nothing)."""
    import matplotlib.pyplot as plt

    return plt


def _new_figure(num_panels, panel_size=(3.6, 3.0), max_cols=3):
    cols = min(num_panels, max_cols)
    rows = math.ceil(num_panels / cols)
    fig = _pyplot().figure(figsize=(panel_size[0] * cols, panel_size[1] * rows), layout="constrained")
    return fig, [fig.add_subplot(rows, cols, i + 1) for i in range(num_panels)]


def _panels(num_panels, ax, **kwargs):
    """``num_panels`` Axes: new (``ax=None``), in a given Figure, or the given Axes."""
    if ax is None:
        return _new_figure(num_panels, **kwargs)[1]
    if isinstance(ax, Figure):
        cols = min(num_panels, kwargs.get("max_cols", 3))
        rows = math.ceil(num_panels / cols)
        return [ax.add_subplot(rows, cols, i + 1) for i in range(num_panels)]
    try:
        axes = [ax] if isinstance(ax, Axes) else list(ax)
    except TypeError:
        raise TypeError(
            f"ax must be None, a Figure, or {num_panels} Axes (one per panel), got {type(ax).__name__}"
        ) from None
    if len(axes) != num_panels or not all(isinstance(a, Axes) for a in axes):
        raise ValueError(f"ax must be None, a Figure, or {num_panels} Axes (one per panel), got {ax!r}")
    return axes


def _single(ax, figsize=(5.0, 3.6)):
    if ax is None:
        return _pyplot().figure(figsize=figsize, layout="constrained").add_subplot()
    if not isinstance(ax, Axes):
        raise TypeError(f"ax must be None or a matplotlib Axes, got {type(ax).__name__}")
    return ax


def _tensors(model):
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module holding LowRankTensor modules, got {type(model).__name__}")
    tensors = low_rank_tensors(model)
    if not tensors:
        raise ValueError("model holds no LowRankTensor: there are no ranks to plot")
    return tensors


def _display_name(name):
    return name or "tensor"


def _shape_text(layout):
    if len(layout.shape) <= 4:
        return "×".join(map(str, layout.shape))
    rows, cols = layout.matrix_shape
    return f"{rows}×{cols} in {len(layout.shape)} modes"


def _ranks_text(ranks):
    return str(tuple(int(r) for r in ranks))  # as tb.ranks prints them: (3, 4, 2), (5,)


# ----- rank shrinkage -----


def rank_shrinkage(model, guide, threshold=DEFAULT_THRESHOLD, gap=DEFAULT_GAP, ax=None):
    """
    The rank readout, drawn: one panel per low-rank tensor, with the canonical weight of every
    rank index of every bond (:func:`tensorbayes.rank.bond_weights`, gauge-invariant, sorted
    non-increasing within a bond) divided by its bond's largest, on a log axis. The dashed line
    is the pruning ``threshold``. The active indices (blue dots) are exactly the ones
    :func:`tensorbayes.ranks` counts (:func:`tensorbayes.rank.active_ranks`: above the threshold
    and before the first drop by a factor of ``gap`` between consecutive weights); the others
    (red crosses) are what :func:`tensorbayes.prune` removes. Where a ``gap`` drop, not the
    threshold, ends a bond's active indices, a grey vertical tick marks the cut. Bonds are side
    by side, separated by dotted lines; a weight below :data:`FLOOR` (an exact zero, say) is
    drawn at the floor. Each panel's title gives the tensor's name, format, shape and its
    ranks now → the ranks the posterior chose.

    The raw scales λ are not drawn here: they live in the factors' gauge and the threshold does
    not apply to them (see :func:`lambda_trajectories`).

    Usage::

        axes = tb.plots.rank_shrinkage(model, guide)

    :param model: a model holding :class:`~tensorbayes.models.LowRankTensor` modules.
    :param guide: its :class:`~tensorbayes.guides.MeanField` guide.
    :param float threshold: the relative weight below which an index is pruned, in (0, 1).
    :param float gap: the drop between consecutive weights that ends the active indices (> 1).
    :param ax: ``None``, a Figure, or one Axes per tensor.
    :returns: the list of Axes, one per tensor.
    """
    active_ranks([], threshold, gap)  # validates threshold and gap before anything is drawn
    tensors = _tensors(model)
    weights = bond_weights(model, guide)  # any guide the readout takes (tb.guides.as_tensor_guide)
    axes = _panels(len(tensors), ax, panel_size=(5.6, 3.2), max_cols=2)
    for a, (name, tensor) in zip(axes, tensors.items()):
        _shrinkage_panel(a, name, tensor, weights[name], threshold, gap)
    return axes


def _shrinkage_panel(ax, name, tensor, weights, threshold, gap):
    ax.set_yscale("log")
    weights = [w.detach().double().cpu() for w in weights]
    chosen = active_ranks(weights, threshold, gap)
    start, ticks, cuts = 0, [], []
    points = {True: ([], []), False: ([], [])}
    for b, (w, count) in enumerate(zip(weights, chosen)):
        rel = (w / w.max()).nan_to_num(0.0) if w.numel() and w.max() > 0 else torch.zeros_like(w)
        for j, r in enumerate(rel.tolist()):
            xs, ys = points[j < count]
            xs.append(start + j)
            ys.append(max(r, FLOOR))
        if count < len(w) and rel[count] > threshold:  # a gap, not the threshold, ended the bond
            cuts.append(start + count - 0.5)
        ticks.append(((2 * start + len(w) - 1) / 2, f"bond {b}"))
        if b:
            ax.axvline(start - 1, color="0.8", linestyle=":", linewidth=1)
        start += len(w) + 1
    ax.scatter(*points[True], color=ACTIVE_COLOR, marker="o", s=24, zorder=3, label=f"active ({len(points[True][0])})")
    ax.scatter(
        *points[False], color=PRUNED_COLOR, marker="x", s=24, zorder=3, label=f"pruned ({len(points[False][0])})"
    )
    ax.axhline(threshold, color=THRESHOLD_COLOR, linestyle="--", linewidth=1, label=f"threshold ({threshold:g})")
    for k, x in enumerate(cuts):
        ax.axvline(
            x, ymin=0.55, ymax=0.95, color="0.5", linewidth=1.5, label=f"gap cut (drop ≥ {gap:g}×)" if k == 0 else None
        )
    ax.set_xticks([t for t, _ in ticks], [lab for _, lab in ticks])
    lowest = min(points[True][1] + points[False][1] + [threshold])
    ax.set_ylim(lowest / 5, 3.0)
    ax.set_ylabel("bond weight / bond max")
    ax.set_xlabel("rank index, by bond")
    ax.set_title(
        f"{_display_name(name)}: {tensor.layout.name.upper()} {_shape_text(tensor.layout)}\n"
        f"ranks {_ranks_text(tensor.layout.ranks)} → {_ranks_text(chosen)}",
        fontsize="medium",
    )
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never hides a point


# ----- λ over training -----


def _lambda_records(history):
    """``(x, records, xlabel)``: the finest λ record a history holds."""
    trace = getattr(history, "lambda_trace", None) or {}
    if trace.get("lambdas"):
        x, records, xlabel, where = list(trace["step"]), trace["lambdas"], "SVI step", "history.lambda_trace"
        if len(x) != len(records):
            raise ValueError(f"{where} must have one step per λ record, got {len(x)} steps and {len(records)} records")
    else:
        records, xlabel, where = getattr(history, "lambdas", None) or [], "epoch", "history.lambdas"
        if not records:
            raise ValueError(
                "history must hold λ records (history.lambda_trace or history.lambdas): fit with a MeanField guide"
            )
        x = list(range(1, len(records) + 1))
    if not records[-1]:
        raise ValueError(f"{where} must end with a record of λ per tensor, got {records[-1]!r}")
    for i, record in enumerate(records):
        for name, bonds in record.items():
            if any(not torch.isfinite(v).all() or (v < 0).any() for v in map(torch.as_tensor, bonds)):
                raise ValueError(f"{where}[{i}][{name!r}] must hold finite non-negative λ, got {bonds!r}")
    return x, records, xlabel


def lambda_trajectories(history, ax=None):
    """
    Every rank scale λ over training, on a log axis: one panel per low-rank tensor, one line per
    rank index, coloured by bond. Uses ``history.lambda_trace`` (λ every few steps) when it
    is recorded, else the per-epoch ``history.lambdas``. An index whose bond was pruned away
    is drawn only while it existed.

    λ is the prior variance of the factor slices attached to an index: indices the data do not
    need are driven towards zero, the others level off. (Whether an index counts as active is
    decided on the gauge-invariant bond weights: see :func:`rank_shrinkage`.)

    Usage::

        history = tb.fit(model, guide, data, epochs=10)
        axes = tb.plots.lambda_trajectories(history)

    :param history: the :class:`~tensorbayes.infer.History` that :func:`tensorbayes.fit` returned.
    :param ax: ``None``, a Figure, or one Axes per tensor.
    :returns: the list of Axes, one per tensor.
    """
    x, records, xlabel = _lambda_records(history)
    names = list(records[-1])
    axes = _panels(len(names), ax, panel_size=(4.2, 3.0))
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for a, name in zip(axes, names):
        a.set_yscale("log")
        num_bonds = max(len(r.get(name, [])) for r in records)
        for b in range(num_bonds):
            width = max(len(r[name][b]) for r in records if name in r and len(r[name]) > b)
            for j in range(width):
                xs = [s for s, r in zip(x, records) if name in r and len(r[name]) > b and len(r[name][b]) > j]
                ys = [float(r[name][b][j]) for r in records if name in r and len(r[name]) > b and len(r[name][b]) > j]
                a.plot(
                    xs, ys, color=colors[b % len(colors)], linewidth=1, alpha=0.8, label=f"bond {b}" if j == 0 else None
                )
        a.set_xlabel(xlabel)
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.set_ylabel("λ (prior variance scale)")
        a.set_title(_display_name(name), fontsize="medium")
        a.legend(fontsize="small")
    return axes


# ----- training curves -----


def _active_params(history, model):
    """Total parameters of the tensors at the ranks recorded each epoch."""
    tensors = _tensors(model)
    totals = []
    for ranks in history.ranks:
        total = 0
        for name, tensor in tensors.items():
            total += tensor.layout.with_ranks(tuple(ranks.get(name, tensor.layout.ranks))).num_params()
        totals.append(total)
    dense = sum(t.layout.dense_size for t in tensors.values())
    return totals, dense


def training_curves(history, model=None, ax=None):
    """
    Per epoch: the ELBO (with its expected log-likelihood and KL parts when the history records
    them, ``elbo = log_likelihood - kl``), the held-out accuracy (or relative error) when
    ``fit`` had ``eval_data``, and, given the model, the total parameters of its low-rank
    tensors at the ranks chosen each epoch (``history.ranks``) against their dense size.

    Usage::

        history = tb.fit(model, guide, data, epochs=10, eval_data=(x_test, y_test))
        axes = tb.plots.training_curves(history, model)

    :param history: the :class:`~tensorbayes.infer.History` of a fit.
    :param model: the fitted model, for the parameter counts (optional: without it, or
        without ``history.ranks``, that panel is left out).
    :param ax: ``None``, a Figure, or one Axes per panel.
    :returns: the list of Axes: ELBO, then accuracy or error, then parameters (those recorded).
    """
    elbo = _finite_series(history, "elbo")
    if not elbo:
        raise ValueError("history must hold at least one epoch of history.elbo: pass what tb.fit returned")
    accuracy = _finite_series(history, "accuracy")
    error = _finite_series(history, "error")
    ranks = list(getattr(history, "ranks", None) or [])
    panels = ["elbo"] + (["accuracy"] if accuracy else ["error"] if error else [])
    if model is not None and ranks:
        panels.append("params")
    axes = _panels(len(panels), ax, panel_size=(3.8, 3.0))
    for a, panel in zip(axes, panels):
        a.set_xlabel("epoch")
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        if panel == "elbo":
            _elbo_panel(a, history, elbo)
        elif panel in ("accuracy", "error"):
            values = accuracy or error
            a.plot(range(1, len(values) + 1), values, marker="o", markersize=3, color="tab:green")
            a.set_ylabel("held-out accuracy" if accuracy else "held-out relative error")
            a.set_title("held-out " + ("accuracy" if accuracy else "error"), fontsize="medium")
            if error:
                a.set_yscale("log")
        else:
            totals, dense = _active_params(history, model)
            a.plot(
                range(1, len(totals) + 1), totals, marker="o", markersize=3, color=ACTIVE_COLOR, label="at chosen ranks"
            )
            a.axhline(dense, color=THRESHOLD_COLOR, linestyle="--", linewidth=1, label=f"dense ({dense:,})")
            a.set_yscale("log")
            a.set_ylabel("parameters (count)")
            a.set_title("active parameters", fontsize="medium")
            a.legend(fontsize="small")
    return axes


def _finite_series(history, key):
    """``history.<key>`` as a list of floats, every one finite (a NaN would leave a plausible gap)."""
    values = list(getattr(history, key, None) or [])
    for i, v in enumerate(values):
        try:
            ok = not isinstance(v, (bool, str, bytes)) and math.isfinite(float(v))
        except (TypeError, ValueError, RuntimeError):
            ok = False
        if not ok:
            raise ValueError(f"history.{key}[{i}] must be a finite number, got {v!r}")
    return [float(v) for v in values]


def _elbo_panel(ax, history, elbo):
    epochs = range(1, len(elbo) + 1)
    ax.plot(epochs, elbo, marker="o", markersize=3, color="black", label="ELBO")
    likelihood = list(getattr(history, "log_likelihood", None) or [])
    kl = list(getattr(history, "kl", None) or [])
    split = all(math.isfinite(float(v)) for v in likelihood + kl)  # not split out by a differentiable_loss: nan
    if len(likelihood) == len(elbo) and len(kl) == len(elbo) and split:
        ax.plot(epochs, likelihood, color="tab:blue", linewidth=1, label="E log-likelihood")
        ax.plot(epochs, [-k for k in kl], color="tab:orange", linewidth=1, label="−KL (β-weighted)")
        ax.legend(fontsize="small")
    ax.set_ylabel("nats (whole data set)")
    ax.set_title("ELBO", fontsize="medium")


# ----- compression against accuracy -----


def _check_results(results):
    if not isinstance(results, (list, tuple)) or not results or not all(isinstance(r, dict) for r in results):
        raise TypeError(
            "results must be a non-empty list of dicts with keys 'format', 'accuracy' and 'compression' (or 'params')"
        )
    dense = [r for r in results if r.get("format") == "dense"]
    rows = []
    for i, r in enumerate(results):
        if "format" not in r or "accuracy" not in r:
            raise ValueError(f"results[{i}] must have keys 'format' and 'accuracy', got {sorted(r)}")
        _check_positive(r["accuracy"], f"results[{i}]['accuracy']", low=0, high=1)
        if "compression" in r:
            compression = _check_positive(r["compression"], f"results[{i}]['compression']")
        elif r.get("format") == "dense":
            compression = 1.0
        elif "params" in r and (dense and "params" in dense[0] or "dense_params" in r):
            dense_params = r["dense_params"] if "dense_params" in r else dense[0]["params"]
            name = f"results[{i}]['dense_params']" if "dense_params" in r else "the dense row's 'params'"
            compression = _check_positive(dense_params, name) / _check_positive(r["params"], f"results[{i}]['params']")
        else:
            raise ValueError(
                f"results[{i}] must have 'compression', or 'params' with 'dense_params' "
                f"or a 'dense' row that has 'params'"
            )
        rows.append(dict(r, compression=compression))
    return rows


def _check_positive(value, name, low=None, high=None):
    """``value`` as a finite float, positive (or in ``[low, high]``): a bad entry of ``results`` is named."""
    try:
        number = math.nan if isinstance(value, (bool, str, bytes)) else float(value)
    except (TypeError, ValueError):
        number = math.nan
    if (
        not math.isfinite(number)
        or (number <= 0 if low is None else number < low)
        or (high is not None and number > high)
    ):
        what = "a finite positive number" if low is None else f"a finite number of at least {low}"
        what = what if high is None else f"a number in [{low}, {high}]"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return number


def _frontier(points):
    """The non-dominated points (no other has both more compression and more accuracy)."""
    best, front = -math.inf, []
    for c, a in sorted(points, key=lambda p: (-p[0], -p[1])):
        if a > best:
            front.append((c, a))
            best = a
    return sorted(front)


def _check_frontier(frontier):
    """``{format: [(compression, accuracy), ...]}`` validated, each line sorted by compression."""
    if not isinstance(frontier, dict):
        raise TypeError(
            f"frontier must be None or a dict {{format: [(compression, accuracy), ...]}}, got {type(frontier).__name__}"
        )
    lines = {}
    for fmt, points in frontier.items():
        try:
            pairs = [(float(c), float(a)) for c, a in points]
        except (TypeError, ValueError):
            raise ValueError(f"frontier[{fmt!r}] must be a sequence of (compression, accuracy) pairs") from None
        if not pairs or any(not (0 < c < math.inf and 0 <= a <= 1) for c, a in pairs):
            raise ValueError(
                f"frontier[{fmt!r}] must hold at least one pair, every compression finite and positive and every "
                f"accuracy in [0, 1], got {pairs!r}"
            )
        lines[fmt] = sorted(pairs)
    return lines


def compression_vs_accuracy(results, ax=None, frontier=None):
    """
    Accuracy against compression ratio (log axis) for every format and setting, with the
    dense baseline as a dashed line, and either the frontier of the non-dominated results or,
    when ``frontier`` is given, a measured frontier per format.

    Each result is a dict with keys

    - ``"format"``: ``"cp"``, ``"tucker"``, ``"tt"``, ``"ttm"``, or ``"dense"`` for the baseline
      (drawn at compression 1 and as a horizontal line);
    - ``"accuracy"``: held-out accuracy in [0, 1];
    - ``"compression"``: dense parameters / parameters; or instead ``"params"``, the parameter
      count, with ``"dense_params"`` or a ``"dense"`` result that has ``"params"``;
    - ``"label"`` (optional): a short annotation drawn beside the point (e.g. ``"R=8"``).

    ``frontier`` maps a format to the ``(compression, accuracy)`` points of another sweep
    (e.g. the same network trained at fixed ranks): each format's points are drawn as one
    line, sorted by compression and labelled ``"<FORMAT> frontier"``, under the results of
    that format, which are drawn as markers in the line's colour on top. With a frontier the
    line of non-dominated results is not drawn (the given lines are the frontier).

    Usage::

        rows = [{"format": "dense", "accuracy": 0.88, "compression": 1.0},
                {"format": "ttm", "accuracy": 0.86, "compression": 40.0, "label": "R=8"}]
        ax = tb.plots.compression_vs_accuracy(rows)
        ax = tb.plots.compression_vs_accuracy(rows, frontier={"ttm": [(20.0, 0.87), (80.0, 0.85)]})

    :param list results: the results, as above.
    :param ax: ``None`` or an Axes.
    :param dict frontier: ``None``, or ``{format: [(compression, accuracy), ...]}``.
    :returns: the Axes.
    """
    rows = _check_results(results)
    lines = None if frontier is None else _check_frontier(frontier)
    ax = _single(ax)
    ax.set_xscale("log")
    colours = {}
    for fmt, points in (lines or {}).items():
        (line,) = ax.plot(
            *zip(*points), marker=".", markersize=5, linewidth=1.2, zorder=2, label=f"{str(fmt).upper()} frontier"
        )
        colours[fmt] = line.get_color()
    for fmt in dict.fromkeys(r["format"] for r in rows if r["format"] != "dense"):
        mine = [r for r in rows if r["format"] == fmt]
        style = {} if fmt not in colours else {"color": colours[fmt], "edgecolors": "black", "marker": "D"}
        ax.scatter(
            [r["compression"] for r in mine],
            [r["accuracy"] for r in mine],
            s=30,
            zorder=3,
            label=str(fmt).upper(),
            **style,
        )
    labelled = [r for r in rows if r.get("label")]
    for k, r in enumerate(labelled):  # alternately above and below: neighbours rarely collide
        ax.annotate(
            str(r["label"]),
            (r["compression"], r["accuracy"]),
            textcoords="offset points",
            xytext=(5, 4 if k % 2 == 0 else -11),
            fontsize="x-small",
        )
    for r in (r for r in rows if r["format"] == "dense"):
        ax.scatter([r["compression"]], [r["accuracy"]], marker="*", s=120, color="black", zorder=4)
        ax.axhline(r["accuracy"], color="black", linestyle="--", linewidth=1, label=f"dense ({r['accuracy']:.3f})")
    if lines is None:
        front = _frontier([(r["compression"], r["accuracy"]) for r in rows])
        if len(front) > 1:
            ax.plot(*zip(*front), color="0.5", linewidth=1, zorder=2, label="frontier")
    ax.margins(x=0.12, y=0.08)  # room for the labels of the outermost points
    ax.set_xlabel("compression (dense params / params, ×)")
    ax.set_ylabel("held-out accuracy")
    ax.set_title("compression vs accuracy", fontsize="medium")
    ax.legend(fontsize="small")
    return ax


# ----- the factors' posterior -----


def _resolve_tensor(model, layer):
    tensors = _tensors(model)
    if layer is None:
        if len(tensors) != 1:
            raise ValueError(f"layer must name one of the model's tensors {list(tensors)} (it has {len(tensors)})")
        return next(iter(tensors.items()))
    if isinstance(layer, str):
        if layer not in tensors:
            raise ValueError(f"layer must be one of the model's tensors {list(tensors)}, got {layer!r}")
        return layer, tensors[layer]
    if isinstance(layer, torch.nn.Module):
        found = layer if isinstance(layer, LowRankTensor) else getattr(layer, "weight", None)
        for name, t in tensors.items():
            if t is found:
                return name, t
    raise ValueError(
        f"layer must be a tensor name {list(tensors)}, a LowRankTensor of the model, "
        f"or a layer of the model holding one as .weight, got {type(layer).__name__}"
    )


def slice_norms(layout, factors):
    """
    The norm of every rank index's slices, per bond: for index ``j`` of bond ``b``, the root
    of the summed squares of every factor entry attached to ``j``. ``factors`` may carry
    leading sample dimensions (one per draw); the result then carries them too.
    """
    norms = []
    for pairs in layout.bonds:
        total = 0.0
        for f, d in pairs:
            x = factors[f]
            lead = x.dim() - len(layout.factor_shapes[f])
            moved = x.movedim(lead + d, -1)
            total = total + moved.pow(2).flatten(lead, -2).sum(-2)
        norms.append(total.sqrt())
    return norms


def factor_posterior(model, guide, layer=None, num_samples=200, level=0.9, seed=0, ax=None):
    """
    The posterior of the factor slices attached to each rank index: one panel per bond of one
    tensor, with, for every index in its stored order, the posterior mean of the slice norm
    (:func:`slice_norms`) and its central credible band at ``level``, from ``num_samples``
    draws of the mean-field Normal (``guide.factor_means`` / ``guide.factor_scales``), on a
    log axis. A slice that the posterior switched off has a norm near zero and a band that is
    mostly its noise; an active one stands clear of it. Indices are in the factors' own order
    (not gauge-fixed): their norms are what the λ M-step reads.

    Usage::

        axes = tb.plots.factor_posterior(model, guide, "net.0.weight")

    :param model: a model holding :class:`~tensorbayes.models.LowRankTensor` modules.
    :param guide: its :class:`~tensorbayes.guides.MeanField` guide.
    :param layer: a tensor's name (as in :func:`tensorbayes.ranks`), the tensor, or a layer
        holding it as ``.weight``; may be left out when the model has one tensor.
    :param int num_samples: posterior draws.
    :param float level: the credible band's mass, in (0, 1).
    :param int seed: seeds the draws (the global random state is left alone).
    :param ax: ``None``, a Figure, or one Axes per bond.
    :returns: the list of Axes, one per bond.
    """
    check_int(num_samples, "num_samples", low=2)
    if isinstance(seed, bool) or not isinstance(seed, Integral):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if not (isinstance(level, (int, float)) and 0 < level < 1):
        raise ValueError(f"level must be a number in (0, 1), got {level!r}")
    name, tensor = _resolve_tensor(model, layer)
    guide = as_tensor_guide(model, guide)
    means, bands = _slice_norm_posterior(tensor, guide, num_samples, level, int(seed))
    axes = _panels(len(means), ax, panel_size=(3.4, 3.0))
    for b, (a, mean, (low, high)) in enumerate(zip(axes, means, bands)):
        idx = list(range(len(mean)))
        yerr = torch.stack([(mean - low).clamp_min(0), (high - mean).clamp_min(0)])
        a.errorbar(
            idx,
            mean.tolist(),
            yerr=yerr.tolist(),
            fmt="o",
            markersize=4,
            capsize=2,
            color=ACTIVE_COLOR,
            label=f"posterior mean, {level:.0%} band",
        )
        a.set_yscale("log")
        a.set_xticks(idx)
        a.set_xlabel(f"rank index of bond {b}")
        a.set_ylabel("slice norm (‖factor slices‖₂)")
        a.set_title(f"{_display_name(name)}, bond {b}", fontsize="medium")
        a.legend(fontsize="small")
    return axes


@torch.no_grad()
def _slice_norm_posterior(tensor, guide, num_samples, level, seed):
    generator = torch.Generator().manual_seed(seed)
    locs, scales = guide.factor_means(tensor), guide.factor_scales(tensor)
    draws = [
        loc + scale * torch.randn((num_samples,) + tuple(loc.shape), generator=generator, dtype=loc.dtype)
        for loc, scale in zip(locs, scales)
    ]
    norms = slice_norms(tensor.layout, draws)
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    means = [n.double().mean(0) for n in norms]
    bands = [tuple(torch.quantile(n.double(), q, dim=0)) for n in norms]
    return means, bands


# ----- calibration -----


def reliability(probs, labels, num_bins=15, ax=None):
    """
    A reliability diagram: the accuracy of the predictions in each equal-width confidence bin
    (bars; empty bins are not drawn) against the diagonal of perfect calibration, with the
    expected calibration error (:func:`tensorbayes.infer.expected_calibration_error`) in the
    title.

    Usage::

        probs, _ = tb.predict(model, guide, x_test)
        ax = tb.plots.reliability(probs, y_test)

    :param probs: ``(N, C)`` class probabilities (or ``(N,)`` for a binary problem).
    :param labels: ``(N,)`` integer labels.
    :param int num_bins: bins over ``[0, 1]``.
    :param ax: ``None`` or an Axes.
    :returns: the Axes.
    """
    confidence, accuracy, count = calibration_bins(probs, labels, num_bins)
    ece = float((count * (accuracy - confidence).abs()).sum() / count.sum())
    ax = _single(ax, figsize=(4.2, 4.0))
    width = 1.0 / num_bins
    used = count > 0
    left = torch.arange(num_bins, dtype=torch.float64)[used] * width
    ax.bar(
        left.tolist(),
        accuracy[used].tolist(),
        width=width,
        align="edge",
        color=ACTIVE_COLOR,
        edgecolor="white",
        label="accuracy in bin",
    )
    ax.scatter(
        confidence[used].tolist(), accuracy[used].tolist(), color="black", s=10, zorder=3, label="mean confidence"
    )
    ax.plot([0, 1], [0, 1], color=THRESHOLD_COLOR, linestyle="--", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (max class probability)")
    ax.set_ylabel("accuracy (fraction correct)")
    ax.set_title(f"reliability, ECE = {ece:.3f} ({num_bins} bins)", fontsize="medium")
    ax.legend(fontsize="small", loc="upper left")
    return ax
