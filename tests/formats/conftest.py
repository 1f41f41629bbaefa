"""
Shared setup of the format tests: every test starts from the same random seed, and runs on
one intra-op thread (restored afterwards): the tensors here are tiny, and on a busy machine
thread hand-offs, not arithmetic, would dominate the run time.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
