"""
A DLRM-style click-through model whose large embedding tables are low-rank tensors.

:class:`DLRMNet` is the network of Naumov et al.'s deep learning recommendation model as a
plain :class:`torch.nn.Module`: the dense features go through a bottom MLP to a vector of the
embedding width, every categorical feature is looked up in its own embedding bag, the pairwise
dot products of all these vectors (the "dot" interaction) are concatenated with the bottom
vector, and a top MLP maps them to one click logit. Its tables may be any modules with the
call signature of :class:`torch.nn.EmbeddingBag` (``table(input, offsets=None)``), so the same
class is the dense baseline (plain :class:`torch.nn.EmbeddingBag` tables) and, inside
:class:`DLRM`, the tensorized network.

:class:`DLRM` is the Bayesian model (docs/method.md, "Models"): its large tables are
:class:`~.embedding_bag.TensorizedEmbeddingBag` s with rank-shrinkage priors, the rest plain
embedding bags and MLPs fitted as point estimates, and the clicks are Bernoulli under a
subsampled data plate, so the minibatch ELBO is the full-data ELBO (as
:class:`~.networks.BayesianClassifier`). Which tables are tensorized, in which format and at
which max rank is the user's choice (``tensorize_min_rows``, ``format``, ``max_rank`` and
per-table overrides ``tables=``); :data:`PAPER_PRESET` and :meth:`DLRM.paper_preset` give the
paper's setting: the five large Criteo Kaggle tables as TTM, max rank 16, width 128 = 4 x 4 x 8
(the numbers are those of :mod:`tensorbayes.presets`, which the synthetic click log reads too).

:meth:`DLRM.export` is the model's plain-torch export (a :class:`DLRMNet`), and what
:func:`tensorbayes.export` returns for a DLRM.

The sample sites are ``net.C<k>.weight.factor<i>`` and ``net.C<k>.weight.lambda<b>`` for the
tensorized table of categorical feature ``k`` (1-based, as Criteo names them ``C1..C26``).
"""

import copy
from numbers import Integral

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from ..checks import check_int
from ..presets import CRITEO_KAGGLE_CARDINALITIES, PAPER_PRESET
from .embedding_bag import TensorizedEmbeddingBag, check_mode
from .layers import check_init_variance
from .networks import check_num_data

__all__ = ["DLRM", "DLRMNet", "PAPER_PRESET", "mlp"]

_TABLE_KEYS = ("dense", "format", "max_rank", "prior", "prior_kwargs", "row_shape", "col_shape")


def _check_sizes(sizes, name):
    try:
        sizes = tuple(sizes)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of positive ints, got {sizes!r}") from None
    if any(isinstance(s, bool) or not isinstance(s, Integral) or s < 1 for s in sizes):
        raise ValueError(f"{name} must be a sequence of positive ints, got {sizes!r}")
    return tuple(int(s) for s in sizes)


def mlp(sizes, final_relu=True):
    """A plain :class:`torch.nn.Sequential` of Linear layers with ReLU between them (and after the last one
    if ``final_relu``): ``sizes = (in, hidden..., out)``."""
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if final_relu or i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


class DLRMNet(torch.nn.Module):
    """
    The DLRM network: ``logit = top([b, dots(b, e_1, ..., e_T)])`` with ``b = bottom(dense)`` and
    ``e_t = tables[t](sparse[:, t])``.

    Usage::

        tables = [torch.nn.EmbeddingBag(n, 16, mode="sum") for n in (100, 1000, 50)]
        net = DLRMNet(tables, num_dense=13, bottom=(64,), top=(64,))
        logits = net(dense, sparse)          # dense (B, 13) float, sparse (B, 3) int64

    :param list tables: one module per categorical feature, called as ``table(input, offsets=None)``
        (a 2-d input of bags of fixed length) returning ``(B, embedding_dim)``; each must have
        ``embedding_dim`` and ``num_embeddings`` attributes, the same width for all.
    :param int num_dense: dense features.
    :param tuple bottom: hidden widths of the bottom MLP (its output is the embedding width).
    :param tuple top: hidden widths of the top MLP (its output is one logit).
    """

    def __init__(self, tables, num_dense=13, bottom=(256,), top=(256, 64)):
        super().__init__()
        tables = list(tables)
        if not tables:
            raise ValueError("tables must hold at least one embedding table")
        widths = {getattr(t, "embedding_dim", None) for t in tables}
        if len(widths) != 1 or None in widths:
            raise ValueError(f"tables must all have the same embedding_dim attribute, got {sorted(map(str, widths))}")
        self.embedding_dim = widths.pop()
        self.num_dense = check_int(num_dense, "num_dense")
        self.table_names = [f"C{t + 1}" for t in range(len(tables))]
        for name, table in zip(self.table_names, tables):
            setattr(self, name, table)
        self.bottom = mlp((self.num_dense,) + _check_sizes(bottom, "bottom") + (self.embedding_dim,))
        features = len(tables) + 1
        rows, cols = torch.tril_indices(features, features, offset=-1)
        self.register_buffer("pairs", torch.stack([rows, cols]), persistent=False)
        self.top = mlp(
            (self.embedding_dim + features * (features - 1) // 2,) + _check_sizes(top, "top") + (1,), final_relu=False
        )

    @property
    def cardinalities(self):
        return tuple(getattr(self, name).num_embeddings for name in self.table_names)

    def tables(self):
        """``(name, table)`` of every categorical feature, in order."""
        return [(name, getattr(self, name)) for name in self.table_names]

    def forward(self, dense, sparse):
        """
        :param torch.Tensor dense: ``(B, num_dense)`` floating point.
        :param torch.Tensor sparse: ``(B, T)`` category ids (one per feature) or ``(B, T, L)``
            bags of ``L`` ids per feature, int64 or int32.
        :returns: the click logits ``(B,)``.
        """
        tables = len(self.table_names)
        if dense.dim() != 2 or dense.shape[1] != self.num_dense:
            raise ValueError(f"dense must have shape (batch, num_dense={self.num_dense}), got {tuple(dense.shape)}")
        if sparse.dim() not in (2, 3) or sparse.shape[:2] != (dense.shape[0], tables):
            raise ValueError(
                f"sparse must have shape (batch={dense.shape[0]}, tables={tables}) or (batch, tables, bag length), "
                f"got {tuple(sparse.shape)}"
            )
        b = self.bottom(dense)
        vectors = [b]
        for t, (_, table) in enumerate(self.tables()):
            bag = sparse[:, t, :] if sparse.dim() == 3 else sparse[:, t : t + 1]
            vectors.append(table(bag).to(b.dtype))
        z = torch.stack(vectors, dim=1)  # (B, F, D)
        dots = torch.bmm(z, z.transpose(1, 2))[:, self.pairs[0], self.pairs[1]]
        return self.top(torch.cat([b, dots], dim=1)).squeeze(-1)


def _table_options(tables, num_tables):
    if tables is None:
        return {}
    if not isinstance(tables, dict):
        raise TypeError(f"tables must be a dict {{feature index: options}}, got {type(tables).__name__}")
    out = {}
    for t, opts in tables.items():
        if isinstance(t, bool) or not isinstance(t, Integral) or not 0 <= t < num_tables:
            raise ValueError(f"tables must be keyed by feature indices in [0, {num_tables}), got {t!r}")
        if not isinstance(opts, dict) or set(opts) - set(_TABLE_KEYS):
            raise ValueError(f"tables[{t}] must be a dict with keys among {_TABLE_KEYS}, got {opts!r}")
        out[int(t)] = dict(opts)
    return out


class DLRM(PyroModule):
    """
    ``clicks[n] ~ Bernoulli(logits=net(dense, sparse)[n])`` for a DLRM network whose large
    embedding tables are low-rank tensors with rank priors.

    Called without clicks it samples them; either way it returns the click probabilities.

    Usage::

        model = DLRM.paper_preset()                        # Criteo Kaggle, five TTM tables
        model = DLRM(cardinalities, embedding_dim=16, tensorize_min_rows=10_000, format="tt", max_rank=8,
                     tables={2: {"max_rank": 16}, 5: {"dense": True}})
        guide = tb.guides.MeanField(model)
        tb.fit(model, guide, (dense, sparse, clicks), epochs=1, batch_size=1024, init="none")

    :param tuple cardinalities: rows of every categorical table.
    :param int num_dense: dense features.
    :param int embedding_dim: the width of every table (and of the bottom MLP's output).
    :param tuple bottom: hidden widths of the bottom MLP.
    :param tuple top: hidden widths of the top MLP.
    :param int tensorize_min_rows: tables with at least this many rows are tensorized
        (``None``: only those named in ``tables``).
    :param str format: the format of the tensorized tables ("cp", "tucker", "tt", "ttm").
    :param max_rank: their max rank (an int or one per bond).
    :param prior: their hyperprior on λ.
    :param dict prior_kwargs: its hyperparameters.
    :param dict tables: per-table overrides ``{feature index (0-based): options}``, options among
        ``format``, ``max_rank``, ``prior``, ``prior_kwargs``, ``row_shape``, ``col_shape`` (a table
        named here is tensorized) or ``{"dense": True}`` (kept dense whatever its size).
    :param tuple col_shape: the column modes of every tensorized table (default: factored).
    :param str mode: the bags' reduction, "sum" or "mean".
    :param float init_variance: the variance of the initial table entries, dense tables and the
        guide's tensorized ones alike (default ``1 / embedding_dim``, so that the initial dot
        products have unit scale).
    :param bool sparse: give the dense tables sparse gradients, which :func:`tensorbayes.fit`
        steps with :class:`torch.optim.SparseAdam` (large tables: a dense Adam step would touch
        every row of every table at every step).
    """

    def __init__(
        self,
        cardinalities,
        num_dense=13,
        embedding_dim=128,
        bottom=(256,),
        top=(256, 64),
        *,
        tensorize_min_rows=1_000_000,
        format="ttm",
        max_rank=16,
        prior="half_cauchy",
        prior_kwargs=None,
        tables=None,
        col_shape=None,
        mode="sum",
        sparse=False,
        init_variance=None,
    ):
        super().__init__()
        cardinalities = _check_sizes(cardinalities, "cardinalities")
        if not cardinalities:
            raise ValueError("cardinalities must name at least one table")
        if tensorize_min_rows is not None:
            check_int(tensorize_min_rows, "tensorize_min_rows")
        if not isinstance(sparse, bool):
            raise TypeError(f"sparse must be a bool (sparse gradients for the dense tables), got {sparse!r}")
        options = _table_options(tables, len(cardinalities))
        embedding_dim = check_int(embedding_dim, "embedding_dim")
        init_variance = check_init_variance(init_variance, 1.0 / embedding_dim)
        check_mode(mode)
        built = []
        for t, rows in enumerate(cardinalities):
            opts = options.get(t, {})
            big = t in options or (tensorize_min_rows is not None and rows >= tensorize_min_rows)
            if opts.get("dense") or not big:
                built.append(torch.nn.EmbeddingBag(rows, embedding_dim, mode=mode, sparse=sparse))
                torch.nn.init.normal_(built[-1].weight, std=init_variance**0.5)
                continue
            built.append(
                TensorizedEmbeddingBag(
                    rows,
                    embedding_dim,
                    format=opts.get("format", format),
                    max_rank=opts.get("max_rank", max_rank),
                    prior=opts.get("prior", prior),
                    mode=mode,
                    prior_kwargs=opts.get("prior_kwargs", prior_kwargs),
                    row_shape=opts.get("row_shape"),
                    col_shape=opts.get("col_shape", col_shape),
                    init_variance=init_variance,
                )
            )
        self.net = PyroModule[DLRMNet](built, num_dense, bottom, top)
        self.cardinalities = cardinalities
        self.num_dense = self.net.num_dense
        self.bottom_sizes, self.top_sizes = _check_sizes(bottom, "bottom"), _check_sizes(top, "top")

    @classmethod
    def paper_preset(cls, cardinalities=CRITEO_KAGGLE_CARDINALITIES, **overrides):
        """
        The paper's DLRM (:data:`PAPER_PRESET`): the five large Criteo Kaggle tables (features
        3, 4, 12, 16, 21) as TTM at max rank 16 with the paper's row shapes, 128 columns as 4 x 4
        x 8, the others dense. Cardinalities smaller than a row shape's product are padded.

        :param tuple cardinalities: the 26 table sizes (default Criteo Kaggle's).
        :param overrides: any other argument of :class:`DLRM` (e.g. ``max_rank=8``, ``bottom=``).
        """
        kwargs = {**PAPER_PRESET, **overrides}
        return cls(cardinalities, **kwargs)

    @torch.no_grad()
    def export(self, guide):
        """
        The network as a plain, deterministic :class:`DLRMNet` (no Pyro in it) at the guide's
        posterior-mean factors: tensorized tables become
        :class:`~.embedding_bag.CompactEmbeddingBag` s at the ranks they have now (call
        :func:`tensorbayes.prune` first), the other tables and the MLPs are copied.
        ``tb.export(model, guide)`` is this method.

        :param guide: anything with ``factor_means(tensor)``, e.g. :class:`~tensorbayes.guides.MeanField`.
        :returns: a :class:`DLRMNet` returning click logits.
        """
        tables = []
        for _, table in self.net.tables():
            if isinstance(table, TensorizedEmbeddingBag):
                tables.append(table.export(guide))
            else:
                tables.append(copy.deepcopy(table))
        net = DLRMNet(tables, self.num_dense, self.bottom_sizes, self.top_sizes)
        net.bottom.load_state_dict(self.net.bottom.state_dict())
        net.top.load_state_dict(self.net.top.state_dict())
        like = next(self.net.bottom.parameters())
        return net.to(device=like.device, dtype=like.dtype)

    def tensorized_tables(self):
        """``{name: table}`` of the tensorized tables."""
        return {name: t for name, t in self.net.tables() if isinstance(t, TensorizedEmbeddingBag)}

    def _check_inputs(self, dense, sparse):
        if not isinstance(dense, torch.Tensor) or not dense.is_floating_point():
            got = dense.dtype if isinstance(dense, torch.Tensor) else type(dense).__name__
            raise TypeError(f"dense must be a floating point torch.Tensor, got {got}")
        if dense.dim() != 2 or dense.shape[1] != self.num_dense or dense.shape[0] == 0:
            raise ValueError(f"dense must have shape (batch, num_dense={self.num_dense}), got {tuple(dense.shape)}")
        if not isinstance(sparse, torch.Tensor) or sparse.dtype not in (torch.int64, torch.int32):
            got = sparse.dtype if isinstance(sparse, torch.Tensor) else type(sparse).__name__
            raise TypeError(f"sparse must be an integer torch.Tensor (int64 or int32) of category ids, got {got}")
        tables = len(self.cardinalities)
        if sparse.dim() not in (2, 3) or sparse.shape[:2] != (dense.shape[0], tables):
            raise ValueError(
                f"sparse must have shape (batch={dense.shape[0]}, tables={tables}) or (batch, tables, bag length), "
                f"got {tuple(sparse.shape)}"
            )
        if sparse.dim() == 3 and sparse.shape[2] == 0:
            raise ValueError(f"sparse must have bags of at least one id, got a bag length of 0: {tuple(sparse.shape)}")

    def _check_clicks(self, y, batch):
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"y must be a torch.Tensor of clicks (0 or 1), got {type(y).__name__}")
        if y.shape != (batch,):
            raise ValueError(f"y must have shape ({batch},), one click per example, got {tuple(y.shape)}")
        if y.dtype == torch.bool or not y.is_floating_point():
            y = y.to(torch.get_default_dtype())
        if not ((y == 0) | (y == 1)).all():
            raise ValueError("y must hold clicks 0 or 1 (no other values, no NaN)")
        return y

    def check_data(self, dense, sparse, y=None):
        """Validate a whole data set; returns ``(dense, sparse, y)`` (clicks as floats)."""
        dense, sparse = torch.as_tensor(dense), torch.as_tensor(sparse)
        self._check_inputs(dense, sparse)
        if not torch.isfinite(dense).all():
            raise ValueError("dense must be finite: found NaN or infinite values")
        sizes = torch.tensor(self.cardinalities, device=sparse.device).view(1, -1, *([1] * (sparse.dim() - 2)))
        if (sparse < 0).any() or (sparse >= sizes).any():
            bad = int(
                ((sparse < 0) | (sparse >= sizes))
                .reshape(sparse.shape[0], sparse.shape[1], -1)
                .any(-1)
                .any(0)
                .nonzero()[0]
            )
            raise ValueError(f"sparse[:, {bad}] must hold ids in [0, {self.cardinalities[bad]}) (table C{bad + 1})")
        if y is not None:
            y = self._check_clicks(torch.as_tensor(y), dense.shape[0])
        return dense, sparse, y

    def forward(self, dense, sparse, y=None, *, num_data=None):
        """
        :param torch.Tensor dense: ``(batch, num_dense)`` floating point (taken in the model's dtype,
            so that float64 features go into a float32 model and float32 ones into a float64 one).
        :param torch.Tensor sparse: ``(batch, tables)`` or ``(batch, tables, L)`` category ids.
        :param torch.Tensor y: clicks ``(batch,)`` in {0, 1} (float, int or bool), or ``None`` to sample them.
        :param int num_data: the size of the data set the batch was drawn from (default: the
            batch); it scales the likelihood by ``num_data / batch``.
        :returns: the click probabilities ``sigmoid(net(dense, sparse))``, ``(batch,)``.
        """
        self._check_inputs(dense, sparse)
        dense = dense.to(self.net.bottom[0].weight.dtype)  # a no-op when they agree (torch's Linear refuses a mix)
        batch = dense.shape[0]
        if y is not None:
            y = self._check_clicks(y, batch).to(dense.dtype)
        size = check_num_data(num_data, batch)
        logits = self.net(dense, sparse)
        with pyro.plate("data", size=size, subsample=torch.arange(batch, device=logits.device)):
            pyro.sample("obs", dist.Bernoulli(logits=logits), obs=y)
        return torch.sigmoid(logits)

    def num_dense_params(self):
        """The parameters the model would hold with every table dense (the tensorized ones at full size)."""
        tables = sum(n * self.net.embedding_dim for n in self.cardinalities)
        plain = sum(p.numel() for name, p in self.named_parameters())
        dense_tables = sum(t.weight.numel() for _, t in self.net.tables() if isinstance(t, torch.nn.EmbeddingBag))
        return tables + plain - dense_tables
