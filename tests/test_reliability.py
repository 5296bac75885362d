"""Crash-safe checkpoints, exact resume (SIGKILL included) and determinism."""

import multiprocessing
import os
import random
import select
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch as th
from stable_baselines3 import DDPG, TD3, HerReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import BitFlippingEnv
from stable_baselines3.common.noise import NormalActionNoise
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

from sb3_ddpg_paper import PaperDDPG, checkpoints
from sb3_ddpg_paper.checkpoints import (
    MANIFEST_NAME,
    CheckpointError,
    CrashSafeCheckpointCallback,
    latest_checkpoint,
    learn_with_checkpoints,
    list_checkpoints,
    load_checkpoint,
    verify_checkpoint,
)
from sb3_ddpg_paper.files import atomic_write

TOTAL = 300
SAVE_FREQ = 25
DECAY = 400  # epsilon is still decaying at the end: it pins down how many steps the noise has seen


def make_model(n_envs: int = 1, seed: int = 0) -> PaperDDPG:
    return PaperDDPG(
        "MlpPolicy",
        make_vec_env("Pendulum-v1", n_envs=n_envs, seed=seed),
        buffer_size=1_000,
        learning_starts=50,
        batch_size=16,
        policy_kwargs=dict(net_arch=[16, 16]),
        action_noise_kwargs=dict(epsilon_decay_steps=DECAY, min_epsilon=0.1),
        seed=seed,
    )


def parameters(model: PaperDDPG) -> dict[str, th.Tensor]:
    """Every tensor that defines the model: networks (batch-norm statistics included) and both optimizers."""
    tensors = {f"policy.{k}": v for k, v in model.policy.state_dict().items()}
    for name, optimizer in (("actor", model.actor.optimizer), ("critic", model.critic.optimizer)):
        for index, state in optimizer.state_dict()["state"].items():
            tensors.update({f"{name}.opt.{index}.{k}": th.as_tensor(v) for k, v in state.items()})
    return tensors


def assert_same_parameters(a: PaperDDPG, b: PaperDDPG) -> None:
    pa, pb = parameters(a), parameters(b)
    assert pa.keys() == pb.keys()
    different = [k for k in pa if not th.equal(pa[k], pb[k])]
    assert not different, f"tensors differ: {different[:5]}"


class Crash(BaseCallback):
    """Raises in the middle of a rollout (between env.step and the replay-buffer write): a crash at a bad moment."""

    def __init__(self, at: int):
        super().__init__()
        self.at = at

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.at:
            raise KeyboardInterrupt(f"simulated crash at step {self.num_timesteps}")
        return True


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> PaperDDPG:
    """An uninterrupted run with checkpoints."""
    return learn_with_checkpoints(make_model, tmp_path_factory.mktemp("reference"), TOTAL, save_freq=SAVE_FREQ)


# ---------------------------------------------------------------------------------------------------- determinism
def test_same_seed_same_parameters_with_or_without_checkpoints(reference):
    # Same seed, CPU, one thread: bitwise identical networks (batch-norm statistics included), optimizers and noise.
    # The reference run wrote checkpoints on the way: this also shows that checkpoints consume no randomness.
    first = make_model().learn(TOTAL)
    assert_same_parameters(first, reference)
    assert np.array_equal(first.replay_buffer.actions, reference.replay_buffer.actions)  # the noise was identical
    # ... and the seed matters
    assert not th.equal(make_model(seed=1).actor.mu[1].weight, first.actor.mu[1].weight)


def test_determinism_with_several_envs():
    first, second = make_model(n_envs=2).learn(120), make_model(n_envs=2).learn(120)
    assert_same_parameters(first, second)


# ---------------------------------------------------------------------------------------------------- exact resume
def test_interrupted_and_resumed_run_equals_uninterrupted_run(tmp_path, reference):
    directory = tmp_path / "run"
    for crash_at in (70, 160, 233):  # mid-rollout crashes; resumes go back to the last checkpoint before them
        with pytest.raises(KeyboardInterrupt):
            learn_with_checkpoints(make_model, directory, TOTAL, save_freq=SAVE_FREQ, callback=Crash(crash_at))
        assert max(verify_checkpoint(p)["num_timesteps"] for p in list_checkpoints(directory)) < crash_at
    resumed = learn_with_checkpoints(make_model, directory, TOTAL, save_freq=SAVE_FREQ)

    assert resumed.num_timesteps == reference.num_timesteps == TOTAL
    assert resumed._n_updates == reference._n_updates
    assert resumed._episode_num == reference._episode_num
    assert resumed.replay_buffer.size() == reference.replay_buffer.size()
    assert np.array_equal(resumed.replay_buffer.observations, reference.replay_buffer.observations)
    assert resumed.action_noise.epsilon == reference.action_noise.epsilon
    assert np.array_equal(resumed.action_noise.state, reference.action_noise.state)
    assert_same_parameters(resumed, reference)
    # The learning-rate schedule continued the same total_timesteps
    assert resumed._total_timesteps == TOTAL
    assert resumed._current_progress_remaining == reference._current_progress_remaining


def test_resume_classmethod_restores_everything(tmp_path, reference):
    directory = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        learn_with_checkpoints(make_model, directory, TOTAL, save_freq=SAVE_FREQ, callback=Crash(140))
    model = PaperDDPG.resume(directory)
    step = model.num_timesteps
    assert step == 125 == verify_checkpoint(latest_checkpoint(directory))["num_timesteps"]
    assert model.replay_buffer.size() == step
    assert model.action_noise.num_steps == step
    # One documented call continues the same schedule
    model.learn(TOTAL - model.num_timesteps, reset_num_timesteps=False)
    assert_same_parameters(model, reference)


def test_resume_with_a_new_env_continues_but_starts_new_episodes(tmp_path):
    directory = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        learn_with_checkpoints(make_model, directory, TOTAL, save_freq=SAVE_FREQ, callback=Crash(110))
    with pytest.raises(ValueError, match=r"replay buffer .* 1 environment"):
        PaperDDPG.resume(directory, env=make_vec_env("Pendulum-v1", n_envs=2))
    model = PaperDDPG.resume(directory, env=make_vec_env("Pendulum-v1", n_envs=1, seed=5))
    assert model._last_obs is None  # the new env is reset: a new episode
    model.learn(TOTAL - model.num_timesteps, reset_num_timesteps=False)
    assert model.num_timesteps == model.replay_buffer.size() == TOTAL
    assert model.action_noise.num_steps == TOTAL  # the epsilon schedule went on


def test_exact_resume_with_her(tmp_path):
    def make_her_model() -> PaperDDPG:
        return PaperDDPG("MultiInputPolicy", BitFlippingEnv(n_bits=4, continuous=True, max_steps=8), buffer_size=500,
                         learning_starts=30, batch_size=8, replay_buffer_class=HerReplayBuffer,
                         replay_buffer_kwargs=dict(n_sampled_goal=2), policy_kwargs=dict(net_arch=[8]), seed=0)  # fmt: skip

    uninterrupted = learn_with_checkpoints(make_her_model, tmp_path / "a", 120, save_freq=20)
    with pytest.raises(KeyboardInterrupt):  # mid-episode: HER must continue the trajectory, not truncate it
        learn_with_checkpoints(make_her_model, tmp_path / "b", 120, save_freq=20, callback=Crash(77))
    resumed = learn_with_checkpoints(make_her_model, tmp_path / "b", 120, save_freq=20)
    assert resumed.replay_buffer.size() == uninterrupted.replay_buffer.size()
    assert_same_parameters(resumed, uninterrupted)


@pytest.mark.parametrize("buffer_size", [1_000_000, 64])  # partly filled; full, wrapped around
def test_checkpoints_hold_only_the_filled_rows_of_the_replay_buffer(tmp_path, buffer_size):
    model = PaperDDPG("MlpPolicy", "Pendulum-v1", buffer_size=buffer_size, learning_starts=50, batch_size=16,
                      policy_kwargs=dict(net_arch=[16, 16]), seed=0)  # fmt: skip
    model.learn(100, callback=CrashSafeCheckpointCallback(tmp_path, save_freq=100))
    saved = latest_checkpoint(tmp_path) / "replay_buffer.pkl"
    assert saved.stat().st_size < 50_000  # 100 or 64 transitions; SB3's save_replay_buffer writes 40 MB for 1e6
    buffer, resumed = model.replay_buffer, PaperDDPG.resume(tmp_path).replay_buffer
    assert type(resumed) is type(buffer) and (resumed.pos, resumed.full) == (buffer.pos, buffer.full)
    for name in ("observations", "next_observations", "actions", "rewards", "dones", "timeouts"):
        assert getattr(resumed, name).shape == getattr(buffer, name).shape
        assert np.array_equal(getattr(resumed, name), getattr(buffer, name))


def test_exact_resume_of_a_mujoco_env_mid_episode(tmp_path):
    # gymnasium's MuJoCo envs pickle their constructor arguments only; checkpoints add the simulator's MjData and the
    # env's generator, so a Hopper (episodes that end early: resets use that generator) resumes mid-episode exactly.
    def make_hopper() -> PaperDDPG:
        return PaperDDPG("MlpPolicy", "Hopper-v5", buffer_size=1_000, learning_starts=50, batch_size=16,
                         policy_kwargs=dict(net_arch=[16, 16]), seed=0)  # fmt: skip

    uninterrupted = learn_with_checkpoints(make_hopper, tmp_path / "a", 300, save_freq=40)
    with pytest.raises(KeyboardInterrupt):
        learn_with_checkpoints(make_hopper, tmp_path / "b", 300, save_freq=40, callback=Crash(215))
    resumed = learn_with_checkpoints(make_hopper, tmp_path / "b", 300, save_freq=40)
    assert resumed._episode_num == uninterrupted._episode_num > 2
    assert np.array_equal(resumed.replay_buffer.observations, uninterrupted.replay_buffer.observations)
    assert_same_parameters(resumed, uninterrupted)


@pytest.mark.parametrize("algorithm_class", [TD3, DDPG])
def test_exact_resume_of_sb3_algorithms(tmp_path, algorithm_class):
    # The checkpoint callback puts back what load and learn() reset for any SB3 off-policy algorithm: TD3's target
    # smoothing noise (torch RNG), the Gaussian exploration noise and the buffer sampling (numpy's global RNG).
    def make_sb3_model():
        return algorithm_class("MlpPolicy", make_vec_env("Pendulum-v1", n_envs=1, seed=0), buffer_size=1_000,
                               learning_starts=50, batch_size=16, policy_kwargs=dict(net_arch=[16, 16]),
                               action_noise=NormalActionNoise(np.zeros(1), 0.1 * np.ones(1)), seed=0)  # fmt: skip

    uninterrupted = learn_with_checkpoints(make_sb3_model, tmp_path / "a", TOTAL, SAVE_FREQ, algorithm_class=algorithm_class)
    with pytest.raises(KeyboardInterrupt):
        learn_with_checkpoints(make_sb3_model, tmp_path / "b", TOTAL, SAVE_FREQ, callback=Crash(160),
                               algorithm_class=algorithm_class)  # fmt: skip
    resumed = learn_with_checkpoints(make_sb3_model, tmp_path / "b", TOTAL, SAVE_FREQ, algorithm_class=algorithm_class)
    assert type(resumed) is algorithm_class and resumed.num_timesteps == TOTAL
    assert type(load_checkpoint(tmp_path / "b")) is algorithm_class  # the class named in the checkpoint's manifest
    assert np.array_equal(resumed.replay_buffer.actions, uninterrupted.replay_buffer.actions)
    assert_same_parameters(resumed, uninterrupted)


@pytest.mark.parametrize(
    ("env_id", "subprocess", "reason"),
    [
        ("Pendulum-v1", True, "the environment cannot be pickled"),
        # Box2D envs pickle their constructor arguments only, and Box2D has no way to set its state back
        ("LunarLander-v3", False, "LunarLander pickles its constructor arguments, not its state"),
    ],
)
def test_env_without_a_faithful_snapshot_needs_an_env_to_resume(tmp_path, env_id, subprocess, reason):
    vec_env_cls = SubprocVecEnv if subprocess else DummyVecEnv
    env_kwargs = dict(continuous=True) if env_id == "LunarLander-v3" else None
    env = make_vec_env(env_id, n_envs=1, seed=0, vec_env_cls=vec_env_cls, env_kwargs=env_kwargs,
                       vec_env_kwargs=dict(start_method="fork") if subprocess else None)  # fmt: skip
    try:
        model = PaperDDPG("MlpPolicy", env, buffer_size=500, learning_starts=20, policy_kwargs=dict(net_arch=[8]), seed=0)
        with pytest.warns(UserWarning, match=f"Checkpoints hold no environment snapshot: {reason}"):
            model.learn(30, callback=CrashSafeCheckpointCallback(tmp_path, save_freq=10))
    finally:
        env.close()
    with pytest.raises(CheckpointError, match=rf"holds no environment snapshot \({reason}.*pass the environment"):
        PaperDDPG.resume(tmp_path)
    resumed = PaperDDPG.resume(tmp_path, env=make_vec_env(env_id, n_envs=1, seed=1, env_kwargs=env_kwargs))
    assert resumed.num_timesteps == 30 and resumed.replay_buffer.size() == 30
    resumed.learn(10, reset_num_timesteps=False)
    assert resumed.num_timesteps == 40


def test_resume_skips_a_corrupted_newest_checkpoint_and_refuses_an_empty_directory(tmp_path):
    with pytest.raises(CheckpointError, match="No complete checkpoint"):
        PaperDDPG.resume(tmp_path)
    model = make_model()
    model.learn(60, callback=CrashSafeCheckpointCallback(tmp_path, save_freq=20, keep_last=None))
    checkpoints = list_checkpoints(tmp_path)
    assert [verify_checkpoint(p)["num_timesteps"] for p in checkpoints] == [20, 40, 60]
    replay = checkpoints[-1] / "replay_buffer.pkl"
    data = bytearray(replay.read_bytes())
    data[len(data) // 2] ^= 0xFF
    replay.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="does not match its manifest"):
        assert PaperDDPG.resume(tmp_path).num_timesteps == 40


def test_keep_last_and_stale_temporaries(tmp_path):
    (tmp_path / ".tmp-checkpoint_000000000999-abc").mkdir()  # what a writer killed mid-checkpoint leaves
    model = make_model()
    model.learn(100, callback=CrashSafeCheckpointCallback(tmp_path, save_freq=20, keep_last=2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_000000000080", "checkpoint_000000000100"]


def test_checkpoint_callback_validates_its_arguments(tmp_path):
    with pytest.raises(ValueError, match="save_freq must be an integer >= 1"):
        CrashSafeCheckpointCallback(tmp_path, save_freq=0)
    with pytest.raises(ValueError, match="keep_last must be an integer >= 1 or None"):
        CrashSafeCheckpointCallback(tmp_path, save_freq=10, keep_last=0)


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "model.zip"
    path.write_bytes(b"old")

    def failing_write(file):
        file.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, failing_write)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.zip"]


def test_model_save_is_atomic(tmp_path, monkeypatch):
    model = make_model()
    model.save(tmp_path / "model")
    before = (tmp_path / "model.zip").read_bytes()
    monkeypatch.setattr("stable_baselines3.common.base_class.save_to_zip_file", _raise_disk_full)
    with pytest.raises(OSError, match="disk full"):
        model.save(tmp_path / "model")
    assert (tmp_path / "model.zip").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.zip"]


def _raise_disk_full(*args, **kwargs):
    raise OSError("disk full")


# ---------------------------------------------------------------------------------------------------- SIGKILL
class _StepSignal(BaseCallback):
    """Tell the parent b"S" after every environment step, so that kills are placed by progress, not by wall time."""

    def __init__(self, write_fd: int):
        super().__init__()
        self.write_fd = write_fd

    def _on_step(self) -> bool:
        os.write(self.write_fd, b"S")
        return True


def _train_in_child(directory: str, write_fd: int, write_delay: float) -> None:
    """Forked child: train with checkpoints; tell the parent b"R" (running), b"S" (one step) and b"W" (inside a
    checkpoint write)."""
    original = checkpoints._write_replay_buffer

    def slow_write_replay_buffer(buffer, path):
        os.write(write_fd, b"W")
        time.sleep(write_delay)  # widen the window so that the kill lands inside the checkpoint write
        original(buffer, path)

    checkpoints._write_replay_buffer = slow_write_replay_buffer
    os.write(write_fd, b"R")
    learn_with_checkpoints(make_model, directory, TOTAL, save_freq=SAVE_FREQ, keep_last=2, callback=_StepSignal(write_fd))
    os.write(write_fd, b"D")


def _wait_for(read_fd: int, token: bytes, timeout: float, count: int = 1) -> bool:
    """Read the child's pipe until ``token`` has been seen ``count`` times; False if the child exits or time runs out."""
    deadline = time.monotonic() + timeout
    seen = 0
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([read_fd], [], [], left)
        if not ready:
            break
        data = os.read(read_fd, 1)  # one byte at a time: tokens after the awaited one stay in the pipe
        if not data:  # the child exited
            return False
        seen += data == token
        if seen >= count:
            return True
    return False


def _assert_directory_consistent(directory: Path) -> None:
    checkpoints = list_checkpoints(directory)
    assert len(checkpoints) <= 3  # keep_last=2, plus one written before the previous was pruned
    for path in checkpoints:
        verify_checkpoint(path)  # every file present, with its recorded size and SHA-256
        assert sorted(p.name for p in path.iterdir()) == sorted([MANIFEST_NAME, "model.zip", "replay_buffer.pkl", "state.pkl"])
    for path in directory.iterdir():  # anything else is a temporary that no resume ever reads
        assert path in checkpoints or path.name.startswith((".tmp-", ".trash-")), path


def test_sigkill_at_random_moments_then_resume(tmp_path, reference):
    directory = tmp_path / "run"
    rng = random.Random(0)
    context = multiprocessing.get_context("fork")  # the child inherits the imports: no interpreter start-up per kill
    for attempt in range(6):
        # Kills are placed by progress, not by wall time, so that a fast or a loaded machine alike is killed 6 times
        # before the 300 steps are done: even attempts at the first checkpoint write after the resume (slowed down to
        # widen the window), odd ones after a random number of steps (a checkpoint is every 25).
        inside_write = attempt % 2 == 0
        read_fd, write_fd = os.pipe()
        child = context.Process(target=_train_in_child, args=(str(directory), write_fd, 0.15 if inside_write else 0.0))
        child.start()
        os.close(write_fd)
        try:
            assert _wait_for(read_fd, b"R", timeout=60), "the child did not start"
            if inside_write:
                reached = _wait_for(read_fd, b"W", timeout=60)
                if reached:
                    time.sleep(rng.uniform(0.0, 0.2))  # inside the 0.15 s delay, the write after it, or just after
            else:
                reached = _wait_for(read_fd, b"S", timeout=60, count=rng.randint(1, SAVE_FREQ + 10))
            assert reached, "the child finished before it could be killed"
            os.kill(child.pid, signal.SIGKILL)
            child.join(60)
        finally:
            os.close(read_fd)
            if child.is_alive():  # an assertion failed before the kill: never leave the child training on
                child.kill()
                child.join(60)
        assert child.exitcode == -signal.SIGKILL
        _assert_directory_consistent(directory)
        # Every kill leaves a resumable directory whose newest checkpoint is self-consistent
        if list_checkpoints(directory):
            model = load_checkpoint(directory)
            assert model.replay_buffer.size() == model.num_timesteps == model.action_noise.num_steps
            assert model.num_timesteps == verify_checkpoint(latest_checkpoint(directory))["num_timesteps"]

    final = learn_with_checkpoints(make_model, directory, TOTAL, save_freq=SAVE_FREQ, keep_last=2)
    _assert_directory_consistent(directory)
    assert final.num_timesteps == reference.num_timesteps == TOTAL
    assert final.replay_buffer.size() == reference.replay_buffer.size() == TOTAL
    assert final.action_noise.epsilon == reference.action_noise.epsilon
    assert_same_parameters(final, reference)
    shutil.rmtree(directory)
