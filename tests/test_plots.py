"""
The figures of :mod:`tensorbayes.plots`: what was drawn (points per rank index, the threshold
line at the threshold, titles carrying the ranks, log axes), not only that nothing raised.
"""

import matplotlib

matplotlib.use("Agg")

import copy  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from pyro.nn import PyroModule  # noqa: E402

import tensorbayes as tb  # noqa: E402
from tensorbayes import plots  # noqa: E402
from tensorbayes.data import planted_tensor  # noqa: E402
from tensorbayes.guides import MeanField  # noqa: E402
from tensorbayes.infer import History, expected_calibration_error  # noqa: E402
from tensorbayes.models import LowRankTensor, TensorCompletion  # noqa: E402
from tensorbayes.rank import bond_weights  # noqa: E402
from tests.common import EMBEDDED_CASES, embedded_completion  # noqa: E402

D = torch.float64

CASES = [pytest.param(*case, id=name) for case, name in zip(EMBEDDED_CASES, ["tt", "ttm", "tucker", "cp"])]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _setup(fmt, shape, ranks, max_rank):
    """A completion model whose posterior mean is a planted tensor embedded in larger ranks."""
    return embedded_completion(fmt, shape, ranks, max_rank)[1:]


def _scatter_points(ax, label_start):
    """The points of the scatter whose legend label starts with ``label_start``."""
    found = [c for c in ax.collections if c.get_label() == label_start or c.get_label().startswith(label_start + " ")]
    assert len(found) == 1, [c.get_label() for c in ax.collections]
    return found[0].get_offsets()


def _lines(ax, label_start):
    return [line for line in ax.get_lines() if line.get_label().startswith(label_start)]


def _state(*modules):
    return [{k: v.clone() for k, v in m.state_dict().items()} for m in modules]


def _assert_same_state(before, after):
    for b, a in zip(before, after):
        assert b.keys() == a.keys()
        for k in b:
            assert torch.equal(b[k], a[k]), k


# ----- rank_shrinkage -----


@pytest.mark.parametrize("fmt, shape, ranks, max_rank", CASES)
def test_rank_shrinkage_draws_what_the_readout_uses(fmt, shape, ranks, max_rank):
    model, guide = _setup(fmt, shape, ranks, max_rank)
    assert tb.ranks(model, guide) == {"tensor": ranks}
    before = _state(model, guide)
    axes = plots.rank_shrinkage(model, guide)
    _assert_same_state(before, _state(model, guide))
    assert len(axes) == 1
    ax = axes[0]
    active, pruned = _scatter_points(ax, "active"), _scatter_points(ax, "pruned")
    # one point per rank index, as many active ones as tb.ranks counts
    assert len(active) + len(pruned) == sum(max_rank)
    assert len(active) == sum(ranks)
    # bonds sit side by side (one gap between them): the active count per bond is the readout's
    starts = [sum(max_rank[:b]) + b for b in range(len(max_rank))]
    for b, start in enumerate(starts):
        inside = (active[:, 0] >= start) & (active[:, 0] < start + max_rank[b])
        assert inside.sum() == ranks[b]
    # the points are the canonical weights relative to their bond's largest
    weights = bond_weights(model, guide)["tensor"]
    relative = torch.cat([w / w.max() for w in weights]).clamp_min(plots.FLOOR)
    drawn = sorted(active[:, 1].tolist() + pruned[:, 1].tolist(), reverse=True)
    assert drawn == pytest.approx(sorted(relative.tolist(), reverse=True), rel=1e-9)
    # the threshold line sits at the threshold, on the log axis the weights are drawn on
    (line,) = _lines(ax, "threshold")
    assert list(line.get_ydata()) == [tb.rank.DEFAULT_THRESHOLD] * 2
    assert ax.get_yscale() == "log"
    assert (active[:, 1] > tb.rank.DEFAULT_THRESHOLD).all() and (pruned[:, 1] <= tb.rank.DEFAULT_THRESHOLD).all()
    # the title carries the name, the format and the ranks before -> after
    title = ax.get_title()
    assert title.startswith("tensor: " + fmt.upper())
    assert f"{max_rank} → {ranks}" in title
    assert {t.get_text().split(" (")[0] for t in ax.get_legend().get_texts()} >= {"active", "pruned", "threshold"}
    assert ax.get_xlabel() and ax.get_ylabel()


def test_rank_shrinkage_follows_a_custom_threshold():
    model, guide = _setup("tucker", (6, 7, 8), (2, 3, 4), (5, 5, 5))
    threshold = 0.5
    chosen = tb.ranks(model, guide, threshold=threshold)["tensor"]
    ax = plots.rank_shrinkage(model, guide, threshold=threshold)[0]
    (line,) = _lines(ax, "threshold")
    assert list(line.get_ydata()) == [threshold] * 2
    assert len(_scatter_points(ax, "active")) == sum(chosen)
    assert f"→ {chosen}" in ax.get_title()


def test_rank_shrinkage_marks_a_gap_cut():
    """CP weights [1, 0.5, 0.03, 0.02]: all above the threshold, but a 16x drop ends the rank at 2."""
    model = TensorCompletion((6, 7, 8), format="cp", max_rank=4, noise=0.1)
    guide = MeanField(model, seed=0)
    gen = torch.Generator().manual_seed(0)
    factors = [torch.randn(s, generator=gen) for s in model.tensor.layout.factor_shapes]
    factors = [f / f.norm(dim=0) for f in factors]
    factors[0] = factors[0] * torch.tensor([1.0, 0.5, 0.03, 0.02])
    guide.set_posterior(model.tensor, factors)
    assert tb.ranks(model, guide) == {"tensor": (2,)}
    ax = plots.rank_shrinkage(model, guide)[0]
    assert _scatter_points(ax, "active")[:, 1].tolist() == pytest.approx([1.0, 0.5], rel=1e-5)
    assert _scatter_points(ax, "pruned")[:, 1].tolist() == pytest.approx([0.03, 0.02], rel=1e-5)
    (cut,) = _lines(ax, "gap cut")
    assert list(cut.get_xdata()) == [1.5, 1.5]  # between index 1 and index 2
    assert "(4,) → (2,)" in ax.get_title()
    # with a larger gap the drop is tolerated, and the threshold decides
    ax = plots.rank_shrinkage(model, guide, gap=100.0)[0]
    assert len(_scatter_points(ax, "active")) == sum(tb.ranks(model, guide, gap=100.0)["tensor"]) == 4
    assert not _lines(ax, "gap cut")
    with pytest.raises(ValueError, match="gap"):
        plots.rank_shrinkage(model, guide, gap=0.5)


def test_rank_shrinkage_after_pruning_shows_the_pruned_ranks():
    model, guide = _setup("tt", (6, 7, 8), (2, 3), (5, 5))
    tb.prune(model, guide)
    ax = plots.rank_shrinkage(model, guide)[0]
    assert len(_scatter_points(ax, "active")) == 5
    assert len(_scatter_points(ax, "pruned")) == 0
    assert "(2, 3) → (2, 3)" in ax.get_title()


class TwoTensors(PyroModule):
    def __init__(self):
        super().__init__()
        self.first = LowRankTensor((4, 5, 6), format="tt", max_rank=3)
        self.second = LowRankTensor((4, 5), format="cp", max_rank=2)

    def forward(self):
        return self.first(), self.second()


def test_one_panel_per_tensor_and_given_axes_are_used():
    model = TwoTensors()
    guide = MeanField(model, seed=0)
    axes = plots.rank_shrinkage(model, guide)
    assert [ax.get_title().split(":")[0] for ax in axes] == ["first", "second"]
    assert [len(_scatter_points(a, "active")) + len(_scatter_points(a, "pruned")) for a in axes] == [6, 2]
    assert axes[0].figure.get_layout_engine() is not None  # constrained layout
    fig, given = plt.subplots(1, 2)
    assert plots.rank_shrinkage(model, guide, ax=given) == list(given)
    with pytest.raises(ValueError, match="ax must be"):
        plots.rank_shrinkage(model, guide, ax=given[0])
    fig = plt.figure()
    assert [a.figure for a in plots.rank_shrinkage(model, guide, ax=fig)] == [fig, fig]


def test_rank_shrinkage_refuses_bad_input():
    with pytest.raises(ValueError, match="no LowRankTensor"):
        plots.rank_shrinkage(torch.nn.Linear(2, 2), None)
    with pytest.raises(TypeError, match="model must be"):
        plots.rank_shrinkage("model", None)
    model, guide = _setup("cp", (6, 7, 8), (3,), (5,))
    with pytest.raises(ValueError, match="threshold"):
        plots.rank_shrinkage(model, guide, threshold=1.5)
    with pytest.raises(TypeError, match="guide must be"):
        plots.rank_shrinkage(model, object())
    with pytest.raises(TypeError, match="ax must be"):
        plots.rank_shrinkage(model, guide, ax=3)
    with pytest.raises(TypeError, match="seed"):
        plots.factor_posterior(model, guide, seed=None)


# ----- lambda_trajectories -----


def _history(epochs=3, ranks=((4, 3), (4, 2), (4, 2))):
    history = History()
    for e in range(epochs):
        history.elbo.append(-100.0 + 10 * e)
        history.lambdas.append(
            {"net.0.weight": [torch.full((r,), 0.5**e) * torch.arange(1.0, r + 1) for r in ranks[e]]}
        )
        history.ranks.append({"net.0.weight": ranks[e]})
    history.lambda_trace = {"step": [], "lambdas": []}
    return history


def test_lambda_trajectories_per_epoch():
    history = _history()
    (ax,) = plots.lambda_trajectories(history)
    assert ax.get_yscale() == "log"
    assert ax.get_xlabel() == "epoch"
    lines = ax.get_lines()
    # one line per λ index ever held: 4 of bond 0, 3 of bond 1 (the third pruned after epoch 1)
    assert len(lines) == 7
    assert [list(line.get_xdata()) for line in lines[:4]] == [[1, 2, 3]] * 4
    assert list(lines[6].get_xdata()) == [1]
    assert list(lines[1].get_ydata()) == pytest.approx([2.0, 1.0, 0.5])
    assert ax.get_title() == "net.0.weight"
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"bond 0", "bond 1"}


def test_lambda_trajectories_prefer_the_step_trace():
    history = _history()
    history.lambda_trace = {
        "step": [0, 10, 20, 30],
        "lambdas": [{"t": [torch.tensor([1.0, 0.1**k])]} for k in range(4)],
    }
    (ax,) = plots.lambda_trajectories(history)
    assert ax.get_xlabel() == "SVI step"
    assert len(ax.get_lines()) == 2
    assert list(ax.get_lines()[1].get_xdata()) == [0, 10, 20, 30]
    assert list(ax.get_lines()[1].get_ydata()) == pytest.approx([1, 0.1, 0.01, 0.001])


def test_lambda_trajectories_without_records():
    with pytest.raises(ValueError, match="history must hold λ"):
        plots.lambda_trajectories(History())


# ----- training_curves -----


def test_training_curves_draw_every_recorded_quantity():
    model = TwoTensors()
    history = History()
    history.elbo = [-50.0, -20.0, -10.0]
    history.log_likelihood = [-40.0, -12.0, -4.0]
    history.kl = [10.0, 8.0, 6.0]
    history.accuracy = [0.5, 0.7, 0.8]
    history.ranks = [
        {"first": (3, 3), "second": (2,)},
        {"first": (2, 3), "second": (1,)},
        {"first": (1, 1), "second": (1,)},
    ]
    before = copy.deepcopy(history)
    axes = plots.training_curves(history, model)
    assert history == before
    assert [a.get_title() for a in axes] == ["ELBO", "held-out accuracy", "active parameters"]
    elbo_ax, acc_ax, param_ax = axes
    assert list(_lines(elbo_ax, "ELBO")[0].get_ydata()) == history.elbo
    assert list(_lines(elbo_ax, "E log")[0].get_ydata()) == history.log_likelihood
    assert list(_lines(elbo_ax, "−KL")[0].get_ydata()) == [-10.0, -8.0, -6.0]
    assert list(acc_ax.get_lines()[0].get_ydata()) == history.accuracy
    # TT (4, 5, 6) at (r1, r2): 4 r1 + r1 5 r2 + r2 6; CP (4, 5) at R: 9 R
    expected = [4 * a + 5 * a * b + 6 * b + 9 * c for (a, b), (c,) in [((3, 3), (2,)), ((2, 3), (1,)), ((1, 1), (1,))]]
    assert list(_lines(param_ax, "at chosen")[0].get_ydata()) == expected
    (dense,) = _lines(param_ax, "dense")
    assert list(dense.get_ydata()) == [4 * 5 * 6 + 4 * 5] * 2
    assert param_ax.get_yscale() == "log"
    assert all(a.get_xlabel() == "epoch" and a.get_ylabel() for a in axes)


def test_training_curves_with_what_a_regression_records():
    history = History()
    history.elbo = [-5.0, -3.0]
    history.error = [0.3, 0.1]
    axes = plots.training_curves(history)
    assert [a.get_title() for a in axes] == ["ELBO", "held-out error"]
    assert len(axes[0].get_lines()) == 1
    assert axes[1].get_yscale() == "log"
    with pytest.raises(ValueError, match="history must hold at least one epoch"):
        plots.training_curves(History())


# ----- compression_vs_accuracy -----


def test_compression_vs_accuracy_marks_the_frontier_and_the_baseline():
    results = [
        {"format": "dense", "accuracy": 0.90, "params": 4000},
        {"format": "tt", "accuracy": 0.88, "params": 500, "label": "R=8"},
        {"format": "tt", "accuracy": 0.80, "params": 400},  # dominated by the TTM below
        {"format": "ttm", "accuracy": 0.85, "params": 200},
        {"format": "cp", "accuracy": 0.70, "compression": 100.0},
    ]
    ax = plots.compression_vs_accuracy(results)
    assert ax.get_xscale() == "log"
    assert len(_scatter_points(ax, "TT")) == 2
    assert _scatter_points(ax, "TTM").tolist() == [[20.0, 0.85]]
    assert _scatter_points(ax, "CP").tolist() == [[100.0, 0.70]]
    (baseline,) = _lines(ax, "dense")
    assert list(baseline.get_ydata()) == [0.90, 0.90]
    (front,) = _lines(ax, "frontier")
    assert list(zip(front.get_xdata(), front.get_ydata())) == [(1.0, 0.9), (8.0, 0.88), (20.0, 0.85), (100.0, 0.7)]
    assert [t.get_text() for t in ax.texts] == ["R=8"]
    with pytest.raises(ValueError, match=r"results\[0\] must have keys"):
        plots.compression_vs_accuracy([{"format": "tt"}])
    with pytest.raises(ValueError, match="compression"):
        plots.compression_vs_accuracy([{"format": "tt", "accuracy": 0.5, "params": 3}])
    with pytest.raises(TypeError, match="results must be"):
        plots.compression_vs_accuracy([])
    for bad, name in [
        ({"compression": 0.0}, r"results\[0\]\['compression'\]"),
        ({"compression": float("nan")}, r"results\[0\]\['compression'\]"),
        ({"compression": "x"}, r"results\[0\]\['compression'\]"),
        ({"params": 0, "dense_params": 10}, r"results\[0\]\['params'\]"),
        ({"compression": 2.0, "accuracy": "x"}, r"results\[0\]\['accuracy'\]"),
    ]:
        with pytest.raises(ValueError, match=name):
            plots.compression_vs_accuracy([{"format": "tt", "accuracy": 0.5, **bad}])


def test_compression_vs_accuracy_draws_a_given_frontier_per_format_under_its_results():
    results = [
        {"format": "dense", "accuracy": 0.90, "compression": 1.0},
        {"format": "ttm", "accuracy": 0.86, "compression": 150.0, "label": "auto"},
        {"format": "cp", "accuracy": 0.80, "compression": 30.0},
    ]
    frontier = {"ttm": [(400.0, 0.84), (20.0, 0.89), (120.0, 0.87)], "tt": [(10.0, 0.88), (5.0, 0.89)]}
    ax = plots.compression_vs_accuracy(results, frontier=frontier)
    (ttm,) = _lines(ax, "TTM frontier")
    assert list(zip(ttm.get_xdata(), ttm.get_ydata())) == [(20.0, 0.89), (120.0, 0.87), (400.0, 0.84)]
    (tt,) = _lines(ax, "TT frontier")
    assert list(tt.get_xdata()) == [5.0, 10.0]
    assert _lines(ax, "frontier") == []  # no line of non-dominated results beside the given ones
    marker = next(c for c in ax.collections if c.get_label() == "TTM")
    assert marker.get_offsets().tolist() == [[150.0, 0.86]]
    assert matplotlib.colors.same_color(marker.get_facecolor()[0], ttm.get_color())
    assert marker.get_zorder() > ttm.get_zorder()  # the automatic point on top of its line
    assert ax.get_xscale() == "log" and [t.get_text() for t in ax.texts] == ["auto"]
    with pytest.raises(ValueError, match=r"frontier\['tt'\] must be a sequence"):
        plots.compression_vs_accuracy(results, frontier={"tt": [1.0, 2.0]})
    with pytest.raises(TypeError, match="frontier must be None or a dict"):
        plots.compression_vs_accuracy(results, frontier=[(1.0, 0.5)])


# ----- factor_posterior -----


def test_factor_posterior_bands_and_means():
    model, guide = _setup("tt", (6, 7, 8), (2, 3), (5, 5))
    before = _state(model, guide)
    axes = plots.factor_posterior(model, guide, "tensor", num_samples=400)
    _assert_same_state(before, _state(model, guide))
    assert len(axes) == 2
    layout = model.tensor.layout
    at_mean = plots.slice_norms(layout, guide.factor_means(model.tensor))
    for b, ax in enumerate(axes):
        assert ax.get_yscale() == "log"
        (container,) = ax.containers  # one errorbar: points, caps, bars
        points, _, (band,) = container
        mean = torch.tensor([float(y) for y in points.get_ydata()], dtype=D)
        assert len(mean) == 5  # one point per rank index
        # small posterior scales: the draws' mean norm is the norm of the mean slices
        torch.testing.assert_close(mean, at_mean[b], rtol=0.05, atol=0.05)
        for (low, high), m in zip([seg[:, 1] for seg in band.get_segments()], mean):
            assert low <= m <= high
        assert f"bond {b}" in ax.get_title()


def test_slice_norms_by_hand_and_with_sample_dimensions():
    layout = tb.formats.get_format("tt")((2, 3, 4), (2, 2))
    factors = [torch.randn(s, dtype=D) for s in layout.factor_shapes]
    norms = plots.slice_norms(layout, factors)
    by_hand = (factors[0][0, :, 1].pow(2).sum() + factors[1][1].pow(2).sum()).sqrt()
    assert norms[0][1] == pytest.approx(float(by_hand))
    stacked = plots.slice_norms(layout, [torch.stack([f, 2 * f]) for f in factors])
    torch.testing.assert_close(stacked[1], torch.stack([norms[1], 2 * norms[1]]))


def test_factor_posterior_resolves_the_layer():
    model = TwoTensors()
    guide = MeanField(model, seed=0)
    assert len(plots.factor_posterior(model, guide, model.first, num_samples=10)) == 2
    assert len(plots.factor_posterior(model, guide, "second", num_samples=10)) == 1
    with pytest.raises(ValueError, match="layer must name one"):
        plots.factor_posterior(model, guide)
    with pytest.raises(ValueError, match="layer must be one of"):
        plots.factor_posterior(model, guide, "third")
    with pytest.raises(ValueError, match="level"):
        plots.factor_posterior(model, guide, "first", level=1.0)


# ----- reliability -----


def test_reliability_draws_the_bins_of_the_ece():
    probs = torch.tensor([[0.95, 0.05], [0.75, 0.25], [0.55, 0.45], [0.30, 0.70], [0.35, 0.65]], dtype=D)
    labels = torch.tensor([0, 1, 0, 1, 0])
    ax = plots.reliability(probs, labels, num_bins=5)
    bars = ax.patches
    assert len(bars) == 3  # three non-empty bins
    assert [round(b.get_x(), 6) for b in bars] == [0.4, 0.6, 0.8]
    assert [b.get_height() for b in bars] == pytest.approx([1.0, 1 / 3, 1.0])
    assert [b.get_width() for b in bars] == pytest.approx([0.2] * 3)
    assert _scatter_points(ax, "mean confidence")[:, 0].tolist() == pytest.approx([0.55, 0.70, 0.95])
    (diagonal,) = _lines(ax, "perfect")
    assert list(diagonal.get_xdata()) == list(diagonal.get_ydata()) == [0, 1]
    assert f"ECE = {expected_calibration_error(probs, labels, 5):.3f}" in ax.get_title()
    assert ax.get_xlim() == ax.get_ylim() == (0.0, 1.0)
    with pytest.raises(ValueError, match="probs"):
        plots.reliability(probs * 2, labels)


# ----- on a real fit -----


def test_every_plot_on_a_real_fit_agrees_with_the_readout():
    planted = planted_tensor((8, 9, 10), "tucker", (2, 3, 2), observed=0.4, noise=0.01, seed=0, dtype=torch.float32)
    model = TensorCompletion(planted.format.shape, format="tucker", max_rank=4)
    guide = MeanField(model, seed=0)
    history = tb.fit(
        model,
        guide,
        (planted.train_index, planted.train_values),
        epochs=2,
        batch_size=256,
        init_sweeps=4,
        eval_data=(planted.test_index, planted.test_values),
        seed=0,
        progress=False,
    )
    before = _state(model, guide)
    snapshot = copy.deepcopy(history)
    (ax,) = plots.rank_shrinkage(model, guide)
    assert len(_scatter_points(ax, "active")) == sum(tb.ranks(model, guide)["tensor"])
    assert len(plots.lambda_trajectories(history)[0].get_lines()) == sum(model.tensor.layout.ranks)
    assert [a.get_title() for a in plots.training_curves(history, model)] == [
        "ELBO",
        "held-out error",
        "active parameters",
    ]
    assert len(plots.factor_posterior(model, guide, num_samples=20)) == 3
    _assert_same_state(before, _state(model, guide))
    assert history.elbo == snapshot.elbo and history.ranks == snapshot.ranks


# ----- corrupt histories and results are refused before anything is drawn -----


def test_lambda_trajectories_refuse_corrupt_records():
    bad = {}
    for key, lambdas in (("nan", [1.0, float("nan")]), ("negative", [1.0, -0.5])):
        history = History()
        history.lambdas.append({"t": [torch.tensor(lambdas)]})
        bad[key] = history
    empty_last = History()
    empty_last.lambdas += [{"t": [torch.tensor([1.0, 0.5])]}, {}]
    short_steps = History()
    short_steps.lambda_trace = {"step": [0, 10], "lambdas": [{"t": [torch.tensor([1.0])]}] * 3}
    fig = plt.figure()
    for history, match in (
        (bad["nan"], r"history.lambdas\[0\]\['t'\] must hold finite non-negative λ"),
        (bad["negative"], r"history.lambdas\[0\]\['t'\] must hold finite non-negative λ"),
        (empty_last, "history.lambdas must end with a record of λ per tensor"),
        (short_steps, "history.lambda_trace must have one step per λ record, got 2 steps and 3 records"),
    ):
        with pytest.raises(ValueError, match=match):
            plots.lambda_trajectories(history, ax=fig)
    assert fig.axes == []  # nothing drawn


def test_training_curves_refuse_non_finite_records():
    for key, values in (("elbo", [-10.0, float("nan"), -5.0]), ("elbo", ["a", "b"]), ("accuracy", [0.5, float("inf")])):
        history = History()
        history.elbo += [-10.0, -5.0, -1.0]
        getattr(history, key)[:] = values
        fig = plt.figure()
        with pytest.raises(ValueError, match=rf"history.{key}\[\d\] must be a finite number"):
            plots.training_curves(history, ax=fig)
        assert fig.axes == []


def test_compression_vs_accuracy_refuses_accuracies_outside_0_1():
    _, ax = plt.subplots()
    with pytest.raises(ValueError, match=r"results\[0\]\['accuracy'\] must be a number in \[0, 1\]"):
        plots.compression_vs_accuracy([{"format": "tt", "accuracy": 86.0, "compression": 2.0}], ax=ax)  # a percentage
    row = [{"format": "tt", "accuracy": 0.5, "compression": 2.0}]
    for points in ([(2.0, float("nan"))], [(float("inf"), 0.5)], [(2.0, 86.0)]):
        with pytest.raises(ValueError, match=r"frontier\['tt'\] must hold at least one pair"):
            plots.compression_vs_accuracy(row, ax=ax, frontier={"tt": points})
    assert ax.get_xscale() == "linear" and not ax.lines and not ax.collections


def test_training_curves_leave_out_parts_a_loss_did_not_split():
    history = History()
    history.elbo += [-10.0, -5.0]
    history.log_likelihood += [float("nan")] * 2  # what fit records with a differentiable_loss
    history.kl += [float("nan")] * 2
    (ax,) = plots.training_curves(history)
    assert [line.get_label() for line in ax.get_lines()] == ["ELBO"]
