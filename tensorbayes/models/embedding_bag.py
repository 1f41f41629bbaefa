"""
Multi-hot embedding lookups ("bags") in a low-rank tensorized table, for recommendation models.

:class:`TensorizedEmbeddingBag` is the Bayesian, low-rank counterpart of
:class:`torch.nn.EmbeddingBag`: every example is a bag of row indices whose rows are summed or
averaged (``mode="sum"`` or ``"mean"``), optionally weighted per index (``per_sample_weights``,
sum mode). The input is either 1-d with ``offsets`` (the start of every bag) or 2-d, one bag of
fixed length per row, exactly as :func:`torch.nn.functional.embedding_bag` takes it.

The table is never formed. The indices of a batch are deduplicated first
(:func:`torch.unique` with ``return_inverse=True``), only the unique rows are gathered from the
factors by mixed-radix indexing (:meth:`~tensorbayes.formats.TensorFormat.rows`), and the bags
are reduced over those gathered rows by :func:`torch.nn.functional.embedding_bag`. The gather and
its backward pass therefore grow with the number of *distinct* indices in the batch (small
under the power-law frequencies of click logs), not with the table's rows: a table of
``10**12`` virtual rows costs what its factors cost.

The layer subclasses :class:`~.layers.TensorizedEmbedding` and so shares its shape logic: row
counts that do not factor are padded (:func:`~.layers.padded_shape`), and padding rows are
never indexed. Its weight is the child :class:`~.tensor.LowRankTensor` ``weight``, whose factors
and rank scales are the sample sites ``<layer>.weight.factor<k>`` and
``<layer>.weight.lambda<b>`` that :class:`~tensorbayes.guides.MeanField` finds.

:class:`CompactEmbeddingBag` is the deterministic export of a trained bag layer (the
posterior-mean factors, no Pyro): what :meth:`TensorizedEmbeddingBag.export`, and so
:func:`tensorbayes.export`, returns for it.
"""

import torch
import torch.nn.functional as F

from .layers import TensorizedEmbedding
from .tensor import CompactTensor

__all__ = ["BAG_MODES", "CompactEmbeddingBag", "TensorizedEmbeddingBag", "bag_lookup", "check_bags"]

#: The reductions a bag supports.
BAG_MODES = ("sum", "mean")

_INDEX_DTYPES = (torch.int64, torch.int32)


def check_mode(mode):
    """``mode`` if it is one of :data:`BAG_MODES` (how a bag reduces its rows)."""
    if mode not in BAG_MODES:
        raise ValueError(f"mode must be one of {BAG_MODES}, got {mode!r}")
    return mode


def _check_offsets(offsets, length):
    if not isinstance(offsets, torch.Tensor):
        raise TypeError(f"offsets must be a 1-d integer torch.Tensor of bag starts, got {type(offsets).__name__}")
    if offsets.dtype not in _INDEX_DTYPES:
        raise TypeError(f"offsets must be an integer tensor (int64 or int32), got dtype {offsets.dtype}")
    if offsets.dim() != 1:
        raise ValueError(f"offsets must be 1-d (one start per bag), got shape {tuple(offsets.shape)}")
    if offsets.numel() == 0:
        if length:  # torch's embedding_bag crashes (a segmentation fault) on no bags of some indices
            raise ValueError(f"offsets must start every bag, at least offsets=[0] for len(input)={length}, got none")
        return offsets.long()
    if offsets.min() < 0:
        raise ValueError(f"offsets must be non-negative, got a minimum of {int(offsets.min())}")
    if offsets[0] != 0:
        raise ValueError(
            f"offsets must start at 0 (the first bag starts at input[0]), got offsets[0]={int(offsets[0])}"
        )
    if offsets.numel() > 1 and (offsets[1:] < offsets[:-1]).any():
        raise ValueError("offsets must be sorted (non-decreasing): bag b is input[offsets[b]:offsets[b + 1]]")
    if offsets[-1] > length:
        raise ValueError(f"offsets must be at most len(input)={length}, got offsets[-1]={int(offsets[-1])}")
    return offsets.long()


def check_bags(input, offsets, per_sample_weights, mode, num_embeddings):
    """
    Validate a bag lookup as :func:`torch.nn.functional.embedding_bag` takes it and bring it to
    the 1-d form: ``(indices, offsets, per_sample_weights)``, indices and offsets as int64.

    :param torch.Tensor input: int64 or int32 row indices, 1-d with ``offsets`` or 2-d
        ``(bags, length)`` without.
    :param torch.Tensor offsets: the start of every bag in a 1-d ``input``: sorted, starting at 0.
    :param torch.Tensor per_sample_weights: floating weights shaped like ``input`` (sum mode), or ``None``.
    :param str mode: "sum" or "mean".
    :param int num_embeddings: the number of rows; every index must lie in ``[0, num_embeddings)``.
    :raises TypeError, ValueError: naming the argument at fault and the expected form.
    """
    check_mode(mode)
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor of row indices, got {type(input).__name__}")
    if input.dtype not in _INDEX_DTYPES:
        raise TypeError(f"input must be an integer tensor of row indices (int64 or int32), got dtype {input.dtype}")
    if input.dim() == 2:
        if offsets is not None:
            raise ValueError("offsets must be None for a 2-d input (each row of input is one bag of fixed length)")
        bags, length = input.shape
        offsets = torch.arange(bags, device=input.device) * length
    elif input.dim() == 1:
        if offsets is None:
            raise ValueError("offsets must be given for a 1-d input (the start of every bag), or pass a 2-d input")
        offsets = _check_offsets(offsets, input.numel())
    else:
        raise ValueError(f"input must be 1-d (with offsets) or 2-d (bags, length), got shape {tuple(input.shape)}")
    if input.numel() and (input.min() < 0 or input.max() >= num_embeddings):
        raise ValueError(
            f"input must hold row indices in [0, num_embeddings={num_embeddings}), "
            f"got values in [{int(input.min())}, {int(input.max())}]"
        )
    if per_sample_weights is not None:
        if mode != "sum":
            raise ValueError(f"per_sample_weights needs mode='sum', got mode={mode!r}")
        if not isinstance(per_sample_weights, torch.Tensor) or not per_sample_weights.is_floating_point():
            got = (
                per_sample_weights.dtype
                if isinstance(per_sample_weights, torch.Tensor)
                else type(per_sample_weights).__name__
            )
            raise TypeError(f"per_sample_weights must be a floating point torch.Tensor, got {got}")
        if per_sample_weights.shape != input.shape:
            raise ValueError(
                f"per_sample_weights must have the shape of input, {tuple(input.shape)}, "
                f"got {tuple(per_sample_weights.shape)}"
            )
        if not torch.isfinite(per_sample_weights).all():
            raise ValueError("per_sample_weights must be finite: found NaN or infinite values")
        per_sample_weights = per_sample_weights.reshape(-1)
    return input.reshape(-1).long(), offsets, per_sample_weights


def bag_lookup(layout, factors, indices, offsets, mode="sum", per_sample_weights=None):
    """
    Bags of rows of the matrix view of ``layout`` at ``factors``, without forming it: the
    distinct indices are gathered once (:meth:`~tensorbayes.formats.TensorFormat.rows`) and the
    bags reduced over them by :func:`torch.nn.functional.embedding_bag`. The arguments are
    those :func:`check_bags` returns (not validated again here).

    :returns: a tensor ``(len(offsets), prod(layout.col_shape))``; an empty bag gives zeros.
    """
    if indices.numel() == 0:  # nothing to gather; embedding_bag refuses a table of no rows
        zero = sum(f.sum() for f in factors) * 0  # keeps the result on the factors' graph
        return zero + factors[0].new_zeros(offsets.numel(), layout.matrix_shape[1])
    unique, inverse = torch.unique(indices, return_inverse=True)
    rows = layout.rows(factors, unique)
    if per_sample_weights is not None:
        per_sample_weights = per_sample_weights.to(dtype=rows.dtype, device=rows.device)
    return F.embedding_bag(inverse, rows, offsets, mode=mode, per_sample_weights=per_sample_weights)


class TensorizedEmbeddingBag(TensorizedEmbedding):
    """
    A Bayesian embedding table ``(num_embeddings, embedding_dim)`` held as a low-rank tensor
    with rank-shrinkage priors, looked up in bags like :class:`torch.nn.EmbeddingBag`.

    Every forward pass draws the factors once (from the prior, or from the guide under SVI),
    gathers the rows of the distinct indices of the batch and sums or averages them per bag.
    The table's shapes, padding and guide initialization (entries of variance 1) are those of
    :class:`~.layers.TensorizedEmbedding`, which this class extends; calling it with indices
    only is not supported (use :class:`~.layers.TensorizedEmbedding` for one row per index).

    Usage::

        bag = TensorizedEmbeddingBag(10_131_227, 128, mode="sum", format="ttm", max_rank=16,
                                     row_shape=(200, 220, 250), col_shape=(4, 4, 8))
        out = bag(torch.tensor([3, 7, 7, 10_000_000]), torch.tensor([0, 1]))   # (2, 128)
        out = bag(torch.tensor([[3, 7], [7, 9]]))                               # 2-d: (2, 128)

    :param int num_embeddings: the number of rows.
    :param int embedding_dim: the width of a row.
    :param str format: "cp", "tucker", "tt" or "ttm".
    :param max_rank: an int or one int per rank bond (clipped to what the shape allows).
    :param prior: the hyperprior on λ.
    :param str mode: "sum" (default) or "mean", the reduction of a bag.
    :param kwargs: ``row_shape``, ``col_shape``, ``padding``, ``order``, ``prior_kwargs``,
        ``init_variance``, as :class:`~.layers.TensorizedEmbedding` takes them.
    """

    def __init__(
        self, num_embeddings, embedding_dim, format="ttm", max_rank=8, prior="half_cauchy", *, mode="sum", **kwargs
    ):
        super().__init__(num_embeddings, embedding_dim, format=format, max_rank=max_rank, prior=prior, **kwargs)
        self.mode = check_mode(mode)

    def bag(self, factors, input, offsets=None, per_sample_weights=None):
        """The bags of ``input`` at given factors (validated as :meth:`forward`'s arguments)."""
        indices, offsets, weights = check_bags(input, offsets, per_sample_weights, self.mode, self.num_embeddings)
        return bag_lookup(self.layout, factors, indices, offsets, self.mode, weights)

    def forward(self, input, offsets=None, per_sample_weights=None):
        """
        :param torch.Tensor input: row indices, int64 or int32: 1-d with ``offsets``, or 2-d
            ``(bags, length)`` (each row one bag).
        :param torch.Tensor offsets: for a 1-d ``input``, the start of every bag (sorted,
            starting at 0): bag ``b`` is ``input[offsets[b]:offsets[b + 1]]``.
        :param torch.Tensor per_sample_weights: a weight per index, shaped like ``input``
            (``mode="sum"`` only).
        :returns: the bags, ``(bags, embedding_dim)``.
        """
        indices, offsets, weights = check_bags(input, offsets, per_sample_weights, self.mode, self.num_embeddings)
        factors, _ = self.weight()
        return bag_lookup(self.layout, factors, indices, offsets, self.mode, weights)

    def extra_repr(self):
        return TensorizedEmbedding.extra_repr(self) + f", mode={self.mode!r}"


class CompactEmbeddingBag(torch.nn.Module):
    """
    A bag lookup in a low-rank table fixed at given factors: a :class:`TensorizedEmbeddingBag`
    without its priors, as :func:`tensorbayes.export` returns it (the forward pass is the
    Bayesian layer's, borrowed, not copied).

    Usage::

        bag = CompactEmbeddingBag(model.net.C3, guide.factor_means(model.net.C3.weight))  # = model.net.C3.export(guide)
        out = bag(indices, offsets)

    :param layer: the :class:`TensorizedEmbeddingBag` whose sizes, shapes and mode to take.
    :param list factors: the factors of ``layer.weight``'s layout (copied).
    """

    def __init__(self, layer, factors):
        super().__init__()
        if not isinstance(layer, TensorizedEmbeddingBag):
            raise TypeError(f"layer must be a TensorizedEmbeddingBag, got {type(layer).__name__}")
        for name in ("num_embeddings", "embedding_dim", "row_shape", "col_shape", "mode"):
            setattr(self, name, getattr(layer, name))
        self.weight = CompactTensor(layer.layout, factors)

    layout = TensorizedEmbeddingBag.layout
    num_padding_rows = TensorizedEmbeddingBag.num_padding_rows
    bag = TensorizedEmbeddingBag.bag
    forward = TensorizedEmbeddingBag.forward
    extra_repr = TensorizedEmbeddingBag.extra_repr


TensorizedEmbeddingBag.compact_class = CompactEmbeddingBag  # not the CompactEmbedding of the base class
