"""Turning TTM tables on their first two column modes (:mod:`experiments.dlrm.rotation`)."""

import math

import pytest
import torch

from experiments.dlrm import rotation
from experiments.dlrm.rotation import SearchFailed, first_bond_spectrum, lowest_rank_turn, turn_first_columns
from tensorbayes.formats import TT, TTM

DT = torch.float64

# (row modes, column modes, ranks): two, three and four cores, and an odd order (no last column mode)
LAYOUTS = [
    ((4, 5), (2, 3), (3,)),
    ((3, 4, 5), (2, 3, 2), (4, 3)),
    ((2, 3, 2, 3), (2, 2, 2, 2), (3, 4, 2)),
    ((3, 4, 2), (2, 3), (4, 2)),
]


def _orthogonal(n, det, seed):
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=DT, generator=torch.Generator().manual_seed(seed)))
    if torch.det(q) * det < 0:
        q[:, 0] = -q[:, 0]
    return q


def _table(rows, cols, ranks, seed=0):
    layout = TTM(rows + cols, ranks)
    g = torch.Generator().manual_seed(seed)
    return layout, [torch.randn(s, dtype=DT, generator=g) for s in layout.factor_shapes]


def _turned_dense(layout, factors, turn):
    """The table as a dense (rows, width) matrix with its first two column modes turned."""
    w = layout.to_matrix(factors)
    return torch.einsum("xu,nur->nxr", turn, w.reshape(w.shape[0], turn.shape[0], -1)).reshape(w.shape)


def _first_unfolding(layout, matrix):
    cores = len(layout.factor_shapes)
    rows, cols = layout.shape[:cores], layout.shape[cores:]
    t = matrix.reshape(rows + cols)
    order = [0, cores] + [k for k in range(1, len(layout.shape)) if k != cores]
    return t.permute(order).reshape(rows[0] * cols[0], -1)


@pytest.mark.parametrize("rows,cols,ranks", LAYOUTS)
@pytest.mark.parametrize("det", [1.0, -1.0])
def test_first_bond_spectrum_is_the_turned_tables_singular_values(rows, cols, ranks, det):
    layout, factors = _table(rows, cols, ranks)
    turn = _orthogonal(cols[0] * cols[1], det, seed=1)
    dense = torch.linalg.svdvals(_first_unfolding(layout, _turned_dense(layout, factors, turn)))
    _assert_same_spectrum(first_bond_spectrum(layout, factors, turn), dense)
    plain = torch.linalg.svdvals(_first_unfolding(layout, layout.to_matrix(factors)))
    _assert_same_spectrum(first_bond_spectrum(layout, factors), plain)


def _assert_same_spectrum(got, expected):
    """Equal singular values, the longer list's extra ones zero (to 1e-10 of the largest)."""
    n = max(len(got), len(expected))
    got, expected = (torch.nn.functional.pad(s, (0, n - len(s))) for s in (got, expected))
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10 * expected[0].item())


@pytest.mark.parametrize("rows,cols,ranks", LAYOUTS)
def test_turn_first_columns_is_exact_at_full_rank_and_cuts_by_eckart_young(rows, cols, ranks):
    layout, factors = _table(rows, cols, ranks)
    turn = _orthogonal(cols[0] * cols[1], -1.0, seed=2)
    expected = _turned_dense(layout, factors, turn)
    new_layout, new_factors = turn_first_columns(layout, factors, turn)
    assert new_layout.ranks[1:] == layout.ranks[1:]
    torch.testing.assert_close(new_layout.to_matrix(new_factors), expected, rtol=1e-10, atol=1e-10)
    spectrum = first_bond_spectrum(layout, factors, turn)
    cut = 2
    cut_layout, cut_factors = turn_first_columns(layout, factors, turn, rank=cut)
    assert cut_layout.ranks == (cut,) + layout.ranks[1:]
    error = (cut_layout.to_matrix(cut_factors) - expected).norm()
    torch.testing.assert_close(error, spectrum[cut:].norm(), rtol=1e-8, atol=1e-10)


def _planted_and_turned(planted, turn, rows=(5, 6, 4), cols=(2, 2, 3), seed=0):
    """Tables with the given ranks, all turned by the same ``turn``: their first bonds rise. With two
    even first modes every Kronecker map ``A ⊗ B`` has determinant 1, so a turn of determinant -1
    can only be undone from the other component."""
    tables = []
    for k, ranks in enumerate(planted):
        layout, factors = _table(rows, cols, ranks, seed=seed + k)
        tables.append(turn_first_columns(layout, factors, turn))
    return tables


@pytest.mark.parametrize("det,seed", [(1.0, 0), (-1.0, 1)])
def test_lowest_rank_turn_brings_the_first_bonds_back_to_the_planted_ranks(det, seed):
    planted = [(2, 2), (1, 3), (3, 2)]
    hidden = _orthogonal(4, det, seed=10 + seed)
    tables = _planted_and_turned(planted, hidden, seed=seed)
    rises = [int((first_bond_spectrum(*t) > 1e-8 * first_bond_spectrum(*t)[0]).sum()) for t in tables]
    assert all(r > p[0] for r, p in zip(rises, planted))  # the hidden turn raised every first bond
    turn = lowest_rank_turn(tables)
    torch.testing.assert_close(turn @ turn.T, torch.eye(4, dtype=DT), rtol=0, atol=1e-10)
    for (layout, factors), ranks in zip(tables, planted):
        s = first_bond_spectrum(layout, factors, turn)
        # an iterative search: the rest lands near 0 (1e-8 of the largest at worst over 12 other cases), not at it
        assert s[ranks[0] - 1] > 1e-2 * s[0] and s[ranks[0] :].max() < 1e-6 * s[0]


def test_a_table_of_a_trillion_rows_is_turned_from_its_factors():
    layout, factors = _table((10_000, 10_000, 10_000), (2, 2, 2), (2, 2))
    turn = _orthogonal(4, -1.0, seed=3)
    new_layout, new_factors = turn_first_columns(layout, factors, turn)
    assert math.prod(new_layout.shape[:3]) == 10**12 and new_layout.ranks[0] <= 8
    ids = torch.tensor([0, 123_456_789_012, 10**12 - 1])
    torch.testing.assert_close(
        new_layout.rows(new_factors, ids),
        torch.einsum("xu,nur->nxr", turn, layout.rows(factors, ids).reshape(3, 4, 2)).reshape(3, 8),
        rtol=1e-10,
        atol=1e-10,
    )
    _assert_same_spectrum(first_bond_spectrum(new_layout, new_factors), first_bond_spectrum(layout, factors, turn))


def test_bad_input():
    layout, factors = _table((3, 4, 5), (2, 3, 2), (2, 2))
    with pytest.raises(TypeError, match="layout must be a TTM"):
        first_bond_spectrum(TT((3, 4, 5), 2), [torch.randn(s, dtype=DT) for s in TT((3, 4, 5), 2).factor_shapes])
    with pytest.raises(ValueError, match=r"turn must be an orthogonal \(6, 6\)"):
        first_bond_spectrum(layout, factors, torch.eye(4, dtype=DT))
    with pytest.raises(ValueError, match="turn must be orthogonal"):
        turn_first_columns(layout, factors, 2 * torch.eye(6, dtype=DT))
    with pytest.raises(ValueError, match=r"rank must be an int in \[1, "):
        turn_first_columns(layout, factors, torch.eye(6, dtype=DT), rank=0)
    with pytest.raises(ValueError, match="first two cores have column modes"):
        first_bond_spectrum(TTM((3, 4, 2), 2), [torch.randn(s, dtype=DT) for s in TTM((3, 4, 2), 2).factor_shapes])
    other = _table((3, 4, 5), (3, 2, 2), (2, 2))
    with pytest.raises(ValueError, match="share their first two column modes"):
        lowest_rank_turn([(layout, factors), other])
    with pytest.raises(ValueError, match="tables must hold at least one"):
        lowest_rank_turn([])
    with pytest.raises(ValueError, match="restarts must be a positive int"):
        lowest_rank_turn([(layout, factors)], restarts=0)


def test_a_search_gone_non_finite_reports_failed_instead_of_crashing(monkeypatch):
    layout, factors = _table((3, 4, 5), (2, 3, 2), (4, 3))
    bad = [f.clone() for f in factors]
    bad[1][0, 0, 0, 0] = float("nan")
    with pytest.raises(SearchFailed, match="non-finite values"):
        lowest_rank_turn([(layout, bad)])

    def diverged(loss, parameter, max_iter):  # what L-BFGS gone non-finite ends in: an SVD that fails
        raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")

    monkeypatch.setattr(rotation, "_minimize", diverged)
    with pytest.raises(SearchFailed, match="4 starts; 4 failed: linalg.svd"):
        lowest_rank_turn([(layout, factors)], restarts=2)
