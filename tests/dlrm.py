"""Shared by the DLRM tests: a tiny DLRM over the tiny synthetic click log."""

from tensorbayes.data.clicks import ClickGenerator
from tensorbayes.models.dlrm import DLRM


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
