"""
Rank readout, pruning and the compression report on posteriors whose means are a planted
low-rank tensor embedded in larger ranks.
"""

import math

import numpy as np
import pytest
import torch
from pyro import poutine

import tensorbayes as tb
from tensorbayes.data import planted_tensor
from tensorbayes.guides import MeanField
from tensorbayes.models import TensorCompletion
from tests.common import factor_parameter
from tests.embedding import EMBEDDED_CASES, embedded_completion

D = torch.float64


CASES = [pytest.param(*case, id=name) for case, name in zip(EMBEDDED_CASES, ["tt", "ttm-odd", "tucker", "cp"])]


def _num_params(fmt, shape, ranks):
    """Parameter count written out per format."""
    if fmt == "tt":
        r = (1,) + tuple(ranks) + (1,)
        return sum(r[k] * shape[k] * r[k + 1] for k in range(len(shape)))
    if fmt == "ttm":
        cores = (len(shape) + 1) // 2
        r = (1,) + tuple(ranks) + (1,)
        sizes = [shape[k] * (shape[cores + k] if cores + k < len(shape) else 1) for k in range(cores)]
        return sum(r[k] * sizes[k] * r[k + 1] for k in range(cores))
    if fmt == "tucker":
        return math.prod(ranks) + sum(i * r for i, r in zip(shape, ranks))
    return ranks[0] * sum(shape)


_setup = embedded_completion


@pytest.mark.parametrize("fmt, shape, ranks, max_rank", CASES)
def test_ranks_and_prune_recover_the_embedded_tensor(fmt, shape, ranks, max_rank):
    planted, model, guide = _setup(fmt, shape, ranks, max_rank)
    tensor = model.tensor
    mean_before = tensor.layout.full(guide.factor_means(tensor))
    assert tb.ranks(model, guide) == {"tensor": tuple(ranks)}

    assert tb.prune(model, guide) == {"tensor": tuple(ranks)}
    layout = tensor.layout
    assert layout.ranks == tuple(ranks)
    assert tensor.max_ranks == tuple(max_rank)
    locs = [factor_parameter(guide, "locs", k) for k in range(len(layout.factor_shapes))]
    raw_scales = [factor_parameter(guide, "scales", k) for k in range(len(layout.factor_shapes))]
    assert [tuple(p.shape) for p in locs] == layout.factor_shapes
    assert [tuple(p.shape) for p in raw_scales] == layout.factor_shapes
    assert all(isinstance(p, torch.nn.Parameter) for p in locs + raw_scales)
    lambdas = guide.lambdas()["tensor"]
    assert [len(lam) for lam in lambdas] == list(ranks)
    assert all(torch.isfinite(lam).all() and (lam > 0).all() for lam in lambdas)
    assert layout.num_params() == _num_params(fmt, shape, ranks)
    assert layout.num_params() < _num_params(fmt, shape, max_rank)

    mean_after = layout.full(guide.factor_means(tensor))
    assert (mean_after - mean_before).norm() / mean_before.norm() < 1e-6
    # the pruned model and guide still run together, with matching sites
    guide_trace = poutine.trace(guide).get_trace(planted.train_index, planted.train_values)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
        planted.train_index, planted.train_values
    )
    for k, s in enumerate(layout.factor_shapes):
        name = tensor.factor_site(k)
        assert tuple(guide_trace.nodes[name]["value"].shape) == s
        assert model_trace.nodes[name]["fn"].event_shape == s
    # a second prune has nothing left to remove
    assert tb.prune(model, guide) == {"tensor": tuple(ranks)}
    assert tensor.layout.ranks == tuple(ranks)


@pytest.mark.parametrize("fmt, shape, ranks, max_rank", [CASES[0], CASES[2]])
def test_ranks_ignore_the_gauge(fmt, shape, ranks, max_rank):
    """A random change of basis on every bond spreads the tensor over all indices: same ranks."""
    planted, model, guide = _setup(fmt, shape, ranks, max_rank)
    tensor = model.tensor
    layout = tensor.layout
    locs = guide.factor_means(tensor)
    full = layout.full(locs)
    gen = torch.Generator().manual_seed(2)
    for b, ((f, d), (g, e)) in enumerate(layout.bonds):
        r = layout.ranks[b]
        mix = torch.randn(r, r, generator=gen, dtype=D) + 3 * torch.eye(r, dtype=D)
        locs[f] = torch.movedim(torch.movedim(locs[f], d, -1) @ mix, -1, d)
        locs[g] = torch.movedim(torch.movedim(locs[g], e, -1) @ torch.linalg.inv(mix).T, -1, e)
    torch.testing.assert_close(layout.full(locs), full, rtol=1e-9, atol=1e-9)
    guide.set_posterior(tensor, locs)
    # every index of every bond now carries weight in the raw factors ...
    for b, ((f, d), _) in enumerate(layout.bonds):
        norms = torch.movedim(locs[f], d, 0).reshape(layout.ranks[b], -1).norm(dim=1)
        assert (norms > 1e-3 * norms.max()).all()
    # ... but the readout is a property of the tensor
    assert tb.ranks(model, guide) == {"tensor": tuple(ranks)}
    tb.prune(model, guide)
    after = tensor.layout.full(guide.factor_means(tensor))
    assert (after - full).norm() / full.norm() < 1e-6


def test_threshold_decides():
    planted, model, guide = _setup("tt", (6, 7, 8), (2, 3), (5, 5))
    weights = tb.rank.bond_weights(model, guide)["tensor"]
    # the planted spectra spread over [1, 2]: the smallest kept weight is at least half the largest
    smallest = min(float(w[r - 1] / w[0]) for w, r in zip(weights, (2, 3)))
    assert 0.4 < smallest < 1
    assert tb.ranks(model, guide, threshold=0.99) == {"tensor": (1, 1)}
    assert tb.ranks(model, guide, threshold=smallest * 0.99) == {"tensor": (2, 3)}


def test_active_ranks_end_at_the_first_large_drop_or_below_the_threshold():
    w = torch.tensor
    # the SVI pattern: needed indices within 2x, unneeded ones a few percent (above 1 %) after a 19x drop
    assert tb.rank.active_ranks([w([1.0, 0.75, 0.5, 0.026, 0.019, 0.009])]) == [3]
    assert tb.rank.active_ranks([w([1.0, 0.5, 0.2, 0.1])]) == [4]  # smooth decay: all kept
    assert tb.rank.active_ranks([w([1.0, 0.5, 0.2, 0.1])], gap=2.4) == [2]  # 0.5 -> 0.2 is a 2.5x drop
    assert tb.rank.active_ranks([w([1.0, 0.3, 0.02, 0.015])], threshold=0.018, gap=100) == [
        3
    ]  # the threshold still applies
    assert tb.rank.active_ranks([w([1.0, 0.3, 0.02, 0.015])], threshold=0.1, gap=100) == [2]
    assert tb.rank.active_ranks([w([0.0, 0.0]), w([2.0])]) == [1, 1]  # at least one index per bond
    for bad in (1, 0.5, "10", None):
        with pytest.raises(ValueError, match="gap"):
            tb.rank.active_ranks([w([1.0])], gap=bad)


def test_a_drop_of_exactly_gap_ends_the_active_indices():
    # the docs: a drop "by a factor of gap or more" ends them; 1 -> 0.5 is a drop of exactly 2
    assert tb.rank.active_ranks([torch.tensor([1, 0.5, 0.25])], gap=2) == [1]
    w = lambda *values: torch.tensor(values, dtype=torch.float64)  # noqa: E731
    assert tb.rank.active_ranks([w(1, 0.5, 0.25)], gap=2) == [1]
    # the neighbours of the boundary: a drop just under gap continues, one just over ends
    assert tb.rank.active_ranks([w(1, 0.5, 0.25)], gap=2 * (1 + 1e-9)) == [3]
    assert tb.rank.active_ranks([w(1, 0.5, 0.25)], gap=2 * (1 - 1e-9)) == [1]
    assert tb.rank.active_ranks([w(1, 0.5 + 1e-12, 0.25)], gap=2) == [2]  # 0.5 -> 0.25 is exactly 2 again
    assert tb.rank.active_ranks([w(1, 0.5 - 1e-12, 0.25)], gap=2) == [1]
    assert tb.rank.active_ranks([w(1, 0.75, 0.375, 0.1)], gap=2) == [2]  # a later exact drop ends there
    # the threshold is strict the same way: an index at exactly threshold times the largest is inactive
    assert tb.rank.active_ranks([w(1, 0.5, 0.25)], threshold=0.25, gap=10) == [2]
    assert tb.rank.active_ranks([w(1, 0.5, 0.25)], threshold=0.25 * (1 - 1e-9), gap=10) == [3]


def test_ranks_and_prune_follow_the_gap():
    planted, model, guide = _setup("tt", (6, 7, 8), (2, 3), (5, 5))
    weights = tb.rank.bond_weights(model, guide)["tensor"]
    largest_drop = max(float(w[j - 1] / w[j]) for w, r in zip(weights, (2, 3)) for j in range(1, r))
    # a gap no larger than the drops inside the planted spectra cuts them; the default keeps them
    assert tb.ranks(model, guide)["tensor"] == (2, 3)
    assert tb.ranks(model, guide, gap=largest_drop * 0.99)["tensor"] < (2, 3)
    with pytest.raises(ValueError, match="gap"):
        tb.prune(model, guide, gap=0.5)
    assert model.tensor.layout.ranks == (5, 5)


@pytest.mark.parametrize("threshold", [0, 1, -0.1, 1.5, "0.1", None])
def test_threshold_out_of_range(threshold):
    planted, model, guide = _setup("cp", (6, 7, 8), (3,), (5,))
    for fn in (tb.ranks, tb.prune):
        with pytest.raises(ValueError, match="threshold"):
            fn(model, guide, threshold=threshold)
    with pytest.raises(ValueError, match="threshold"):
        tb.compression_report(model, guide, threshold=threshold)
    assert model.tensor.layout.ranks == (5,)


@pytest.mark.parametrize("fmt, shape, ranks, max_rank", CASES)
def test_compression_report(fmt, shape, ranks, max_rank):
    planted, model, guide = _setup(fmt, shape, ranks, max_rank)
    dense = math.prod(shape)
    (row,) = tb.compression_report(model, guide)
    assert row["tensor"] == "tensor" and row["format"] == fmt and row["shape"] == tuple(shape)
    assert row["max_ranks"] == tuple(max_rank) and row["ranks"] == tuple(ranks)
    assert row["params_max"] == _num_params(fmt, shape, max_rank)
    assert row["params"] == _num_params(fmt, shape, ranks)
    assert row["dense"] == dense
    assert row["compression"] == pytest.approx(dense / _num_params(fmt, shape, ranks))
    # without a guide: the ranks the layout has
    (row,) = tb.compression_report(model)
    assert row["ranks"] == tuple(max_rank) and row["params"] == _num_params(fmt, shape, max_rank)
    assert row["compression"] == pytest.approx(dense / _num_params(fmt, shape, max_rank))
    tb.prune(model, guide)
    (row,) = tb.compression_report(model)
    assert row["ranks"] == tuple(ranks) and row["params"] == _num_params(fmt, shape, ranks)
    assert row["params_max"] == _num_params(fmt, shape, max_rank)


# ----- rank recovery by the default fit -----

RECOVERY = [
    pytest.param("tt", (10, 12, 14), (3, 2), 6, id="tt"),
    pytest.param("ttm", (10, 12, 14, 16), (3,), 6, id="ttm"),
    pytest.param("tucker", (10, 12, 14), (3, 4, 2), 8, id="tucker"),
    pytest.param("cp", (12, 14, 16), 3, 6, id="cp"),
]


@pytest.mark.slow
@pytest.mark.parametrize("fmt, shape, ranks, max_rank", RECOVERY)
def test_fit_recovers_the_planted_ranks(fmt, shape, ranks, max_rank):
    planted = planted_tensor(shape, fmt, ranks, observed=0.3, noise=0.01, seed=0, dtype=torch.float32)
    model = TensorCompletion(shape, format=fmt, max_rank=max_rank)
    guide = MeanField(model, seed=0)
    tb.fit(model, guide, (planted.train_index, planted.train_values), epochs=3, batch_size=1024, progress=False, seed=0)
    found = tb.ranks(model, guide)["tensor"]
    tensor = model.tensor
    error = planted.relative_error(tensor.layout.entries(guide.factor_means(tensor), planted.test_index))
    assert found == planted.ranks, f"found ranks {found} (planted {planted.ranks}), held-out error {error:.4f}"
    assert error < 0.05, f"held-out relative error {error:.4f}"


# ----- the rank search -----


def _cp_matrix(weights, rows=8, cols=6, seed=0):
    """A CP (rank-R matrix) completion model whose posterior means are ``Σ_j w_j u_j v_jᵀ`` with
    orthonormal ``u``, ``v``, and every entry's index and value."""
    gen = torch.Generator().manual_seed(seed)
    weights = torch.tensor(weights, dtype=D)
    u = torch.linalg.qr(torch.randn(rows, len(weights), generator=gen, dtype=D))[0]
    v = torch.linalg.qr(torch.randn(cols, len(weights), generator=gen, dtype=D))[0]
    model = TensorCompletion((rows, cols), format="cp", max_rank=len(weights)).to(D)
    guide = MeanField(model, seed=seed)
    guide.set_posterior(model.tensor, [u * weights.sqrt(), v * weights.sqrt()])
    index = torch.cartesian_prod(torch.arange(rows), torch.arange(cols))
    values = (u * weights) @ v.T
    return model, guide, index, values.reshape(-1)


@pytest.mark.parametrize("tolerance, minimum", [(0.1, 20), (0.02, 100), (0.005, 400)])
def test_search_ranks_refuses_held_out_data_too_few_for_the_tolerance(tolerance, minimum):
    # where one example weighs more than half the tolerance the search cut on the luck of a few
    # examples (tb.fit runs no search there): 2 / tolerance examples at least
    model, guide, index, values = _cp_matrix([1.0, 0.5, 0.1, 0.01], rows=20, cols=20)
    before = [m.clone() for m in guide.factor_means(model.tensor)]
    match = rf"target must hold at least {minimum} held-out examples at tolerance={tolerance} .*got {minimum - 1}"
    with pytest.raises(ValueError, match=match):
        tb.rank.search_ranks(model, guide, index[: minimum - 1], values[: minimum - 1], tolerance=tolerance)
    assert model.tensor.layout.ranks == (4,)
    assert all(torch.equal(a, b) for a, b in zip(before, guide.factor_means(model.tensor)))
    found, scores = tb.rank.search_ranks(model, guide, index[:minimum], values[:minimum], tolerance=tolerance)
    assert 1 <= found["tensor"][0] <= 4 and scores["found"] >= scores["full"] - tolerance  # the minimum is enough


def test_min_held_out_is_2_over_the_tolerance_rounded_up():
    assert tb.rank.min_held_out(tb.rank.DEFAULT_TOLERANCE) == 400
    assert tb.rank.min_held_out(0.003) == 667 and tb.rank.min_held_out(2.5) == 1
    assert tb.rank.min_held_out(0) == 1  # nothing given up: a cut that lowers the score at all is refused


@pytest.mark.parametrize("tolerance, rank", [(0.5, 1), (0.1, 2), (0.02, 3), (0.005, 4)])
def test_search_ranks_keeps_the_fewest_components_within_the_tolerance(tolerance, rank):
    # Cutting orthogonal components k+1.. leaves the relative error sqrt(Σ_{j>k} w_j²) / ‖w‖
    # by hand: for w = (1, .5, .1, .01) that is .454, .0895, .0089 at k = 1, 2, 3 (0 at 4)
    model, guide, index, values = _cp_matrix([1.0, 0.5, 0.1, 0.01], rows=20, cols=20)  # 400 entries: 2 / 0.005
    found, scores = tb.rank.search_ranks(model, guide, index, values, tolerance=tolerance)
    assert found == {"tensor": (rank,)}
    w = torch.tensor([1.0, 0.5, 0.1, 0.01], dtype=D)
    assert scores["full"] == pytest.approx(0.0, abs=1e-12)
    assert scores["found"] == pytest.approx(-float(w[rank:].norm() / w.norm()), abs=1e-12)
    assert model.tensor.layout.ranks == (4,)  # the search changes nothing


def test_search_ranks_stays_within_a_reference_above_the_current_score():
    model, guide, index, values = _cp_matrix([1.0, 0.5, 0.1, 0.01])
    found, _ = tb.rank.search_ranks(model, guide, index, values, tolerance=0.1, reference=0.05)
    assert found == {"tensor": (3,)}  # within .1 of .05: error at most .05
    found, scores = tb.rank.search_ranks(model, guide, index, values, tolerance=0.1, reference=0.5)
    assert found == {"tensor": (4,)} and scores["found"] == scores["full"]  # already below: kept


def test_prune_to_searched_ranks_scores_what_the_search_found():
    model, guide, index, values = _cp_matrix([1.0, 0.5, 0.1, 0.01], rows=20, cols=20)
    found, scores = tb.rank.search_ranks(model, guide, index, values, tolerance=0.02)
    assert tb.prune(model, guide, ranks=found) == {"tensor": (3,)}
    mean = model.tensor.layout.entries(guide.factor_means(model.tensor), index)
    assert tb.rank.held_out_score(mean, values) == pytest.approx(scores["found"], abs=1e-12)
    assert scores["found"] >= scores["full"] - 0.02


@pytest.mark.parametrize("fmt, shape, ranks, max_rank", CASES)
def test_prune_to_given_ranks_changes_the_mean_by_the_weights_cut(fmt, shape, ranks, max_rank):
    _, model, guide = _setup(fmt, shape, ranks, max_rank)
    tensor = model.tensor
    before = tensor.layout.full(guide.factor_means(tensor))
    weights = tb.rank.bond_weights(model, guide)["tensor"]
    target = tuple(max(1, r - 1) for r in ranks)
    assert tb.prune(model, guide, ranks={"tensor": target}) == {"tensor": target}
    after = tensor.layout.full(guide.factor_means(tensor))
    # the canonical cut is a TT-SVD / HOSVD truncation: ‖Δ‖² ≤ Σ of the squared weights cut
    # (for CP, whose components need not be orthogonal, by the triangle inequality instead)
    cut = [w[r:] for w, r in zip(weights, target)]
    bound = sum(float(c.sum()) for c in cut) if fmt == "cp" else math.sqrt(sum(float(c.pow(2).sum()) for c in cut))
    assert float((after - before).norm()) <= bound * (1 + 1e-9) + 1e-12


def test_prune_to_ranks_refuses_what_it_cannot_cut():
    model, guide, _, _ = _cp_matrix([1.0, 0.5])
    with pytest.raises(ValueError, match="ranks names a tensor the model does not hold: 'other'"):
        tb.prune(model, guide, ranks={"other": (1,)})
    with pytest.raises(ValueError, match=r"ranks\['tensor'\] must be 1 ints in \[1, current rank\]"):
        tb.prune(model, guide, ranks={"tensor": (3,)})
    with pytest.raises(TypeError, match="ranks must be a dict"):
        tb.prune(model, guide, ranks=[1])
    assert model.tensor.layout.ranks == (2,)


# ----- gaps found by mutation testing (benchmarks/mutation.py) -----


def test_prune_to_ranks_refuses_a_rank_of_zero():
    model, guide, _, _ = _cp_matrix([1.0, 0.5])
    with pytest.raises(ValueError, match=r"ranks\['tensor'\] must be 1 ints in \[1, current rank\]"):
        tb.prune(model, guide, ranks={"tensor": (0,)})
    assert model.tensor.layout.ranks == (2,)


def test_a_cut_resets_the_scales_and_sets_lambda_from_the_cut_second_moments():
    # CP has one bond: M[j] = Σ over both factors of E[factor²] in column j, D = rows + cols
    model, guide, _, _ = _cp_matrix([1.0, 0.5, 0.1, 0.01])
    tensor = model.tensor
    assert tb.prune(model, guide, ranks={"tensor": (2,)}) == {"tensor": (2,)}
    means, scales = guide.factor_means(tensor), guide.factor_scales(tensor)
    for m, s in zip(means, scales):
        expected = torch.full_like(m, tb.rank.CUT_SCALE * float(m.pow(2).mean().sqrt()))
        torch.testing.assert_close(s, expected, rtol=1e-6, atol=0)
    second = sum((m**2 + s**2).sum(0) for m, s in zip(means, scales))
    (lam,) = guide.lambdas("tensor")
    torch.testing.assert_close(lam, tensor.prior.update(second, 8 + 6), rtol=1e-9, atol=0)


@pytest.mark.parametrize("fmt, shape, ranks, max_rank", CASES)
def test_lambda_after_a_cut_is_the_closed_form_of_the_cut_factors_whatever_lambda_was_before(
    fmt, shape, ranks, max_rank
):
    # λ after a cut was each bond's step given the other bonds' old λ taken by position: after the
    # change of gauge those belong to other indices, and a shrunk old index made its neighbours'
    # λ blow up. It is now the joint closed form of the cut factors alone (CUT_SWEEPS sweeps from 1).
    found = []
    for old in (None, 1e-12):
        _, model, guide = _setup(fmt, shape, ranks, max_rank)
        tensor = model.tensor
        if old is not None:  # the leading old index of every bond shrunk, the others unequal
            lambdas = [torch.linspace(1.0, 3.0, r, dtype=D) for r in tensor.layout.ranks]
            for lam in lambdas:
                lam[0] = old
            guide.set_posterior(tensor, guide.factor_means(tensor), guide.factor_scales(tensor), lambdas)
        tb.prune(model, guide, ranks={"tensor": ranks})
        found.append(guide.lambdas("tensor"))
        second = [m**2 + s**2 for m, s in zip(guide.factor_means(tensor), guide.factor_scales(tensor))]
        again = [lam.clone() for lam in found[-1]]
        for b in range(len(again)):  # one more sweep moves the prior variances by little: near the optimum
            ((m, d),) = tensor.slice_moments(second, again, bonds=[b])
            again[b] = tensor.prior.update(m, d)
        for v, w in zip(tensor.prior_variances(found[-1]), tensor.prior_variances(again)):
            assert float((v / w).log().abs().max()) < 0.05
    for a, b in zip(*found):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


def test_the_compression_report_of_a_bare_tensor_names_it_tensor():
    _, model, _ = _setup("cp", (6, 7, 8), (3,), (5,))
    (row,) = tb.compression_report(model.tensor)
    assert row["tensor"] == "tensor" and row["ranks"] == (5,)


@pytest.mark.parametrize("tolerance", [True, "0.1", -0.1])
def test_search_ranks_refuses_a_tolerance_that_is_not_a_non_negative_number(tolerance):
    model, guide, index, values = _cp_matrix([1.0, 0.5])
    with pytest.raises(ValueError, match="tolerance must be a non-negative number"):
        tb.rank.search_ranks(model, guide, index, values, tolerance=tolerance)


def test_search_ranks_with_no_tolerance_still_drops_the_components_of_weight_zero():
    model, guide, index, values = _cp_matrix([1.0, 0.0, 0.0])
    found, scores = tb.rank.search_ranks(model, guide, index, values, tolerance=0)
    assert found == {"tensor": (1,)} and scores["found"] == scores["full"]


@pytest.mark.parametrize("scale", [2.0, 0.5])
@pytest.mark.parametrize("tolerance, rank", [(0.1, 2), (0.02, 3), (0.005, 4)])
def test_search_ranks_does_not_depend_on_the_scale_of_the_weights(tolerance, rank, scale):
    # the case above with every weight doubled, or halved (all below 1): the same relative
    # errors, the same ranks
    model, guide, index, values = _cp_matrix([scale * w for w in (1.0, 0.5, 0.1, 0.01)], rows=20, cols=20)
    found, _ = tb.rank.search_ranks(model, guide, index, values, tolerance=tolerance)
    assert found == {"tensor": (rank,)}


def test_prune_to_the_current_ranks_is_allowed_and_changes_nothing():
    model, guide, _, _ = _cp_matrix([1.0, 0.5])
    before = [m.clone() for m in guide.factor_means(model.tensor)]
    assert tb.prune(model, guide, ranks={"tensor": (2,)}) == {"tensor": (2,)}
    assert all(torch.equal(a, b) for a, b in zip(before, guide.factor_means(model.tensor)))


def test_held_out_metric_is_the_accuracy_of_labels_and_the_relative_error_of_values():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3], [0.4, 0.4, 0.2]], dtype=D)
    labels = torch.tensor([0, 2, 0, 1])  # the third is wrong; the fourth is a tie that argmax breaks to 0
    name, value = tb.rank.held_out_metric(probs, labels)
    assert name == "accuracy" and value.item() == pytest.approx(0.5, abs=0)
    assert tb.rank.held_out_score(probs, labels) == pytest.approx(0.5, abs=0)
    target = torch.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=D)
    mean = target + torch.tensor([[0.0, 0.5], [0.0, 0.0]], dtype=D)  # error 0.5 against a norm of 5
    name, value = tb.rank.held_out_metric(mean, target)
    assert name == "error" and value.item() == pytest.approx(0.1, rel=1e-15)
    assert tb.rank.held_out_score(mean, target) == pytest.approx(-0.1, rel=1e-15)
    # class probabilities against float targets are values, not labels
    assert tb.rank.held_out_metric(probs, probs.argmax(-1).to(D).unsqueeze(-1).expand(-1, 3))[0] == "error"


def test_a_bond_whose_weights_are_all_zero_keeps_one_index():
    # a dead tensor (every factor zero): the readout and the search keep one index per bond, the
    # least a layout holds (the data, all zero too, have no relative error to score: NaN)
    model, guide, index, values = _cp_matrix([0.0, 0.0, 0.0], rows=20, cols=20)
    assert tb.ranks(model, guide) == {"tensor": (1,)}
    found, _ = tb.rank.search_ranks(model, guide, index, values, tolerance=0.01)
    assert found == {"tensor": (1,)}


def test_search_ranks_of_a_tensor_at_rank_one_keeps_it():
    model, guide, index, values = _cp_matrix([1.0], rows=20, cols=20)
    found, scores = tb.rank.search_ranks(model, guide, index, values, tolerance=0.01)
    assert found == {"tensor": (1,)} and scores["found"] == scores["full"] == pytest.approx(0.0, abs=1e-12)


# ----- held-out data and target ranks of the wrong form are named -----


def test_prune_to_ranks_names_a_rank_that_is_not_a_tuple_and_takes_numpy_ints():
    model, guide, _, _ = _cp_matrix([1.0, 0.5])
    with pytest.raises(TypeError, match=r"ranks\['tensor'\] must be a tuple of 1 ints"):
        tb.prune(model, guide, ranks={"tensor": 1})
    assert tb.prune(model, guide, ranks={"tensor": (np.int64(1),)}) == {"tensor": (1,)}
    assert model.tensor.layout.ranks == (1,) and type(model.tensor.layout.ranks[0]) is int


@pytest.mark.parametrize(
    "cut, match",
    [
        (lambda i, v: (i, v[:10]), "inputs must be tensors with target's 10 examples"),
        (lambda i, v: (i[:0], v[:0]), "target must be a tensor of at least one held-out example"),
        (lambda i, v: (i, v.unsqueeze(-1)), r"values shaped like the model's output \(48,\)"),
    ],
    ids=["mismatched", "empty", "misshapen"],
)
def test_search_ranks_and_mean_score_name_held_out_data_of_the_wrong_form(cut, match):
    model, guide, index, values = _cp_matrix([1.0, 0.5])
    inputs, target = cut(index, values)
    with pytest.raises(ValueError, match=match):
        tb.rank.search_ranks(model, guide, inputs, target)
    with pytest.raises(ValueError, match=match):
        tb.rank.mean_score(model, guide, inputs, target)


@pytest.mark.parametrize("chunk_size", [0, -1, 2.0])
def test_search_ranks_names_a_chunk_size_that_is_not_a_positive_int(chunk_size):
    model, guide, index, values = _cp_matrix([1.0, 0.5])
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        tb.rank.search_ranks(model, guide, index, values, chunk_size=chunk_size)


def test_the_search_scores_in_evaluation_mode_and_leaves_batch_norm_as_it_was():
    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 3))
    model = tb.models.BayesianClassifier(tb.models.tensorize(net, format="tt", min_features=16), num_classes=3)
    guide = MeanField(model, seed=0)
    norm = model.net[1]
    x, y = torch.randn(400, 16), torch.randint(0, 3, (400,))  # the default tolerance's 2 / 0.005
    tb.rank.search_ranks(model, guide, x, y)
    tb.rank.mean_score(model, guide, x, y)
    assert torch.all(norm.running_mean == 0) and norm.num_batches_tracked == 0 and model.training


# ----- a diverged fit, and held-out data and arguments of the wrong form -----


def _two_layer_classifier(fmt):
    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3))
    model = tb.models.BayesianClassifier(tb.models.tensorize(net, format=fmt, min_features=16, max_rank=3), 3)
    return model.to(D), MeanField(model.to(D), seed=0)


@pytest.mark.parametrize("fmt", ["cp", "tt", "tucker", "ttm"])
def test_non_finite_factor_means_are_named_and_nothing_is_cut(fmt):
    # a fit that diverged: one NaN in the last tensor. CP read it as rank 1, the others failed inside
    # the SVD; prune cut the tensors before it (and CP's own layout) and then raised
    model, guide = _two_layer_classifier(fmt)
    first, last = tb.ranks(model, guide)
    before = {name: t.layout.ranks for name, t in guide.tensors().items()}
    with torch.no_grad():
        factor_parameter(guide, "locs", 0, tensor=last).view(-1)[0] = math.nan
    match = f"non-finite .* factor means for tensor '{last}'"
    for read in (tb.ranks, tb.rank.bond_weights, tb.compression_report):
        with pytest.raises(ValueError, match=match):
            read(model, guide)
    with pytest.raises(ValueError, match=match):
        tb.prune(model, guide, ranks={first: (1,) * len(before[first])})
    with pytest.raises(ValueError, match=match):
        tb.rank.search_ranks(model, guide, torch.randn(8, 32, dtype=D), torch.randint(0, 3, (8,)))
    assert {name: t.layout.ranks for name, t in guide.tensors().items()} == before


def test_held_out_metric_refuses_labels_of_the_wrong_shape_or_range():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3]], dtype=D)
    # labels (n, 1) broadcast against the argmax (n,) to an (n, n) comparison: 5/9 instead of 2/3
    with pytest.raises(ValueError, match=r"integer class labels \(n,\).*shape \(3, 1\)"):
        tb.rank.held_out_metric(probs, torch.tensor([[0], [2], [0]]))
    for labels in ([1, 2, 3], [-1, 0, 1]):  # 1-based labels scored 0 everywhere, so the search cut everything
        with pytest.raises(ValueError, match=r"class labels must be in \[0, 3\)"):
            tb.rank.held_out_metric(probs, torch.tensor(labels))
    with pytest.raises(TypeError, match="mean and target must be tensors"):
        tb.rank.held_out_metric(probs, [0, 2, 0])
    assert tb.rank.held_out_metric(probs, torch.tensor([0, 2, 0]))[1].item() == pytest.approx(2 / 3, abs=0)
    # integer values (counts) against a real-valued output are values: ||(0.5, 0, 0)|| / ||(1, 2, 2)||
    name, value = tb.rank.held_out_metric(torch.tensor([1.5, 2.0, 2.0], dtype=D), torch.tensor([1, 2, 2]))
    assert name == "error" and value.item() == pytest.approx(0.5 / 3, rel=1e-15)


@pytest.mark.parametrize("reference", [math.nan, "0.05", torch.tensor([0.1, 0.2])])
def test_search_ranks_refuses_a_reference_that_is_not_a_number(reference):
    # a NaN reference was silently ignored (max(full, nan) is full)
    model, guide, index, values = _cp_matrix([1.0, 0.5, 0.1, 0.01])
    with pytest.raises(ValueError, match="reference must be a number"):
        tb.rank.search_ranks(model, guide, index, values, tolerance=0.1, reference=reference)


def test_search_ranks_takes_a_reference_as_a_number_or_a_one_element_tensor():
    model, guide, index, values = _cp_matrix([1.0, 0.5, 0.1, 0.01])
    for reference in (0.05, np.float32(0.05), torch.tensor(0.05, dtype=D)):
        found, _ = tb.rank.search_ranks(model, guide, index, values, tolerance=0.1, reference=reference)
        assert found == {"tensor": (3,)}
    found, _ = tb.rank.search_ranks(model, guide, index, values, tolerance=0.1, reference=-math.inf)
    assert found == {"tensor": (2,)}  # as without a reference: within .1 of the full score 0


def test_the_readout_takes_numpy_numbers():
    # np.float32 is a number in (0, 1); the error said "threshold must be a number in (0, 1), got 0.99"
    planted, model, guide = _setup("tt", (6, 7, 8), (2, 3), (5, 5))
    assert tb.ranks(model, guide, threshold=np.float32(0.99)) == {"tensor": (1, 1)}
    assert tb.rank.active_ranks([torch.tensor([1.0, 0.5, 0.2, 0.1])], gap=np.float32(2.4)) == [2]
    assert tb.prune(model, guide, threshold=np.float32(0.99), gap=np.int64(10)) == {"tensor": (1, 1)}
