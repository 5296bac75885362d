"""
Crash-safe checkpoints and exact resume for :class:`~sb3_ddpg_paper.PaperDDPG` (and SB3's off-policy algorithms).

A checkpoint is a directory ``checkpoint_<num_timesteps>`` holding ``model.zip`` (the model, its optimizers and
counters), ``replay_buffer.pkl`` (the filled rows only), ``state.pkl`` (every random generator, the exploration noise,
and a snapshot of the environment when it can be pickled, MuJoCo physics included) and ``manifest.json`` (size and
SHA-256 of each file). It is written in a temporary directory inside the checkpoint directory; every file and the
temporary directory are fsynced, then the temporary directory is renamed to its final name (an atomic ``rename``) and
the parent directory is fsynced. A crash at any moment, SIGKILL during a write included, therefore leaves either no new
checkpoint or a complete one; checkpoints whose manifest does not match their files are skipped when resuming.

Checkpoints are taken at the start of a rollout (after the previous gradient steps, before the next action), the one
point of SB3's loop where the model, the replay buffer and the environment agree. Resuming puts back everything that
loading and ``learn()`` reset (global RNGs, the noise's generator and process state, the action space's generator), so
that on CPU a resumed run ends with the same parameters, bit for bit, as an uninterrupted run with the same seed.

Usage::

    from sb3_ddpg_paper import PaperDDPG
    from sb3_ddpg_paper.checkpoints import learn_with_checkpoints

    # Starts a new run, or resumes the last complete checkpoint of "runs/pendulum" after a crash
    model = learn_with_checkpoints(
        lambda: PaperDDPG("MlpPolicy", "Pendulum-v1", seed=0), "runs/pendulum", total_timesteps=100_000, save_freq=5_000
    )

Security: ``state.pkl``, ``replay_buffer.pkl`` and ``model.zip`` are unpickled on resume: resume only your own
checkpoints. To share a policy, use :mod:`sb3_ddpg_paper.export`.
"""

import importlib
import json
import os
import pickle
import random
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import torch as th
from gymnasium.utils import EzPickle
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback
from stable_baselines3.common.vec_env import VecEnvWrapper, unwrap_vec_normalize

from sb3_ddpg_paper.files import TEMP_PREFIX, fsync_path, sha256
from sb3_ddpg_paper.noise import OrnsteinUhlenbeckNoise

CHECKPOINT_PREFIX = "checkpoint_"
TRASH_PREFIX = ".trash-"
MANIFEST_NAME = "manifest.json"
MODEL_NAME = "model.zip"
REPLAY_BUFFER_NAME = "replay_buffer.pkl"
STATE_NAME = "state.pkl"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """No usable checkpoint (none complete, or every one fails its manifest check)."""


# ---------------------------------------------------------------------------------------------------- listing
def _step_of(path: Path) -> int | None:
    suffix = path.name[len(CHECKPOINT_PREFIX) :]
    return int(suffix) if path.name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit() else None


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Complete (renamed) checkpoint directories, oldest first. Temporary directories are never listed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(step, path) for path in directory.iterdir() if path.is_dir() and (step := _step_of(path)) is not None]
    return [path for _, path in sorted(found)]


def verify_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """
    Check a checkpoint against its manifest (every file present with the recorded size and SHA-256).

    :param path: a ``checkpoint_<steps>`` directory
    :return: the manifest
    :raises CheckpointError: naming what does not match
    """
    path = Path(path)
    manifest_path = path / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path} has no readable {MANIFEST_NAME} ({error}).") from error
    valid = isinstance(manifest, dict) and manifest.get("format") == FORMAT_VERSION
    if not (valid and isinstance(manifest.get("files"), dict)):
        raise CheckpointError(f"{manifest_path} is not a version-{FORMAT_VERSION} checkpoint manifest.")
    for name in (MODEL_NAME, REPLAY_BUFFER_NAME, STATE_NAME):
        entry = manifest["files"].get(name)
        file = path / name
        if not isinstance(entry, dict) or not file.is_file():
            raise CheckpointError(f"{path} lacks {name}.")
        if file.stat().st_size != entry.get("size") or sha256(file) != entry.get("sha256"):
            raise CheckpointError(f"{file} does not match its manifest (size or SHA-256): the file is corrupted.")
    return manifest


def latest_checkpoint(directory: str | os.PathLike) -> Path:
    """
    The newest checkpoint of ``directory`` that passes :func:`verify_checkpoint` (a corrupted newer one is skipped
    with a warning).

    :raises CheckpointError: when there is none
    """
    problems = []
    for path in reversed(list_checkpoints(directory)):
        try:
            verify_checkpoint(path)
        except CheckpointError as error:
            warnings.warn(f"Skipping checkpoint {path}: {error}")
            problems.append(str(error))
            continue
        return path
    detail = f" Rejected: {'; '.join(problems)}" if problems else ""
    raise CheckpointError(f"No complete checkpoint in {directory}.{detail}")


def remove_stale_temporaries(directory: str | os.PathLike) -> None:
    """Delete the temporary and half-deleted directories a killed writer left behind (one writer per directory)."""
    directory = Path(directory)
    if directory.is_dir():
        for path in directory.iterdir():
            if path.name.startswith((TEMP_PREFIX, TRASH_PREFIX)):
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)


def _prune(directory: Path, keep_last: int) -> None:
    for path in list_checkpoints(directory)[:-keep_last]:
        # Renamed first, so that a crash in the middle of rmtree never leaves a half-deleted "checkpoint_*"
        trash = path.with_name(f"{TRASH_PREFIX}{path.name}")
        os.rename(path, trash)
        shutil.rmtree(trash, ignore_errors=True)
    fsync_path(directory)


# ---------------------------------------------------------------------------------------------------- training state
def _rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # SB3's replay buffer samples with the global numpy generator
        "torch": th.get_rng_state(),
    }
    if th.cuda.is_available() and th.cuda.is_initialized():
        states["torch_cuda"] = th.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    th.set_rng_state(states["torch"])
    if "torch_cuda" in states and th.cuda.is_available():
        th.cuda.set_rng_state_all(states["torch_cuda"])


def _mujoco_env_class() -> type | None:
    # Not imported here: importing MuJoCo fixes its rendering backend (MUJOCO_GL) for the process. If gymnasium's
    # MuJoCo module is not loaded, no MuJoCo env exists.
    module = sys.modules.get("gymnasium.envs.mujoco.mujoco_env")
    return None if module is None else module.MujocoEnv


def _physics_state(env: Any) -> dict[str, Any]:
    """A MuJoCo env's simulation data (state, warm start and derived quantities: all of ``MjData``) and its RNG."""
    return {"mj_data": env.data, "np_random": env._np_random}


def _set_physics_state(env: Any, saved: dict[str, Any]) -> None:
    import mujoco

    mujoco.mj_copyData(env.data, env.model, saved["mj_data"])
    env._np_random = saved["np_random"]


def _sub_envs(venv: Any) -> list[Any]:
    while isinstance(venv, VecEnvWrapper):
        venv = venv.venv
    return list(getattr(venv, "envs", []))


def _env_snapshot(model: OffPolicyAlgorithm) -> tuple[bytes | None, str | None]:
    """
    Pickle the training VecEnv together with the model's action space (they are often the same object) and, for
    MuJoCo envs, their physics state.
    """
    if model.env is None:
        return None, "the model has no environment"
    if unwrap_vec_normalize(model.env) is not None:
        return None, "VecNormalize does not pickle its wrapped environment"
    mujoco_env = _mujoco_env_class()
    physics: list[dict[str, Any] | None] = []
    for env in _sub_envs(model.env):
        state = None
        while env is not None:
            if isinstance(env, EzPickle):  # a pickle holds the constructor arguments, not the state
                if mujoco_env is not None and isinstance(env, mujoco_env) and getattr(env, "env", None) is None:
                    # MuJoCo: the unpickled env is rebuilt from its arguments, then given the saved physics state
                    state = _physics_state(env)
                else:  # Box2D...: no public way to set the simulator's state
                    return None, f"{type(env).__name__} pickles its constructor arguments, not its state (EzPickle)"
            env = getattr(env, "env", None)
        physics.append(state)
    try:
        return cloudpickle.dumps((model.env, model.action_space, physics)), None
    except Exception as error:  # SubprocVecEnv, open files, simulators with native handles...
        return None, f"the environment cannot be pickled ({type(error).__name__}: {error})"


def _env_from_snapshot(data: bytes) -> tuple[Any, Any]:
    """The VecEnv and action space of :func:`_env_snapshot`, MuJoCo physics put back where it was."""
    env, action_space, *rest = pickle.loads(data)  # checkpoints before MuJoCo snapshots hold (env, action_space)
    for sub_env, state in zip(_sub_envs(env), rest[0] if rest else [], strict=False):
        if state is not None:
            _set_physics_state(sub_env.unwrapped, state)
    return env, action_space


def _training_state(model: OffPolicyAlgorithm) -> dict[str, Any]:
    env_bytes, env_problem = _env_snapshot(model)
    if env_problem is not None:
        warnings.warn(
            f"Checkpoints hold no environment snapshot: {env_problem}. Resuming will need env= and starts new "
            "episodes, so the resumed run is not bitwise that of an uninterrupted one."
        )
    return {
        "rng": _rng_states(),
        # The noise is also inside model.zip, but loading re-seeds it and learn() resets its process state
        "action_noise": model.action_noise,
        "action_space_rng": getattr(model.action_space, "_np_random", None),
        "env": env_bytes,
        "env_problem": env_problem,
    }


def restore_training_state(model: OffPolicyAlgorithm, state: dict[str, Any], exact_env: bool) -> None:
    """
    Put back the state that ``load`` and ``learn()`` reset: global RNGs, the noise (generator, epsilon schedule and,
    with the saved environment, its process state) and the action space's generator (see
    :func:`resume_pending_state`).
    """
    _set_rng_states(state["rng"])
    noise = state["action_noise"]
    if exact_env:
        model.action_noise = noise
    elif isinstance(noise, OrnsteinUhlenbeckNoise) and model.env is not None:
        noise.set_n_envs(model.env.num_envs)  # a new environment starts new episodes: fresh processes
        model.action_noise = noise
    if not exact_env and state["action_space_rng"] is not None:
        model.action_space._np_random = state["action_space_rng"]


# ---------------------------------------------------------------------------------------------------- replay buffer
def _rows_of(value: Any, buffer_size: int) -> bool:
    """Whether ``value`` is one of a replay buffer's preallocated per-transition arrays (object arrays are kept)."""
    return isinstance(value, np.ndarray) and value.ndim >= 1 and value.shape[0] == buffer_size and value.dtype != object


class _FilledRows:
    """
    Pickles a replay buffer with only the rows filled so far; unpickling gives back the full-size buffer
    (:func:`_full_buffer`), so ``OffPolicyAlgorithm.load_replay_buffer`` reads the file as any SB3 buffer pickle.
    SB3's own ``save_replay_buffer`` writes the preallocated arrays whole: 1e6 transitions from the first checkpoint on.
    """

    def __init__(self, buffer: Any):
        self.buffer = buffer

    def __reduce__(self) -> tuple[Any, ...]:
        buffer = self.buffer
        state = dict(buffer.__getstate__())  # a copy of its attributes (HerReplayBuffer leaves out its env)
        filled = buffer.buffer_size if buffer.full else buffer.pos
        trimmed = []
        for name, value in state.items():
            if _rows_of(value, buffer.buffer_size):
                state[name] = value[:filled]
            elif isinstance(value, dict) and value and all(_rows_of(v, buffer.buffer_size) for v in value.values()):
                state[name] = {key: array[:filled] for key, array in value.items()}  # DictReplayBuffer
            else:
                continue
            trimmed.append(name)
        return _full_buffer, (type(buffer), state, trimmed, buffer.buffer_size)


def _full_buffer(cls: type, state: dict[str, Any], trimmed: list[str], buffer_size: int) -> Any:
    def full(rows: np.ndarray) -> np.ndarray:
        array = np.zeros((buffer_size, *rows.shape[1:]), dtype=rows.dtype)  # as SB3 preallocates them
        array[: len(rows)] = rows
        return array

    for name in trimmed:
        value = state[name]
        state[name] = {key: full(rows) for key, rows in value.items()} if isinstance(value, dict) else full(value)
    buffer: Any = object.__new__(cls)
    if hasattr(buffer, "__setstate__"):
        buffer.__setstate__(state)
    else:
        buffer.__dict__.update(state)
    return buffer


def _write_replay_buffer(buffer: Any, path: Path) -> None:
    """Only the filled rows; SB3's ``load_replay_buffer`` reads the file back as the full-size buffer."""
    with open(path, "wb") as file:
        pickle.dump(_FilledRows(buffer), file, protocol=pickle.HIGHEST_PROTOCOL)


# ---------------------------------------------------------------------------------------------------- save / load
def save_checkpoint(model: OffPolicyAlgorithm, directory: str | os.PathLike, keep_last: int | None = None) -> Path:
    """
    Write a crash-safe checkpoint of ``model`` into ``directory`` (see the module docstring) and keep the newest
    ``keep_last`` checkpoints. Call it at a rollout boundary (as :class:`CrashSafeCheckpointCallback` does): between
    ``env.step`` and the end of a step, SB3's counters, buffer and last observation disagree.

    :param model: the model to save
    :param directory: the checkpoint directory (created if needed); one training run writes to it at a time
    :param keep_last: how many checkpoints to keep (``None``: all)
    :return: the checkpoint written
    """
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last must be an integer >= 1 or None, got {keep_last!r}.")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = f"{CHECKPOINT_PREFIX}{model.num_timesteps:012d}"
    final = directory / name
    if final.exists():  # the same step again (e.g. the end of a resumed run that had nothing left to do)
        return final
    tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{name}-", dir=directory))
    try:
        model.save(tmp / MODEL_NAME)
        assert model.replay_buffer is not None
        _write_replay_buffer(model.replay_buffer, tmp / REPLAY_BUFFER_NAME)
        with open(tmp / STATE_NAME, "wb") as file:
            pickle.dump(_training_state(model), file, protocol=pickle.HIGHEST_PROTOCOL)
        files = {}
        for file_name in (MODEL_NAME, REPLAY_BUFFER_NAME, STATE_NAME):
            fsync_path(tmp / file_name)
            files[file_name] = {"size": (tmp / file_name).stat().st_size, "sha256": sha256(tmp / file_name)}
        manifest = {
            "format": FORMAT_VERSION,
            "algorithm": type(model).__name__,
            "algorithm_class": f"{type(model).__module__}.{type(model).__qualname__}",
            "num_timesteps": int(model.num_timesteps),
            "total_timesteps": int(model._total_timesteps),
            "files": files,
        }
        with open(tmp / MANIFEST_NAME, "w") as file:
            json.dump(manifest, file, indent=1)
            file.flush()
            os.fsync(file.fileno())
        fsync_path(tmp)
        os.rename(tmp, final)  # atomic: the checkpoint appears complete or not at all
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_path(directory)
    if keep_last is not None:
        _prune(directory, keep_last)
    return final


def load_checkpoint(
    directory: str | os.PathLike,
    env: GymEnv | None = None,
    device: th.device | str = "auto",
    algorithm_class: type[OffPolicyAlgorithm] | None = None,
) -> OffPolicyAlgorithm:
    """
    Load the newest complete checkpoint of ``directory``: model, optimizers, replay buffer, counters, noise and RNGs.
    The next ``learn(..., reset_num_timesteps=False)`` continues the run; :func:`learn_with_checkpoints` does it in
    one call.

    :param directory: the checkpoint directory, or one ``checkpoint_<steps>`` directory
    :param env: ``None`` (recommended): the environment saved in the checkpoint, mid-episode where it was, so that the
        run continues exactly. An environment: used instead (required when the training env could not be pickled,
        e.g. ``SubprocVecEnv``); it starts new episodes, so the run continues but not bit for bit.
    :param device: device of the loaded model
    :param algorithm_class: the class to load with (default: the class that wrote the checkpoint, named in its
        manifest; :class:`~sb3_ddpg_paper.PaperDDPG` for checkpoints that name none). SB3's off-policy algorithms
        too: their RNG and noise state is put back by :class:`CrashSafeCheckpointCallback` at the start of the next
        ``learn()``
    :return: the model, ready to continue learning
    """
    path = Path(directory)
    if _step_of(path) is not None:
        verify_checkpoint(path)
    else:
        path = latest_checkpoint(path)
    if algorithm_class is None:
        algorithm_class = _saved_algorithm_class(json.loads((path / MANIFEST_NAME).read_text()))
    with open(path / STATE_NAME, "rb") as file:
        state = pickle.load(file)
    exact_env = env is None
    action_space = None
    if env is None:
        if state["env"] is None:
            raise CheckpointError(
                f"{path} holds no environment snapshot ({state['env_problem']}): pass the environment, "
                "e.g. load_checkpoint(directory, env=make_env())."
            )
        env, action_space = _env_from_snapshot(state["env"])
    # The saved env keeps the saved last observation (the episode goes on); a new env is reset
    model: Any = algorithm_class.load(path / MODEL_NAME, env=env, device=device, force_reset=not exact_env)
    if action_space is not None:
        model.action_space = action_space  # the one the env holds: they share a generator
    # The saved env continues the episode in progress (HER: do not truncate the last trajectory); a new env does not
    model.load_replay_buffer(path / REPLAY_BUFFER_NAME, truncate_last_traj=not exact_env)
    assert model.env is not None and model.replay_buffer is not None
    if model.replay_buffer.n_envs != model.env.num_envs:
        raise ValueError(
            f"The replay buffer of {path} was filled by {model.replay_buffer.n_envs} environment(s); the environment "
            f"given has {model.env.num_envs}. Resume with the same number of environments."
        )
    model._resume_state = (state, exact_env)  # put back by resume_pending_state at the start of the next learn()
    return model


def _saved_algorithm_class(manifest: dict[str, Any]) -> type[OffPolicyAlgorithm]:
    """The class that wrote a checkpoint, by the path in its manifest (as pickle finds classes)."""
    # Checkpoints written before the manifest named the class were PaperDDPG's unless loaded with another class
    module, _, name = manifest.get("algorithm_class", "sb3_ddpg_paper.ddpg.PaperDDPG").rpartition(".")
    return getattr(importlib.import_module(module), name)


def resume_pending_state(model: OffPolicyAlgorithm) -> None:
    """
    The one place where a resumed run gets back what ``load`` and ``learn()`` reset (:func:`restore_training_state`):
    called at the start of every ``learn()``, by ``PaperDDPG._setup_learn`` and by :class:`CrashSafeCheckpointCallback`
    (for SB3's algorithms), after SB3 has reset the noise. The state that :func:`load_checkpoint` left on the model is
    used once, by a ``learn(..., reset_num_timesteps=False)`` that continues the run; a fresh ``learn()`` drops it.
    """
    pending = model.__dict__.pop("_resume_state", None)
    if pending is not None and model._num_timesteps_at_start > 0:
        restore_training_state(model, *pending)


class CrashSafeCheckpointCallback(BaseCallback):
    """
    Save a crash-safe checkpoint (:func:`save_checkpoint`) every ``save_freq`` environment steps and at the end of
    training, keeping the newest ``keep_last``.

    Checkpoints are taken when ``num_timesteps`` crosses a multiple of ``save_freq`` (counted over all envs, like
    ``num_timesteps``), at the next rollout start, so that an interrupted and an uninterrupted run checkpoint at the
    same steps.

    :param directory: the checkpoint directory (one training run per directory)
    :param save_freq: checkpoint every ``save_freq`` environment steps
    :param keep_last: how many checkpoints to keep (``None``: all)
    :param verbose: 1: print a line per checkpoint
    """

    def __init__(self, directory: str | os.PathLike, save_freq: int, keep_last: int | None = 2, verbose: int = 0):
        super().__init__(verbose)
        if isinstance(save_freq, bool) or not isinstance(save_freq, int) or save_freq < 1:
            raise ValueError(f"save_freq must be an integer >= 1, got {save_freq!r}.")
        if keep_last is not None and (isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1):
            raise ValueError(f"keep_last must be an integer >= 1 or None, got {keep_last!r}.")
        self.directory = Path(directory)
        self.save_freq = save_freq
        self.keep_last = keep_last
        self._in_rollout = False
        self._last_saved = 0

    def _init_callback(self) -> None:
        remove_stale_temporaries(self.directory)

    def _on_training_start(self) -> None:
        self._in_rollout = False
        resume_pending_state(self.model)  # type: ignore[arg-type]  # SB3's algorithms (PaperDDPG has done it in _setup_learn)
        checkpoints = list_checkpoints(self.directory)
        self._last_saved = (_step_of(checkpoints[-1]) or 0) if checkpoints else 0

    def _on_rollout_start(self) -> None:
        self._in_rollout = True
        if self.num_timesteps // self.save_freq > self._last_saved // self.save_freq:
            self.save()

    def _on_rollout_end(self) -> None:
        self._in_rollout = False

    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        # Only at a consistent point: a rollout stopped by a callback ended between env.step and the buffer update
        if not self._in_rollout and self.num_timesteps > 0:
            self.save()

    def save(self) -> Path:
        """Write a checkpoint now."""
        path = save_checkpoint(self.model, self.directory, keep_last=self.keep_last)  # type: ignore[arg-type]
        self._last_saved = self.num_timesteps
        if self.verbose >= 1:
            print(f"Checkpoint {path}")
        return path


def learn_with_checkpoints(
    make_model: Callable[[], OffPolicyAlgorithm],
    directory: str | os.PathLike,
    total_timesteps: int,
    save_freq: int,
    keep_last: int | None = 2,
    callback: MaybeCallback = None,
    log_interval: int = 4,
    env: GymEnv | None = None,
    device: th.device | str = "auto",
    algorithm_class: type[OffPolicyAlgorithm] | None = None,
) -> OffPolicyAlgorithm:
    """
    Train for ``total_timesteps`` with crash-safe checkpoints, resuming from the newest complete checkpoint of
    ``directory`` when there is one. Run the same call again after a crash: it continues where the last checkpoint
    left off, with the same learning-rate schedule (same ``total_timesteps``) and, on CPU, the same result.

    :param make_model: builds the model of a new run (not called when resuming), e.g.
        ``lambda: PaperDDPG("MlpPolicy", "Pendulum-v1", seed=0)``
    :param directory: the checkpoint directory
    :param total_timesteps: total environment steps of the whole run
    :param save_freq: checkpoint every ``save_freq`` environment steps
    :param keep_last: how many checkpoints to keep (``None``: all)
    :param callback: further callbacks for ``learn()``
    :param log_interval: as in ``learn()``
    :param env: when resuming: ``None`` for the saved environment (exact), or an environment (see :func:`load_checkpoint`)
    :param device: device when resuming
    :param algorithm_class: the class to resume with (default: the one named in the checkpoint; SB3's off-policy
        algorithms, e.g. ``TD3``, resume exactly too)
    :return: the trained model
    """
    checkpoint_callback = CrashSafeCheckpointCallback(directory, save_freq, keep_last)
    if list_checkpoints(directory):
        model = load_checkpoint(directory, env=env, device=device, algorithm_class=algorithm_class)
        reset_num_timesteps = False
    else:
        model = make_model()
        reset_num_timesteps = True
    remaining = total_timesteps - model.num_timesteps
    if remaining <= 0:
        model.__dict__.pop("_resume_state", None)
        return model
    callbacks = [checkpoint_callback] if callback is None else [checkpoint_callback, callback]
    # learn(n, reset_num_timesteps=False) runs n MORE steps: the schedule's total stays total_timesteps
    model.learn(
        remaining,
        callback=CallbackList(callbacks),  # type: ignore[arg-type]
        log_interval=log_interval,
        reset_num_timesteps=reset_num_timesteps,
    )
    return model
