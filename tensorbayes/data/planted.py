"""
Planted low-rank tensors: completion problems whose true ranks are known.

:func:`planted_tensor` draws a tensor of a given shape in one of the formats of
:mod:`tensorbayes.formats` ("cp", "tucker", "tt", "ttm") at given ranks, observes a random
fraction of its entries with Gaussian noise, and holds out every other entry for measuring
recovery. It is the ground truth for the rank-determination tests and benchmarks: a model
started at a larger ``max_rank`` should shrink each bond back to the planted rank.

The planted factors are drawn so that every rank index is genuinely needed: for every rank
bond, the unfolding of the tensor that the bond splits has exactly the planted rank, and its
smallest nonzero singular value is at least :data:`MIN_CONDITION` (5 %) of its largest:

- CP: factor columns are orthonormal in every mode where ``R <= I_k`` and unit-norm Gaussian
  elsewhere; the components carry weights spread evenly over ``[1, 2]`` (absorbed evenly into
  the factors of every mode);
- Tucker: orthonormal ``U_k`` (Haar) and a Gaussian core whose mode unfoldings are rescaled to
  well-spread spectra (the core carries the tensor's scale);
- TT / TTM: Gaussian cores, then one sweep forth and back that sets each bond's spectrum
  (in the bond's mixed canonical form) to values spread evenly over ``[1, 2]``.

A draw that still misses the bound is drawn again, so the result depends only on the
arguments. The dense tensor is scaled to unit standard deviation (``full.std() == 1``).

Not every combination of per-bond ranks that :meth:`~tensorbayes.formats.TensorFormat.max_ranks`
allows can be attained: a Tucker rank ``R_k`` cannot exceed the product of the other ranks,
and a TT rank ``r_k`` cannot exceed ``r_{k-1} I_k`` nor ``I_{k+1} r_{k+1}``. Such ranks are
refused with a :class:`ValueError`.

Usage::

    from tensorbayes.data import planted_tensor

    data = planted_tensor((10, 12, 14, 16), "tt", ranks=(3, 4, 2), observed=0.3, noise=0.01)
    data.train_index, data.train_values     # what a completion model is fitted to
    prediction = ...                        # e.g. the posterior mean at data.test_index
    data.relative_error(prediction)         # ||prediction - truth|| / ||truth|| on held-out entries
"""

import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch

from ..formats import TensorFormat, check_shape, get_format

__all__ = ["MIN_CONDITION", "PlantedTensor", "planted_tensor"]

#: Lower bound on ``sigma_min / sigma_max`` over the nonzero singular values of every bond's
#: unfolding of a planted tensor.
MIN_CONDITION = 0.05

_MAX_DRAWS = 25


@dataclass(frozen=True, eq=False)
class PlantedTensor:
    """
    A planted low-rank tensor and a train/test split of its entries, as returned by
    :func:`planted_tensor`.

    :param torch.Tensor full: the noiseless dense tensor, scaled to unit standard deviation.
    :param tuple factors: the planted factors, in the layout of ``format``
        (``format.full(factors)`` equals ``full``).
    :param format: the :class:`~tensorbayes.formats.TensorFormat` layout (shape and ranks).
    :param tuple ranks: the planted rank of every bond, as in ``format.ranks``.
    :param torch.Tensor train_index: long tensor of shape ``(n_train, order)``, the observed
        entries, in random order.
    :param torch.Tensor train_values: shape ``(n_train,)``, the observed values: the truth
        plus Gaussian noise of standard deviation ``noise_std``.
    :param torch.Tensor test_index: long tensor of shape ``(n_test, order)``, every entry not
        observed, in row-major order.
    :param torch.Tensor test_values: shape ``(n_test,)``, the **noiseless** truth at
        ``test_index``, so that :meth:`relative_error` measures recovery of the signal, not of
        the noise.
    :param float noise_std: the absolute standard deviation of the noise on ``train_values``
        (``noise`` times the standard deviation of ``full``).
    """

    full: torch.Tensor
    factors: tuple
    format: TensorFormat
    ranks: tuple
    train_index: torch.Tensor
    train_values: torch.Tensor
    test_index: torch.Tensor
    test_values: torch.Tensor
    noise_std: float

    @property
    def shape(self):
        """The shape of the tensor."""
        return tuple(self.full.shape)

    def relative_error(self, prediction):
        """
        The relative error of a prediction of the held-out entries,
        ``||prediction - test_values|| / ||test_values||``.

        :param prediction: the predicted values at :attr:`test_index`, of shape ``(n_test,)``.
        :returns: a float.
        :raises ValueError: if the shape of ``prediction`` is not ``(n_test,)``, or if no entry
            was held out (``observed=1``).
        :raises TypeError: if ``prediction`` is not real numbers (complex ones, say).
        """
        try:
            prediction = torch.as_tensor(prediction)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"prediction must be a tensor of real values, got {type(prediction).__name__}") from None
        if prediction.is_complex():
            raise TypeError(f"prediction must hold real values, got dtype {prediction.dtype}")
        if tuple(prediction.shape) != tuple(self.test_values.shape):
            raise ValueError(
                f"prediction must have shape {tuple(self.test_values.shape)} (one value per row of "
                f"test_index), got {tuple(prediction.shape)}"
            )
        if self.test_values.numel() == 0:
            raise ValueError("relative_error needs held-out entries, but every entry was observed (observed=1)")
        prediction = prediction.detach().to(device=self.test_values.device, dtype=self.test_values.dtype)
        return float((prediction - self.test_values).norm() / self.test_values.norm())

    def __repr__(self):
        return (
            f"PlantedTensor(format={self.format!r}, n_train={len(self.train_values)}, "
            f"n_test={len(self.test_values)}, noise_std={self.noise_std:.3g})"
        )


def check_bond_ranks(cls, shape, ranks, what):
    """An int, or a sequence with one rank per bond of ``cls`` at ``shape`` (``what`` names it)."""
    if isinstance(ranks, int) and not isinstance(ranks, bool):
        return ranks
    try:
        ranks = tuple(ranks)
    except TypeError:
        raise TypeError(f"ranks must be an int or a sequence of ints, got {ranks!r}") from None
    num_bonds = cls._num_bonds(len(shape))
    if len(ranks) != num_bonds:
        raise ValueError(
            f"ranks must have one entry per rank bond: a {cls.__name__} of {what} has {num_bonds} bond(s), "
            f"but ranks has {len(ranks)} entries {ranks!r}"
        )
    return ranks


def planted_tensor(shape, format, ranks, observed=0.3, noise=0.01, seed=0, dtype=torch.float64):
    """
    Draw a tensor of known ranks in a given format, observe a random fraction of its entries
    with Gaussian noise, and hold out the rest.

    Everything (factors, split and noise) is a deterministic function of the arguments. The
    split uses its own random stream, seeded by ``seed`` alone: the same ``shape``,
    ``observed`` and ``seed`` give the same observed entries whatever the format and ranks.

    :param tuple shape: the sizes of the tensor's modes (at least two entries in all).
    :param str format: "cp", "tucker", "tt" or "ttm" (or a
        :class:`~tensorbayes.formats.TensorFormat` subclass).
    :param ranks: the planted ranks, an int for every bond or one int per bond; each in
        ``[1, max_ranks()]`` of the format and jointly attainable (see the module docs).
    :param float observed: the fraction of entries observed, in ``(0, 1]``; exactly
        ``max(1, round(observed * numel))`` entries are drawn uniformly without replacement.
    :param float noise: the noise standard deviation relative to the signal's standard
        deviation (which is 1), at least 0.
    :param int seed: a non-negative int seeding every random draw.
    :param torch.dtype dtype: a floating dtype for the returned factors and values. The draws
        are made in float64 whatever ``dtype`` is.
    :returns: a :class:`PlantedTensor`.
    :raises ValueError: for an unknown format, a bad shape, ranks out of range or not
        attainable, ``observed`` outside ``(0, 1]``, a negative or non-finite ``noise``, or a
        negative ``seed``.
    :raises TypeError: for arguments of the wrong type.
    """
    cls = get_format(format)
    shape = check_shape(shape)
    numel = math.prod(shape)
    if numel < 2:
        raise ValueError(f"shape must have at least two entries in all (a standard deviation is needed), got {shape}")
    ranks = check_bond_ranks(cls, shape, ranks, f"shape {shape}")
    fmt = cls(shape, ranks)
    check_attainable(fmt)
    observed = check_real(observed, "observed")
    if not 0 < observed <= 1:
        raise ValueError(f"observed must be a fraction in (0, 1], got {observed!r}")
    noise = check_real(noise, "noise")
    if not math.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")

    factor_gen, split_gen, noise_gen = _generators(int(seed))
    factors = draw_conditioned_factors(fmt, factor_gen)
    full = fmt.full(factors)
    scale = full.std().item()
    if fmt.name == "tucker":  # keep the U_k orthonormal: the core carries the scale
        factors = [factors[0] / scale] + factors[1:]
    else:  # spread the scale evenly over the factors
        factors = [f * scale ** (-1.0 / len(factors)) for f in factors]
    full = fmt.full(factors)
    noise_std = noise * full.std().item()

    n_train = max(1, int(round(observed * numel)))
    perm = torch.randperm(numel, generator=split_gen)
    train_flat = perm[:n_train]
    test_flat = perm[n_train:].sort().values
    train_index = fmt.unravel(train_flat, shape)
    test_index = fmt.unravel(test_flat, shape)
    flat = full.reshape(-1)
    train_values = flat[train_flat] + noise_std * torch.randn(n_train, generator=noise_gen, dtype=torch.float64)
    test_values = flat[test_flat]

    return PlantedTensor(
        full=full.to(dtype),
        factors=tuple(f.to(dtype) for f in factors),
        format=fmt,
        ranks=fmt.ranks,
        train_index=train_index,
        train_values=train_values.to(dtype),
        test_index=test_index,
        test_values=test_values.to(dtype),
        noise_std=float(noise_std),
    )


# ----- validation -----


def check_real(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    return float(value)


def _train_sizes(fmt):
    """For a TT or TTM layout, the merged mode size of every core."""
    return [math.prod(s[1:-1]) for s in fmt.factor_shapes]


def check_attainable(fmt):
    """Ranks within ``max_ranks()`` and jointly attainable by a tensor of that format."""
    top = fmt.max_ranks()
    if any(r > m for r, m in zip(fmt.ranks, top)):
        raise ValueError(
            f"ranks must be at most max_ranks() = {top} for a {fmt.name} of shape {fmt.shape}, got {fmt.ranks}"
        )
    if fmt.name == "tucker":
        for k, r in enumerate(fmt.ranks):
            others = math.prod(fmt.ranks) // r
            if r > others:
                raise ValueError(
                    f"ranks {fmt.ranks} are not attainable by a Tucker tensor: ranks[{k}] = {r} exceeds the "
                    f"product of the other ranks ({others})"
                )
    elif fmt.name in ("tt", "ttm"):
        sizes = _train_sizes(fmt)
        r = (1,) + fmt.ranks + (1,)
        for k in range(fmt.num_bonds):
            if r[k + 1] > r[k] * sizes[k] or r[k + 1] > sizes[k + 1] * r[k + 2]:
                raise ValueError(
                    f"ranks {fmt.ranks} are not attainable by a {fmt.name.upper()} tensor of shape {fmt.shape}: "
                    f"ranks[{k}] = {r[k + 1]} must be at most {r[k]} * {sizes[k]} (the bond before times the "
                    f"core's mode size) and at most {sizes[k + 1]} * {r[k + 2]}"
                )


# ----- drawing -----


def _generators(seed):
    """Independent CPU generators for the factors, the split and the noise."""
    states = [int(s.generate_state(1, dtype=np.uint64)[0]) for s in np.random.SeedSequence(seed).spawn(3)]
    return [torch.Generator().manual_seed(s) for s in states]


def _spread(n):
    """``n`` values spread evenly over [1, 2], largest first, with unit norm."""
    values = torch.linspace(2.0, 1.0, n, dtype=torch.float64)
    return values / values.norm()


def _orthonormal(rows, cols, gen):
    """A Haar-random ``(rows, cols)`` matrix with orthonormal columns (``cols <= rows``)."""
    q, r = torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(()))


def draw_conditioned_factors(fmt, gen):
    """Factors for ``fmt`` whose every bond passes :func:`_bond_spectra`'s conditioning bound."""
    draws = {"cp": _draw_cp, "tucker": _draw_tucker, "tt": _draw_train, "ttm": _draw_train}
    if fmt.name not in draws:
        raise ValueError(f"format must be one of {sorted(draws)} to plant a tensor, got {type(fmt).__name__}")
    draw = draws[fmt.name]
    for _ in range(_MAX_DRAWS):
        factors = draw(fmt, gen)
        if all(_conditioned(s, rank) for s, rank in _bond_spectra(fmt, factors)):
            return factors
    raise RuntimeError(f"could not draw well-conditioned factors for {fmt!r} in {_MAX_DRAWS} tries")


def _conditioned(spectrum, rank):
    spectrum = spectrum.sort(descending=True).values
    return len(spectrum) >= rank and bool(spectrum[rank - 1] >= MIN_CONDITION * spectrum[0])


def _draw_cp(fmt, gen):
    (rank,) = fmt.ranks
    weights = _spread(rank) ** (1.0 / len(fmt.shape))
    factors = []
    for size in fmt.shape:
        if rank <= size:
            u = _orthonormal(size, rank, gen)
        else:
            u = torch.randn(size, rank, generator=gen, dtype=torch.float64)
            u = u / u.norm(dim=0)
        factors.append(u * weights)
    return factors


def _unfold(tensor, k):
    return tensor.movedim(k, 0).reshape(tensor.shape[k], -1)


def _fold(matrix, k, shape):
    moved = (shape[k],) + tuple(s for j, s in enumerate(shape) if j != k)
    return matrix.reshape(moved).movedim(0, k)


def _draw_tucker(fmt, gen):
    core = torch.randn(fmt.ranks, generator=gen, dtype=torch.float64)
    for k in range(core.dim()):
        u, s, vh = torch.linalg.svd(_unfold(core, k), full_matrices=False)
        core = _fold((u * _spread(len(s))) @ vh, k, core.shape)
    return [core] + [_orthonormal(size, rank, gen) for size, rank in zip(fmt.shape, fmt.ranks)]


def _left_qr(core):
    """``core = q @ s`` over its last dimension, ``q`` left-orthonormal."""
    r0, n, r1 = core.shape
    q, s = torch.linalg.qr(core.reshape(r0 * n, r1))
    return q.reshape(r0, n, -1), s


def _right_qr(core):
    """``core = s @ q`` over its first dimension, ``q`` right-orthonormal."""
    r0, n, r1 = core.shape
    q, s = torch.linalg.qr(core.reshape(r0, n * r1).T)
    return s.T, q.T.reshape(-1, n, r1)


def _train_sweep(cores, target=None):
    """
    Sweep a train of ``(r_{k-1}, n_k, r_k)`` cores left to right through the mixed canonical
    form of every bond, where the bond matrix has the singular values of the tensor's unfolding
    at that bond. Returns the cores (left-orthonormal but the last) and those spectra; with
    ``target``, each bond's spectrum is first replaced by ``target(rank)``.
    """
    cores = list(cores)
    for j in range(len(cores) - 1, 0, -1):
        s, cores[j] = _right_qr(cores[j])
        cores[j - 1] = torch.einsum("anb,bc->anc", cores[j - 1], s)
    spectra = []
    for k in range(len(cores) - 1):
        cores[k], s = _left_qr(cores[k])
        u, sv, vh = torch.linalg.svd(s)
        spectra.append(sv)
        if target is not None:
            s = (u * target(len(sv))) @ vh
        cores[k + 1] = torch.einsum("ab,bnc->anc", s, cores[k + 1])
    return cores, spectra


def _draw_train(fmt, gen):
    shapes = fmt.factor_shapes
    cores = [torch.randn(s[0], math.prod(s[1:-1]), s[-1], generator=gen, dtype=torch.float64) for s in shapes]
    # forth: set every bond's spectrum; back: set them again, which leaves all well spread.
    cores, _ = _train_sweep(cores, _spread)
    for k in range(len(cores) - 2, -1, -1):
        s, cores[k + 1] = _right_qr(cores[k + 1])
        u, sv, vh = torch.linalg.svd(s)
        cores[k] = torch.einsum("anb,bc->anc", cores[k], (u * _spread(len(sv))) @ vh)
    return [core.reshape(shape) for core, shape in zip(cores, shapes)]


def _bond_spectra(fmt, factors):
    """
    ``(singular values, expected rank)`` of the unfolding(s) that each bond splits, computed
    from the factors: per mode for CP and Tucker, per bond for TT and TTM.
    """
    if fmt.name == "cp":
        out = []
        grams = [u.T @ u for u in factors]
        for k, u in enumerate(factors):
            others = math.prod(fmt.shape) // fmt.shape[k]
            gram = torch.ones_like(grams[0])
            for j, g in enumerate(grams):
                if j != k:
                    gram = gram * g
            eig = torch.linalg.eigvalsh(u @ gram @ u.T).clamp(min=0).sqrt()
            out.append((eig, min(fmt.ranks[0], fmt.shape[k], others)))
        return out
    if fmt.name == "tucker":
        # the factors are orthonormal, so the core's mode spectra are the tensor's.
        return [(torch.linalg.svdvals(_unfold(factors[0], k)), r) for k, r in enumerate(fmt.ranks)]
    _, spectra = _train_sweep([f.reshape(f.shape[0], -1, f.shape[-1]) for f in factors])
    return list(zip(spectra, fmt.ranks))
