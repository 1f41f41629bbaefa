"""
:func:`align_tables`: an exported DLRM network turned, as a whole, to where its TTM tables'
first bonds are lowest, and those bonds cut to the ranks read there (the DLRM study's tool, moved
here from ``tensorbayes.models.dlrm``; the search itself is :mod:`experiments.dlrm.rotation`).
"""

import copy

import torch

from experiments.dlrm.rotation import SearchFailed, first_bond_spectrum, lowest_rank_turn, turn_first_columns
from tensorbayes.compact import CompactTensor
from tensorbayes.models.dlrm import DLRMNet
from tensorbayes.models.embedding_bag import CompactEmbeddingBag
from tensorbayes.rank import DEFAULT_GAP, DEFAULT_THRESHOLD, active_ranks

__all__ = ["SearchFailed", "align_tables"]


def _turn_columns(weight, turn):
    """``weight (turn ⊗ I)^T`` for rows of the embedding width, ``turn`` on its leading modes."""
    rows, width = weight.shape
    return torch.einsum("xu,nur->nxr", turn, weight.reshape(rows, turn.shape[0], -1)).reshape(rows, width)


def _ttm_tables(net):
    """``{name: table}`` of a DLRMNet's TTM tables, which :func:`align_tables` turns; its other
    tables must be dense (a ``weight`` of rows by width)."""
    compact = {name: t for name, t in net.tables() if isinstance(t, CompactEmbeddingBag)}
    odd = [
        name
        for name, t in net.tables()
        if (t.layout.name != "ttm" if name in compact else not isinstance(getattr(t, "weight", None), torch.Tensor))
    ]
    if odd or not compact:
        found = f"tables {odd} are neither" if compact else "no TTM table"
        raise ValueError(f"net must have TTM tables (CompactEmbeddingBag) and dense tables only; {found}")
    return compact


@torch.no_grad()
def align_tables(net, threshold=None, gap=None, restarts=4, seed=0):
    """
    An exported DLRM network turned, as a whole, to where its TTM tables' first bonds are
    lowest, and those bonds cut to the ranks read there: the ranks the clicks can tell.

    A DLRM sees its embeddings only through their dot products and the bottom vector, so one
    orthogonal map ``R`` of the embedding space applied to every table and to the bottom vector
    (with the top MLP's first layer taking ``R^T``) keeps its function. Taking ``R = Q ⊗ I`` on
    the first two column modes of the TTM tables (:func:`~experiments.dlrm.rotation.lowest_rank_turn`
    finds the ``Q`` that makes their first-bond spectra sparsest) can lower their first-bond
    ranks, which the rank readout of a trained model cannot see: it reads each bond as the model
    holds it. The first bond of every TTM table is then cut at the readout's rule
    (:func:`tensorbayes.rank.active_ranks` on the turned spectrum); the other bonds are kept.

    The returned network is a copy: its dense tables are turned, its TTM tables are
    :class:`~tensorbayes.models.embedding_bag.CompactEmbeddingBag` s at the new ranks, and its bottom MLP ends with
    one more bias-free :class:`torch.nn.Linear` holding ``R`` (the bottom ends with a ReLU, which
    ``R`` does not pass through). Up to the cut singular values it computes the same logits.

    Usage::

        tb.prune(model, guide)
        net, ranks = align_tables(model.export(guide))    # ranks: {"C3": (4, 2), ...}

    :param DLRMNet net: an exported network (:meth:`~tensorbayes.models.DLRM.export`) with TTM tables that share their
        first two column modes.
    :param float threshold: the readout's relative threshold (default :data:`tensorbayes.rank.DEFAULT_THRESHOLD`).
    :param float gap: the readout's gap (default :data:`tensorbayes.rank.DEFAULT_GAP`).
    :param int restarts: starts of the search per component of the orthogonal group.
    :param int seed: seeds the search's random starts.
    :returns: ``(network, {table name: ranks})``.
    :raises SearchFailed: when the search finds no finite turn (:func:`~experiments.dlrm.rotation.lowest_rank_turn`).
    """
    if not isinstance(net, DLRMNet):
        raise TypeError(f"net must be an exported DLRMNet (DLRM.export), got {type(net).__name__}")
    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    gap = DEFAULT_GAP if gap is None else gap
    active_ranks([], threshold, gap)  # checks them before any work
    compact = _ttm_tables(net)
    tables = {name: (t.layout, [f.double() for f in t.weight.factors]) for name, t in compact.items()}
    turn = lowest_rank_turn(tables.values(), restarts=restarts, seed=seed)
    aligned = copy.deepcopy(net)
    ranks = {}
    for name, table in aligned.tables():
        if name not in compact:
            table.weight.copy_(_turn_columns(table.weight, turn.to(table.weight)))
            continue
        layout, factors = tables[name]
        rank = active_ranks([first_bond_spectrum(layout, factors, turn)], threshold, gap)[0]
        layout, factors = turn_first_columns(layout, factors, turn, rank)
        table.weight = CompactTensor(layout, [f.to(table.weight.factors[0]) for f in factors])
        ranks[name] = layout.ranks
    width, like = aligned.embedding_dim, next(aligned.bottom.parameters())
    full = _turn_columns(torch.eye(width, dtype=turn.dtype, device=turn.device), turn).to(like)  # I R^T = R^T
    last = torch.nn.Linear(width, width, bias=False).to(like)
    last.weight.copy_(full.T)
    aligned.bottom.append(last)
    first = aligned.top[0]
    first.weight[:, :width] = first.weight[:, :width] @ full
    return aligned, ranks
