"""Drop-in parity with SB3's DDPG: what typical SB3 scripts and SB3's own test conventions expect to work."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from conftest import SMALL, RandomEnv
from gymnasium import spaces
from stable_baselines3 import TD3
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.noise import NormalActionNoise

from sb3_ddpg_paper import OrnsteinUhlenbeckNoise, PaperDDPG
from sb3_ddpg_paper.torch_layers import PaperCNN

IMAGES_36 = spaces.Box(0, 255, (3, 36, 36), np.uint8)
UNBOUNDED = spaces.Box(-np.inf, np.inf, (1,), np.float32)


class MatrixActionEnv(gym.Env):
    """Actions of shape (2, 2); the reward prefers actions near a fixed matrix. Checks the shape it is given."""

    observation_space = spaces.Box(-1, 1, (3,), np.float32)
    action_space = spaces.Box(-1, 1, (2, 2), np.float32)

    def __init__(self) -> None:
        self.actions: list[np.ndarray] = []

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        assert action.shape == (2, 2), f"the environment got an action of shape {action.shape}"
        self.actions.append(action.copy())
        self.t += 1
        reward = -float(np.sum((action - np.array([[0.5, -0.5], [0.2, 0.0]])) ** 2))
        return self.observation_space.sample(), reward, False, self.t >= 25, {}


@pytest.mark.parametrize(
    "noise",
    [
        "ornstein-uhlenbeck",
        NormalActionNoise(np.zeros(4), 0.1 * np.ones(4)),  # flat, as most scripts write it
        NormalActionNoise(np.zeros((2, 2)), 0.1 * np.ones((2, 2))),
        None,
    ],
    ids=["paper-ou", "normal-flat", "normal-shaped", "none"],
)
def test_box_actions_of_any_shape_reach_the_environment_in_its_shape(noise):
    env = MatrixActionEnv()
    model = PaperDDPG("MlpPolicy", env, action_noise=noise, learning_starts=50, batch_size=16, policy_kwargs=SMALL, seed=0)
    model.learn(150)
    taken = np.array(env.actions)
    assert taken.shape == (150, 2, 2) and np.all(np.abs(taken) <= 1)
    assert model._n_updates == 100
    assert model.predict(np.zeros(3, np.float32))[0].shape == (2, 2)
    assert model.predict(np.zeros((5, 3), np.float32))[0].shape == (5, 2, 2)
    # After the warm-up the four action entries explore independently (noise of the action's own shape)
    if noise is not None:
        assert np.linalg.matrix_rank(taken[60:].reshape(-1, 4) - taken[60:].reshape(-1, 4).mean(0)) == 4


def test_ou_noise_takes_the_action_spaces_shape():
    noise = OrnsteinUhlenbeckNoise((2, 2), seed=0)
    assert noise().shape == (2, 2)
    noise.set_n_envs(3)
    assert noise().shape == (3, 2, 2)
    with pytest.raises(ValueError, match=r"sigma must be a number or an array of the action's shape \(2, 2\)"):
        OrnsteinUhlenbeckNoise((2, 2), sigma=np.ones(3))


def test_warm_up_takes_uniformly_random_actions_without_noise():
    """docs: "the first learning_starts steps take uniformly random actions" (SB3 adds the noise and clips)."""
    env = MatrixActionEnv()
    noise = OrnsteinUhlenbeckNoise((2, 2), sigma=0.5, seed=0, epsilon_decay_steps=10_000, min_epsilon=0.0)
    model = PaperDDPG("MlpPolicy", env, action_noise=noise, learning_starts=2000, policy_kwargs=SMALL, seed=0)
    model.learn(2000)
    taken = np.array(env.actions).reshape(-1)
    assert np.mean(np.abs(taken) == 1.0) == 0  # nothing clipped onto the bounds (SB3's way: ~15% of them)
    # Uniform on [-1, 1]: mean 0, variance 1/3, each quarter of the range holds a quarter of the actions
    assert abs(taken.mean()) < 4 * np.sqrt(1 / 3 / taken.size)
    assert np.histogram(taken, bins=4, range=(-1, 1))[0] / taken.size == pytest.approx([0.25] * 4, abs=0.02)
    assert noise.num_steps == 2000  # the noise still counts the warm-up steps for its epsilon schedule


def test_features_dim_of_cnn_policy_means_what_nature_cnn_does():
    image = spaces.Box(0, 255, (9, 64, 64), np.uint8)
    default = PaperCNN(image)
    projected = PaperCNN(image, features_dim=64)
    assert projected.features_dim == 64 and default.features_dim == 32 * 7 * 7
    assert isinstance(projected.cnn[-2], th.nn.Linear) and projected.cnn[-2].in_features == default.features_dim
    assert isinstance(projected.cnn[-1], th.nn.ReLU)
    features = projected(th.rand(4, *image.shape))
    assert features.shape == (4, 64) and (features >= 0).all()
    with pytest.raises(ValueError, match="features_dim must be a positive integer"):
        PaperCNN(image, features_dim=0)


def test_cnn_policy_accepts_features_extractor_kwargs_features_dim():
    """The most common CnnPolicy knob of SB3 scripts and zoo files."""
    policy_kwargs = dict(net_arch=[8], features_extractor_kwargs=dict(features_dim=24))
    model = PaperDDPG(
        "CnnPolicy",
        RandomEnv(IMAGES_36),
        buffer_size=100,
        learning_starts=8,
        batch_size=4,
        policy_kwargs=policy_kwargs,
    )
    model.learn(16)
    assert model.actor.features_extractor.features_dim == 24 and model.critic.features_extractor.features_dim == 24
    assert model._n_updates == 8


@pytest.mark.parametrize(
    ("make_env", "match"),
    [
        (lambda: gym.make("CartPole-v1"), "needs a continuous"),
        (lambda: RandomEnv(action_space=UNBOUNDED), "needs finite action bounds"),
    ],
)
def test_unsupported_action_space_is_both_a_value_error_and_an_assertion_error(make_env, match):
    from sb3_ddpg_paper import SpaceError

    for caught in (AssertionError, ValueError, SpaceError):  # SB3's convention, this package's, and its own class
        with pytest.raises(caught, match=match):
            PaperDDPG("MlpPolicy", make_env())


def test_unsupported_observation_space_is_both_a_value_error_and_an_assertion_error():
    tuple_observations = spaces.Tuple((spaces.Box(-1, 1, (2,)), spaces.Discrete(3)))
    for caught in (AssertionError, ValueError):
        with pytest.raises(caught, match="cannot take observations from the space"):
            PaperDDPG("MlpPolicy", RandomEnv(tuple_observations))


def test_parameters_are_float_tensors_as_in_sb3():
    """Randomising, averaging or interpolating parameters works as with SB3's DDPG (batch-norm counters excluded)."""
    model = PaperDDPG("MlpPolicy", "Pendulum-v1", buffer_size=500, learning_starts=20, batch_size=8, policy_kwargs=SMALL)
    model.learn(40)
    params = model.get_parameters()
    policy_state = params["policy"]
    assert all(value.is_floating_point() for value in policy_state.values())
    assert not any(name.endswith("num_batches_tracked") for name in policy_state)
    randomised = {name: th.rand_like(value) for name, value in policy_state.items()}
    model.set_parameters({"policy": randomised}, exact_match=False)
    assert th.equal(model.policy.state_dict()["actor.mu.0.running_var"], randomised["actor.mu.0.running_var"])


def test_learn_warns_when_it_will_end_before_the_first_gradient_step():
    model = PaperDDPG("MlpPolicy", "Pendulum-v1", buffer_size=1000, learning_starts=300, policy_kwargs=SMALL)
    with pytest.warns(UserWarning, match=r"will stop at 200 steps, before the first gradient step.*learning_starts=300"):
        model.learn(200)
    assert model._n_updates == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning once the run reaches the first update
        model.learn(150, reset_num_timesteps=False)
    assert model._n_updates > 0


def test_batch_size_that_batch_norm_cannot_normalise_is_refused_before_training():
    with pytest.raises(ValueError, match=r"batch_size=1 cannot be used with batch norm.*batch_norm=False"):
        PaperDDPG("MlpPolicy", "Pendulum-v1", batch_size=1, buffer_size=100, policy_kwargs=SMALL)
    # Without batch norm a minibatch of one is valid, and every tensor stays finite
    model = PaperDDPG(
        "MlpPolicy",
        "Pendulum-v1",
        batch_size=1,
        buffer_size=100,
        learning_starts=10,
        policy_kwargs=dict(SMALL, batch_norm=False),
    )
    model.learn(40)
    assert all(th.isfinite(value).all() for value in model.policy.state_dict().values())


def test_diverged_losses_stop_training_with_the_real_cause():
    model = PaperDDPG("MlpPolicy", "Pendulum-v1", buffer_size=200, learning_starts=10, batch_size=8, policy_kwargs=SMALL)
    model.learn(20)
    model.replay_buffer.rewards[:] = 3e38  # finite rewards whose squared TD error overflows float32
    with pytest.raises(ValueError, match=r"losses became non-finite .* training diverged"):
        model.learn(5, reset_num_timesteps=False)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_predict_refuses_non_finite_observations_and_names_them(bad):
    model = PaperDDPG("MlpPolicy", "Pendulum-v1", buffer_size=100, policy_kwargs=SMALL)
    obs = np.zeros((4, 3), np.float32)
    obs[2, 1] = bad
    with pytest.raises(ValueError, match=r"non-finite observation \(1 non-finite value\(s\), the first .* at index \[2, 1\]"):
        model.predict(obs)
    with pytest.raises(ValueError, match=r"at index \[1\]"):
        model.predict(obs[2])


def test_predict_refuses_non_finite_dict_observations():
    dict_observations = spaces.Dict({"a": spaces.Box(-1, 1, (2,)), "b": spaces.Box(-1, 1, (3,))})
    model = PaperDDPG("MultiInputPolicy", RandomEnv(dict_observations), buffer_size=100, policy_kwargs=SMALL)
    with pytest.raises(ValueError, match=r"key 'b', index \[2\]"):
        model.predict({"a": np.zeros(2, np.float32), "b": np.array([0, 0, np.nan], np.float32)})


@pytest.mark.parametrize("n_envs", [1, 2, 3])
def test_ou_noise_works_with_sb3_algorithms_and_any_number_of_envs(n_envs):
    """SB3 wraps the noise in per-environment copies: each must draw its own noise and be reset on its own."""
    env = make_vec_env("Pendulum-v1", n_envs=n_envs, seed=0, env_kwargs=dict(max_episode_steps=30))
    noise = OrnsteinUhlenbeckNoise(1)
    model = TD3("MlpPolicy", env, action_noise=noise, learning_starts=0, buffer_size=500, policy_kwargs=SMALL, seed=0)
    model.learn(95 * n_envs)  # several episode ends, each resets one environment's process
    copies = getattr(model.action_noise, "noises", [model.action_noise])
    assert len(copies) == n_envs and all(copy.num_steps == 95 for copy in copies)
    # Different noise per environment (the copies do not replay one random stream)
    assert len({float(copy.last_noise.reshape(-1)[0]) for copy in copies}) == n_envs
