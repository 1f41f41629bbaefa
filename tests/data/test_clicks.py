"""
The synthetic click log: deterministic by seed and independent of how it is batched, Criteo
Kaggle's cardinalities (large tables as the products of the paper's row shapes), power-law
category frequencies (the measured log-log slope) and the two orders of their ids, planted
embeddings gathered from the planted TTM cores, clicks drawn from the stated probability, the
Bayes-optimal summary and the floor without the planted interactions, streaming without
holding the tables, and a DataLoader that tb.fit can take.
"""

import math

import pytest
import torch

from tensorbayes.data.clicks import (
    CRITEO_KAGGLE_CARDINALITIES,
    PAPER_ROW_SHAPES,
    ClickGenerator,
    ClickStream,
    auc,
    expected_accuracy,
    expected_hits,
)


def test_cardinalities_are_criteo_kaggles():
    assert len(CRITEO_KAGGLE_CARDINALITIES) == 26
    large = [CRITEO_KAGGLE_CARDINALITIES[t] for t in PAPER_ROW_SHAPES]
    assert sum(large) == 33_193_281  # the paper's count (docs/method.md, "The paper's DLRM setting")
    assert all(math.prod(PAPER_ROW_SHAPES[t]) >= CRITEO_KAGGLE_CARDINALITIES[t] for t in PAPER_ROW_SHAPES)
    gen = ClickGenerator(seed=0)
    for t, n in enumerate(gen.cardinalities):
        expected = math.prod(PAPER_ROW_SHAPES[t]) if t in PAPER_ROW_SHAPES else CRITEO_KAGGLE_CARDINALITIES[t]
        assert n == expected
    assert gen.embedding_dim == 128 and gen.planted_tables == sorted(PAPER_ROW_SHAPES)


def test_deterministic_by_seed_and_independent_of_batching():
    gen = ClickGenerator.tiny(seed=3)
    a = gen.stream(1000)[torch.arange(100, 200)]
    b = ClickGenerator.tiny(seed=3).stream(1000)[100:200]
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    one = gen.stream(1000)[150]
    assert torch.equal(one[1][0], a[1][50])
    other = ClickGenerator.tiny(seed=4).stream(1000)[100:200]
    assert not torch.equal(a[1], other[1])
    test = gen.stream(1000, stream="test")[100:200]
    assert not torch.equal(a[1], test[1])


def test_shapes_and_ranges():
    gen = ClickGenerator.tiny()
    dense, sparse, clicks = gen.stream(500)[0:500]
    assert dense.shape == (500, 13) and dense.dtype == torch.float32
    assert sparse.shape == (500, 26) and sparse.dtype == torch.int64
    assert clicks.shape == (500,) and set(clicks.unique().tolist()) <= {0.0, 1.0}
    assert (sparse >= 0).all() and (sparse < torch.tensor(gen.cardinalities)).all()
    assert abs(dense.mean().item()) < 0.1 and abs(dense.std().item() - 1) < 0.1


def test_power_law_skew():
    gen = ClickGenerator.tiny(seed=0, zipf=1.1)  # table 2 has 1000 rows
    _, sparse, _ = gen.stream(60_000)[:]
    counts = torch.bincount(sparse[:, 2], minlength=gen.cardinalities[2]).double()
    freq = counts.sort(descending=True).values[:300]
    ranks = torch.arange(1, 301, dtype=torch.float64)
    keep = freq > 0
    x, y = ranks[keep].log(), freq[keep].log()
    slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
    assert -1.3 < slope.item() < -0.9
    assert counts.max() / counts.sum() > 0.01  # a head: the top id alone takes over 1 %


def test_frequency_id_order_numbers_categories_by_frequency_over_the_same_truth():
    shuffled = ClickGenerator.tiny(seed=5)
    ordered = ClickGenerator.tiny(seed=5, id_order="frequency")
    u = torch.rand(50_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ids = ordered.categories(2, u)
    counts = torch.bincount(ids, minlength=ordered.cardinalities[2])
    assert (counts[:8].diff() < 0).all() and counts[0] == counts.max()  # the head, in order
    assert counts[:100].sum() > 0.6 * counts.sum()  # the 100 most frequent ranks hold about 77 %
    # the same ranks, numbered by the shuffled bijection
    assert torch.equal(shuffled.categories(2, u), (ids * shuffled.multipliers[2] + shuffled.shifts[2]) % 1000)
    for t in ordered.planted_tables:  # the same planted truth: only the numbering differs
        for a, b in zip(ordered.factors[t], shuffled.factors[t]):
            assert torch.equal(a, b)


@pytest.mark.parametrize("id_order", ["shuffled", "frequency"])
def test_frequency_ranks_invert_the_numbering_of_categories(id_order):
    gen = ClickGenerator(seed=3, id_order=id_order)  # full size: ids up to 11e6 (no int64 overflow)
    u = torch.rand(20_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    by_frequency = ClickGenerator(seed=3, id_order="frequency")
    for t in (0, 2, 8, 25):
        assert torch.equal(gen.frequency_ranks(t, gen.categories(t, u)), by_frequency.categories(t, u))
    everything = torch.arange(gen.cardinalities[5])  # a bijection onto the ranks
    assert torch.equal(gen.frequency_ranks(5, everything).sort().values, everything)
    with pytest.raises(ValueError, match="table must be an int"):
        gen.frequency_ranks(26, everything)
    with pytest.raises(TypeError, match="ids must be int64"):
        gen.frequency_ranks(5, everything.int())


def test_planted_rows_come_from_the_planted_factors():
    gen = ClickGenerator.tiny(seed=1)
    for t in gen.planted_tables:
        layout, factors = gen.layouts[t], gen.factors[t]
        assert layout.name == "ttm" and layout.ranks == gen.ranks[t]
        ids = torch.tensor([0, 7, 999, 512])
        table = layout.to_matrix(factors)
        torch.testing.assert_close(gen.embeddings(t, ids), table[ids])


def test_clicks_follow_the_true_probability():
    gen = ClickGenerator.tiny(seed=2)
    dense, sparse, clicks, prob = gen.sample(torch.arange(20_000))
    torch.testing.assert_close(prob, torch.sigmoid(gen.logits(dense, sparse)))
    assert abs(clicks.mean().item() - prob.mean().item()) < 0.015
    high = prob > 0.8
    assert clicks[high].mean() > 0.8
    summary = gen.bayes_optimal(gen.stream(10_000, "test"))
    assert 0.7 < summary["accuracy"] < 0.9
    assert abs(summary["accuracy"] - summary["realized_accuracy"]) < 0.02
    assert summary["auc"] > 0.8


def test_logits_without_interactions_drop_exactly_the_pairwise_dots():
    gen = ClickGenerator.tiny(seed=3)
    dense, sparse, _, _ = gen.sample(torch.arange(500))
    rows = [gen.embeddings(t, sparse[:, t]) for t in gen.planted_tables]
    pairs = sum((a * b).sum(-1) for i, a in enumerate(rows) for b in rows[i + 1 :])
    torch.testing.assert_close(
        gen.logits(dense, sparse, interactions=False), gen.logits(dense, sparse) - pairs, rtol=0, atol=1e-12
    )


def _bond_ranks(gen, t, table):
    """The TTM ranks of a dense planted table: the ranks of its two bond unfoldings, float64."""
    (m1, m2, m3), (c1, c2, c3) = gen.row_shapes[t], gen.col_shape
    modes = table.reshape(m1, m2, m3, c1, c2, c3).permute(0, 3, 1, 4, 2, 5)
    return tuple(int(torch.linalg.matrix_rank(modes.reshape(m1 * c1 * (m2 * c2) ** k, -1), rtol=1e-10)) for k in (0, 1))


def test_a_common_rotation_of_the_embeddings_keeps_every_logit_and_the_second_bond_but_not_the_first():
    # Clicks see the planted embeddings only through dot products (and main effects <e_t, a_t>),
    # so turning every embedding and every a_t by one orthogonal Q changes no logit. A Q that
    # mixes the first two column modes keeps the second bond's TTM rank and raises the first's
    # (on the tiny log, 2 x 2 x 2 columns, to four times the planted one): the clicks cannot
    # tell the first-bond ranks apart.
    gen = ClickGenerator.tiny(seed=3)
    c1, c2, c3 = gen.col_shape
    assert (c1, c2) == (2, 2)
    q, _ = torch.linalg.qr(
        torch.randn(c1 * c2, c1 * c2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    )
    rotation = torch.kron(q.contiguous(), torch.eye(c3, dtype=torch.float64))
    dense, sparse, _, _ = gen.sample(torch.arange(500))
    rows = {t: gen.embeddings(t, sparse[:, t]) for t in gen.planted_tables}
    turned = {t: e @ rotation for t, e in rows.items()}
    planted_part = (
        gen.logits(dense, sparse)
        - gen.logits(dense, sparse, interactions=False)
        + sum(rows[t] @ a for t, a in gen.main.items())
    )
    tables = gen.planted_tables
    turned_part = sum((turned[s] * turned[t]).sum(-1) for i, s in enumerate(tables) for t in tables[i + 1 :]) + sum(
        turned[t] @ (a @ rotation) for t, a in gen.main.items()
    )
    torch.testing.assert_close(turned_part, planted_part, rtol=0, atol=1e-12)
    for t in tables:
        table = gen.layouts[t].to_matrix(gen.factors[t])
        r0, r1 = gen.ranks[t]
        assert _bond_ranks(gen, t, table) == (r0, r1)
        assert _bond_ranks(gen, t, table @ rotation) == (4 * r0, r1)


def test_accuracy_without_interactions_is_the_floor_below_bayes_optimal():
    test = ClickGenerator.tiny(seed=4).stream(20_000, "test")
    summary = test.generator.bayes_optimal(test)
    # the tiny log's interactions carry several points of its expected accuracy (3.8 at this seed)
    assert summary["accuracy_without_interactions"] < summary["accuracy"] - 0.02
    flat = ClickGenerator.tiny(seed=4, interaction_scale=0.0)
    summary = flat.bayes_optimal(flat.stream(20_000, "test"))
    # nothing to drop: the same decisions, up to the float32 rounding of the dense features
    assert abs(summary["accuracy_without_interactions"] - summary["accuracy"]) < 1e-4


def test_streaming_never_materializes_a_table():
    gen = ClickGenerator(seed=0)  # full size: 35M rows x 128 in the five planted tables
    held = sum(f.numel() for fs in gen.factors.values() for f in fs)
    held += sum(e.numel() for e in gen.effects.values())
    assert held < 1_000_000  # the planted cores and the small tables' scalar effects
    dense_size = sum(gen.cardinalities[t] * gen.embedding_dim for t in gen.planted_tables)
    assert dense_size > 4e9
    dense, sparse, clicks = gen.stream(10**9)[torch.tensor([0, 10**9 - 1])]
    assert sparse.shape == (2, 26)
    batches = list(ClickStream(gen, 10, "valid").batches(4))
    assert [len(b[2]) for b in batches] == [4, 4, 2]


def test_loader_gives_batches_and_num_data():
    stream = ClickGenerator.tiny().stream(1000)
    loader = stream.loader(256, shuffle=True, seed=0)
    assert len(loader.dataset) == 1000 and len(loader) == 4
    batches = list(loader)
    assert [b[0].shape[0] for b in batches] == [256, 256, 256, 232]
    assert len({tuple(b[1][:, 0].tolist()) for b in batches}) == 4


def test_expected_hits_and_accuracy():
    logits = torch.tensor([2.0, -1.0, 0.0, 0.5], dtype=torch.float64)
    prob = torch.tensor([0.9, 0.3, 0.6, 0.2], dtype=torch.float64)
    # "click" where the logit is positive (not at 0): right with prob, else with 1 - prob
    assert expected_hits(logits, prob).tolist() == pytest.approx([0.9, 0.7, 0.4, 0.2], abs=1e-15)
    assert expected_accuracy(logits, prob) == pytest.approx(0.55, abs=1e-15)


def test_auc():
    assert auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0.0, 0.0, 1.0, 1.0])) == pytest.approx(0.75)
    assert auc(torch.tensor([0.5, 0.5]), torch.tensor([0.0, 1.0])) == pytest.approx(0.5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="stream must be one of"):
        ClickGenerator.tiny().stream(10, stream="bogus")
    with pytest.raises(ValueError, match="num_samples must be a positive int"):
        ClickGenerator.tiny().stream(0)
    with pytest.raises(ValueError, match="ranks must give the TTM ranks"):
        ClickGenerator(row_shapes={2: (10, 10, 10)}, ranks={})
    with pytest.raises(IndexError, match="index must lie in"):
        ClickGenerator.tiny().stream(10)[torch.tensor([10])]
    with pytest.raises(ValueError, match="main_scale .* needs interaction_scale > 0"):
        ClickGenerator.tiny(main_scale=1.0, interaction_scale=0.0)
    with pytest.raises(ValueError, match="id_order must be one of"):
        ClickGenerator.tiny(id_order="sorted")
    for rate in (0.0, 1.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"click_rate must be a probability in \(0, 1\)"):
            ClickGenerator.tiny(click_rate=rate)
    for kwargs, match in (
        (dict(dense_scale=float("nan")), "dense_scale must be a finite non-negative number"),
        (dict(zipf=True), "zipf must be a finite positive number"),
        (dict(zipf=float("inf")), "zipf must be a finite positive number"),
        (dict(seed=1.5), "seed must be a non-negative int"),
        (dict(col_shape=(0, 2)), "col_shape must be a sequence of positive ints"),
    ):
        with pytest.raises(ValueError, match=match):
            ClickGenerator.tiny(**kwargs)


def test_float_and_bool_indices_are_refused_not_truncated():
    gen = ClickGenerator.tiny()
    stream = gen.stream(100)
    # 2.5 would be example 2, a mask of 100 Trues would be example 1 a hundred times
    for key in (2.5, torch.tensor([1.7, 2.2]), torch.ones(100, dtype=torch.bool)):
        with pytest.raises(TypeError, match="index must be integer indices"):
            stream[key]
    with pytest.raises(TypeError, match="index must be integer indices"):
        gen.sample(torch.tensor([1.5]))
    with pytest.raises(TypeError, match="ids must be integer indices"):
        gen.embeddings(2, torch.tensor([1.5]))
    with pytest.raises(TypeError, match="index must be integer indices"):
        stream["a"]
    assert [len(x) for x in stream[[]]] == [0, 0, 0]  # an empty list is no index at all
    assert torch.equal(stream[torch.tensor([3, 4])][1], stream[3:5][1])


def test_logits_and_frequency_ranks_refuse_ids_out_of_their_table():
    gen = ClickGenerator.tiny()
    dense, sparse, _ = gen.stream(4)[0:4]
    small = gen.small[0]
    wrapped = sparse.clone()
    wrapped[:, small] = -1  # indexing would read the table's last effect
    with pytest.raises(ValueError, match=rf"sparse\[:, {small}\] must hold category ids of table {small}"):
        gen.logits(dense, wrapped)
    with pytest.raises(ValueError, match="sparse must have shape"):
        gen.logits(dense, sparse[:, :-1])
    with pytest.raises(ValueError, match="dense must have shape"):
        gen.logits(dense[:, :-1], sparse)
    with pytest.raises(TypeError, match="sparse must be an integer tensor"):
        gen.logits(dense, sparse.double())
    with pytest.raises(TypeError, match="dense must be a floating point tensor"):
        gen.logits(dense.numpy(), sparse)
    n = gen.cardinalities[0]
    with pytest.raises(ValueError, match=rf"ids must be category ids of table 0, in \[0, {n}\)"):
        gen.frequency_ranks(0, torch.tensor([0, n]))  # the modulo would give it a rank


def test_scores_of_mismatched_or_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="logits and prob must have the same shape"):
        expected_accuracy(torch.tensor([1.0, -1.0]), torch.tensor([0.9]))  # would broadcast
    with pytest.raises(ValueError, match="scores and labels must have as many entries"):
        auc(torch.tensor([0.1, 0.9, 0.5]), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="scores must be finite"):
        auc(torch.tensor([0.1, float("nan"), 0.3]), torch.tensor([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="labels must be binary"):
        auc(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.0, 2.0, 1.0]))
    gen = ClickGenerator.tiny()
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        gen.bayes_optimal(gen.stream(10), batch_size=0)
    with pytest.raises(TypeError, match="stream must be a ClickStream"):
        gen.bayes_optimal([1, 2])
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        gen.stream(10).loader(4, shuffle=True, seed=None)
    with pytest.raises(ValueError, match="row_shapes has table 'a'"):
        ClickGenerator(cardinalities=(5,) * 3, row_shapes={"a": (2, 2, 2)}, ranks={"a": (1, 1)})
