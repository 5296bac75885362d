import os

import pytest
import torch as th

# One thread per test process: the 2-core CI machine runs two pytest workers, and PyTorch's default of one thread
# per core collapses when anything else runs (ecosystem.md).
th.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Tiny networks keep smoke tests fast; architecture tests build the paper's sizes explicitly.
SMALL = dict(net_arch=[32, 32])


@pytest.fixture
def small_policy_kwargs():
    return dict(SMALL)
