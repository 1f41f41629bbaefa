"""
A synthetic click log with the shape of Criteo Kaggle and a planted low-rank truth.

:class:`ClickGenerator` plants the truth of a DLRM-style click-through problem whose answer is
known: 13 dense features, 26 categorical features with Criteo Kaggle's cardinalities, category
frequencies that follow a power law (Zipf-like), and a click probability that is a known
function of the dense features and of *true embeddings*. The five large tables' true embeddings
are low-rank TTM tensors of known ranks (rows ``(a, b, c)`` by columns ``(4, 4, 8)``, the
paper's shapes), so the ranks a model should find are known; a row is gathered from the
planted cores by mixed-radix indexing and the table (10⁹ entries and more) is never formed.
The Bayes-optimal accuracy ``E[max(p, 1 - p)]`` is estimated on a test stream
(:meth:`ClickGenerator.bayes_optimal`), with the floor of a learner that found none of the planted
tables' interactions.

Category ids are a fixed pseudo-random bijection of the frequency ranks (``id_order="shuffled"``,
as hashing numbers them) or the ranks themselves (``"frequency"``, the limit of numbering in
order of first appearance). At full size the order decides whether gradient descent from a
random start finds the planted tables: with ids by frequency the most frequent rows share their
cores' first slices (``experiments/dlrm/search.py`` measures it).

:class:`ClickStream` is the log itself: a map-style :class:`torch.utils.data.Dataset` of
``num_samples`` examples whose example ``i`` is a deterministic function of the seed, the
stream and ``i`` (a counter-based hash, so any batch can be generated on its own, in any
order). Nothing is held: :meth:`ClickStream.loader` and :meth:`ClickStream.batches` generate
minibatches ``(dense, sparse, clicks)`` on demand.

The cardinalities are Criteo Kaggle's (Display Advertising Challenge, 7 days of training
data), as the DLRM reference code lists them for ``--data-set=kaggle``
(``1460-583-10131227-2202608-305-24-12517-633-3-93145-5683-8351593-3194-27-14992-5461306-10-5652-2173-4-7046547-18-15-286181-105-142572``,
facebookresearch/dlrm); the five large tables (features 3, 4, 12, 16 and 21) have
``10131227 + 2202608 + 8351593 + 5461306 + 7046547 = 33,193,281`` rows (docs/method.md, "The
paper's DLRM setting"). Here each large table has the rows of its factor shape in the paper
(``200 x 220 x 250 = 11,000,000`` and so on), so that its planted TTM has no padding. These
numbers (:data:`CRITEO_KAGGLE_CARDINALITIES`, :data:`PAPER_ROW_SHAPES`, :data:`PAPER_COL_SHAPE`)
are defined in :mod:`tensorbayes.presets`, which :class:`~tensorbayes.models.DLRM` reads too.

The planted click model, for example ``n`` (``e_t`` the true embedding of its category in table
``t``, ``D = 128``)::

    logit = bias + w . x  +  sum_{t small} beta_t[i_t]  +  sum_{s < t large} <e_s, e_t>
            (+ sum_{t large} <e_t, a_t>, off by default)
    clicks ~ Bernoulli(sigmoid(logit))

which a DLRM (dot interactions between embeddings and the bottom MLP's output, a top MLP)
can represent: the top MLP reads ``w . x`` from the bottom vector, the small tables' effects
from their dots with a constant part of it, and weighs the large tables' pairwise dots by one.
The main effects ``<e_t, a_t>`` are not representable (their only route, the dot with the bottom
vector, would also carry the dense features), so they are off unless ``main_scale`` is given.
The scales of the terms are set by the ``*_scale`` arguments (the standard deviation each group
adds to the logit).

Usage::

    truth = ClickGenerator(seed=0)                       # full size, Criteo Kaggle's tables
    train = truth.stream(2_000_000, stream="train")
    for dense, sparse, clicks in train.batches(4096):    # (4096, 13), (4096, 26), (4096,)
        ...
    bayes = truth.bayes_optimal(truth.stream(200_000, stream="test"))
"""

import math

import torch

from ..checks import check_int, check_number
from ..formats import get_format
from ..formats.base import check_shape
from ..presets import CRITEO_KAGGLE_CARDINALITIES, PAPER_COL_SHAPE, PAPER_ROW_SHAPES

__all__ = [
    "CRITEO_KAGGLE_CARDINALITIES",
    "ClickGenerator",
    "ClickStream",
    "ID_ORDERS",
    "PAPER_COL_SHAPE",
    "PAPER_ROW_SHAPES",
    "PLANTED_RANKS",
    "auc",
    "expected_accuracy",
    "expected_hits",
]

#: The TTM ranks planted in the five large tables by default.
PLANTED_RANKS = {2: (4, 2), 3: (2, 2), 11: (3, 3), 15: (4, 1), 20: (2, 1)}

#: The orders of category ids :class:`ClickGenerator` offers (``id_order``).
ID_ORDERS = ("shuffled", "frequency")

_MASK32 = 0xFFFFFFFF
_STREAMS = {"train": 0, "test": 1, "valid": 2}


def _mix32(x):
    """A 32-bit integer hash (Wellons' lowbias32) of int64 tensors holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32  # wraps modulo 2**64 in int64; the low 32 bits are exact
    return x ^ (x >> 16)


def _uniforms(index, key, slots):
    """
    Uniforms in (0, 1), ``(len(index), slots)`` float64: a counter-based hash of
    ``(key, index, slot)``, so every example's draws are independent of the batch it is in.
    """
    slot_keys = _mix32((torch.arange(slots, dtype=torch.int64) * 0x9E3779B9 + key) & _MASK32)
    h = _mix32((index & _MASK32)[:, None] ^ slot_keys[None, :])
    h = _mix32(h ^ ((index >> 32) & _MASK32)[:, None] ^ _mix32(slot_keys ^ 0x5BD1E995)[None, :])
    return (h.double() + 0.5) / 2.0**32


def _as_index(index, name):
    """``index`` as a flat int64 tensor; floats and bools are refused (``.long()`` would truncate them)."""
    try:
        index = torch.as_tensor(index)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(
            f"{name} must be integer indices (an int, a sequence or a tensor of ints), got {index!r}"
        ) from None
    if index.numel() and (index.is_floating_point() or index.is_complex() or index.dtype == torch.bool):
        raise TypeError(f"{name} must be integer indices, got dtype {index.dtype} (it would be truncated)")
    return index.to(torch.int64).reshape(-1)


def _coprime_multiplier(n, salt):
    """An odd multiplier coprime with ``n`` near ``0.618 n``: ``rank -> (a * rank + b) % n`` is a bijection."""
    a = max(1, int(n * 0.6180339887) + salt) | 1
    while math.gcd(a, n) != 1:
        a += 2
    return a


class ClickGenerator:
    """
    The planted truth of a synthetic click log (see the module docs): which tables there are,
    how often each category occurs, the true embeddings and the click probability.

    :param tuple cardinalities: rows of every categorical table (default
        :data:`CRITEO_KAGGLE_CARDINALITIES`, the large ones replaced by their ``row_shapes``'
        products).
    :param dict row_shapes: ``{table: row shape}`` of the tables whose true embeddings are planted
        TTM tensors (default :data:`PAPER_ROW_SHAPES`); the table then has ``prod(shape)`` rows.
    :param tuple col_shape: the column modes of the embeddings (default ``(4, 4, 8)``).
    :param dict ranks: ``{table: TTM ranks}`` planted in those tables (default :data:`PLANTED_RANKS`).
    :param int num_dense: dense features.
    :param float zipf: the exponent ``s`` of the category frequencies, ``P(rank k) ∝ k^-s``.
    :param float interaction_scale: the standard deviation the pairwise dot products of the
        planted tables add to the logit (all pairs together).
    :param float main_scale: that of their main effects ``<e_t, a_t>`` (default none: a DLRM
        cannot represent them, since its only route from one embedding to the logit without
        another table's is the dot with the bottom MLP's output, which also carries the dense
        features; with them the generator's Bayes-optimal accuracy is out of any DLRM's reach).
    :param float dense_scale: that of the dense features' linear term.
    :param float small_scale: that of the small tables' per-category effects (all together).
    :param float click_rate: the bias is set so that a logit of zero elsewhere gives this rate.
    :param str id_order: how category ids follow frequency: "shuffled" (default) numbers the
        categories by a fixed pseudo-random bijection of their frequency ranks, as hashing
        does; "frequency" gives the most frequent category id 0, the next id 1 and so on, the
        limit of numbering categories in order of first appearance (as DLRM's Criteo
        preprocessing does), where frequent categories come first.
    :param int seed: seeds the planted truth and every stream.
    """

    def __init__(
        self,
        cardinalities=None,
        row_shapes=None,
        col_shape=PAPER_COL_SHAPE,
        ranks=None,
        num_dense=13,
        zipf=1.1,
        interaction_scale=1.5,
        main_scale=0.0,
        dense_scale=1.0,
        small_scale=0.5,
        click_rate=0.25,
        id_order="shuffled",
        seed=0,
    ):
        if id_order not in ID_ORDERS:
            raise ValueError(f"id_order must be one of {ID_ORDERS}, got {id_order!r}")
        check_number(click_rate, "click_rate", "(0, 1)", "a probability in (0, 1) (the logit's bias)")
        for value, name in (
            (interaction_scale, "interaction_scale"),
            (main_scale, "main_scale"),
            (dense_scale, "dense_scale"),
            (small_scale, "small_scale"),
        ):
            check_number(value, name, "[0, inf)", "a finite non-negative number")
        zipf = check_number(zipf, "zipf", "(0, inf)", "a finite positive number")
        seed = check_int(seed, "seed", low=0)
        col_shape = check_shape(col_shape, "col_shape")
        self.id_order = id_order
        row_shapes = dict(PAPER_ROW_SHAPES if row_shapes is None else row_shapes)
        ranks = dict(PLANTED_RANKS if ranks is None and row_shapes.keys() == PAPER_ROW_SHAPES.keys() else ranks or {})
        cards = list(CRITEO_KAGGLE_CARDINALITIES if cardinalities is None else cardinalities)
        for t, shape in row_shapes.items():
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < len(cards):
                raise ValueError(f"row_shapes has table {t!r}, but the tables are the ints 0 to {len(cards) - 1}")
            cards[t] = math.prod(shape)
        self.cardinalities = tuple(check_int(c, "cardinalities") for c in cards)
        if set(ranks) != set(row_shapes):
            raise ValueError(
                f"ranks must give the TTM ranks of every planted table {sorted(row_shapes)}, got {sorted(ranks)}"
            )
        self.row_shapes, self.col_shape = row_shapes, tuple(col_shape)
        self.embedding_dim = math.prod(self.col_shape)
        self.num_dense = check_int(num_dense, "num_dense")
        self.zipf, self.seed = zipf, seed
        gen = torch.Generator().manual_seed(self.seed)
        ttm = get_format("ttm")
        self.layouts, self.factors, self.ranks = {}, {}, {}
        dim = self.embedding_dim
        pairs = max(1, len(row_shapes) * (len(row_shapes) - 1) // 2)
        # entries of variance v: a dot product of two embeddings has variance dim * v**2
        v = interaction_scale / math.sqrt(pairs * dim)
        for t, shape in sorted(row_shapes.items()):
            layout = ttm(tuple(shape) + self.col_shape, ranks[t])
            if layout.ranks != tuple(ranks[t]):
                raise ValueError(f"ranks[{t}] must be TTM ranks for row shape {shape}, got {ranks[t]!r}")
            std = (v / math.prod(layout.ranks)) ** (0.5 / len(layout.labels))
            self.layouts[t], self.ranks[t] = layout, layout.ranks
            self.factors[t] = [torch.randn(s, generator=gen, dtype=torch.float64) * std for s in layout.factor_shapes]
        # main effects <e_t, a_t>: a_t of norm so that all of them add main_scale to the logit's sd
        self.main = {t: torch.randn(dim, generator=gen, dtype=torch.float64) for t in self.layouts}
        if main_scale == 0:  # drawn all the same, so that the draws after them do not depend on main_scale
            self.main = {}
        elif v == 0:
            raise ValueError(
                "main_scale sets the main effects against the embeddings' scale: it needs interaction_scale > 0"
            )
        for t in self.main:
            self.main[t] *= main_scale / math.sqrt(len(self.main) * dim * v)
        self.small = [t for t in range(len(self.cardinalities)) if t not in self.layouts]
        per_small = small_scale / math.sqrt(max(1, len(self.small)))
        self.effects = {
            t: torch.randn(self.cardinalities[t], generator=gen, dtype=torch.float64) * per_small for t in self.small
        }
        self.dense_weight = torch.randn(self.num_dense, generator=gen, dtype=torch.float64) * (
            dense_scale / math.sqrt(self.num_dense)
        )
        self.bias = math.log(click_rate / (1 - click_rate))
        self.multipliers = [_coprime_multiplier(n, 7919 * t) for t, n in enumerate(self.cardinalities)]
        self.shifts = [(104729 * (t + 1)) % n for t, n in enumerate(self.cardinalities)]

    @classmethod
    def tiny(cls, seed=0, **kwargs):
        """A small log for tests and smoke runs: 26 tables of at most 1000 rows (the five planted
        ones 10 x 10 x 10, columns 2 x 2 x 2), the same structure."""
        cards = tuple(min(c, 50) for c in CRITEO_KAGGLE_CARDINALITIES)
        shapes = {t: (10, 10, 10) for t in PAPER_ROW_SHAPES}
        ranks = {t: (min(r[0], 4), min(r[1], 4)) for t, r in PLANTED_RANKS.items()}
        kwargs.setdefault("col_shape", (2, 2, 2))
        return cls(cardinalities=cards, row_shapes=shapes, ranks=ranks, seed=seed, **kwargs)

    @property
    def num_tables(self):
        return len(self.cardinalities)

    @property
    def planted_tables(self):
        """The tables whose true embeddings are planted TTM tensors, in order."""
        return sorted(self.layouts)

    def embeddings(self, table, ids):
        """The true embeddings of ``ids`` in a planted table, gathered from its cores: ``(n, D)`` float64."""
        if table not in self.layouts:
            raise ValueError(f"table must be a planted table {self.planted_tables}, got {table!r}")
        return self.layouts[table].rows(self.factors[table], _as_index(ids, "ids"))

    def categories(self, table, u):
        """Category ids of uniforms ``u`` in ``table``: a power-law rank, then the ids' order (``id_order``)."""
        n = self.cardinalities[table]
        s = self.zipf
        if abs(s - 1.0) < 1e-9:
            r = torch.exp(u * math.log(n + 1.0))
        else:
            top = (n + 1.0) ** (1.0 - s)
            r = (1.0 + u * (top - 1.0)) ** (1.0 / (1.0 - s))
        rank = (r.floor().long() - 1).clamp_(0, n - 1)
        if self.id_order == "frequency":
            return rank
        return (rank * self.multipliers[table] + self.shifts[table]) % n

    def frequency_ranks(self, table, ids):
        """
        The frequency rank of category ``ids`` in ``table`` (0 for the most frequent): the inverse
        of :meth:`categories`' numbering, the ids themselves with ``id_order="frequency"``.

        :param int table: a categorical feature's position.
        :param ids: int64 category ids of that table.
        """
        if not (isinstance(table, int) and 0 <= table < self.num_tables):
            raise ValueError(f"table must be an int in [0, {self.num_tables}), got {table!r}")
        ids = torch.as_tensor(ids)
        if ids.dtype != torch.int64:
            raise TypeError(f"ids must be int64 category ids, got dtype {ids.dtype}")
        n = self.cardinalities[table]
        if ids.numel() and (ids.min() < 0 or ids.max() >= n):
            raise ValueError(
                f"ids must be category ids of table {table}, in [0, {n}), "
                f"got values in [{int(ids.min())}, {int(ids.max())}]"
            )
        if self.id_order == "frequency":
            return ids
        inverse = pow(self.multipliers[table], -1, n)
        return ((ids - self.shifts[table]) % n) * inverse % n

    def logits(self, dense, sparse, interactions=True):
        """
        The true logit of every example, float64 ``(n,)``.

        :param bool interactions: include the planted tables' pairwise dot products; without
            them, the logit is what a learner knows that has learned everything but those.
        """
        self._check_batch(dense, sparse)
        dense = dense.double()
        logit = self.bias + dense @ self.dense_weight
        embedded = {t: self.embeddings(t, sparse[:, t]) for t in self.planted_tables}
        for t, a in self.main.items():
            logit = logit + embedded[t] @ a
        tables = self.planted_tables if interactions else []
        for i, s in enumerate(tables):
            for t in tables[i + 1 :]:
                logit = logit + (embedded[s] * embedded[t]).sum(-1)
        for t in self.small:
            logit = logit + self.effects[t][sparse[:, t]]
        return logit

    def _check_batch(self, dense, sparse):
        """``dense`` float ``(n, num_dense)`` and ``sparse`` integer ``(n, num_tables)`` ids in range."""
        if not isinstance(dense, torch.Tensor) or not dense.is_floating_point():
            raise TypeError(f"dense must be a floating point tensor (n, {self.num_dense}), got {_describe(dense)}")
        if not isinstance(sparse, torch.Tensor) or sparse.is_floating_point() or sparse.dtype == torch.bool:
            raise TypeError(f"sparse must be an integer tensor (n, {self.num_tables}) of ids, got {_describe(sparse)}")
        if dense.dim() != 2 or dense.shape[1] != self.num_dense:
            raise ValueError(f"dense must have shape (n, {self.num_dense}), got {tuple(dense.shape)}")
        if sparse.shape != (len(dense), self.num_tables):
            raise ValueError(f"sparse must have shape ({len(dense)}, {self.num_tables}), got {tuple(sparse.shape)}")
        bad = (sparse < 0) | (sparse >= sparse.new_tensor(self.cardinalities))
        if bad.any():
            t = int(bad.any(0).nonzero()[0])
            raise ValueError(
                f"sparse[:, {t}] must hold category ids of table {t}, in [0, {self.cardinalities[t]}), "
                f"got values in [{int(sparse[:, t].min())}, {int(sparse[:, t].max())}]"
            )

    def sample(self, index, stream="train"):
        """
        The examples of ``index`` (int64 ``(n,)``) in a stream: ``(dense, sparse, clicks, prob)``
        with dense features ``(n, num_dense)`` float32, categories ``(n, num_tables)`` int64,
        clicks ``(n,)`` float32 in {0, 1} and the true click probabilities ``(n,)`` float64.
        """
        key = _mix32(torch.tensor((self.seed * 1000003 + _stream_id(stream)) & _MASK32, dtype=torch.int64)).item()
        index = _as_index(index, "index")
        d, t = self.num_dense, self.num_tables
        u = _uniforms(index, key, 2 * d + t + 1)
        r = torch.sqrt(-2.0 * torch.log(u[:, :d]))
        dense = r * torch.cos(2 * math.pi * u[:, d : 2 * d])  # Box-Muller
        sparse = torch.stack([self.categories(k, u[:, 2 * d + k]) for k in range(t)], dim=1)
        prob = torch.sigmoid(self.logits(dense, sparse))
        clicks = (u[:, -1] < prob).float()
        return dense.float(), sparse, clicks, prob

    def stream(self, num_samples, stream="train"):
        """A :class:`ClickStream` of ``num_samples`` examples."""
        return ClickStream(self, num_samples, stream)

    def bayes_optimal(self, stream, batch_size=65536):
        """
        What the true probabilities achieve on a stream: ``{"accuracy": E[max(p, 1-p)]`` (the
        Bayes-optimal accuracy, estimated), ``"realized_accuracy"`` (of ``p > 1/2`` on the drawn
        clicks), ``"auc"`` (of ``p``), ``"click_rate"``, ``"accuracy_without_interactions"``}:
        the last is the expected accuracy of deciding by the true logit without the planted
        tables' pairwise interactions (:meth:`logits` with ``interactions=False``), the floor of a
        learner that has learned everything else.
        """
        if not isinstance(stream, ClickStream):
            raise TypeError(f"stream must be a ClickStream (ClickGenerator.stream), got {type(stream).__name__}")
        check_int(batch_size, "batch_size")
        expected, floor, hits, count, clicks, probs, labels = 0.0, 0.0, 0.0, 0, 0.0, [], []
        for start in range(0, len(stream), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(stream)))
            dense, sparse, y, p = self.sample(idx, stream.stream)
            expected += torch.maximum(p, 1 - p).sum().item()
            floor += expected_accuracy(self.logits(dense, sparse, interactions=False), p) * len(idx)
            hits += ((p > 0.5).float() == y).sum().item()
            clicks += y.sum().item()
            count += len(idx)
            probs.append(p.float())
            labels.append(y)
        return {
            "accuracy": expected / count,
            "realized_accuracy": hits / count,
            "auc": auc(torch.cat(probs), torch.cat(labels)),
            "click_rate": clicks / count,
            "accuracy_without_interactions": floor / count,
        }


def _describe(value):
    return f"dtype {value.dtype}" if isinstance(value, torch.Tensor) else type(value).__name__


def _stream_id(stream):
    if isinstance(stream, int) and not isinstance(stream, bool) and stream >= 0:
        return stream + len(_STREAMS)
    if stream not in _STREAMS:
        raise ValueError(f"stream must be one of {sorted(_STREAMS)} or a non-negative int, got {stream!r}")
    return _STREAMS[stream]


def expected_hits(logits, prob):
    """Per example, the probability that deciding "click" where ``logits > 0`` is right, clicks
    drawn with probability ``prob``: ``prob`` where ``logits > 0``, else ``1 - prob``."""
    if logits.shape != prob.shape:
        raise ValueError(f"logits and prob must have the same shape, got {tuple(logits.shape)} and {tuple(prob.shape)}")
    return torch.where(logits > 0, prob, 1 - prob)


def expected_accuracy(logits, prob):
    """The accuracy expected of deciding "click" where ``logits > 0``, clicks drawn with
    probability ``prob``: the mean of :func:`expected_hits`."""
    return expected_hits(logits, prob).double().mean().item()


def auc(scores, labels):
    """The area under the ROC curve of ``scores`` for binary ``labels`` (ties averaged), by ranks."""
    scores, labels = scores.reshape(-1).double(), labels.reshape(-1).double()
    if scores.shape != labels.shape:
        raise ValueError(f"scores and labels must have as many entries, got {len(scores)} and {len(labels)}")
    if not torch.isfinite(scores).all():
        raise ValueError("scores must be finite")
    if ((labels != 0) & (labels != 1)).any():
        raise ValueError("labels must be binary, 0 or 1")
    order = torch.argsort(scores)
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    uniq, inverse, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    if len(uniq) < len(scores):  # average the ranks of ties
        sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, ranks)
        ranks = (sums / counts)[inverse]
    pos = labels.sum()
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    return ((ranks[labels > 0.5].sum() - pos * (pos + 1) / 2) / (pos * neg)).item()


class ClickStream(torch.utils.data.Dataset):
    """
    ``num_samples`` examples of a :class:`ClickGenerator`'s log, generated on demand: indexing
    with an int, a slice, a list or a tensor of indices returns ``(dense, sparse, clicks)`` for
    them (a batch), the same whatever the order or the batch they are asked in.

    Usage::

        train = ClickGenerator.tiny().stream(10_000)
        loader = train.loader(256, shuffle=True, seed=0)     # a DataLoader of batches, for tb.fit
        dense, sparse, clicks = train[0:256]

    :param generator: the :class:`ClickGenerator`.
    :param int num_samples: the examples in the stream.
    :param stream: "train", "test", "valid" or an int: streams with different names are
        independent draws from the same truth.
    """

    def __init__(self, generator, num_samples, stream="train"):
        if not isinstance(generator, ClickGenerator):
            raise TypeError(f"generator must be a ClickGenerator, got {type(generator).__name__}")
        self.generator = generator
        self.num_samples = check_int(num_samples, "num_samples")
        _stream_id(stream)
        self.stream = stream

    def __len__(self):
        return self.num_samples

    def _index(self, key):
        if isinstance(key, slice):
            return torch.arange(*key.indices(self.num_samples))
        index = _as_index(key, "index")
        if index.numel() and (index.min() < -self.num_samples or index.max() >= self.num_samples):
            raise IndexError(
                f"index must lie in [0, {self.num_samples}), got values in [{int(index.min())}, {int(index.max())}]"
            )
        return index % self.num_samples

    def __getitem__(self, key):
        dense, sparse, clicks, _ = self.generator.sample(self._index(key), self.stream)
        return dense, sparse, clicks

    def batches(self, batch_size):
        """Consecutive minibatches ``(dense, sparse, clicks)`` of ``batch_size`` (the last may be smaller)."""
        check_int(batch_size, "batch_size")
        for start in range(0, self.num_samples, batch_size):
            yield self[start : min(start + batch_size, self.num_samples)]

    def loader(self, batch_size, shuffle=False, seed=0, drop_last=False):
        """
        A :class:`torch.utils.data.DataLoader` of minibatches (``len(loader.dataset)`` is the
        number of examples, as :func:`tensorbayes.fit` needs): each batch is generated at once.

        :param int batch_size: examples per batch.
        :param bool shuffle: visit the examples in a random order (seeded by ``seed``).
        """
        check_int(batch_size, "batch_size")
        check_int(seed, "seed", low=0)
        if shuffle:
            sampler = torch.utils.data.RandomSampler(self, generator=torch.Generator().manual_seed(seed))
        else:
            sampler = torch.utils.data.SequentialSampler(self)
        batches = torch.utils.data.BatchSampler(sampler, batch_size, drop_last)
        return torch.utils.data.DataLoader(self, sampler=batches, batch_size=None, collate_fn=_as_tuple)


def _as_tuple(batch):
    return tuple(batch)
