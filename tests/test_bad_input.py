"""One test per row of the bad-input table of docs/reliability.md: each gets a clear error, none corrupts a saved model."""

import zipfile

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from conftest import SMALL, RandomEnv
from gymnasium import spaces
from stable_baselines3 import TD3
from stable_baselines3.common.env_util import make_vec_env

from sb3_ddpg_paper import PaperDDPG
from sb3_ddpg_paper.checkpoints import CrashSafeCheckpointCallback, list_checkpoints, verify_checkpoint


class BadValueAt(gym.Wrapper):
    """Returns a NaN or inf in the observation, the reward or the terminal observation at its ``at``-th step."""

    def __init__(self, env: gym.Env, at: int, where: str, value: float = np.nan):
        super().__init__(env)
        self.at, self.where, self.value, self.steps = at, where, value, 0

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.steps += 1
        if self.steps == self.at:
            if self.where in ("observation", "terminal observation"):
                obs = np.full_like(obs, self.value)
                terminated = self.where == "terminal observation"
            else:
                reward = self.value
        return obs, reward, terminated, truncated, info


def small_model(env, **kwargs) -> PaperDDPG:
    return PaperDDPG(
        "MlpPolicy", env, buffer_size=500, learning_starts=10, batch_size=8, policy_kwargs=SMALL, seed=0, **kwargs
    )


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "model.zip"
    small_model("Pendulum-v1").learn(20).save(path)
    return path


# ---------------------------------------------------------------------------------------------------- action spaces
@pytest.mark.parametrize(
    ("action_space", "match"),
    [
        (spaces.Discrete(3), "continuous .*Box.* action space"),
        (spaces.MultiDiscrete([2, 3]), "continuous .*Box.* action space"),
        (spaces.MultiBinary(2), "continuous .*Box.* action space"),
        (spaces.Dict({"a": spaces.Box(-1, 1, (1,))}), "continuous .*Box.* action space"),
        (spaces.Box(-np.inf, np.inf, (2,)), "finite action bounds"),
        (spaces.Box(np.array([-1.0, -np.inf]), np.array([1.0, 1.0])), "finite action bounds"),
    ],
)
def test_unsupported_action_space(action_space, match):
    with pytest.raises(ValueError, match=match):
        PaperDDPG("MlpPolicy", RandomEnv(action_space=action_space))
    with pytest.raises(ValueError, match=match):  # PaperDDPG(env) and set_env too
        PaperDDPG(env=RandomEnv(action_space=action_space))
    model = small_model(RandomEnv())
    with pytest.raises(ValueError, match=match):
        model.set_env(RandomEnv(action_space=action_space))


# ---------------------------------------------------------------------------------------------------- observation spaces
@pytest.mark.parametrize(
    "observation_space",
    [
        spaces.Tuple((spaces.Box(-1, 1, (2,)), spaces.Box(-1, 1, (2,)))),
        spaces.Dict({"outer": spaces.Dict({"inner": spaces.Box(-1, 1, (2,))})}),
        spaces.Text(5),
        spaces.Sequence(spaces.Box(-1, 1, (2,))),
        spaces.Graph(spaces.Box(-1, 1, (2,)), None),
    ],
)
def test_unsupported_observation_space(observation_space):
    with pytest.raises(ValueError, match=r"cannot take observations from the space .* accepted are Box, Discrete"):
        PaperDDPG("MlpPolicy", RandomEnv(observation_space=observation_space))


@pytest.mark.parametrize(
    "observation_space", [spaces.Discrete(4), spaces.MultiBinary(3), spaces.Dict({"a": spaces.Box(-1, 1, (2,))})]
)
def test_supported_observation_spaces_train(observation_space):
    model = PaperDDPG(
        env=RandomEnv(observation_space=observation_space),
        buffer_size=100,
        learning_starts=5,
        batch_size=4,
        policy_kwargs=SMALL,
        seed=0,
    )
    model.learn(12)
    assert model.replay_buffer.size() == 12


# ---------------------------------------------------------------------------------------------------- NaN / inf in training
@pytest.mark.parametrize(
    ("where", "value"),
    [("observation", np.nan), ("reward", np.inf), ("reward", np.nan), ("terminal observation", -np.inf)],
)
def test_non_finite_transition_stops_training_before_it_is_stored(tmp_path, where, value):
    at = 30  # the 30th step of env 1 of 2: the step that brings num_timesteps to 60
    bad_env = make_vec_env(
        "Pendulum-v1",
        n_envs=2,
        seed=0,
        wrapper_class=BadValueAt,
        env_kwargs=None,
        wrapper_kwargs=dict(at=at, where=where, value=value),
    )
    bad_env.envs[0].at = -1  # only env 1 misbehaves
    model = small_model(bad_env)
    with pytest.raises(ValueError, match=f"Environment 1 returned a non-finite {where} .* num_timesteps to 60"):
        model.learn(200, callback=CrashSafeCheckpointCallback(tmp_path, save_freq=20))

    # The bad transition never reached the buffer, and the model is exactly the one of a clean run of 58 steps
    assert model.replay_buffer.size() == at - 1
    assert np.isfinite(model.replay_buffer.observations[: at - 1]).all()
    assert np.isfinite(model.replay_buffer.rewards[: at - 1]).all()
    clean = small_model(make_vec_env("Pendulum-v1", n_envs=2, seed=0)).learn(2 * (at - 1))
    for name, tensor in clean.policy.state_dict().items():
        assert th.equal(tensor, model.policy.state_dict()[name]), name
    # The checkpoints on disk are complete and the newest predates the bad step
    assert [verify_checkpoint(p)["num_timesteps"] for p in list_checkpoints(tmp_path)] == [20, 40]
    # The model can still be saved and used
    model.save(tmp_path / "after_error.zip")
    action, _ = PaperDDPG.load(tmp_path / "after_error.zip").predict(np.zeros(3, dtype=np.float32))
    assert np.isfinite(action).all()


class NaNReset(gym.Wrapper):
    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return np.full_like(obs, np.nan), info


def test_non_finite_reset_observation():
    env = make_vec_env("Pendulum-v1", n_envs=2, seed=0)
    env.envs[1] = NaNReset(env.envs[1])
    model = small_model(env)
    with pytest.raises(ValueError, match=r"Environment 1 returned a non-finite reset observation .* num_timesteps to 2"):
        model.learn(20)
    assert model.replay_buffer.size() == 0


# ---------------------------------------------------------------------------------------------------- predict
@pytest.mark.parametrize("shape", [(4,), (2, 4), (3, 3, 1), ()])
def test_predict_with_a_wrongly_shaped_observation(saved_model, shape):
    model = PaperDDPG.load(saved_model)
    with pytest.raises(ValueError, match=r"Unexpected observation shape .* please use \(3,\) or \(n_env, 3\)"):
        model.predict(np.zeros(shape, dtype=np.float32))


# ---------------------------------------------------------------------------------------------------- load / set_env
@pytest.mark.parametrize(
    ("env", "match"),
    [
        (RandomEnv(observation_space=spaces.Box(-1, 1, (4,))), "Observation spaces do not match"),
        (RandomEnv(observation_space=spaces.Box(-8, 8, (3,)), action_space=spaces.Box(-1, 1, (1,))), "Observation spaces"),
        (
            RandomEnv(
                observation_space=spaces.Box(np.array([-1, -1, -8]), np.array([1, 1, 8]), dtype=np.float32),
                action_space=spaces.Box(-1, 1, (1,)),
            ),
            "Action spaces do not match",
        ),
    ],
)
def test_load_and_set_env_with_different_spaces(saved_model, env, match):
    before = saved_model.read_bytes()
    with pytest.raises(ValueError, match=f"does not fit the saved model .*{match}.*Pass an environment with the spaces"):
        PaperDDPG.load(saved_model, env=env)
    model = PaperDDPG.load(saved_model)
    with pytest.raises(ValueError, match=f"does not fit this model: {match}.*set_env accepts an environment with"):
        model.set_env(env)
    assert saved_model.read_bytes() == before


# ---------------------------------------------------------------------------------------------------- broken files
def test_truncated_zip(saved_model, tmp_path):
    content = saved_model.read_bytes()
    for size in (0, 100, len(content) // 2, len(content) - 10):
        path = tmp_path / f"truncated_{size}.zip"
        path.write_bytes(content[:size])
        with pytest.raises(ValueError, match=r"truncated or corrupted|is corrupted"):
            PaperDDPG.load(path)
        assert path.read_bytes() == content[:size]


def test_corrupted_zip(saved_model, tmp_path):
    content = bytearray(saved_model.read_bytes())
    with zipfile.ZipFile(saved_model) as archive:
        info = archive.getinfo("policy.pth")
    # Flip a byte inside the stored policy parameters (after the member's local header)
    offset = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.compress_size // 2
    content[offset] ^= 0xFF
    path = tmp_path / "corrupted.zip"
    path.write_bytes(bytes(content))
    with pytest.raises(ValueError, match=r"is corrupted: member policy.pth fails its CRC check"):
        PaperDDPG.load(path)


def test_zip_from_another_algorithm(tmp_path):
    TD3("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(net_arch=[8]), seed=0).save(tmp_path / "td3.zip")
    with pytest.raises(ValueError, match=r"was not saved by PaperDDPG: its policy class comes from 'stable_baselines3\.td3"):
        PaperDDPG.load(tmp_path / "td3.zip")


def test_not_a_model_zip(tmp_path):
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(ValueError, match=r"not a complete saved model: it lacks \['data', 'policy.pth'\]"):
        PaperDDPG.load(tmp_path / "other.zip")


# ---------------------------------------------------------------------------------------------------- hyperparameters
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(learning_rate=0), "learning_rate must be a positive number"),
        (dict(qf_learning_rate=-1e-3), "qf_learning_rate must be a positive number"),
        (dict(buffer_size=0), "buffer_size must be an integer >= 1"),
        (dict(batch_size=0), "batch_size must be an integer >= 1"),
        (dict(learning_starts=-1), "learning_starts must be an integer >= 0"),
        (dict(tau=0), r"tau must be in \(0, 1\]"),
        (dict(tau=1.5), r"tau must be in \(0, 1\]"),
        (dict(gamma=1.01), r"gamma must be in \[0, 1\]"),
        (dict(gradient_steps=-2), "gradient_steps must be an integer >= -1"),
        (dict(critic_weight_decay=-0.1), "critic_weight_decay must be a number >= 0"),
        (dict(n_steps=0), "n_steps must be an integer >= 1"),
        (dict(target_update_interval=0), "target_update_interval must be an integer >= 1"),
        (dict(action_noise="gaussian"), "action_noise must be an SB3 ActionNoise"),
        (dict(action_noise_kwargs=dict(sigma=-1.0)), "sigma must be >= 0"),
        (dict(policy_kwargs=dict(n_critics=2)), "PaperDDPG trains one critic"),
        # Booleans are not numbers here (True == 1 would pass a range check), nor are non-finite values
        (dict(gamma=True), r"gamma must be in \[0, 1\], got True"),
        (dict(tau=np.bool_(True)), r"tau must be in \(0, 1\]"),
        (dict(batch_size=True), "batch_size must be an integer >= 1, got True"),
        (dict(learning_rate=float("nan")), "learning_rate must be a positive number"),
        (dict(critic_weight_decay=float("inf")), "critic_weight_decay must be a number >= 0"),
        (dict(train_freq=(2, "epoch")), r"train_freq must be an integer >= 1 or a tuple like \(5, 'step'\)"),
        (dict(action_noise_kwargs=dict(sgima=0.3)), r"Unknown action_noise_kwargs \['sgima'\]: accepted are \['dt', "),
        (dict(action_noise_kwargs=dict(seed=1)), r"Unknown action_noise_kwargs \['seed'\]"),  # PaperDDPG's seed sets it
    ],
)
def test_out_of_range_hyperparameters(kwargs, match, monkeypatch):
    # Refused before anything is allocated: neither the replay buffer nor the policy is built
    built = []
    monkeypatch.setattr("sb3_ddpg_paper.ddpg.PaperDDPG._setup_model", lambda self: built.append(self))
    with pytest.raises(ValueError, match=match):
        PaperDDPG("MlpPolicy", RandomEnv(), **kwargs)
    assert not built


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(tau=np.float32(0.001)),
        dict(learning_rate=np.float32(1e-4), qf_learning_rate=np.float64(1e-3)),
        dict(gamma=np.float32(0.99), critic_weight_decay=np.float32(0.01)),
        dict(buffer_size=np.int64(500), batch_size=np.int32(16), learning_starts=np.int64(10)),
    ],
)
def test_numpy_scalars_are_valid_hyperparameters(kwargs):
    model = PaperDDPG("MlpPolicy", RandomEnv(), policy_kwargs=dict(net_arch=[8]), **{"buffer_size": 500, **kwargs})
    for name, value in kwargs.items():
        stored = model.policy_kwargs[name] if name == "critic_weight_decay" else getattr(model, name)
        assert stored == pytest.approx(value.item()) and type(stored) in (int, float)
