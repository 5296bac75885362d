"""
The core guarantees on every available device (CPU always; CUDA where present, as SB3's ``device="auto"`` picks it):
one update against the reference Algorithm 1, save/load, exact resume, export. ``benchmarks/gpu_check.sh`` runs the
CUDA cases (test ids ending in ``on_cuda``).
"""

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.env_util import make_vec_env
from test_reliability import Crash, assert_same_parameters
from test_sameness import ACTOR_LR, CRITIC_LR, GAMMA, TAU, WEIGHT_DECAY, ReferenceDDPG, assert_same_networks

from sb3_ddpg_paper import PaperDDPG
from sb3_ddpg_paper.checkpoints import learn_with_checkpoints
from sb3_ddpg_paper.export import export_policy, load_exported_policy


def make_model(device: str, batch_norm: bool = True, mlp_update: bool = True, learning_starts: int = 50) -> PaperDDPG:
    return PaperDDPG(
        "MlpPolicy",
        make_vec_env("Pendulum-v1", n_envs=2, seed=0, env_kwargs=dict(max_episode_steps=50)),
        learning_rate=ACTOR_LR,
        qf_learning_rate=CRITIC_LR,
        critic_weight_decay=WEIGHT_DECAY,
        tau=TAU,
        gamma=GAMMA,
        buffer_size=1_000,
        learning_starts=learning_starts,
        batch_size=32,
        policy_kwargs=dict(net_arch=[16, 12], batch_norm=batch_norm),
        mlp_update=mlp_update,
        seed=0,
        device=device,
    )


@pytest.mark.parametrize("mlp_update", [True, False])
@pytest.mark.parametrize("batch_norm", [True, False])
def test_train_matches_reference_algorithm_1(device, batch_norm, mlp_update):
    model = make_model(device, batch_norm, mlp_update, learning_starts=300)
    model.learn(300)  # warm-up only
    assert model._n_updates == 0 and model.actor.mu[-2].weight.device.type == device
    reference = ReferenceDDPG(model)
    np.random.seed(123)
    model.train(gradient_steps=5, batch_size=32)
    np.random.seed(123)
    for _ in range(5):
        reference.step(model.replay_buffer.sample(32))
    assert_same_networks(model, reference, n_steps=5)


def test_save_and_load(tmp_path, device):
    model = make_model(device)
    model.learn(120)
    model.save(tmp_path / "model")
    loaded = PaperDDPG.load(tmp_path / "model", device=device)
    assert loaded.device.type == device
    assert_same_parameters(model, loaded)
    obs = np.random.default_rng(0).uniform(-1, 1, (8, 3)).astype(np.float32)
    assert np.array_equal(loaded.predict(obs)[0], model.predict(obs)[0])
    loaded.set_env(model.get_env())
    loaded.learn(20, reset_num_timesteps=False)  # and it trains on
    assert loaded._n_updates == model._n_updates + 10


def test_resume_after_a_crash_equals_the_uninterrupted_run(tmp_path, device):
    reference = learn_with_checkpoints(lambda: make_model(device), tmp_path / "reference", 200, save_freq=40)
    with pytest.raises(KeyboardInterrupt):
        learn_with_checkpoints(lambda: make_model(device), tmp_path / "crashed", 200, save_freq=40, callback=Crash(130))
    resumed = learn_with_checkpoints(lambda: make_model(device), tmp_path / "crashed", 200, save_freq=40)
    assert resumed.device.type == device and resumed.num_timesteps == 200
    assert_same_parameters(reference, resumed)


def test_export_and_load(tmp_path, device):
    model = make_model(device)
    model.learn(120)
    export_policy(model, tmp_path / "policy.safetensors", include_critic=True)
    obs = np.random.default_rng(0).uniform(-1, 1, (8, 3)).astype(np.float32)
    actions = model.predict(obs)[0]
    for load_device in sorted({"cpu", device}):
        policy = load_exported_policy(tmp_path / "policy.safetensors", device=load_device)
        assert next(policy.actor.parameters()).device.type == load_device
        # Exact on the device it was trained on; across devices, to float32 rounding of the kernels
        np.testing.assert_allclose(policy.predict(obs)[0], actions, rtol=0, atol=0 if load_device == device else 1e-6)
        assert np.all(np.isfinite(policy.q_value(obs, actions)))
    assert th.cuda.is_available() or device == "cpu"
