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
