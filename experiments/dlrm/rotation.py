"""
Turning the column space of TTM tables: an orthogonal map of their first two column modes, and
the map shared by several tables that lowers their first-bond ranks.

A TTM table ``W`` (rows ``m_1..m_c`` by columns ``n_1..n_c``) turned by an orthogonal matrix
``Q`` of size ``n_1 n_2`` on its first two column modes is ``W (Q ⊗ I)^T``. The map crosses
the first bond (core 1 holds ``n_1``, core 2 holds ``n_2``), so it changes that bond's rank and
no other: a model that sees its embeddings only through dot products (a DLRM) cannot tell
``W`` from ``W (Q ⊗ I)^T`` when every table turns alike, and what it learns may sit at any such
turn, at a first-bond rank above the lowest one (``tests/data/test_clicks.py``).

Everything here works on the factors at the cost of the first two cores, never forming ``W``:

- :func:`first_bond_spectrum`: the singular values of the first-bond unfolding of the turned
  table (the weights the rank readout reads, :func:`~tensorbayes.formats.canonical.canonicalize`);
- :func:`turn_first_columns`: the factors of the turned table, its first bond cut to a rank;
- :func:`lowest_rank_turn`: the orthogonal ``Q`` shared by several tables that makes their
  first-bond spectra sparsest (the sum over tables of ``||s||_1 / ||s||_2``), searched over both
  components of the orthogonal group (rotations and reflections) from several starts.

Usage::

    q = lowest_rank_turn([(layout, factors) for layout, factors in tables])
    spectrum = first_bond_spectrum(layout, factors, q)         # read its rank from here
    layout, factors = turn_first_columns(layout, factors, q, rank=4)
"""

import math

import torch

from tensorbayes.formats.ttm import TTM

__all__ = ["SearchFailed", "first_bond_spectrum", "lowest_rank_turn", "turn_first_columns"]


class SearchFailed(RuntimeError):
    """:func:`lowest_rank_turn` found no finite turn: every start ended non-finite, or the
    linear algebra on the way failed (L-BFGS stepped to values at which an SVD does not converge)."""


def _check_turnable(layout, factors):
    if not isinstance(layout, TTM):
        raise TypeError(f"layout must be a TTM layout, got {type(layout).__name__}")
    factors = layout.check_factors(factors)
    if len(factors) < 2 or any(f.dim() != 4 for f in factors[:2]):
        raise ValueError(f"a TTM layout whose first two cores have column modes is needed, got shape {layout.shape}")
    return factors


def _check_turn(turn, size, dtype, device):
    if not isinstance(turn, torch.Tensor) or turn.shape != (size, size):
        got = tuple(turn.shape) if isinstance(turn, torch.Tensor) else type(turn).__name__
        raise ValueError(
            f"turn must be an orthogonal ({size}, {size}) torch.Tensor (first two column modes), got {got}"
        )
    turn = turn.to(dtype=dtype, device=device)
    eye = torch.eye(size, dtype=dtype, device=device)
    if not torch.allclose(turn @ turn.T, eye, atol=1e-4 if dtype == torch.float32 else 1e-8):
        raise ValueError("turn must be orthogonal (turn @ turn.T == I)")
    return turn


def _factor_of_gram(gram):
    """A matrix ``F`` with ``F F^T = gram`` (symmetric positive semi-definite), from its eigenvectors."""
    values, vectors = torch.linalg.eigh(gram)
    return vectors * values.clamp_min(0).sqrt()


def _tail_factor(factors):
    """``F`` with ``F F^T`` the Gram matrix, over their own indices, of cores 3.. contracted
    (a ``(r_2, r_2')`` factor; the identity ``(1, 1)`` for two cores)."""
    gram = torch.ones(1, 1, dtype=factors[0].dtype, device=factors[0].device)
    for core in reversed(factors[2:]):
        core = core.reshape(core.shape[0], -1, core.shape[-1])
        gram = torch.einsum("ais,st,bit->ab", core, gram, core)
    return _factor_of_gram(gram)


def _first_bond_parts(factors):
    """``(left, right)``: the first-bond spectrum of the table turned by ``Q`` is the singular
    values of ``einsum("xyuv,kur,rvm->kxym", Q, left, right)`` unfolded ``(k x, y m)``."""
    first, second = factors[0][0], factors[1]  # (m1, n1, r1), (r1, m2, n2, r2)
    m1, n1, r1 = first.shape
    second = torch.einsum("rivs,st->rivt", second, _tail_factor(factors))
    _, left = torch.linalg.qr(first.reshape(m1, n1 * r1))  # the rows' orthonormal basis drops out
    n2 = second.shape[2]
    gram = torch.einsum("rivt,siwt->rvsw", second, second).reshape(r1 * n2, r1 * n2)
    right = _factor_of_gram(gram).reshape(r1, n2, -1)
    return left.reshape(-1, n1, r1), right


def _spectrum(turn, left, right):
    n1, n2 = left.shape[1], right.shape[1]
    turned = torch.einsum("xyuv,kur,rvm->kxym", turn.reshape(n1, n2, n1, n2), left, right)
    return torch.linalg.svdvals(turned.reshape(turned.shape[0] * n1, -1))


def first_bond_spectrum(layout, factors, turn=None):
    """
    The singular values of the first-bond unfolding (rows ``(m_1, n_1)``) of a TTM table turned
    by ``turn`` on its first two column modes, in non-increasing order, from the factors.

    :param layout: the :class:`~tensorbayes.formats.TTM` layout.
    :param list factors: its factors.
    :param torch.Tensor turn: an orthogonal ``(n_1 n_2, n_1 n_2)`` matrix; ``None`` for the table as it is.
    """
    factors = _check_turnable(layout, factors)
    left, right = _first_bond_parts(factors)
    size = left.shape[1] * right.shape[1]
    turn = (
        torch.eye(size, dtype=left.dtype, device=left.device)
        if turn is None
        else _check_turn(turn, size, left.dtype, left.device)
    )
    return _spectrum(turn, left, right)


def turn_first_columns(layout, factors, turn, rank=None):
    """
    The factors of a TTM table turned by ``turn`` on its first two column modes, ``W (turn ⊗ I)^T``,
    its first bond cut to ``rank`` (the nearest such table in the Frobenius norm: the error is the
    norm of the cut singular values of :func:`first_bond_spectrum`; none when ``rank`` is at least
    the turned table's first-bond rank); the cores after the second are kept.

    :param layout: the :class:`~tensorbayes.formats.TTM` layout.
    :param list factors: its factors.
    :param torch.Tensor turn: an orthogonal ``(n_1 n_2, n_1 n_2)`` matrix.
    :param int rank: the new first-bond rank; ``None`` keeps every singular value the unfolding has.
    :returns: ``(layout, factors)`` at the new first-bond rank.
    """
    factors = _check_turnable(layout, factors)
    first, second = factors[0][0], factors[1]
    m1, n1, r1 = first.shape
    _, m2, n2, r2 = second.shape
    turn = _check_turn(turn, n1 * n2, first.dtype, first.device)
    basis, left = torch.linalg.qr(first.reshape(m1, n1 * r1))
    merged = torch.einsum("xyuv,kur,rivs->kxiys", turn.reshape(n1, n2, n1, n2), left.reshape(-1, n1, r1), second)
    merged = merged.reshape(-1, m2 * n2 * r2)
    weighted = (merged.reshape(-1, r2) @ _tail_factor(factors)).reshape(merged.shape[0], -1)  # the tail's weight
    u, s, _ = torch.linalg.svd(weighted, full_matrices=False)
    if rank is None:
        rank = s.numel()
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= s.numel():
        raise ValueError(
            f"rank must be an int in [1, {s.numel()}] (the turned first bond's largest rank), got {rank!r}"
        )
    new_first = (basis @ u[:, :rank].reshape(-1, n1 * rank)).reshape(1, m1, n1, rank)
    new_second = (u[:, :rank].T @ merged).reshape(rank, m2, n2, r2)  # the best cut: project on the leading vectors
    new_layout = TTM(layout.shape, (rank,) + tuple(layout.ranks[1:]))
    return new_layout, [new_first, new_second] + [f.clone() for f in factors[2:]]


#: The smoothing of the search's objective, lowered in turn: ``|s|`` is ``sqrt(s^2 + (eps ||s||)^2)``.
SMOOTHING = (1e-1, 1e-2, 1e-3, 0.0)


def _sparsity(turn, parts, eps=0.0):
    """The sum over tables of ``||s||_1 / ||s||_2`` of the turned first-bond spectra ``s``, each
    ``|s_k|`` smoothed to ``sqrt(s_k^2 + (eps ||s||)^2)``."""
    total = 0.0
    for left, right in parts:
        s = _spectrum(turn, left, right)
        norm = s.norm()
        total = total + (s.square() + (eps * norm) ** 2).sqrt().sum() / norm
    return total


def _minimize(loss, parameter, max_iter):
    optimizer = torch.optim.LBFGS([parameter], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        value = loss()
        value.backward()
        return value

    optimizer.step(closure)


def lowest_rank_turn(tables, restarts=4, max_iter=100, seed=0):
    """
    The orthogonal map of the first two column modes, shared by ``tables``, whose turned tables
    have the sparsest first-bond spectra: the least sum over tables of ``||s||_1 / ||s||_2``
    (scale-free; it counts ``k`` for ``k`` equal singular values). Searched by L-BFGS over
    ``Q = exp(A - A^T) D`` in float64, with ``D`` the identity (rotations) or a reflection of
    the first coordinate (the other component: a swap of the two modes, say, lies there), from
    the identity and ``restarts - 1`` seeded random starts in each. Each start minimizes the
    objective with ``|s|`` smoothed, less and less (:data:`SMOOTHING`), then as it is: the kink of
    ``|s|`` at 0 otherwise stalls L-BFGS short of the zeros and in local minima (2 of 12 random
    cases in our tests, none with the smoothing). The best end is returned.

    :param list tables: ``(layout, factors)`` pairs of TTM tables with the same first two column modes.
    :param int restarts: starts per component (the first at the identity).
    :param int max_iter: L-BFGS iterations per start and smoothing.
    :param int seed: seeds the random starts.
    :returns: the ``(n_1 n_2, n_1 n_2)`` orthogonal matrix, float64 on the first table's device.
    :raises SearchFailed: when the tables hold non-finite values or no start ends at a finite turn.
    """
    tables = list(tables)
    if not tables:
        raise ValueError("tables must hold at least one (layout, factors) pair")
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
        raise ValueError(f"restarts must be a positive int, got {restarts!r}")
    parts = []
    for layout, factors in tables:
        factors = [f.detach().double() for f in _check_turnable(layout, factors)]
        if not all(bool(torch.isfinite(f).all()) for f in factors):
            raise SearchFailed("the tables hold non-finite values: there is no turn to search")
        left, right = _first_bond_parts(factors)
        parts.append((left / left.norm().clamp_min(1e-300), right / right.norm().clamp_min(1e-300)))
    modes = {(left.shape[1], right.shape[1]) for left, right in parts}
    if len(modes) != 1:
        raise ValueError(f"tables must share their first two column modes, got {sorted(modes)}")
    n1, n2 = modes.pop()
    size, device = n1 * n2, parts[0][0].device
    generator = torch.Generator().manual_seed(seed)
    best, failures = None, []
    for sign in (1.0, -1.0):
        flip = torch.ones(size, dtype=torch.float64, device=device)
        flip[0] = sign
        for start in range(restarts):
            a = (
                torch.zeros(size, size, dtype=torch.float64)
                if start == 0
                else torch.randn(size, size, generator=generator, dtype=torch.float64)
            )
            a = a.to(device).requires_grad_()
            try:
                for eps in SMOOTHING:
                    # the loss is only called within _minimize, within this iteration
                    _minimize(lambda: _sparsity(torch.linalg.matrix_exp(a - a.T) * flip, parts, eps), a, max_iter)  # noqa: B023
                with torch.no_grad():
                    turn = torch.linalg.matrix_exp(a - a.T) * flip
                    value = float(_sparsity(turn, parts))
            except torch.linalg.LinAlgError as error:  # a start gone non-finite: the others may end well
                failures.append(str(error).splitlines()[0])
                continue
            if math.isfinite(value) and bool(torch.isfinite(turn).all()) and (best is None or value < best[0]):
                best = (value, turn)
    if best is None:
        raise SearchFailed(
            f"no start of the search ended at a finite turn ({2 * restarts} starts"
            + (f"; {len(failures)} failed: {failures[0]}" if failures else "")
            + ")"
        )
    return best[1]
