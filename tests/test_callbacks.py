"""The exploration comparison view (the reference notebook's ExplorationComparisonLogger)."""

import numpy as np
import pytest
from conftest import SMALL
from stable_baselines3.common.env_util import make_vec_env

from sb3_ddpg_paper import PaperDDPG
from sb3_ddpg_paper.callbacks import ExplorationComparisonCallback


def test_records_actor_and_noisy_actions_and_plots(tmp_path):
    plot = tmp_path / "exploration.png"
    callback = ExplorationComparisonCallback(plot_path=plot)
    model = PaperDDPG(
        "Pendulum-v1",
        policy_kwargs=SMALL,
        learning_starts=50,
        seed=3,
        action_noise_kwargs=dict(min_epsilon=0.2, epsilon_decay_steps=300),
    )
    model.learn(300, callback=callback)
    data = callback.as_arrays()
    assert data["steps"].tolist() == list(range(1, 301))
    assert data["model_actions"].shape == data["taken_actions"].shape == (300, 1)
    # After the warm-up: taken = clip(mu(s) + epsilon * x) in the env's units (Pendulum: max torque 2)
    noise_scaled = (data["taken_actions"] - data["model_actions"]) / 2.0
    assert np.all(np.abs(data["taken_actions"]) <= 2.0)
    assert np.abs(noise_scaled[60:]).max() > 0.01
    # epsilon is read before the noise call that counts the step: linear from 1 to 0.2 over 300 steps
    np.testing.assert_allclose(data["epsilons"], 1.0 - 0.8 * np.arange(1, 301) / 300, atol=1e-9)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The noisy action really is what was stored in the replay buffer (scaled to [-1, 1])
    np.testing.assert_allclose(model.replay_buffer.actions[:300, 0, 0], data["taken_actions"][:, 0] / 2.0, atol=1e-6)


def test_model_action_is_the_deterministic_prediction_of_the_acting_observation():
    callback = ExplorationComparisonCallback(record_freq=10)
    model = PaperDDPG("Pendulum-v1", policy_kwargs=SMALL, learning_starts=0, seed=0, action_noise=None)
    model.learn(100, callback=callback)
    data = callback.as_arrays()
    assert data["steps"].tolist() == list(range(10, 101, 10))
    # Without noise (and no warm-up) the action taken is the actor's own
    np.testing.assert_allclose(data["taken_actions"], data["model_actions"], atol=1e-6)
    assert np.isnan(data["epsilons"]).all()


def test_several_envs_and_bad_arguments():
    env = make_vec_env("Pendulum-v1", n_envs=2, seed=0)
    callback = ExplorationComparisonCallback(env_index=1, max_records=20)
    PaperDDPG("MlpPolicy", env, policy_kwargs=SMALL, learning_starts=10).learn(100, callback=callback)
    assert len(callback.steps) == 20 and callback.steps[-1] == 100
    with pytest.raises(ValueError, match="env_index must be in \\[0, 1\\]"):
        PaperDDPG("MlpPolicy", env, policy_kwargs=SMALL).learn(10, callback=ExplorationComparisonCallback(env_index=2))
    with pytest.raises(ValueError, match="record_freq must be a positive integer"):
        ExplorationComparisonCallback(record_freq=0)
    with pytest.raises(ValueError, match="Nothing recorded yet"):
        ExplorationComparisonCallback().plot("x.png")
