"""
The paper's presets: the numbers of the paper's DLRM setting (docs/method.md, "The paper's DLRM
setting"), in one place.

A leaf of the package (it imports nothing of it), so that the models
(:class:`~tensorbayes.models.DLRM`) and the synthetic data (:class:`~tensorbayes.data.ClickGenerator`)
read the same numbers without one importing the other. Both modules still offer these names
(``tensorbayes.data.clicks.PAPER_ROW_SHAPES``, ``tensorbayes.models.dlrm.PAPER_PRESET``, ...).

- :data:`CRITEO_KAGGLE_CARDINALITIES`: the rows of Criteo Kaggle's 26 categorical tables;
- :data:`PAPER_ROW_SHAPES`, :data:`PAPER_COL_SHAPE`: how the paper factors the five large ones;
- :data:`PAPER_PRESET`: the settings of :meth:`DLRM.paper_preset <tensorbayes.models.DLRM.paper_preset>`.
"""

__all__ = ["CRITEO_KAGGLE_CARDINALITIES", "PAPER_COL_SHAPE", "PAPER_PRESET", "PAPER_ROW_SHAPES"]

#: Criteo Kaggle's 26 categorical cardinalities (DLRM reference code, ``--data-set=kaggle``).
CRITEO_KAGGLE_CARDINALITIES = (
    1460,
    583,
    10131227,
    2202608,
    305,
    24,
    12517,
    633,
    3,
    93145,
    5683,
    8351593,
    3194,
    27,
    14992,
    5461306,
    10,
    5652,
    2173,
    4,
    7046547,
    18,
    15,
    286181,
    105,
    142572,
)

#: The row shapes of the five large tables (by feature position, 0-based), as the paper factors
#: them (docs/method.md, "The paper's DLRM setting").
PAPER_ROW_SHAPES = {
    2: (200, 220, 250),
    3: (125, 130, 136),
    11: (200, 200, 209),
    15: (166, 175, 188),
    20: (200, 200, 200),
}

#: The column shape of every tensorized table: 128 = 4 x 4 x 8.
PAPER_COL_SHAPE = (4, 4, 8)

#: The paper's DLRM setting (docs/method.md, "The paper's DLRM setting"), as keyword arguments of
#: :class:`~tensorbayes.models.DLRM`: the five large Criteo Kaggle tables as TTM at max rank 16,
#: rows factored as the paper factors them, 128 columns as 4 x 4 x 8; the others dense.
PAPER_PRESET = {
    "embedding_dim": 128,
    "format": "ttm",
    "max_rank": 16,
    "prior": "half_cauchy",
    "tensorize_min_rows": None,
    "tables": {t: {"row_shape": shape, "col_shape": PAPER_COL_SHAPE} for t, shape in PAPER_ROW_SHAPES.items()},
}
