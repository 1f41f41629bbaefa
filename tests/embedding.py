"""Shared by the pruning tests: planted factors embedded in a layout of larger ranks."""

import torch


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
    from tensorbayes.data import planted_tensor
    from tensorbayes.guides import MeanField
    from tensorbayes.models import TensorCompletion

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
