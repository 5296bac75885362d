import os
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces

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

# Tiny networks keep tests fast (two widths: a transposed weight cannot go unnoticed); architecture and learning tests
# build the paper's sizes explicitly.
SMALL = dict(net_arch=[16, 12])
# The paper's pixel observations: 3 RGB frames of 64x64 (Lillicrap et al. 2016, sec. 7)
IMAGES = spaces.Box(0, 255, (9, 64, 64), np.uint8)


class RandomEnv(gym.Env):
    """
    Observations drawn at random from any space (reproducible after ``reset(seed=...)``), reward ``-|a|^2``; with
    ``max_steps``, episodes are truncated after that many steps. The default spaces: Box(3) observations, Box(1) actions.
    """

    def __init__(
        self,
        observation_space: spaces.Space | None = None,
        action_space: spaces.Space | None = None,
        max_steps: int | None = None,
    ):
        self.observation_space = spaces.Box(-1, 1, (3,), np.float32) if observation_space is None else observation_space
        self.action_space = spaces.Box(-1, 1, (1,), np.float32) if action_space is None else action_space
        self.max_steps = max_steps
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self.observation_space.seed(seed)
        self.t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self.t += 1
        truncated = self.max_steps is not None and self.t >= self.max_steps
        return self.observation_space.sample(), -float(np.square(action).sum()), False, truncated, {}


class RandomImageEnv(gym.Env):
    """The paper's 9x64x64 uint8 pixel observations of random texture (every pixel varies over a batch), 2 actions, a
    reward that depends on the action and the image."""

    observation_space = IMAGES
    action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.np_random.integers(0, 256, (9, 64, 64), dtype=np.uint8), {}

    def step(self, action):
        observation = self.np_random.integers(0, 256, (9, 64, 64), dtype=np.uint8)
        return observation, float(-np.square(action).sum() + observation[0, 0, 0] / 255), False, False, {}


# Tests that take a `device` argument run on every available device; benchmarks/gpu_check.sh selects "on_cuda"
DEVICES = ["cpu", *(["cuda"] if th.cuda.is_available() else [])]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", DEVICES, ids=[f"on_{device}" for device in DEVICES])
