"""Fixtures of the micro-benchmarks (``pytest benchmarks --benchmark-enable``; not collected by the ``tests/`` run)."""

import os

import pytest
import torch as th
from stable_baselines3 import DDPG

from sb3_ddpg_paper import PaperDDPG

# One thread, as the throughput benchmark and the tests: these networks are too small to gain from more
th.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

NET_ARCH = [400, 300]
WARMUP = 1000


def _filled(model):
    """A model whose replay buffer holds WARMUP random transitions (no update yet)."""
    model.learn(WARMUP)
    assert model._n_updates == 0
    return model


@pytest.fixture(scope="module")
def paper_model() -> PaperDDPG:
    """PaperDDPG with the paper's defaults on Pendulum-v1."""
    return _filled(PaperDDPG("Pendulum-v1", learning_starts=WARMUP, seed=0))


@pytest.fixture(scope="module")
def sb3_math_model() -> PaperDDPG:
    """PaperDDPG configured to SB3 DDPG's math (contender A of benchmarks/throughput.py)."""
    model = PaperDDPG(
        "MlpPolicy",
        "Pendulum-v1",
        learning_rate=1e-3,
        qf_learning_rate=1e-3,
        critic_weight_decay=0.0,
        tau=0.005,
        action_noise=None,
        learning_starts=WARMUP,
        policy_kwargs=dict(net_arch=NET_ARCH, batch_norm=False, action_layer=0),
        seed=0,
    )
    return _filled(model)


@pytest.fixture(scope="module")
def sb3_model() -> DDPG:
    """SB3's DDPG with the same networks and batch (contender B)."""
    return _filled(DDPG("MlpPolicy", "Pendulum-v1", learning_starts=WARMUP, policy_kwargs=dict(net_arch=NET_ARCH), seed=0))
