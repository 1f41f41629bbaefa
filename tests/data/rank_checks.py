"""Checks shared by the data tests: the rank of an unfolding, read from its singular values."""

import math

import torch

# The planted rank of a bond must be attained, with a smallest singular value that is not
# negligible (the generators promise 5 % of the largest), and no more.
MIN_RATIO = 0.05
ZERO = 1e-10


def unfolding(tensor, row_modes):
    """The matricization with ``row_modes`` as rows and the other modes as columns."""
    cols = [k for k in range(tensor.dim()) if k not in row_modes]
    rows = math.prod(tensor.shape[k] for k in row_modes)
    return tensor.permute(*row_modes, *cols).reshape(rows, -1)


def assert_rank(matrix, rank):
    s = torch.linalg.svdvals(matrix)
    assert len(s) >= rank
    assert s[rank - 1] >= MIN_RATIO * s[0], f"rank {rank} is barely attained: {s / s[0]}"
    if len(s) > rank:
        assert s[rank] <= ZERO * s[0], f"rank exceeds {rank}: {s / s[0]}"
