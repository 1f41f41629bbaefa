"""
Canonical (gauge-fixed) factors and the singular values of every rank bond.

A low-rank tensor has many factorizations: in a train any invertible matrix can be inserted on
a bond, in Tucker on a mode, and CP columns can trade scale between modes. :func:`canonicalize`
returns the *balanced* representative of the same tensor, in which each rank index of a bond
carries the weight it has in the tensor, together with those weights:

- TT / TTM: the Vidal form ``G_k = Λ_{k-1}^{1/2} Γ_k Λ_k^{1/2}``, whose bond weights ``Λ_k`` are
  the singular values of the tensor's unfolding at that bond, in decreasing order;
- Tucker: the all-orthogonal (HOSVD) core with orthonormal factor columns; the weights of mode
  ``k`` are the singular values of the core's mode-``k`` unfolding, which equal those of the
  tensor's mode-``k`` unfolding;
- CP: the columns' norms balanced across modes, the weight of component ``j`` being
  ``Π_k ‖U_k[:, j]‖``, in decreasing order.

Weights are exact functions of the tensor (for TT, TTM and Tucker), so a rank readout based on
them does not depend on the gauge the factors happen to be in. Everything here is torch only
and never forms the dense tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import TensorFormat

__all__ = ["canonicalize"]


def canonicalize(
    layout: TensorFormat, factors: Sequence[torch.Tensor]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """
    The balanced factors of the same tensor and the weights of every bond.

    :param layout: a :class:`~tensorbayes.formats.TensorFormat`.
    :param list factors: its factors.
    :returns: ``(factors, weights)``: new factors in the layout's shapes, and one
        non-negative, non-increasing weight vector per bond.
    """
    if not isinstance(layout, TensorFormat):
        raise TypeError(
            f"layout must be a TensorFormat (e.g. TT(shape, ranks), not the class or a format name), got {layout!r}"
        )
    factors = layout.check_factors(factors)
    forms = {"tt": _canonical_train, "ttm": _canonical_train, "tucker": _canonical_tucker, "cp": _canonical_cp}
    if layout.name not in forms:
        raise ValueError(f"no canonical form for format {layout.name!r}")
    dtype = factors[0].dtype if factors else torch.get_default_dtype()
    if dtype in (torch.float16, torch.bfloat16):  # torch's QR and SVD take no half precision
        out, weights = forms[layout.name]([f.float() for f in factors])
        return [f.to(dtype) for f in out], [w.to(dtype) for w in weights]
    return forms[layout.name](factors)


def _padded(matrix, rows, cols):
    out = matrix.new_zeros(rows, cols)
    out[: matrix.shape[0], : matrix.shape[1]] = matrix
    return out


def _canonical_train(factors):
    shapes = [f.shape for f in factors]
    cores = [f.reshape(f.shape[0], -1, f.shape[-1]) for f in factors]
    d = len(cores)
    # left-orthogonalize cores 0..d-2, pushing R into the next core
    for k in range(d - 1):
        left, mid, right = cores[k].shape
        q, r = torch.linalg.qr(cores[k].reshape(left * mid, right))
        q, r = _padded(q, left * mid, right), _padded(r, right, right)
        cores[k] = q.reshape(left, mid, right)
        cores[k + 1] = torch.einsum("ij,jkl->ikl", r, cores[k + 1])
    # right-to-left SVDs: exact singular values of every bond
    sigmas = [None] * (d - 1)
    for k in range(d - 1, 0, -1):
        left, mid, right = cores[k].shape
        u, s, vt = torch.linalg.svd(cores[k].reshape(left, mid * right), full_matrices=False)
        p = s.shape[0]
        u, vt = _padded(u, left, left), _padded(vt, left, mid * right)
        s = torch.cat([s, s.new_zeros(left - p)])
        cores[k] = vt.reshape(left, mid, right)
        cores[k - 1] = torch.einsum("ijk,kl->ijl", cores[k - 1], u * s)
        sigmas[k - 1] = s
    # balance: G_k = Λ_{k-1}^{1/2} B_k Λ_k^{-1/2} from the right-canonical B_k
    for k in range(d):
        if k > 0:
            cores[k] = cores[k] * sigmas[k - 1].sqrt().reshape(-1, 1, 1)
        if k < d - 1:
            cores[k] = cores[k] * _safe_inverse_sqrt(sigmas[k]).reshape(1, 1, -1)
    return [c.reshape(s) for c, s in zip(cores, shapes)], sigmas


def _safe_inverse_sqrt(s):
    tiny = torch.finfo(s.dtype).tiny ** 0.5
    return torch.where(s > tiny, s.clamp_min(tiny).rsqrt(), torch.zeros_like(s))


def _mode_product(core, matrix, mode):
    """``core ×_mode matrix``: contract the core's dimension ``mode`` with ``matrix``'s columns."""
    moved = core.movedim(mode, 0)
    out = (matrix @ moved.reshape(moved.shape[0], -1)).reshape(matrix.shape[0], *moved.shape[1:])
    return out.movedim(0, mode)


def _canonical_tucker(factors):
    core, us = factors[0], list(factors[1:])
    for k, u in enumerate(us):
        rows, rank = u.shape
        q, r = torch.linalg.qr(u)
        us[k], r = _padded(q, rows, rank), _padded(r, rank, rank)
        core = _mode_product(core, r, k)
    weights = []
    for k in range(len(us)):
        rank = core.shape[k]
        unfold = core.movedim(k, 0).reshape(rank, -1)
        w, s, _ = torch.linalg.svd(unfold, full_matrices=False)
        w = _padded(w, rank, rank)
        weights.append(torch.cat([s, s.new_zeros(rank - s.shape[0])]))
        us[k] = us[k] @ w
        core = _mode_product(core, w.T, k)
    return [core] + us, weights


def _canonical_cp(factors):
    norms = torch.stack([f.norm(dim=0) for f in factors])  # (modes, R)
    weight = norms.prod(0)
    order = torch.argsort(weight, descending=True)
    target = weight.clamp_min(0) ** (1.0 / len(factors))
    balanced = [
        f * torch.where(n > 0, target / n.clamp_min(torch.finfo(f.dtype).tiny), torch.zeros_like(n))
        for f, n in zip(factors, norms)
    ]
    return [f[:, order] for f in balanced], [weight[order]]
