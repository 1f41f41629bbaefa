"""
Helpers shared by the tests (import them as ``from tests.common import ...``):

- :func:`tiny_dlrm`: a tiny DLRM over the tiny synthetic click log (the DLRM tests);
- :func:`embed`, :data:`EMBEDDED_CASES`, :func:`embedded_completion`: planted factors embedded in
  a layout of larger ranks (the pruning, export and plotting tests);
- :func:`unfolding`, :func:`assert_rank`: the rank of an unfolding, read from its singular
  values (the data tests);
- :func:`factor_parameter`: a MeanField's unconstrained parameter of one factor site;
- :func:`as_if_written_on_a_gpu`: a checkpoint rewritten as a GPU run's (the checkpoint tests).

``tests/dlrm.py``, ``tests/embedding.py`` and ``tests/data/rank_checks.py`` re-export them under
their old paths.
"""

import math

import torch

from tensorbayes.data import planted_tensor
from tensorbayes.data.clicks import ClickGenerator
from tensorbayes.guides import MeanField
from tensorbayes.models import TensorCompletion
from tensorbayes.models.dlrm import DLRM

__all__ = [
    "EMBEDDED_CASES",
    "MIN_RATIO",
    "ZERO",
    "as_if_written_on_a_gpu",
    "assert_rank",
    "embed",
    "embedded_completion",
    "factor_parameter",
    "tiny_dlrm",
    "unfolding",
]


# ----- DLRM -----


def tiny_dlrm(**kwargs):
    """
    ``(generator, model)``: :meth:`ClickGenerator.tiny` (seed 0) and a DLRM over its tables, the
    planted ones TTM at the generator's shapes, max rank 4, embedding width 8, hidden widths 16;
    ``kwargs`` override any of these.
    """
    gen = ClickGenerator.tiny(seed=0)
    tables = {t: {"row_shape": gen.row_shapes[t], "col_shape": gen.col_shape} for t in gen.planted_tables}
    kwargs = {
        "embedding_dim": 8,
        "bottom": (16,),
        "top": (16,),
        "tensorize_min_rows": None,
        "tables": tables,
        "max_rank": 4,
        **kwargs,
    }
    return gen, DLRM(gen.cardinalities, **kwargs)


# ----- planted factors in a layout of larger ranks (pruning) -----


def embed(layout, planted, seed=0):
    """
    Factors of ``layout`` holding ``planted`` (factors at smaller ranks) in their leading block.
    The extra indices of each bond carry random junk on one side of the bond and zeros on the
    other, so the tensor is the planted one and pruning them is exact.
    """
    dtype = planted[0].dtype
    gen = torch.Generator().manual_seed(seed)
    small = [planted[pairs[0][0]].shape[pairs[0][1]] for pairs in layout.bonds]
    factors = []
    for shape, p in zip(layout.factor_shapes, planted):
        f = torch.zeros(shape, dtype=dtype)
        f[tuple(slice(0, s) for s in p.shape)] = p
        factors.append(f)
    for b, pairs in enumerate(layout.bonds):
        f, d = pairs[0]
        index = []
        for dd, lab in enumerate(layout.labels[f]):
            if dd == d:
                index.append(slice(small[b], None))
            elif lab[0] == "b":
                index.append(slice(0, small[int(lab[1:])]))
            else:
                index.append(slice(None))
        block = factors[f][tuple(index)]
        factors[f][tuple(index)] = torch.randn(block.shape, generator=gen, dtype=dtype)
    return factors


#: format, shape, planted ranks, max ranks: the pruning and plotting tests' cases.
EMBEDDED_CASES = [
    ("tt", (6, 7, 8), (2, 3), (5, 5)),
    ("ttm", (3, 4, 5, 3, 4), (2, 3), (5, 5)),
    ("tucker", (6, 7, 8), (2, 3, 4), (5, 5, 5)),
    ("cp", (6, 7, 8), (3,), (5,)),
]


def embedded_completion(fmt, shape, ranks, max_rank):
    """
    A float64 completion model and guide whose posterior mean is a planted tensor of ``ranks``
    embedded (:func:`embed`) in a layout of ``max_rank``, with small random posterior scales.

    :returns: ``(planted, model, guide)``.
    """
    planted = planted_tensor(shape, fmt, ranks, observed=0.3, noise=0.0, seed=0, dtype=torch.float64)
    model = TensorCompletion(shape, format=fmt, max_rank=max_rank, noise=0.1).double()
    guide = MeanField(model, seed=0).double()
    layout = model.tensor.layout
    assert layout.ranks == tuple(max_rank)
    locs = embed(layout, planted.factors)
    torch.testing.assert_close(layout.full(locs), planted.full, rtol=1e-12, atol=1e-12)
    gen = torch.Generator().manual_seed(1)
    scales = [torch.rand(s, generator=gen, dtype=torch.float64) * 0.01 + 0.001 for s in layout.factor_shapes]
    guide.set_posterior(model.tensor, locs, scales)
    return planted, model, guide


# ----- the rank of an unfolding (the data tests) -----

# The planted rank of a bond must be attained, with a smallest singular value that is not
# negligible (the generators promise 5 % of the largest), and no more.
MIN_RATIO = 0.05
ZERO = 1e-10


def unfolding(tensor, row_modes):
    """The matricization with ``row_modes`` as rows and the other modes as columns."""
    cols = [k for k in range(tensor.dim()) if k not in row_modes]
    rows = math.prod(tensor.shape[k] for k in row_modes)
    return tensor.permute(*row_modes, *cols).reshape(rows, -1)


def assert_rank(matrix, rank):
    s = torch.linalg.svdvals(matrix)
    assert len(s) >= rank
    assert s[rank - 1] >= MIN_RATIO * s[0], f"rank {rank} is barely attained: {s / s[0]}"
    if len(s) > rank:
        assert s[rank] <= ZERO * s[0], f"rank exceeds {rank}: {s / s[0]}"


def factor_parameter(guide, kind, k, tensor="tensor"):
    """A :class:`MeanField`'s unconstrained parameter of factor ``k`` of ``tensor`` (its name in the
    model): ``kind`` "locs" for the means, "scales" for the raw scales (softplus)."""
    site = f"{tensor}.factor{k}" if tensor else f"factor{k}"
    return dict(guide.named_parameters())[f"{kind}.{site}_unconstrained"]


def as_if_written_on_a_gpu(path, monkeypatch):
    """Rewrite the checkpoint at ``path`` as a GPU's: every storage tagged ``cuda:0`` (which a machine
    without one cannot read where it was saved: torch.load without map_location raises) but the
    random states', which are CPU tensors wherever the run was."""
    state = torch.load(path, weights_only=False)
    on_cpu = {state["generator"].untyped_storage().data_ptr(), state["rng"]["torch"].untyped_storage().data_ptr()}
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda s: "cpu" if s.data_ptr() in on_cpu else "cuda:0")
        torch.save(state, path)
