"""Kept for the tests that import them from here: the helpers live in :mod:`tests.common`."""

from tests.common import EMBEDDED_CASES, embed, embedded_completion

__all__ = ["EMBEDDED_CASES", "embed", "embedded_completion"]
