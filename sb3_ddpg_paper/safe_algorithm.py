"""
What SB3's ``OffPolicyAlgorithm`` leaves to the user, done for :class:`~sb3_ddpg_paper.PaperDDPG`: saving that a crash
cannot half-write, loading that checks the file before unpickling it, resuming from a crash-safe checkpoint, and
refusing non-finite data (observations, rewards) before it reaches the replay buffer or the policy, with errors that
name the cause. The algorithm itself is in :mod:`sb3_ddpg_paper.ddpg`; docs/reliability.md describes these guarantees.
"""

import io
import os
import pathlib
from collections.abc import Iterable
from typing import Any, TypeVar

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.type_aliases import GymEnv
from stable_baselines3.common.vec_env import VecEnv

from sb3_ddpg_paper.checkpoints import latest_checkpoint, load_checkpoint
from sb3_ddpg_paper.files import atomic_write, check_saved_model
from sb3_ddpg_paper.validation import check_action_space, check_observation_space, non_finite_entries, raise_if_non_finite

SelfSafe = TypeVar("SelfSafe", bound="SafeOffPolicyAlgorithm")


class SafeOffPolicyAlgorithm(OffPolicyAlgorithm):
    """SB3's ``OffPolicyAlgorithm`` with atomic saves, checked loads, exact resume and non-finite data refused."""

    def _excluded_save_params(self) -> list[str]:
        # The observation last checked for NaN/inf, and a resumed run's state (put back at the start of its next learn())
        return [*super()._excluded_save_params(), "_last_checked_obs", "_resume_state"]

    def _store_transition(
        self,
        replay_buffer: ReplayBuffer,
        buffer_action: np.ndarray,
        new_obs: np.ndarray | dict[str, np.ndarray],
        reward: np.ndarray,
        dones: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        # A NaN/inf that enters the replay buffer poisons every later update: stop before it is stored.
        terminal = [info.get("terminal_observation") if done else None for done, info in zip(dones, infos, strict=True)]
        if self._last_obs is not getattr(self, "_last_checked_obs", None):  # a reset observation, not yet checked
            raise_if_non_finite("reset observation", self._last_obs, self.num_timesteps)
        raise_if_non_finite("observation", new_obs, self.num_timesteps)
        raise_if_non_finite("reward", reward, self.num_timesteps)
        self._last_checked_obs = new_obs  # becomes self._last_obs below
        for env_index, terminal_obs in enumerate(terminal):
            if terminal_obs is not None:
                raise_if_non_finite("terminal observation", terminal_obs, self.num_timesteps, env_index)
        super()._store_transition(replay_buffer, buffer_action, new_obs, reward, dones, infos)

    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """
        mu(s) rescaled to the action space, as SB3's ``predict`` (DDPG's policy is deterministic: ``deterministic``
        is ignored; exploration noise is added in ``learn()`` only). A non-finite observation raises a ``ValueError``.
        """
        bad = non_finite_entries(observation, batched=False)
        if bad is not None:
            raise ValueError(
                f"predict() got a non-finite observation ({bad[1]}): the policy would return NaN actions. Pass finite "
                "observations (SB3's VecCheckNan wrapper finds where they come from)."
            )
        return super().predict(observation, state, episode_start, deterministic)

    def set_env(self, env: GymEnv, force_reset: bool = True) -> None:
        if isinstance(env, gym.Env | VecEnv):
            check_action_space(env.action_space)
            check_observation_space(env.observation_space)
        try:
            super().set_env(env, force_reset)
        except ValueError as error:
            raise ValueError(
                f"The environment does not fit this model: {error} (the model's space first). set_env accepts an "
                f"environment with observation space {self.observation_space} and action space {self.action_space}."
            ) from error

    def save(
        self,
        path: str | pathlib.Path | io.BufferedIOBase,
        exclude: Iterable[str] | None = None,
        include: Iterable[str] | None = None,
    ) -> None:
        """
        SB3's ``save``; to a path, atomically: the file is written next to its destination, fsynced and renamed over
        it, so a crash never leaves a half-written model (nor destroys the previous one).
        """
        if isinstance(path, io.BufferedIOBase):
            super().save(path, exclude=exclude, include=include)
            return
        path = pathlib.Path(path)
        if path.suffix == "":
            path = path.with_suffix(".zip")  # as SB3 names it
        atomic_write(path, lambda file: super(SafeOffPolicyAlgorithm, self).save(file, exclude=exclude, include=include))

    @classmethod
    def load(  # type: ignore[override]
        cls: type[SelfSafe],
        path: str | pathlib.Path | io.BufferedIOBase,
        env: GymEnv | None = None,
        device: th.device | str = "auto",
        custom_objects: dict[str, Any] | None = None,
        print_system_info: bool = False,
        force_reset: bool = True,
        **kwargs: Any,
    ) -> SelfSafe:
        """
        SB3's ``load``, after checking the file without unpickling anything: a truncated or corrupted zip, or one saved
        by another algorithm, raises a ``ValueError`` saying so. Security: like every SB3 ``load``, this UNPICKLES
        parts of the file; load only files you trust, and share policies with :mod:`sb3_ddpg_paper.export`.
        """
        if isinstance(path, str | os.PathLike):
            path = pathlib.Path(path)
            if not path.exists() and path.suffix == "":
                path = path.with_suffix(".zip")
            check_saved_model(path, cls.__name__)
        try:
            return super().load(path, env, device, custom_objects, print_system_info, force_reset, **kwargs)
        except ValueError as error:
            if "spaces do not match" not in str(error):
                raise
            raise ValueError(
                f"The environment does not fit the saved model {path}: {error} (the saved model's space first). "
                "Pass an environment with the spaces the model was trained on, or env=None to predict only."
            ) from error

    @classmethod
    def resume(
        cls: type[SelfSafe], directory: str | os.PathLike, env: GymEnv | None = None, device: th.device | str = "auto"
    ) -> SelfSafe:
        """
        The newest complete crash-safe checkpoint of ``directory`` (:mod:`sb3_ddpg_paper.checkpoints`) with its replay
        buffer, noise, random generators and (``env=None``) environment mid-episode. Continue with
        ``model.learn(total_timesteps - model.num_timesteps, reset_num_timesteps=False)``, or use
        :func:`~sb3_ddpg_paper.checkpoints.learn_with_checkpoints`, which does it all.
        """
        latest_checkpoint(directory)  # a clear error when there is nothing to resume
        return load_checkpoint(directory, env=env, device=device, algorithm_class=cls)  # type: ignore[return-value]
