import os
import sys

import pytest
import torch as th

# One thread per test process: the 2-core CI machine runs two pytest workers, and PyTorch's default of one thread
# per core collapses when anything else runs (ecosystem.md).
th.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")
# MuJoCo picks its rendering backend when first imported. The pixel envs default it to headless EGL, but only if they
# make the first MuJoCo env of the process; with tests in any order, a state-based MuJoCo env made by an earlier test
# would leave MuJoCo on its display backend and the pixel tests would abort. The same default, set before any test.
if sys.platform.startswith("linux"):
    os.environ.setdefault("MUJOCO_GL", "egl")

# Property-based tests draw the same examples on every run and machine, so a failure reproduces (and no example
# database carries state from one run to the next). HYPOTHESIS_PROFILE=random explores new examples instead.
try:
    from hypothesis import settings
except ImportError:  # hypothesis is a dev dependency; only tests/test_properties.py needs it
    pass
else:
    settings.register_profile("derandomized", derandomize=True, database=None, print_blob=True)
    settings.register_profile("random", derandomize=False, print_blob=True)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "derandomized"))

# Tiny networks keep smoke tests fast; architecture tests build the paper's sizes explicitly.
SMALL = dict(net_arch=[32, 32])


@pytest.fixture
def small_policy_kwargs():
    return dict(SMALL)


# Tests that take a `device` argument run on every available device; benchmarks/gpu_check.sh selects "on_cuda"
DEVICES = ["cpu", *(["cuda"] if th.cuda.is_available() else [])]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", DEVICES, ids=[f"on_{device}" for device in DEVICES])
