"""Learning from pixels as the paper did (Lillicrap et al. 2016, sec. 7): network, wrapper, defaults, training."""

import os
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from gymnasium.wrappers import TimeLimit
from init_stats import assert_uniform
from PIL import Image
from torch import nn

from sb3_ddpg_paper import CnnPolicy, PaperCNN, PaperDDPG, ddpg_conv2d_block
from sb3_ddpg_paper.envs import PIXEL_ENV_IDS, PixelObservation, make_pixel_env
from sb3_ddpg_paper.torch_layers import PIXEL_FINAL_LAYER_INIT_BOUND, batch_norm_modules

REPO_ROOT = Path(__file__).resolve().parent.parent
PIXEL_PENDULUM = "sb3_ddpg_paper/PixelPendulum-v1"
OBS_SPACE = spaces.Box(0, 255, (9, 64, 64), np.uint8)
ACTION_SPACE = spaces.Box(-2.0, 2.0, (1,), np.float32)
# Small pixel networks for training tests (the architecture tests build the paper's sizes)
TINY = dict(net_arch=[32, 32], features_extractor_kwargs=dict(filters=8))


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def make_policy(**kwargs) -> CnnPolicy:
    return CnnPolicy(OBS_SPACE, ACTION_SPACE, lambda _: 1e-4, **kwargs)


# ------------------------------------------------------------------------------------------------- the conv tower
def test_conv_block_has_three_layers_of_32_filters_without_pooling():
    block, n_features = ddpg_conv2d_block((9, 64, 64))
    convs = [m for m in block if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (9, 32, (3, 3), (2, 2)),
        (32, 32, (3, 3), (2, 2)),
        (32, 32, (3, 3), (2, 2)),
    ]
    assert not any(isinstance(m, nn.MaxPool2d | nn.AvgPool2d) for m in block.modules())
    assert sum(isinstance(m, nn.ReLU) for m in block) == 3
    # 64 -> 31 -> 15 -> 7 pixels per side, 32 channels
    assert n_features == 32 * 7 * 7
    assert block(th.rand(2, 9, 64, 64)).shape == (2, n_features)


def test_conv_block_fixes_the_notebook_filters_and_kernel_mixup():
    # The notebook's ddpg_conv2d_block((3, 100, 100)) built 3 filters of size 32x32; this one builds 32 filters.
    block, n_features = ddpg_conv2d_block((3, 100, 100), batch_norm=False)
    convs = [m for m in block if isinstance(m, nn.Conv2d)]
    assert all(c.out_channels == 32 and c.kernel_size == (3, 3) for c in convs)
    assert block(th.rand(1, 3, 100, 100)).shape == (1, n_features)
    block, n_features = ddpg_conv2d_block((3, 100, 100), filters=16, kernel_size=5, stride=1, padding=2, n_layers=2)
    assert n_features == 16 * 100 * 100
    assert block.eval()(th.rand(1, 3, 100, 100)).shape == (1, n_features)


def test_conv_block_refuses_channels_last_input_and_says_how_to_fix_it():
    with pytest.raises(ValueError, match=r"channels-last.*\(9, 64, 64\).*np.transpose"):
        ddpg_conv2d_block((64, 64, 9))
    block, n_features = ddpg_conv2d_block((32, 32, 16), ignore_warning=True)  # taken as 32 channels of 32x16 pixels
    assert isinstance(block[0], nn.BatchNorm2d) and block[0].num_features == 32 and n_features == 32 * 3 * 1
    with pytest.raises(ValueError, match="too small"):
        ddpg_conv2d_block((3, 8, 8))
    with pytest.raises(ValueError, match=r"image shape \(channels, height, width\)"):
        ddpg_conv2d_block((3, 64))
    with pytest.raises(ValueError, match="PaperCNN needs an image observation space"):
        PaperCNN(spaces.Box(-1, 1, (4,)))


def test_batch_norm_placement_in_the_conv_tower():
    block, _ = ddpg_conv2d_block((9, 64, 64))
    kinds = [type(m).__name__ for m in block]
    assert kinds == ["BatchNorm2d"] + ["Conv2d", "BatchNorm2d", "ReLU"] * 3 + ["Flatten"]
    assert all(m.bias is None for m in block if isinstance(m, nn.Conv2d))  # BN's shift replaces the bias
    block, _ = ddpg_conv2d_block((9, 64, 64), batch_norm=False)
    assert not batch_norm_modules(block)
    assert all(m.bias is not None for m in block if isinstance(m, nn.Conv2d))


def paper_network_params(flat: int, action_dim: int, batch_norm: bool) -> tuple[int, int]:
    """Parameter counts of the actor and critic from the layer sizes: 3 conv layers of 32 3x3 filters, 200-200."""
    conv = 9 * 32 * 9 + 2 * 32 * 32 * 9  # weights
    if batch_norm:
        conv += 2 * 9 + 3 * 2 * 32  # BN on the image and after each conv (the conv layers have no bias)
        actor = conv + 2 * flat + flat * 200 + 2 * 200 + 200 * 200 + 2 * 200 + 200 * action_dim + action_dim
    else:
        conv += 3 * 32
        actor = conv + flat * 200 + 200 + 200 * 200 + 200 + 200 * action_dim + action_dim
    critic = conv + (2 * flat if batch_norm else 0) + (flat + action_dim) * 200 + 200 + 200 * 200 + 200 + 200 + 1
    return actor, critic


@pytest.mark.parametrize("batch_norm", [True, False])
def test_default_cnn_policy_is_the_papers_pixel_network(batch_norm):
    policy = make_policy(batch_norm=batch_norm)
    actor_count, critic_count = paper_network_params(32 * 7 * 7, 1, batch_norm)
    assert (n_params(policy.actor), n_params(policy.critic)) == (actor_count, critic_count)
    # The paper reports ~430,000 parameters; 3x3 stride-2 convolutions without padding give ~375k per network,
    # with padding 1 ~471k: the two bracket it (docs/pixels.md)
    padded = make_policy(batch_norm=False, features_extractor_kwargs=dict(padding=1))
    assert n_params(padded.actor) == paper_network_params(32 * 8 * 8, 1, False)[0]
    assert n_params(policy.actor) < 430_000 < n_params(padded.actor)
    assert policy.net_arch == [200, 200]
    # The policy's batch-norm switch reaches the conv tower
    assert bool(batch_norm_modules(policy.actor.features_extractor)) is batch_norm
    assert isinstance(policy.actor.mu[-1], nn.Tanh)


def test_actor_critic_and_targets_each_have_their_own_conv_tower():
    policy = make_policy()
    nets = [policy.actor, policy.critic, policy.actor_target, policy.critic_target]
    extractors = [net.features_extractor for net in nets]
    assert all(isinstance(e, PaperCNN) for e in extractors)
    assert len({id(e) for e in extractors}) == 4
    param_ids = [{id(p) for p in net.parameters()} for net in nets]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not param_ids[i] & param_ids[j]


def test_the_action_enters_the_critic_at_the_first_fully_connected_layer():
    policy = make_policy()
    q_net = policy.critic.q_networks[0]
    n_features = policy.critic.features_extractor.features_dim
    # Nothing but the state-input batch norm before the action: the first Linear sees features + action
    assert not any(isinstance(m, nn.Linear) for m in q_net.state_net.modules())
    first_linear = next(m for m in q_net.joint_net if isinstance(m, nn.Linear))
    assert first_linear.in_features == n_features + 1
    # The conv tower sees the image only (9 channels, no action plane)
    seen = []
    first_conv = next(m for m in policy.critic.features_extractor.modules() if isinstance(m, nn.Conv2d))
    first_conv.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape))
    obs = th.randint(0, 256, (4, 9, 64, 64), dtype=th.uint8)
    actions = th.zeros(4, 1, requires_grad=True)
    policy.set_training_mode(False)
    policy.critic(obs, actions)[0].sum().backward()
    assert seen == [th.Size([4, 9, 64, 64])]
    assert actions.grad is not None and actions.grad.abs().sum() > 0


def test_final_layers_use_the_pixel_init_bound():
    """Final-layer weights AND biases are drawn from U(-3e-4, 3e-4): the distribution is checked, not one draw."""
    th.manual_seed(0)
    policies = [make_policy() for _ in range(20)]  # 2 biases per policy: 40 draws of the bias distribution
    assert all(p.final_layer_init_bound == PIXEL_FINAL_LAYER_INIT_BOUND == 3e-4 for p in policies)
    final_layers = [layer for p in policies for layer in (p.actor.mu[-2], p.critic.q_networks[0].output_layer)]
    assert all(layer.in_features == 200 and layer.out_features == 1 for layer in final_layers)
    assert_uniform([layer.weight for layer in final_layers[:2]], 3e-4)  # one policy's 400 weights already
    assert_uniform([layer.weight for layer in final_layers], 3e-4)
    assert_uniform([layer.bias for layer in final_layers], 3e-4)
    # Conv layers and the hidden fully connected layers: U(+-1/sqrt(fan_in)), the paper's init for the other layers
    policy = policies[0]
    for net in (policy.actor, policy.critic):
        convs = [m for m in net.features_extractor.modules() if isinstance(m, nn.Conv2d)]
        assert [tuple(c.weight.shape) for c in convs] == [(32, 9, 3, 3), (32, 32, 3, 3), (32, 32, 3, 3)]
        for conv in convs:
            assert conv.bias is None  # batch norm follows: its shift replaces the bias
            assert_uniform(conv.weight, 1 / np.sqrt(conv.in_channels * 3 * 3))
        hidden = [m for m in net.modules() if isinstance(m, nn.Linear)][:-1]
        assert len(hidden) == 2
        for layer in hidden:
            tensors = [layer.weight] if layer.bias is None else [layer.weight, layer.bias]  # no bias before batch norm
            assert_uniform(tensors, 1 / np.sqrt(layer.in_features))


def test_conv_batch_norm_uses_batch_statistics_in_training_and_running_statistics_in_eval():
    th.manual_seed(0)
    policy = make_policy()
    conv_bns = batch_norm_modules(policy.actor.features_extractor)
    assert any(isinstance(bn, nn.BatchNorm2d) for bn in conv_bns)
    obs = th.randint(0, 256, (8, 9, 64, 64), dtype=th.uint8)
    policy.set_training_mode(True)
    before = conv_bns[1].running_mean.clone()
    full = policy.actor(obs)
    assert not th.equal(conv_bns[1].running_mean, before)  # training updates the running statistics
    assert not th.allclose(policy.actor(obs[:4]), full[:4])  # ... and normalises with the batch's statistics
    policy.set_training_mode(False)
    frozen = [bn.running_mean.clone() for bn in conv_bns]
    eval_full = policy.actor(obs)
    th.testing.assert_close(policy.actor(obs[:4]), eval_full[:4])  # eval: each sample on its own
    assert all(th.equal(bn.running_mean, m) for bn, m in zip(conv_bns, frozen, strict=True))


# ------------------------------------------------------------------------------------------------- the wrapper
class CountingEnv(gym.Env):
    """Counts simulation steps; renders a 30x40 image filled with the step count; reward = step count."""

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, render_mode="rgb_array", terminate_at=None):
        self.render_mode = render_mode
        self.terminate_at = terminate_at
        self.observation_space = spaces.Box(-1, 1, (1,), np.float32)
        self.action_space = spaces.Box(-1, 1, (1,), np.float32)
        self.count = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.count = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.count += 1
        terminated = self.terminate_at is not None and self.count >= self.terminate_at
        return np.zeros(1, np.float32), float(self.count), terminated, False, {"count": self.count}

    def render(self):
        return np.full((30, 40, 3), 10 * self.count, dtype=np.uint8)


def frame_values(obs: np.ndarray) -> list[int]:
    """The value each of the stacked renders was filled with (all pixels of a render are equal)."""
    return [int(obs[3 * i : 3 * i + 3].mean()) for i in range(obs.shape[0] // 3)]


def test_pixel_observation_repeats_the_action_and_sums_the_reward():
    env = PixelObservation(CountingEnv())
    assert env.observation_space == spaces.Box(0, 255, (9, 64, 64), np.uint8)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (9, 64, 64) and obs.dtype == np.uint8
    assert frame_values(obs) == [0, 0, 0]  # one render of the initial state in every slot
    obs, reward, terminated, truncated, info = env.step(np.zeros(1))
    assert env.unwrapped.count == 3 and info["action_repeats"] == 3
    assert reward == 1 + 2 + 3
    assert frame_values(obs) == [10, 20, 30]  # oldest render first, resized from 30x40 to 64x64
    assert env.observation_space.contains(obs) and not terminated and not truncated
    obs, reward, *_ = env.step(np.zeros(1))
    assert reward == 4 + 5 + 6 and frame_values(obs) == [40, 50, 60]


def test_termination_mid_repeat_stops_and_holds_the_last_render():
    env = PixelObservation(CountingEnv(terminate_at=5))
    env.reset()
    env.step(np.zeros(1))
    obs, reward, terminated, truncated, info = env.step(np.zeros(1))
    assert terminated and not truncated
    assert env.unwrapped.count == 5 and info["action_repeats"] == 2
    assert reward == 4 + 5
    assert frame_values(obs) == [40, 50, 50]


def test_truncation_mid_repeat_counts_simulation_steps():
    env = PixelObservation(TimeLimit(CountingEnv(), max_episode_steps=4))
    env.reset()
    env.step(np.zeros(1))
    obs, reward, terminated, truncated, info = env.step(np.zeros(1))
    assert truncated and not terminated
    assert info["action_repeats"] == 1 and reward == 4 and frame_values(obs) == [40, 40, 40]


def test_pendulum_reads_its_arrow_image_once_and_renders_the_same(monkeypatch):
    import pygame

    from sb3_ddpg_paper.envs.pixels import PAPER_ACTION_REPEAT

    loads = []
    load = pygame.image.load
    monkeypatch.setattr(pygame.image, "load", lambda file, *args: loads.append(file) or load(file, *args))
    monkeypatch.setattr("sb3_ddpg_paper.envs.pixels._LOADED_IMAGES", {})
    cached, plain = make_pixel_env("Pendulum-v1"), make_pixel_env("Pendulum-v1")
    plain.cache_images = False
    assert cached.cache_images
    for env in (cached, plain):
        env.reset(seed=3)
    for action in (-2.0, 0.5, 2.0, -0.1, 1.3):  # the arrow's size and direction follow the action
        obs_cached = cached.step(np.array([action], np.float32))[0]
        obs_plain = plain.step(np.array([action], np.float32))[0]
        np.testing.assert_array_equal(obs_cached, obs_plain)
    renders = 1 + 5 * PAPER_ACTION_REPEAT  # reset, then 3 renders per step
    assert len(loads) == 1 + renders  # cached: at the first render only; plain: at every render
    assert pygame.image.load is not load and pygame.image.load.__name__ == "<lambda>"  # the cache is undone after it


def test_pixel_observation_validates_its_input():
    with pytest.raises(ValueError, match="render_mode='rgb_array'"):
        PixelObservation(CountingEnv(render_mode=None))
    with pytest.raises(ValueError, match="action_repeat must be a positive integer"):
        PixelObservation(CountingEnv(), action_repeat=0)
    with pytest.raises(ValueError, match="render_mode must be 'rgb_array' or None"):
        make_pixel_env("Pendulum-v1", render_mode="human")


def test_every_low_dimensional_task_has_a_pixel_id():
    assert set(PIXEL_ENV_IDS) == {
        "Pendulum-v1",
        "MountainCarContinuous-v0",
        "InvertedPendulum-v5",
        "InvertedDoublePendulum-v5",
        "Reacher-v5",
        "Hopper-v5",
        "HalfCheetah-v5",
        "Walker2d-v5",
    }
    assert all(pixel_id == f"sb3_ddpg_paper/Pixel{env_id}" for env_id, pixel_id in PIXEL_ENV_IDS.items())


@pytest.mark.parametrize("env_id", sorted(PIXEL_ENV_IDS))
def test_registered_pixel_envs_render_headless(env_id):
    env = gym.make(PIXEL_ENV_IDS[env_id], render_mode="rgb_array")  # as SB3 makes an env from an id
    # The documented spaces: three 64x64 RGB renders, channels first; the task's own actions
    assert env.observation_space == spaces.Box(0, 255, (9, 64, 64), np.uint8)
    low_dim = gym.make(env_id)
    assert env.action_space == low_dim.action_space
    low_dim.close()
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    np.testing.assert_array_equal(obs[:3], obs[6:])  # at reset the one render fills every slot
    env.action_space.seed(0)
    for _ in range(3):
        obs, reward, terminated, _, info = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs)
        assert isinstance(reward, float) and info["action_repeats"] in (1, 2, 3)
    assert obs.std() > 0  # a real picture, not a blank render
    assert not np.array_equal(obs[:3], obs[6:]) or terminated  # the renders follow the simulation
    env.close()


def test_pixel_pendulum_episode_lasts_200_simulation_steps():
    env = make_pixel_env("Pendulum-v1")
    env.reset(seed=0)
    agent_steps, repeats, truncated = 0, 0, False
    while not truncated:
        _, _, _, truncated, info = env.step(env.action_space.sample())
        agent_steps, repeats = agent_steps + 1, repeats + info["action_repeats"]
    assert (agent_steps, repeats) == (67, 200)


def test_pixel_ids_register_without_importing_the_package_or_rl_zoo3():
    code = (
        "import sys, gymnasium as gym\n"
        "env = gym.make('sb3_ddpg_paper:sb3_ddpg_paper/PixelPendulum-v1')\n"
        "print(env.observation_space.shape, 'rl_zoo3' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("(9, 64, 64) False")


# ------------------------------------------------------------------------------------------------- PaperDDPG
def test_pixel_env_id_picks_cnn_policy_and_the_papers_pixel_settings():
    model = PaperDDPG(PIXEL_PENDULUM, _init_setup_model=False)
    assert model.policy_class is CnnPolicy
    assert (model.batch_size, model.buffer_size) == (16, PaperDDPG.pixel_defaults["buffer_size"])
    low_dim = PaperDDPG("Pendulum-v1", _init_setup_model=False)
    assert (low_dim.batch_size, low_dim.buffer_size) == (64, 1_000_000)
    # Explicit values win
    model = PaperDDPG(PIXEL_PENDULUM, batch_size=32, buffer_size=500, learning_starts=10)
    assert (model.batch_size, model.buffer_size) == (32, 500)
    assert model.policy.final_layer_init_bound == 3e-4 and model.policy.action_layer == 0


def test_a_replay_buffer_that_cannot_fit_in_memory_is_refused():
    with pytest.raises(ValueError, match=r"replay buffer would need .* GB .* Pass a smaller buffer_size"):
        PaperDDPG(PIXEL_PENDULUM, buffer_size=10**9)


def test_short_training_run_from_pixels_updates_every_network(tmp_path):
    model = PaperDDPG(PIXEL_PENDULUM, buffer_size=300, learning_starts=40, batch_size=8, policy_kwargs=TINY, seed=0)
    critic_bn = next(bn for bn in batch_norm_modules(model.critic) if isinstance(bn, nn.BatchNorm2d))
    before = {name: p.clone() for name, p in model.policy.named_parameters()}
    model.learn(100)
    assert model._n_updates == 100 - 40
    assert model.replay_buffer.observations.dtype == np.uint8
    assert model.replay_buffer.observations.shape[-3:] == (9, 64, 64)
    changed = {name.split(".")[0] for name, p in model.policy.named_parameters() if not th.equal(p, before[name])}
    assert changed == {"actor", "critic", "actor_target", "critic_target"}
    # The critic's conv batch norm counts each training batch once (the actor step's pass does not update it), and the
    # targets receive the online running statistics but normalise with their own batch's statistics
    assert int(critic_bn.num_batches_tracked) == 60
    target_bns = batch_norm_modules(model.critic_target)
    assert all(bn.training and not bn.track_running_stats for bn in target_bns)
    for online, target in zip(batch_norm_modules(model.critic), target_bns, strict=True):
        assert th.equal(online.running_mean, target.running_mean)


def test_cnn_policy_model_save_load_round_trip(tmp_path):
    policy_kwargs = dict(
        net_arch=[16, 16],
        batch_norm_momentum=0.2,
        features_extractor_kwargs=dict(filters=4, kernel_size=4, stride=3, padding=1),
    )
    model = PaperDDPG(PIXEL_PENDULUM, buffer_size=100, learning_starts=10, batch_size=4, policy_kwargs=policy_kwargs)
    model.learn(20)
    model.save(tmp_path / "pixels.zip")
    loaded = PaperDDPG.load(tmp_path / "pixels.zip", buffer_size=100)
    extractor = loaded.actor.features_extractor
    conv = next(m for m in extractor.modules() if isinstance(m, nn.Conv2d))
    assert (conv.out_channels, conv.kernel_size, conv.stride, conv.padding) == (4, (4, 4), (3, 3), (1, 1))
    assert batch_norm_modules(extractor)[0].momentum == 0.2  # the policy's setting reached the conv tower
    assert loaded.batch_size == 4
    obs = np.random.default_rng(0).integers(0, 256, (3, 9, 64, 64), dtype=np.uint8)
    np.testing.assert_allclose(loaded.predict(obs)[0], model.predict(obs)[0])
    for name, tensor in model.policy.state_dict().items():
        assert th.equal(tensor, loaded.policy.state_dict()[name]), name
    # Policy alone
    model.policy.save(tmp_path / "policy.pth")
    policy = CnnPolicy.load(tmp_path / "policy.pth")
    np.testing.assert_allclose(policy.predict(obs)[0], model.predict(obs)[0])


def test_pixels_pendulum_example_trains_from_pixels_and_writes_a_gif(tmp_path):
    args = ["--steps", "34", "--learning-starts", "30", "--buffer-size", "100", "--gif-steps", "5"]
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "examples" / "pixels_pendulum.py"), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        # This checkout's package, headless, one thread
        env={"OMP_NUM_THREADS": "1", "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO_ROOT)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "policy CnnPolicy, batch 16" in result.stdout
    with Image.open(tmp_path / "pixels_pendulum.gif") as image:
        assert image.format == "GIF" and image.size == (256, 256) and image.n_frames == 5
