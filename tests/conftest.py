"""
Shared test setup, in Pyro's style: every test starts from an empty param store, with Pyro's
validation on and every random number generator seeded.

The default dtype is left alone: tests that check exactness opt into float64 themselves
(``dtype=torch.float64`` on the tensors they make).
"""

import pyro
import pytest


@pytest.fixture(autouse=True)
def fresh_pyro():
    """Clear Pyro's param store, enable validation and seed torch, numpy and random with 0."""
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()
