"""Kept for the tests that import it from here: :func:`tiny_dlrm` lives in :mod:`tests.common`."""

from tests.common import tiny_dlrm

__all__ = ["tiny_dlrm"]
