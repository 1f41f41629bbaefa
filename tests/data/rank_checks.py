"""Kept for the tests that import them from here: the checks live in :mod:`tests.common`."""

from tests.common import MIN_RATIO, ZERO, assert_rank, unfolding

__all__ = ["MIN_RATIO", "ZERO", "assert_rank", "unfolding"]
