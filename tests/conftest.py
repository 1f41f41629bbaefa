"""
Shared test setup, in Pyro's style: every test starts from an empty param store, with Pyro's
validation on and every random number generator seeded.

Tests run on one intra-op thread (restored afterwards): the tensors here are small, the suite
runs on two pytest-xdist workers on two cores, and thread hand-offs, not arithmetic, would
dominate (a Tucker recovery took 45-163 s on two threads of a busy machine, 2 s on one).

The default dtype is left alone: tests that check exactness opt into float64 themselves
(``dtype=torch.float64`` on the tensors they make).
"""

import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def fresh_pyro():
    """Clear Pyro's param store, enable validation, seed torch, numpy and random with 0, one thread."""
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    pyro.clear_param_store()
