import copy
import io

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from conftest import SMALL
from stable_baselines3 import HerReplayBuffer
from stable_baselines3.common.buffers import NStepReplayBuffer
from stable_baselines3.common.callbacks import CheckpointCallback, EvalCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import BitFlippingEnv, FakeImageEnv
from stable_baselines3.common.logger import KVWriter, Logger
from stable_baselines3.common.noise import NormalActionNoise
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv
from torch.nn import functional as F

from sb3_ddpg_paper import CnnPolicy, MlpPolicy, MultiInputPolicy, OrnsteinUhlenbeckNoise, PaperDDPG


class RecordingWriter(KVWriter):
    def __init__(self):
        self.records: list[dict] = []

    def write(self, key_values, key_excluded, step=0):
        self.records.append(dict(key_values))


def fixed_batch(batch_size=16, seed=0, discounts=None) -> ReplayBufferSamples:
    gen = th.Generator().manual_seed(seed)
    return ReplayBufferSamples(
        observations=th.randn(batch_size, 3, generator=gen),
        actions=th.rand(batch_size, 1, generator=gen) * 2 - 1,
        next_observations=th.randn(batch_size, 3, generator=gen),
        dones=(th.rand(batch_size, 1, generator=gen) < 0.2).float(),
        rewards=th.randn(batch_size, 1, generator=gen),
        discounts=discounts,
    )


def attach_logger(model: PaperDDPG) -> Logger:
    logger = Logger(folder=None, output_formats=[])
    model.set_logger(logger)
    return logger


# ----------------------------------------------------------------------------- construction
def test_paper_defaults():
    model = PaperDDPG("Pendulum-v1")
    assert model.policy_class is MlpPolicy
    assert model.learning_rate == 1e-4 and model.qf_learning_rate == 1e-3
    assert model.tau == 1e-3 and model.gamma == 0.99 and model.batch_size == 64
    assert model.buffer_size == 1_000_000
    assert model.train_freq.frequency == 1 and model.gradient_steps == 1
    assert model.policy.critic_weight_decay == 1e-2 and model.policy.batch_norm and model.policy.action_layer == 1
    assert model.policy.net_arch == [400, 300]
    assert isinstance(model.action_noise, OrnsteinUhlenbeckNoise)
    assert (model.action_noise.theta, float(model.action_noise.sigma[0]), model.action_noise.dt) == (0.15, 0.2, 1.0)
    for net in (model.actor, model.critic):  # ~130k parameters per network in the paper (obs size varies per task)
        assert 115_000 < sum(p.numel() for p in net.parameters()) < 135_000


def test_constructor_forms():
    assert PaperDDPG("MlpPolicy", "Pendulum-v1").policy_class is MlpPolicy
    # SB3 DDPG's positional order is kept: (policy, env, learning_rate, buffer_size, learning_starts, batch_size, tau, ...)
    model = PaperDDPG("MlpPolicy", "Pendulum-v1", 1e-3, 5000, 100, 32, 0.005)
    assert (model.learning_rate, model.buffer_size, model.learning_starts, model.batch_size, model.tau) == (
        1e-3,
        5000,
        100,
        32,
        0.005,
    )
    vec_env = make_vec_env("Pendulum-v1", n_envs=2)
    model = PaperDDPG(env=vec_env)
    assert model.policy_class is MlpPolicy and model.n_envs == 2
    assert PaperDDPG(env=BitFlippingEnv(n_bits=4, continuous=True)).policy_class is MultiInputPolicy
    image_env = FakeImageEnv(screen_height=36, screen_width=36, n_channels=3, discrete=False)
    assert PaperDDPG(env=image_env, buffer_size=100).policy_class is CnnPolicy


def test_constructor_errors():
    with pytest.raises(ValueError, match="needs an environment"):
        PaperDDPG()
    with pytest.raises(ValueError, match="Unknown policy 'NotAPolicy'"):
        PaperDDPG("NotAPolicy", "Pendulum-v1")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(learning_rate=0.0), "learning_rate must be a positive number"),
        (dict(learning_rate=-1e-4), "learning_rate must be a positive number"),
        (dict(qf_learning_rate=0), "qf_learning_rate must be a positive number"),
        (dict(batch_size=0), "batch_size must be an integer >= 1"),
        (dict(batch_size=16.5), "batch_size must be an integer >= 1"),
        (dict(buffer_size=0), "buffer_size must be an integer >= 1"),
        (dict(tau=0.0), r"tau must be in \(0, 1\]"),
        (dict(tau=1.5), r"tau must be in \(0, 1\]"),
        (dict(gamma=1.1), r"gamma must be in \[0, 1\]"),
        (dict(learning_starts=-1), "learning_starts must be an integer >= 0"),
        (dict(critic_weight_decay=-0.1), "critic_weight_decay must be a number >= 0"),
        (dict(target_update_interval=0), "target_update_interval must be an integer >= 1"),
        (dict(actor_target_update_interval=0), "actor_target_update_interval must be an integer >= 1"),
        (dict(gradient_steps=-2), "gradient_steps must be an integer >= -1"),
        (dict(n_steps=0), "n_steps must be an integer >= 1"),
        (dict(action_noise="gaussian"), "action_noise must be an SB3 ActionNoise"),
        (dict(action_noise_kwargs=dict(min_epsilon=0.9, max_epsilon=0.1)), "min_epsilon <= max_epsilon"),
        (dict(action_noise_kwargs=dict(epsilon_decay_steps=-5)), "epsilon_decay_steps must be an integer >= 0"),
        (dict(action_noise=None, action_noise_kwargs=dict(sigma=0.3)), "action_noise_kwargs is only used"),
        (dict(policy_kwargs=dict(n_critics=2)), "trains one critic"),
        (dict(policy_kwargs=dict(critic_weight_decay=0.1)), "critic_weight_decay as an argument"),
        (dict(policy_kwargs=dict(batch_norm_momentum=2.0)), r"batch_norm_momentum must be in \[0, 1\]"),
        (dict(policy_kwargs=dict(weight_decay_scope="biases")), "weight_decay_scope must be"),
    ],
)
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PaperDDPG("Pendulum-v1", **kwargs)


# ----------------------------------------------------------------------------- Algorithm 1
def adam_first_step(param: th.Tensor, grad: th.Tensor, lr: float, weight_decay: float) -> th.Tensor:
    """Adam's first update by hand: bias-corrected m = g, v = g^2, so p -= lr * g / (|g| + eps); coupled L2."""
    grad = grad + weight_decay * param
    return param - lr * grad / (grad.abs() + 1e-8)


@pytest.mark.parametrize("batch_norm", [True, False])
def test_one_train_step_against_hand_computation(batch_norm):
    model = PaperDDPG(
        "Pendulum-v1", tau=0.1, policy_kwargs=dict(net_arch=[8, 6], batch_norm=batch_norm), seed=0, action_noise=None
    )
    # Make the targets differ from the online networks: using the wrong networks for y would show
    with th.no_grad():
        for p in [*model.actor_target.parameters(), *model.critic_target.parameters()]:
            p.add_(0.1 * th.randn_like(p))
    batch = fixed_batch()
    model.replay_buffer.sample = lambda *args, **kwargs: batch
    logger = attach_logger(model)
    actor, critic = copy.deepcopy(model.actor), copy.deepcopy(model.critic)
    actor_target, critic_target = copy.deepcopy(model.actor_target), copy.deepcopy(model.critic_target)
    decayed = {id(m.weight) for m in critic.modules() if isinstance(m, th.nn.Linear)}

    model.train(gradient_steps=1, batch_size=16)

    # Critic: y = r + gamma (1 - d) Q'(s', mu'(s')) with the TARGET networks (batch statistics of s')
    with th.no_grad():
        y = (
            batch.rewards
            + 0.99 * (1 - batch.dones) * critic_target(batch.next_observations, actor_target(batch.next_observations))[0]
        )
    critic.train()
    q = critic(batch.observations, batch.actions)[0]
    critic_loss = ((q - y) ** 2).mean()
    critic_loss.backward()
    assert logger.name_to_value["train/critic_loss"] == pytest.approx(critic_loss.item(), rel=1e-5)
    with th.no_grad():
        for p in critic.parameters():
            p.copy_(adam_first_step(p, p.grad, 1e-3, 1e-2 if id(p) in decayed else 0.0))

    # Actor: minimise -mean Q(s, mu(s)) through the UPDATED critic; no decay on the actor
    actor.train()
    actor_loss = -copy.deepcopy(critic)(batch.observations, actor(batch.observations))[0].mean()
    actor_loss.backward()
    assert logger.name_to_value["train/actor_loss"] == pytest.approx(actor_loss.item(), rel=1e-5)
    with th.no_grad():
        for p in actor.parameters():
            p.copy_(adam_first_step(p, p.grad, 1e-4, 0.0))

    for online, reference in ((model.actor, actor), (model.critic, critic)):
        for p, p_ref in zip(online.parameters(), reference.parameters(), strict=True):
            th.testing.assert_close(p, p_ref, rtol=1e-5, atol=1e-6)
    # Soft updates: theta' <- tau theta + (1 - tau) theta'; batch-norm running statistics copied
    for target_model, target_ref, online in (
        (model.actor_target, actor_target, actor),
        (model.critic_target, critic_target, critic),
    ):
        for p, p_old, p_new in zip(target_model.parameters(), target_ref.parameters(), online.parameters(), strict=True):
            th.testing.assert_close(p, 0.1 * p_new + 0.9 * p_old, rtol=1e-5, atol=1e-6)
        for b, b_online in zip(target_model.buffers(), online.buffers(), strict=True):
            th.testing.assert_close(b, b_online)


def test_which_passes_update_batch_norm_statistics():
    model = PaperDDPG("Pendulum-v1", policy_kwargs=SMALL, seed=0)
    batch = fixed_batch()
    model.replay_buffer.sample = lambda *args, **kwargs: batch
    attach_logger(model)
    model.train(gradient_steps=3, batch_size=16)
    critic_bn = model.critic.q_networks[0].state_net[0]
    actor_bn = model.actor.mu[0]
    # The critic's statistics are updated in the critic step only (not again in the actor step),
    # the actor's in the actor step; the targets' own forward passes never update them
    assert int(critic_bn.num_batches_tracked) == 3 and int(actor_bn.num_batches_tracked) == 3
    expected_mean = th.zeros(3)
    for _ in range(3):
        expected_mean = 0.9 * expected_mean + 0.1 * batch.observations.mean(0)
    th.testing.assert_close(critic_bn.running_mean, expected_mean)
    th.testing.assert_close(actor_bn.running_mean, expected_mean)
    th.testing.assert_close(model.critic_target.q_networks[0].state_net[0].running_mean, expected_mean)


def test_n_step_targets_use_the_buffer_discounts():
    model = PaperDDPG("Pendulum-v1", n_steps=3, policy_kwargs=SMALL, seed=0)
    assert isinstance(model.replay_buffer, NStepReplayBuffer)
    batch = fixed_batch(discounts=th.zeros(16, 1))  # zero discount: y = r exactly
    model.replay_buffer.sample = lambda *args, **kwargs: batch
    logger = attach_logger(model)
    critic = copy.deepcopy(model.critic)
    model.train(gradient_steps=1, batch_size=16)
    q = critic(batch.observations, batch.actions)[0]
    assert logger.name_to_value["train/critic_loss"] == pytest.approx(F.mse_loss(q, batch.rewards).item(), rel=1e-5)
    model = PaperDDPG("Pendulum-v1", n_steps=3, policy_kwargs=SMALL, learning_starts=50)
    model.learn(150)
    assert model._n_updates > 0


def _snapshot(module: th.nn.Module) -> dict[str, th.Tensor]:
    return {key: value.clone() for key, value in module.state_dict().items()}


def assert_target_step(target: th.nn.Module, online: th.nn.Module, before: dict[str, th.Tensor], tau: float | None):
    """``tau=None``: the target is exactly as before; else theta' = tau theta + (1 - tau) theta', statistics copied."""
    after, online_state = target.state_dict(), online.state_dict()
    assert after.keys() == before.keys() == online_state.keys()
    parameters = {name for name, _ in target.named_parameters()}
    for key, value in after.items():
        if tau is None:
            assert th.equal(value, before[key]), key
        elif key in parameters:
            th.testing.assert_close(value, tau * online_state[key] + (1 - tau) * before[key], rtol=1e-5, atol=1e-7, msg=key)
        else:  # batch-norm running statistics are copied
            assert th.equal(value, online_state[key]), key
    if tau is not None:  # the update really moved the target (the online network left it behind)
        assert any(not th.equal(after[key], before[key]) for key in parameters)


@pytest.mark.parametrize(
    "kwargs, actor_every, critic_every",
    [
        (dict(target_update_interval=3), 3, 3),
        (dict(actor_target_update_interval=2, critic_target_update_interval=3), 2, 3),
        (dict(target_update_interval=4, critic_target_update_interval=1), 4, 1),  # a per-network interval wins
    ],
)
def test_target_update_intervals(kwargs, actor_every, critic_every):
    """Targets stay put between their updates and take exactly one soft step (tau = 0.1) at each multiple."""
    model = PaperDDPG("Pendulum-v1", policy_kwargs=SMALL, tau=0.1, seed=0, **kwargs)
    model.replay_buffer.sample = lambda *args, **kwargs: fixed_batch()
    attach_logger(model)
    for update in range(1, 7):
        actor_before, critic_before = _snapshot(model.actor_target), _snapshot(model.critic_target)
        model.train(gradient_steps=1, batch_size=16)
        assert model._n_updates == update
        assert_target_step(model.actor_target, model.actor, actor_before, 0.1 if update % actor_every == 0 else None)
        assert_target_step(model.critic_target, model.critic, critic_before, 0.1 if update % critic_every == 0 else None)


def test_learning_rate_schedules_reach_their_optimizers():
    model = PaperDDPG(
        "Pendulum-v1",
        learning_rate=lambda progress: 1e-4 * (0.5 + progress),
        qf_learning_rate=lambda progress: 1e-3 * (0.5 + progress),
        policy_kwargs=SMALL,
        learning_starts=10,
    )
    model.learn(100)  # the last train() call runs at progress remaining 0
    assert model.actor.optimizer.param_groups[0]["lr"] == pytest.approx(5e-5)
    assert [g["lr"] for g in model.critic.optimizer.param_groups] == [pytest.approx(5e-4)] * 2
    assert model.logger.name_to_value["train/qf_learning_rate"] == pytest.approx(5e-4)


def test_logged_keys():
    writer = RecordingWriter()
    model = PaperDDPG(
        "Pendulum-v1",
        policy_kwargs=SMALL,
        learning_starts=50,
        action_noise_kwargs=dict(epsilon_decay_steps=1000, min_epsilon=0.0),
    )
    model.set_logger(Logger(folder=None, output_formats=[writer]))
    model.learn(400, log_interval=1)
    keys = set().union(*writer.records)
    for key in (
        "train/actor_loss",
        "train/critic_loss",
        "train/learning_rate",
        "train/qf_learning_rate",
        "train/n_updates",
        "train/q_mean",
        "rollout/exploration_epsilon",
    ):
        assert key in keys, key
    epsilons = [r["rollout/exploration_epsilon"] for r in writer.records]
    assert epsilons == [pytest.approx(0.8), pytest.approx(0.6)]  # after 200 and 400 env steps


# ----------------------------------------------------------------------------- exploration
def test_epsilon_continues_across_learn_calls_and_save_load(tmp_path):
    model = PaperDDPG(
        "Pendulum-v1",
        policy_kwargs=SMALL,
        learning_starts=50,
        action_noise_kwargs=dict(min_epsilon=0.1, epsilon_decay_steps=1000),
    )
    model.learn(200)
    assert model.action_noise.num_steps == 200 and model.action_noise.epsilon == pytest.approx(0.82)
    model.learn(100, reset_num_timesteps=False)
    model.learn(100)  # reset_num_timesteps=True restarts the step counter of SB3, not epsilon
    assert model.action_noise.num_steps == 400 and model.action_noise.epsilon == pytest.approx(0.64)
    model.save(tmp_path / "model.zip")
    loaded = PaperDDPG.load(tmp_path / "model.zip", env=model.get_env())
    assert isinstance(loaded.action_noise, OrnsteinUhlenbeckNoise)
    assert loaded.action_noise.num_steps == 400 and loaded.action_noise.epsilon == pytest.approx(0.64)
    loaded.learn(100, reset_num_timesteps=False)
    assert loaded.action_noise.num_steps == 500


def test_no_noise_and_sb3_noise():
    model = PaperDDPG("Pendulum-v1", action_noise=None, policy_kwargs=SMALL, learning_starts=10)
    model.learn(30)
    assert model.action_noise is None
    noise = NormalActionNoise(np.zeros(1), 0.1 * np.ones(1))
    model = PaperDDPG("Pendulum-v1", action_noise=noise, policy_kwargs=SMALL, learning_starts=10)
    model.learn(30)
    assert model.action_noise is noise


@pytest.mark.parametrize("vec_env_cls", [DummyVecEnv, SubprocVecEnv])
def test_multiple_envs(vec_env_cls):
    env = make_vec_env("Pendulum-v1", n_envs=2, vec_env_cls=vec_env_cls, env_kwargs=dict(max_episode_steps=50))
    model = PaperDDPG(env=env, policy_kwargs=SMALL, learning_starts=50, action_noise_kwargs=dict(epsilon_decay_steps=1000))
    model.learn(300)
    noise = model.action_noise
    assert isinstance(noise, OrnsteinUhlenbeckNoise) and noise.n_envs == 2
    assert noise.num_steps == model.num_timesteps == 300  # each env step counted once
    assert model.replay_buffer.size() == 150
    env.close()


def test_load_with_a_different_number_of_envs(tmp_path):
    model = PaperDDPG(env=make_vec_env("Pendulum-v1", n_envs=2), policy_kwargs=SMALL, learning_starts=20)
    model.learn(60)
    model.save(tmp_path / "model.zip")
    four = make_vec_env("Pendulum-v1", n_envs=4)
    loaded = PaperDDPG.load(tmp_path / "model.zip", env=four)
    loaded.learn(80, reset_num_timesteps=False)  # SB3's own noise wrapper crashes here
    assert loaded.action_noise.n_envs == 4 and loaded.action_noise.num_steps == 60 + 80
    sb3_noise = PaperDDPG(
        env=make_vec_env("Pendulum-v1", n_envs=2),
        action_noise=NormalActionNoise(np.zeros(1), np.ones(1)),
        policy_kwargs=SMALL,
        learning_starts=20,
    )
    sb3_noise.learn(40)
    sb3_noise.save(tmp_path / "sb3_noise.zip")
    PaperDDPG.load(tmp_path / "sb3_noise.zip", env=four).learn(40)


# ----------------------------------------------------------------------------- SB3 features
def test_save_load_round_trip(tmp_path):
    model = PaperDDPG("Pendulum-v1", policy_kwargs=SMALL, learning_starts=50, seed=1)
    model.learn(150)
    model.save(tmp_path / "model.zip")
    loaded = PaperDDPG.load(tmp_path / "model.zip", env=model.get_env())
    for (k1, v1), (k2, v2) in zip(model.policy.state_dict().items(), loaded.policy.state_dict().items(), strict=True):
        assert k1 == k2 and th.equal(v1, v2), k1
    for name in ("actor", "critic"):
        saved = getattr(model, name).optimizer.state_dict()
        restored = getattr(loaded, name).optimizer.state_dict()
        assert saved["param_groups"] == restored["param_groups"]
        for state_a, state_b in zip(saved["state"].values(), restored["state"].values(), strict=True):
            assert all(th.equal(state_a[k], state_b[k]) for k in state_a)
    assert loaded.qf_learning_rate == 1e-3 and loaded.num_timesteps == 150
    np.testing.assert_array_equal(loaded.action_noise.state, model.action_noise.state)
    obs = np.array([[0.3, 0.2, -1.0]], dtype=np.float32)
    np.testing.assert_array_equal(model.predict(obs)[0], loaded.predict(obs)[0])
    assert loaded.actor_target.mu[0].training is not False  # targets keep their batch-statistics mode after load


def assert_same_model(model: PaperDDPG, loaded: PaperDDPG) -> None:
    """Same policy state, same optimizer states and hyperparameters, same actions."""
    saved_state, loaded_state = model.policy.state_dict(), loaded.policy.state_dict()
    assert list(saved_state) == list(loaded_state)
    for key, value in saved_state.items():
        assert th.equal(value, loaded_state[key]), key
    for name in ("actor", "critic"):
        saved, restored = getattr(model, name).optimizer.state_dict(), getattr(loaded, name).optimizer.state_dict()
        assert saved["param_groups"] == restored["param_groups"]
        assert saved["state"].keys() == restored["state"].keys() and saved["state"]
        for index, state in saved["state"].items():
            assert state.keys() == restored["state"][index].keys()
            assert all(th.equal(value, restored["state"][index][key]) for key, value in state.items())
    assert (loaded.num_timesteps, loaded.qf_learning_rate, loaded.batch_size) == (model.num_timesteps, 2e-3, 32)
    obs = np.array([[0.3, 0.2, -1.0], [-0.5, 0.9, 2.0]], dtype=np.float32)
    np.testing.assert_array_equal(model.predict(obs)[0], loaded.predict(obs)[0])


def test_save_load_through_file_objects(tmp_path):
    model = PaperDDPG("Pendulum-v1", policy_kwargs=SMALL, learning_starts=50, qf_learning_rate=2e-3, batch_size=32, seed=1)
    model.learn(100)
    buffer = io.BytesIO()
    model.save(buffer)
    assert buffer.tell() > 0
    buffer.seek(0)
    assert_same_model(model, PaperDDPG.load(buffer, env=model.get_env()))
    # An open binary file works the same, and the bytes are those save(path) writes
    with open(tmp_path / "model.zip", "wb") as file:
        model.save(file)
    with open(tmp_path / "model.zip", "rb") as file:
        loaded = PaperDDPG.load(file)
    assert_same_model(model, loaded)
    loaded.set_env(model.get_env())
    loaded.learn(20, reset_num_timesteps=False)  # and trains on
    assert loaded._n_updates == model._n_updates + 20


def _record_train_calls(model: PaperDDPG) -> list[tuple[int, int, bool]]:
    """(num_timesteps, gradient_steps, whether every env's episode just ended) at each train() call."""
    calls = []
    train = model.train

    def recording_train(gradient_steps, batch_size=64):
        calls.append((model.num_timesteps, gradient_steps, bool(np.all(model._last_episode_starts))))
        train(gradient_steps, batch_size)

    model.train = recording_train  # type: ignore[method-assign]
    return calls


def test_gradient_steps_minus_one_does_one_update_per_env_step():
    env = make_vec_env("Pendulum-v1", n_envs=2)
    model = PaperDDPG(env=env, policy_kwargs=SMALL, learning_starts=20, train_freq=5, gradient_steps=-1, seed=0)
    calls = _record_train_calls(model)
    model.learn(120)
    # Each rollout is 5 steps of 2 envs: 10 environment steps, then 10 updates (rollouts ending at 30, ..., 120)
    assert [(steps, n) for steps, n, _ in calls] == [(t, 10) for t in range(30, 121, 10)]
    assert model._n_updates == 100 == model.num_timesteps - model.learning_starts
    # For comparison, the default gradient_steps=1: one update per rollout
    model = PaperDDPG(env=env, policy_kwargs=SMALL, learning_starts=20, train_freq=5, seed=0)
    model.learn(120)
    assert model._n_updates == 10


@pytest.mark.parametrize("gradient_steps, updates_per_call", [(1, 1), (-1, 50)])
def test_train_freq_in_episodes_trains_only_at_episode_ends(gradient_steps, updates_per_call):
    env = make_vec_env("Pendulum-v1", n_envs=1, env_kwargs=dict(max_episode_steps=25))
    model = PaperDDPG(
        env=env, policy_kwargs=SMALL, learning_starts=30, train_freq=(2, "episode"), gradient_steps=gradient_steps, seed=0
    )
    calls = _record_train_calls(model)
    model.learn(200)
    # Every second episode end (50, 100, 150, 200 steps); never in between, even after learning_starts (30)
    assert calls == [(t, updates_per_call, True) for t in (50, 100, 150, 200)]
    assert model._n_updates == 4 * updates_per_call


def test_optimize_memory_usage_trains_as_the_full_buffer_does():
    """The memory-efficient buffer stores s' only as the next slot's s: training on it is unchanged (no episode end)."""
    models = []
    for optimize_memory_usage in (True, False):
        model = PaperDDPG(
            "Pendulum-v1",
            policy_kwargs=SMALL,
            buffer_size=1000,
            learning_starts=50,
            optimize_memory_usage=optimize_memory_usage,
            replay_buffer_kwargs=dict(handle_timeout_termination=False),  # SB3 requires it with optimize_memory_usage
            seed=0,
        )
        model.learn(150)  # within the first 200-step episode: no reset observation overwrites a next state
        models.append(model)
    efficient, full = models
    assert efficient.replay_buffer.optimize_memory_usage and not hasattr(efficient.replay_buffer, "next_observations")
    assert efficient._n_updates == full._n_updates == 100
    assert_same_model_parameters(efficient, full)


def assert_same_model_parameters(a: PaperDDPG, b: PaperDDPG) -> None:
    state_a, state_b = a.policy.state_dict(), b.policy.state_dict()
    assert list(state_a) == list(state_b)
    for key, value in state_a.items():
        assert th.equal(value, state_b[key]), key


def test_get_set_parameters():
    source = PaperDDPG("Pendulum-v1", policy_kwargs=SMALL, learning_starts=20, seed=0)
    source.learn(60)
    target = PaperDDPG("Pendulum-v1", policy_kwargs=SMALL, seed=5)
    target.set_parameters(source.get_parameters())
    assert set(source.get_parameters()) == {"policy", "actor.optimizer", "critic.optimizer"}
    for v1, v2 in zip(source.policy.state_dict().values(), target.policy.state_dict().values(), strict=True):
        assert th.equal(v1, v2)
    assert target.critic.optimizer.state_dict()["param_groups"] == source.critic.optimizer.state_dict()["param_groups"]


def test_replay_buffer_save_load(tmp_path):
    model = PaperDDPG("Pendulum-v1", policy_kwargs=SMALL, learning_starts=20, buffer_size=500)
    model.learn(100)
    model.save_replay_buffer(tmp_path / "buffer.pkl")
    other = PaperDDPG("Pendulum-v1", policy_kwargs=SMALL, buffer_size=500)
    other.load_replay_buffer(tmp_path / "buffer.pkl")
    assert other.replay_buffer.size() == 100
    np.testing.assert_array_equal(other.replay_buffer.observations, model.replay_buffer.observations)
    np.testing.assert_array_equal(other.replay_buffer.actions, model.replay_buffer.actions)


def test_callbacks(tmp_path):
    eval_env = make_vec_env("Pendulum-v1", n_envs=1)
    callbacks = [
        EvalCallback(
            eval_env,
            eval_freq=100,
            n_eval_episodes=2,
            best_model_save_path=str(tmp_path / "best"),
            log_path=str(tmp_path / "eval"),
        ),
        CheckpointCallback(save_freq=100, save_path=str(tmp_path / "ckpt"), save_replay_buffer=True),
    ]
    model = PaperDDPG("Pendulum-v1", policy_kwargs=SMALL, learning_starts=50, buffer_size=1000)
    model.learn(200, callback=callbacks)
    assert (tmp_path / "best" / "best_model.zip").exists()
    assert np.load(tmp_path / "eval" / "evaluations.npz")["results"].shape == (2, 2)
    loaded = PaperDDPG.load(tmp_path / "ckpt" / "rl_model_200_steps.zip")
    loaded.load_replay_buffer(tmp_path / "ckpt" / "rl_model_replay_buffer_200_steps.pkl")
    assert loaded.replay_buffer.size() == 199  # SB3 calls callbacks before storing the step's transition


def test_her_trains_on_relabelled_goals():
    env = BitFlippingEnv(n_bits=4, continuous=True, max_steps=4)
    model = PaperDDPG(
        "MultiInputPolicy",
        env,
        replay_buffer_class=HerReplayBuffer,
        replay_buffer_kwargs=dict(n_sampled_goal=2, goal_selection_strategy="future"),
        policy_kwargs=SMALL,
        learning_starts=40,
        buffer_size=1000,
        batch_size=30,
        seed=0,
    )
    assert isinstance(model.replay_buffer, HerReplayBuffer)
    batches = []
    sample = model.replay_buffer.sample

    def recording_sample(*args, **kwargs):
        batches.append(sample(*args, **kwargs))
        return batches[-1]

    model.replay_buffer.sample = recording_sample
    model.learn(120)
    assert model._n_updates == len(batches) == 80  # every update trained on a HER batch
    desired = th.cat([b.observations["desired_goal"] for b in batches]).view(80, 30, 4)
    next_desired = th.cat([b.next_observations["desired_goal"] for b in batches]).view(80, 30, 4)
    next_achieved = th.cat([b.next_observations["achieved_goal"] for b in batches]).view(80, 30, 4)
    rewards = th.cat([b.rewards for b in batches]).view(80, 30)
    # BitFlippingEnv's real goal is always all ones. n_sampled_goal=2: 2/3 of every batch (the last 20 of 30) are
    # virtual transitions whose goal is a later achieved goal of their episode, which is rarely all ones
    real, virtual = desired[:, :10], desired[:, 10:]
    assert th.all(real == 1)
    relabelled = (virtual != 1).any(dim=-1)
    assert relabelled.float().mean() > 0.5
    assert th.equal(next_desired, desired)  # s and s' of a transition share its (new) goal
    # The rewards were recomputed for the goals the batch carries: 0 when the next state reaches the goal, else -1
    assert th.equal(rewards, -(next_achieved != desired).any(dim=-1).float())
    assert (rewards[:, 10:][relabelled] == 0).any()  # relabelled successes: what HER adds to the data


def test_tensorboard_logs_the_training_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    env = make_vec_env("Pendulum-v1", n_envs=1, env_kwargs=dict(max_episode_steps=50))
    model = PaperDDPG(env=env, policy_kwargs=SMALL, learning_starts=50, tensorboard_log=str(tmp_path), seed=0)
    model.learn(220, log_interval=1)  # the logs are written at every episode end: steps 50, 100, 150, 200
    (event_file,) = (tmp_path / "PaperDDPG_1").glob("events.out.tfevents.*")
    events = EventAccumulator(str(event_file))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert "train/n_updates" not in tags  # excluded from tensorboard, as SB3 does
    for key in ("train/actor_loss", "train/critic_loss", "train/q_mean", "train/learning_rate", "train/qf_learning_rate"):
        scalars = events.Scalars(key)
        assert [s.step for s in scalars] == [100, 150, 200], key  # no training before learning_starts
        assert all(np.isfinite(s.value) for s in scalars), key
    assert [s.value for s in events.Scalars("train/learning_rate")] == [pytest.approx(1e-4)] * 3
    assert [s.value for s in events.Scalars("train/qf_learning_rate")] == [pytest.approx(1e-3)] * 3
    assert [s.step for s in events.Scalars("rollout/exploration_epsilon")] == [50, 100, 150, 200]
    assert [s.step for s in events.Scalars("rollout/ep_rew_mean")] == [50, 100, 150, 200]


def test_progress_bar_advances_to_the_total(capsys):
    pytest.importorskip("tqdm")
    pytest.importorskip("rich")
    model = PaperDDPG("Pendulum-v1", policy_kwargs=SMALL, learning_starts=50)
    model.learn(220, progress_bar=True)
    output = capsys.readouterr().out
    assert "220/220" in output and "100%" in output
    model.learn(30, progress_bar=True, reset_num_timesteps=False)  # the steps of this call only
    output = capsys.readouterr().out
    assert "30/30" in output and "220/" not in output


def test_seed_determinism():
    def run():
        model = PaperDDPG("Pendulum-v1", policy_kwargs=SMALL, learning_starts=50, seed=7)
        model.learn(200)
        return [p.detach().clone() for p in model.policy.parameters()], model.action_noise.state.copy()

    (params_a, noise_a), (params_b, noise_b) = run(), run()
    assert all(th.equal(a, b) for a, b in zip(params_a, params_b, strict=True))
    np.testing.assert_array_equal(noise_a, noise_b)


# ----------------------------------------------------------------------------- learning
@pytest.mark.slow
def test_paper_defaults_learn_pendulum():
    """Core acceptance: paper defaults (batch norm on) reach -300 or better at 20,000 steps."""
    model = PaperDDPG("Pendulum-v1", seed=0)
    model.learn(20_000)
    from stable_baselines3.common.evaluation import evaluate_policy

    eval_env = gym.make("Pendulum-v1")
    eval_env.reset(seed=1000)
    mean_return, _ = evaluate_policy(model, eval_env, n_eval_episodes=10, deterministic=True)
    assert mean_return >= -300, mean_return
