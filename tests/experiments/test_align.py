"""The DLRM study's :func:`~experiments.dlrm.align.align_tables`: a DLRM network turned to its lowest first bonds."""

import math

import pytest
import torch

from experiments.dlrm.align import align_tables
from experiments.dlrm.rotation import first_bond_spectrum, turn_first_columns
from tensorbayes.formats import TTM
from tensorbayes.models.dlrm import DLRMNet
from tensorbayes.models.embedding_bag import CompactEmbeddingBag, TensorizedEmbeddingBag


def _turned_compact_bag(rows, ranks, turn, seed):
    """A compact TTM bag (columns 2 x 2 x 2) at a planted table of ``ranks`` turned by ``turn``."""
    layout = TTM(rows + (2, 2, 2), ranks)
    g = torch.Generator().manual_seed(seed)
    planted = [torch.randn(s, dtype=torch.float64, generator=g) for s in layout.factor_shapes]
    spectrum = first_bond_spectrum(layout, planted, turn)
    rank = int((spectrum > 1e-10 * spectrum[0]).sum())
    layout, factors = turn_first_columns(layout, planted, turn, rank)
    layer = TensorizedEmbeddingBag(
        math.prod(rows), 8, format="ttm", max_rank=list(layout.ranks), row_shape=rows, col_shape=(2, 2, 2)
    )
    assert layer.layout.ranks == layout.ranks
    return CompactEmbeddingBag(layer, factors)


def test_align_tables_finds_the_planted_first_bonds_and_keeps_the_logits():
    torch.manual_seed(0)
    turn, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    turn[:, 0] = -turn[:, 0] if torch.det(turn) > 0 else turn[:, 0]  # a reflection: the other component
    bags = [_turned_compact_bag((4, 5, 3), (2, 2), turn, seed=1), _turned_compact_bag((3, 4, 3), (1, 2), turn, seed=2)]
    assert all(b.weight.ranks[0] > planted for b, planted in zip(bags, (2, 1)))  # the turn raised the first bonds
    dense_table = torch.nn.EmbeddingBag(7, 8, mode="sum")
    net = DLRMNet(bags + [dense_table], num_dense=3, bottom=(16,), top=(16,)).double()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    aligned, ranks = align_tables(net)
    assert ranks == {"C1": (2, 2), "C2": (1, 2)}
    assert [aligned.C1.weight.ranks, aligned.C2.weight.ranks] == [(2, 2), (1, 2)]
    dense = torch.randn(32, 3, dtype=torch.float64)
    sparse = torch.stack([torch.randint(0, n, (32,)) for n in (60, 36, 7)], dim=1)
    torch.testing.assert_close(aligned(dense, sparse), net(dense, sparse), rtol=1e-6, atol=1e-6)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # the input is left as it was
    assert sum(p.numel() for p in aligned.C1.parameters()) < sum(p.numel() for p in net.C1.parameters())


def test_align_tables_bad_input():
    net = DLRMNet([torch.nn.EmbeddingBag(5, 8), torch.nn.EmbeddingBag(6, 8)], num_dense=2, bottom=(4,), top=(4,))
    with pytest.raises(TypeError, match="net must be an exported DLRMNet"):
        align_tables(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="no TTM table"):
        align_tables(net)
    with pytest.raises(ValueError, match="threshold must be a number in"):
        align_tables(net, threshold=2.0)
