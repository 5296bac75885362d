"""PaperDDPG: Algorithm 1 of Lillicrap et al. 2016 as a Stable-Baselines3 off-policy algorithm."""

import io
import os
import pathlib
import warnings
from collections.abc import Iterable
from typing import Any, ClassVar, TypeVar

import gymnasium as gym
import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.base_class import maybe_make_env
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.noise import ActionNoise, VectorizedActionNoise
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, ReplayBufferSamples, Schedule
from stable_baselines3.common.utils import FloatSchedule, update_learning_rate
from stable_baselines3.common.vec_env import VecEnv
from torch.nn import functional as F

from sb3_ddpg_paper.checkpoints import (
    atomic_write,
    check_saved_model,
    latest_checkpoint,
    load_checkpoint,
    restore_training_state,
)
from sb3_ddpg_paper.cnn_update import CNNUpdate
from sb3_ddpg_paper.fast_paths import (
    apply_gradients,
    can_sample_fast,
    denormals_are_flushed,
    flushed_denormals,
    sample_fast,
)
from sb3_ddpg_paper.mlp_update import MLPUpdate
from sb3_ddpg_paper.noise import OrnsteinUhlenbeckNoise, make_ou_noise
from sb3_ddpg_paper.policies import Actor, CnnPolicy, Critic, MlpPolicy, MultiInputPolicy, PaperDDPGPolicy
from sb3_ddpg_paper.torch_layers import batch_norm_modules, frozen_running_statistics
from sb3_ddpg_paper.validation import (
    OU_NOISE,
    check_action_space,
    check_hyperparameters,
    check_observation_space,
    check_replay_buffer_fits,
    non_finite_entries,
    python_scalar,
    raise_if_non_finite,
)

SelfPaperDDPG = TypeVar("SelfPaperDDPG", bound="PaperDDPG")


def _step(optimizer: th.optim.Optimizer, loss: th.Tensor) -> None:
    """
    Minimise ``loss`` by one step of ``optimizer``: gradients w.r.t. the optimizer's own parameters only (in the actor
    step, not the critic's), handed straight to it (:func:`~sb3_ddpg_paper.fast_paths.apply_gradients`).
    """
    params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
    grads = th.autograd.grad(loss, params, allow_unused=True)
    apply_gradients(optimizer, dict(zip(params, grads, strict=True)))


class PaperDDPG(OffPolicyAlgorithm):
    """
    Deep Deterministic Policy Gradient as published: Lillicrap et al. 2016, Algorithm 1 and sec. 7.

    Unlike SB3's ``DDPG`` (TD3 without its tricks), this is the paper's algorithm with the paper's defaults:
    separate actor and critic learning rates (1e-4 / 1e-3), L2 weight decay 1e-2 on the critic only, tau 1e-3,
    minibatch 64, a 400-300 network with batch norm and the action entering the critic at the 2nd hidden layer,
    and Ornstein-Uhlenbeck exploration (theta 0.15, sigma 0.2).

    Paper: https://arxiv.org/abs/1509.02971
    Reference implementation: rllab's ``DDPG`` (https://github.com/rll/rllab)

    :param policy: The policy model to use (MlpPolicy, CnnPolicy, ...). When it is an environment id and ``env`` is
        not given, it is taken as the environment and the policy is chosen from its observation space.
        ``None``: chosen from the observation space of ``env``.
    :param env: The environment to learn from (if registered in Gym, can be str)
    :param learning_rate: learning rate of the actor's Adam optimizer (paper: 1e-4);
        it can be a function of the current progress remaining (from 1 to 0)
    :param buffer_size: size of the replay buffer. ``None``: the paper's 1e6 for low-dimensional observations,
        ``pixel_defaults["buffer_size"]`` (1e5) for images, whose 1e6 transitions would need ~74 GB (docs/pixels.md).
        A buffer that cannot fit in the available memory is refused with an error.
    :param learning_starts: how many steps of the model to collect transitions for before learning starts
        (not in the paper; during these steps actions are uniformly random, without exploration noise. The default
        1000 against SB3's 100 was measured, docs/results.md "Warm-up")
    :param batch_size: Minibatch size for each gradient update. ``None``: the paper's 64 for low-dimensional
        observations, 16 for images (``low_dim_defaults`` / ``pixel_defaults``)
    :param tau: the soft update coefficient ("Polyak update", between 0 and 1; paper: 1e-3)
    :param gamma: the discount factor
    :param train_freq: Update the model every ``train_freq`` steps. Alternatively pass a tuple of frequency and unit
        like ``(5, "step")`` or ``(2, "episode")``.
    :param gradient_steps: How many gradient steps to do after each rollout (see ``train_freq``)
        Set to ``-1`` means to do as many gradient steps as steps done in the environment
        during the rollout.
    :param action_noise: the exploration noise. Default ``"ornstein-uhlenbeck"``: the paper's OU process
        (:class:`~sb3_ddpg_paper.noise.OrnsteinUhlenbeckNoise`, configured by ``action_noise_kwargs``).
        Any SB3 ``ActionNoise`` is accepted; ``None`` means no noise, as in SB3.
    :param replay_buffer_class: Replay buffer class to use (for instance ``HerReplayBuffer``).
        If ``None``, it will be automatically selected.
    :param replay_buffer_kwargs: Keyword arguments to pass to the replay buffer on creation.
    :param optimize_memory_usage: Enable a memory efficient variant of the replay buffer
        at a cost of more complexity.
        See https://github.com/DLR-RM/stable-baselines3/issues/37#issuecomment-637501195
    :param n_steps: When n_step > 1, uses n-step return (with the NStepReplayBuffer) when updating the Q-value network.
        The paper uses 1-step targets.
    :param tensorboard_log: the log location for tensorboard (if None, no logging)
    :param policy_kwargs: additional arguments to be passed to the policy on creation. See
        :class:`~sb3_ddpg_paper.policies.PaperDDPGPolicy`
    :param verbose: Verbosity level: 0 for no output, 1 for info messages (such as device or wrappers used), 2 for
        debug messages
    :param seed: Seed for the pseudo random generators (the exploration noise included)
    :param device: Device (cpu, cuda, ...) on which the code should be run.
        Setting it to auto, the code will be run on the GPU if possible.
    :param qf_learning_rate: learning rate of the critic's Adam optimizer (paper: 1e-3); a number or a schedule
    :param action_noise_kwargs: keyword arguments of ``OrnsteinUhlenbeckNoise`` when ``action_noise`` is
        ``"ornstein-uhlenbeck"`` (e.g. ``dict(sigma=0.3, dt=1.0, min_epsilon=0.1, epsilon_decay_steps=50_000)``)
    :param critic_weight_decay: L2 weight decay of the critic (paper: 1e-2; the actor has none). Its scope is the
        policy's ``weight_decay_scope``.
    :param target_update_interval: soft-update the target networks every ``target_update_interval`` gradient steps
    :param actor_target_update_interval: the same for the target actor only (``None``: ``target_update_interval``)
    :param critic_target_update_interval: the same for the target critic only (``None``: ``target_update_interval``)
    :param stats_window_size: Window size for the rollout logging, specifying the number of episodes to average
        the reported success rate, mean episode length, and mean reward over
    :param flush_denormal: flush denormal floats to zero during the gradient updates (``torch.set_flush_denormal``,
        restored on exit): with the critic's weight decay, denormal weights otherwise make updates 3-6 times slower
        after a few thousand steps (docs/speed.md). Values below 1.2e-38 become 0; nothing else changes.
    :param mlp_update: for fully connected networks (``Linear``, ``BatchNorm1d``, ``ReLU`` and the actor's tanh, on
        flat float32 observations: ``MlpPolicy``, with or without batch norm), run each gradient step with
        hand-written forward and backward passes instead of autograd: the same kernels and gradients (to float
        rounding), less time per update on a CPU (docs/speed.md). ``False``: always autograd (e.g. to use module or
        tensor hooks, which the hand-written passes do not call).
    :param cnn_update: the same for the paper's pixel networks (``CnnPolicy``: :class:`~sb3_ddpg_paper.PaperCNN`
        towers, then fully connected layers): each observation batch converted and normalised once for every tower
        that sees it, the input batch norm folded into the first convolution, no gradient w.r.t. the images
        (docs/speed.md, "Pixels"). ``False``: always autograd.
    :param _init_setup_model: Whether or not to build the network at the creation of the instance
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": MlpPolicy,
        "CnnPolicy": CnnPolicy,
        "MultiInputPolicy": MultiInputPolicy,
    }
    # Defaults that depend on the observation space, used when buffer_size / batch_size are None.
    # Lillicrap et al. 2016, sec. 7: minibatch 64 low-dimensional, 16 pixels; replay buffer 1e6. The pixel buffer is
    # smaller: 1e6 transitions of 9x64x64 uint8 observations (stored twice, s and s') need ~74 GB (docs/pixels.md).
    low_dim_defaults: ClassVar[dict[str, int]] = {"buffer_size": 1_000_000, "batch_size": 64}
    pixel_defaults: ClassVar[dict[str, int]] = {"buffer_size": 100_000, "batch_size": 16}

    policy: PaperDDPGPolicy
    actor: Actor
    actor_target: Actor
    critic: Critic
    critic_target: Critic

    def __init__(
        self,
        policy: str | type[PaperDDPGPolicy] | None = None,
        env: GymEnv | str | None = None,
        learning_rate: float | Schedule = 1e-4,
        buffer_size: int | None = None,  # None: low_dim_defaults or pixel_defaults
        learning_starts: int = 1000,
        batch_size: int | None = None,  # None: low_dim_defaults or pixel_defaults
        tau: float = 0.001,
        gamma: float = 0.99,
        train_freq: int | tuple[int, str] = 1,
        gradient_steps: int = 1,
        action_noise: ActionNoise | str | None = OU_NOISE,
        replay_buffer_class: type[ReplayBuffer] | None = None,
        replay_buffer_kwargs: dict[str, Any] | None = None,
        optimize_memory_usage: bool = False,
        n_steps: int = 1,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        # Beyond SB3's DDPG (keyword-only, so that SB3 DDPG calls with positional arguments keep their meaning)
        *,
        qf_learning_rate: float | Schedule = 1e-3,
        critic_weight_decay: float = 1e-2,
        action_noise_kwargs: dict[str, Any] | None = None,
        target_update_interval: int = 1,
        actor_target_update_interval: int | None = None,
        critic_target_update_interval: int | None = None,
        stats_window_size: int = 100,
        flush_denormal: bool = True,
        mlp_update: bool = True,
        cnn_update: bool = True,
        _init_setup_model: bool = True,
    ):
        policy, env = self._resolve_policy_and_env(policy, env)
        # NumPy scalars (e.g. from a config file or a sweep) are valid numbers; SB3 expects Python ones
        learning_rate, qf_learning_rate, buffer_size, learning_starts, batch_size, tau, gamma, gradient_steps = map(
            python_scalar,
            (learning_rate, qf_learning_rate, buffer_size, learning_starts, batch_size, tau, gamma, gradient_steps),
        )
        n_steps, critic_weight_decay = python_scalar(n_steps), python_scalar(critic_weight_decay)
        defaults = self.defaults_for(None if env is None or isinstance(env, str) else env.observation_space)
        buffer_size = defaults["buffer_size"] if buffer_size is None else buffer_size
        batch_size = defaults["batch_size"] if batch_size is None else batch_size
        check_hyperparameters(
            learning_rate=learning_rate,
            qf_learning_rate=qf_learning_rate,
            buffer_size=buffer_size,
            learning_starts=learning_starts,
            batch_size=batch_size,
            tau=tau,
            gamma=gamma,
            gradient_steps=gradient_steps,
            train_freq=train_freq,
            n_steps=n_steps,
            critic_weight_decay=critic_weight_decay,
            target_update_interval=target_update_interval,
            actor_target_update_interval=actor_target_update_interval,
            critic_target_update_interval=critic_target_update_interval,
            action_noise=action_noise,
            action_noise_kwargs=action_noise_kwargs,
            policy_kwargs=policy_kwargs,
        )
        if action_noise == OU_NOISE and env is not None and not isinstance(env, str):
            # Built (and its settings checked) before anything large is allocated; a loaded model keeps its saved noise
            action_noise = make_ou_noise(env.action_space, getattr(env, "num_envs", 1), seed, action_noise_kwargs)
        super().__init__(
            policy,
            env,  # type: ignore[arg-type]
            learning_rate,
            buffer_size,
            learning_starts,
            batch_size,
            tau,
            gamma,
            train_freq,
            gradient_steps,
            action_noise=None,  # set below: built above, or in _setup_model when constructed without an environment
            replay_buffer_class=replay_buffer_class,
            replay_buffer_kwargs=replay_buffer_kwargs,
            optimize_memory_usage=optimize_memory_usage,
            n_steps=n_steps,
            policy_kwargs=dict(policy_kwargs or {}),  # a copy: critic_weight_decay is added to it below
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            verbose=verbose,
            device=device,
            seed=seed,
            sde_support=False,
            supported_action_spaces=None,  # checked in _resolve_policy_and_env, with a clearer message than SB3
            support_multi_env=True,
        )
        self.action_noise = action_noise  # type: ignore[assignment]
        self.action_noise_kwargs = action_noise_kwargs
        self.qf_learning_rate = qf_learning_rate
        self.target_update_interval = target_update_interval
        self.actor_target_update_interval = actor_target_update_interval
        self.critic_target_update_interval = critic_target_update_interval
        self.flush_denormal = flush_denormal
        self.mlp_update = mlp_update
        self.cnn_update = cnn_update
        # The algorithm's critic weight decay is handed to the policy, which builds the optimizers
        self.policy_kwargs["critic_weight_decay"] = critic_weight_decay

        # Set by sb3_ddpg_paper.checkpoints.load_checkpoint, consumed by the next learn() (see _setup_learn)
        self._resume_state: tuple[dict[str, Any], bool] | None = None

        if _init_setup_model:
            self._setup_model()

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def _resolve_policy_and_env(
        cls, policy: str | type[PaperDDPGPolicy] | None, env: GymEnv | str | None
    ) -> tuple[str | type[PaperDDPGPolicy], GymEnv | str | None]:
        """``PaperDDPG("Pendulum-v1")`` and ``PaperDDPG(env=...)``: choose the policy from the observation space."""
        if isinstance(policy, str) and policy not in cls.policy_aliases:
            if env is not None:
                raise ValueError(
                    f"Unknown policy {policy!r}: expected one of {sorted(cls.policy_aliases)} or a policy class "
                    "(or pass an environment id alone, e.g. PaperDDPG('Pendulum-v1'))."
                )
            policy, env = None, policy
        if isinstance(env, str):
            env = maybe_make_env(env, verbose=0)  # as SB3 makes it (render_mode="rgb_array" when supported)
        if env is not None:
            check_action_space(env.action_space)
            check_observation_space(env.observation_space)
        if policy is not None:
            return policy, env
        if env is None:
            raise ValueError("PaperDDPG needs an environment: PaperDDPG('Pendulum-v1') or PaperDDPG('MlpPolicy', env).")
        return cls.default_policy_for(env.observation_space), env

    @classmethod
    def default_policy_for(cls, observation_space: spaces.Space) -> str:
        """The policy alias for an observation space: MultiInputPolicy for Dict, CnnPolicy for images, else MlpPolicy."""
        if isinstance(observation_space, spaces.Dict):
            return "MultiInputPolicy"
        if is_image_space(observation_space, check_channels=False):
            return "CnnPolicy"
        return "MlpPolicy"

    @classmethod
    def defaults_for(cls, observation_space: spaces.Space | None) -> dict[str, int]:
        """``pixel_defaults`` for image observations, ``low_dim_defaults`` otherwise (and without an environment)."""
        if observation_space is not None and is_image_space(observation_space, check_channels=False):
            return dict(cls.pixel_defaults)
        return dict(cls.low_dim_defaults)

    # ------------------------------------------------------------------ SB3 hooks
    def _setup_model(self) -> None:
        if self.replay_buffer is None:
            check_replay_buffer_fits(
                self.buffer_size, self.observation_space, self.action_space, self.optimize_memory_usage, self.n_envs
            )
        super()._setup_model()
        self.qf_lr_schedule = FloatSchedule(self.qf_learning_rate)
        self._create_aliases()
        update_learning_rate(self.critic.optimizer, self.qf_lr_schedule(self._current_progress_remaining))
        if self.action_noise == OU_NOISE:  # constructed without an environment
            self.action_noise = make_ou_noise(self.action_space, self.n_envs, self.seed, self.action_noise_kwargs)
        if self.batch_size < 2 and batch_norm_modules(self.policy):
            raise ValueError(
                f"batch_size={self.batch_size} cannot be used with batch norm, which normalises each minibatch by its "
                "own mean and variance (one sample has no variance). Use batch_size >= 2 (the paper: 64, pixels: 16), "
                "or policy_kwargs=dict(batch_norm=False)."
            )

    def _create_aliases(self) -> None:
        self.actor = self.policy.actor
        self.actor_target = self.policy.actor_target
        self.critic = self.policy.critic
        self.critic_target = self.policy.critic_target
        # Flat tensor lists for the soft updates (parameters) and the batch-norm statistics copies (buffers)
        self._actor_params: list[th.Tensor] = list(self.actor.parameters())
        self._actor_target_params: list[th.Tensor] = list(self.actor_target.parameters())
        self._critic_params: list[th.Tensor] = list(self.critic.parameters())
        self._critic_target_params: list[th.Tensor] = list(self.critic_target.parameters())
        self._actor_buffers = list(self.actor.buffers())
        self._actor_target_buffers = list(self.actor_target.buffers())
        self._critic_buffers = list(self.critic.buffers())
        self._critic_target_buffers = list(self.critic_target.buffers())
        self._critic_batch_norms = batch_norm_modules(self.critic)
        # Fully connected networks: the gradient step with hand-written backward passes; None: autograd
        self._mlp_update = MLPUpdate.for_policy(self.policy) if getattr(self, "mlp_update", True) else None
        # Pixel networks (CnnPolicy): the same, with the conv towers written out; None: autograd
        self._cnn_update = CNNUpdate.for_policy(self.policy) if getattr(self, "cnn_update", True) else None

    def set_random_seed(self, seed: int | None = None) -> None:
        super().set_random_seed(seed)
        if seed is not None and isinstance(self.action_noise, OrnsteinUhlenbeckNoise):
            self.action_noise.seed(seed)

    def _setup_learn(
        self,
        total_timesteps: int,
        callback: MaybeCallback = None,
        reset_num_timesteps: bool = True,
        tb_log_name: str = "run",
        progress_bar: bool = False,
    ):
        assert self.env is not None, "You must set the environment before calling learn()"
        n_envs = self.env.num_envs
        if isinstance(self.action_noise, VectorizedActionNoise) and self.action_noise.n_envs != n_envs:
            # SB3 would keep a wrapper sized for the env count the model was trained with, and crash
            self.action_noise = self.action_noise.base_noise
        if isinstance(self.action_noise, OrnsteinUhlenbeckNoise) and self.action_noise.n_envs != n_envs:
            self.action_noise.set_n_envs(n_envs)
        self._flushed_outside = denormals_are_flushed()  # the caller's floating-point mode, restored after updates
        result = super()._setup_learn(total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar)
        if isinstance(self.action_noise, VectorizedActionNoise) and isinstance(
            self.action_noise.base_noise, OrnsteinUhlenbeckNoise
        ):
            # SB3 wraps a noise in per-environment copies; the OU noise holds one process per environment itself
            self.action_noise = self.action_noise.base_noise
        if self._total_timesteps <= self.learning_starts:
            warnings.warn(
                f"learn() will stop at {self._total_timesteps} steps, before the first gradient step: the first "
                f"learning_starts={self.learning_starts} steps only collect random transitions. Train for more steps "
                "or pass a smaller learning_starts.",
                stacklevel=3,
            )
        # Resumed from a crash-safe checkpoint: put back the RNG and noise state that load and _setup_learn reset
        resume_state, self._resume_state = getattr(self, "_resume_state", None), None
        if resume_state is not None and not reset_num_timesteps:
            restore_training_state(self, *resume_state)
        return result

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

    # ------------------------------------------------------------------ reliability: bad data, files, resume
    # (sb3_ddpg_paper.checkpoints and docs/reliability.md)
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

    def save(
        self,
        path: str | pathlib.Path | io.BufferedIOBase,
        exclude: Iterable[str] | None = None,
        include: Iterable[str] | None = None,
    ) -> None:
        """
        Save the model to a zip file, atomically when ``path`` is a path: the file is written next to its destination,
        fsynced and renamed over it, so a crash never leaves a half-written model (nor destroys the previous one).

        :param path: path to the file where the model should be saved (``.zip`` is added when it has no suffix),
            or a binary file object
        :param exclude: name of parameters that should be excluded in addition to the default ones
        :param include: name of parameters that might be excluded but should be included anyway
        """
        if isinstance(path, io.BufferedIOBase):
            super().save(path, exclude=exclude, include=include)
            return
        path = pathlib.Path(path)
        if path.suffix == "":
            path = path.with_suffix(".zip")  # as SB3 names it
        atomic_write(path, lambda file: super(PaperDDPG, self).save(file, exclude=exclude, include=include))

    @classmethod
    def load(  # type: ignore[override]
        cls: type[SelfPaperDDPG],
        path: str | pathlib.Path | io.BufferedIOBase,
        env: GymEnv | None = None,
        device: th.device | str = "auto",
        custom_objects: dict[str, Any] | None = None,
        print_system_info: bool = False,
        force_reset: bool = True,
        **kwargs: Any,
    ) -> SelfPaperDDPG:
        """
        Load a model saved by :meth:`save` (see SB3's ``BaseAlgorithm.load`` for the arguments).

        Security: like every SB3 ``load``, this UNPICKLES parts of the file, which can execute arbitrary code. Load
        only files you trust; share policies with :mod:`sb3_ddpg_paper.export` (weights only, no code).
        The file is checked first without unpickling anything: a truncated or corrupted zip, or one saved by another
        algorithm, raises a ``ValueError`` saying so.
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
        cls: type[SelfPaperDDPG],
        directory: str | os.PathLike,
        env: GymEnv | None = None,
        device: th.device | str = "auto",
    ) -> SelfPaperDDPG:
        """
        Load the newest complete crash-safe checkpoint of ``directory`` (written by
        :class:`~sb3_ddpg_paper.checkpoints.CrashSafeCheckpointCallback`) with its replay buffer, noise, random
        generators and (when ``env`` is None) environment. Continue with
        ``model.learn(total_timesteps - model.num_timesteps, reset_num_timesteps=False)``, or use
        :func:`~sb3_ddpg_paper.checkpoints.learn_with_checkpoints`, which does it all.

        :param directory: the checkpoint directory
        :param env: ``None``: the environment saved in the checkpoint (exact continuation); or an environment to use
            instead (new episodes start)
        :param device: device of the loaded model
        :return: the model, ready to continue learning
        """
        latest_checkpoint(directory)  # a clear error when there is nothing to resume
        return load_checkpoint(directory, env=env, device=device, algorithm_class=cls)  # type: ignore[return-value]

    # ------------------------------------------------------------------ Algorithm 1
    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        assert self.replay_buffer is not None
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.actor.optimizer)
        qf_learning_rate = self.qf_lr_schedule(self._current_progress_remaining)
        update_learning_rate(self.critic.optimizer, qf_learning_rate)
        self.logger.record("train/qf_learning_rate", qf_learning_rate)
        actor_interval = self.actor_target_update_interval or self.target_update_interval
        critic_interval = self.critic_target_update_interval or self.target_update_interval

        losses = []
        update = self._mlp_update or self._cnn_update
        with flushed_denormals(self.flush_denormal, self._denormals_flushed_outside()):
            for _ in range(gradient_steps):
                self._n_updates += 1
                replay_data = self._sample_replay(batch_size)
                # n-step returns: the buffer gives gamma**k for the k steps actually used
                discounts = replay_data.discounts if replay_data.discounts is not None else self.gamma
                if update is not None:  # the same step with hand-written backward passes (docs/speed.md)
                    step_losses = update(
                        replay_data.observations,
                        replay_data.actions,
                        replay_data.next_observations,
                        replay_data.rewards,
                        replay_data.dones,
                        discounts,
                    )
                else:
                    step_losses = self._gradient_step(replay_data, discounts)

                # Target updates: theta' <- tau * theta + (1 - tau) * theta'; batch-norm statistics are copied
                with th.no_grad():
                    if self._n_updates % critic_interval == 0:
                        th._foreach_lerp_(self._critic_target_params, self._critic_params, self.tau)
                        if self._critic_buffers:
                            th._foreach_copy_(self._critic_target_buffers, self._critic_buffers)
                    if self._n_updates % actor_interval == 0:
                        th._foreach_lerp_(self._actor_target_params, self._actor_params, self.tau)
                        if self._actor_buffers:
                            th._foreach_copy_(self._actor_target_buffers, self._actor_buffers)

                losses.append(th.stack(step_losses))

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        if losses:
            # One device-to-host transfer per call, not one per loss and gradient step
            critic_loss_mean, actor_loss_mean, q_mean = (losses[0] if len(losses) == 1 else th.stack(losses).mean(0)).tolist()
            if not np.isfinite([critic_loss_mean, actor_loss_mean]).all():
                raise ValueError(
                    f"The losses became non-finite (critic {critic_loss_mean}, actor {actor_loss_mean}) by update "
                    f"{self._n_updates}: training diverged. The replay buffer holds finite data only (it is checked "
                    "as it fills), so the cause is in the optimisation: lower the learning rates, scale the rewards, "
                    "or keep batch norm's batch size large enough."
                )
            self.logger.record("train/critic_loss", critic_loss_mean)
            self.logger.record("train/actor_loss", actor_loss_mean)
            self.logger.record("train/q_mean", q_mean)

    def _gradient_step(
        self, replay_data: ReplayBufferSamples, discounts: th.Tensor | float
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """
        One critic step and one actor step of Algorithm 1 with autograd (any network: CNN, Dict
        observations). :class:`~sb3_ddpg_paper.mlp_update.MLPUpdate` is the same step for fully connected networks,
        :class:`~sb3_ddpg_paper.cnn_update.CNNUpdate` for the paper's pixel networks.

        :return: the critic loss, the actor loss and the mean Q-value of the batch (before the critic step), detached
        """
        # Critic step. Algorithm 1: y_i = r_i + gamma * Q'(s_{i+1}, mu'(s_{i+1})) from the TARGET networks;
        # true terminals are masked, time-limit truncations bootstrapped (handled by the replay buffer).
        with th.no_grad():
            next_actions = self.actor_target(replay_data.next_observations)
            next_q_values = self.critic_target.q1_forward(replay_data.next_observations, next_actions)
            target_q_values = replay_data.rewards + (1 - replay_data.dones) * discounts * next_q_values
        # Batch norm: the critic normalises with this batch's statistics and updates its running statistics
        current_q_values = self.critic(replay_data.observations, replay_data.actions)[0]
        critic_loss = F.mse_loss(current_q_values, target_q_values)
        _step(self.critic.optimizer, critic_loss)

        # Actor step, with the updated critic. Algorithm 1: grad J ~ mean grad_a Q(s, a)|a=mu(s) grad mu(s),
        # i.e. minimise -mean Q(s, mu(s)). The critic normalises with the statistics of the same state batch it
        # has just been trained on, without counting that batch twice in its running statistics.
        with frozen_running_statistics(self._critic_batch_norms):
            actor_loss = -self.critic.q1_forward(replay_data.observations, self.actor(replay_data.observations)).mean()
        # The critic is held fixed here: gradients w.r.t. the actor's parameters only (speed, same numbers)
        _step(self.actor.optimizer, actor_loss)
        return critic_loss.detach(), actor_loss.detach(), current_q_values.detach().mean()

    # ------------------------------------------------------------------ hot path: sampling and acting (docs/speed.md)
    def _sample_replay(self, batch_size: int) -> ReplayBufferSamples:
        """A minibatch from the replay buffer: SB3's ``sample``, or its lean equivalent for a plain ``ReplayBuffer``."""
        if can_sample_fast(self.replay_buffer, self._vec_normalize_env):
            return sample_fast(self.replay_buffer, batch_size)  # type: ignore[arg-type]
        return self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr, return-value]

    def _denormals_flushed_outside(self) -> bool:
        flushed = getattr(self, "_flushed_outside", None)
        if flushed is None:  # train() called outside learn()
            flushed = self._flushed_outside = denormals_are_flushed()
        return flushed

    def _sample_action(
        self, learning_starts: int, action_noise: ActionNoise | None = None, n_envs: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """
        The action for the environment and the one for the replay buffer (in SB3's normalised [-1, 1] space).

        Algorithm 1: a_t = mu(s_t) + N_t, added in the normalised space and clipped to the bounds, the noise shaped
        like the action space (any Box shape, any ``ActionNoise`` of that size). The warm-up before
        ``learning_starts`` (not in the paper) takes uniformly random actions without noise: SB3 adds the noise to
        them as well and clips, which piles a part of them up on the bounds. The noise process still advances then,
        so that its epsilon schedule counts every environment step.
        """
        if self.num_timesteps < learning_starts:
            actions = np.array([self.action_space.sample() for _ in range(n_envs)])
            if action_noise is not None:
                action_noise()
            return actions, self.policy.scale_action(actions)
        assert self._last_obs is not None, "self._last_obs was not set"
        actions, _ = self._predict_actions(self._last_obs)
        scaled_actions = self.policy.scale_action(actions)
        if action_noise is not None:
            noise = np.asarray(action_noise())
            if noise.size == scaled_actions.size:  # e.g. a flat noise for a (2, 2) action space
                noise = noise.reshape(scaled_actions.shape)
            scaled_actions = np.clip(scaled_actions + noise, -1, 1)
        return self.policy.unscale_action(scaled_actions), scaled_actions

    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """
        Get the policy action from an observation: mu(s) rescaled to the action space (DDPG's policy is
        deterministic; ``deterministic`` is ignored and exploration noise is added in ``learn()`` only).

        Same result as SB3's ``policy.predict``, with a lean path for array observations of a non-image Box space
        (the training loop calls it at every step).

        :param observation: the input observation (one, or a batch with a leading dimension)
        :param state: unused (no recurrent policy), returned as is
        :param episode_start: unused
        :param deterministic: unused
        :return: the action(s) and ``state``
        """
        bad = non_finite_entries(observation, batched=False)
        if bad is not None:
            raise ValueError(
                f"predict() got a non-finite observation ({bad[1]}): the policy would return NaN actions. Pass finite "
                "observations (SB3's VecCheckNan wrapper finds where they come from)."
            )
        return self._predict_actions(observation, state, episode_start, deterministic)

    def _predict_actions(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """:meth:`predict` without its input check (training checks every observation as it is stored)."""
        space = self.observation_space
        if not (isinstance(observation, np.ndarray) and isinstance(space, spaces.Box) and not is_image_space(space)):
            return self.policy.predict(observation, state, episode_start, deterministic)
        if observation.shape == space.shape:
            vectorized = False
        elif observation.shape[1:] == space.shape:
            vectorized = True
        else:  # SB3 raises its explanatory error
            return self.policy.predict(observation, state, episode_start, deterministic)
        self.policy.set_training_mode(False)  # batch norm: running statistics while acting (Lillicrap et al. 2016, sec. 3)
        obs_tensor = th.as_tensor(observation if vectorized else observation[np.newaxis], dtype=th.float32, device=self.device)
        with th.no_grad():
            scaled_actions = self.policy._predict(obs_tensor, deterministic=deterministic).cpu().numpy()
        actions = self.policy.unscale_action(scaled_actions.reshape((-1, *self.action_space.shape)))  # type: ignore[misc, arg-type]
        return (actions if vectorized else actions.squeeze(axis=0)), state

    def dump_logs(self) -> None:
        if isinstance(self.action_noise, OrnsteinUhlenbeckNoise):
            self.logger.record("rollout/exploration_epsilon", self.action_noise.epsilon)
        super().dump_logs()

    def learn(
        self: SelfPaperDDPG,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 4,
        tb_log_name: str = "PaperDDPG",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfPaperDDPG:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )

    def _excluded_save_params(self) -> list[str]:
        return [
            *super()._excluded_save_params(),
            "actor",
            "critic",
            "actor_target",
            "critic_target",
            "_actor_params",
            "_actor_target_params",
            "_critic_params",
            "_critic_target_params",
            "_actor_buffers",
            "_actor_target_buffers",
            "_critic_buffers",
            "_critic_target_buffers",
            "_critic_batch_norms",
            "_mlp_update",
            "_cnn_update",
            "_flushed_outside",
            "_resume_state",
            "_last_checked_obs",
        ]

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        state_dicts = ["policy", "actor.optimizer", "critic.optimizer"]
        return state_dicts, []
