"""PaperDDPG: Algorithm 1 of Lillicrap et al. 2016 as a Stable-Baselines3 off-policy algorithm."""

import warnings
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.base_class import maybe_make_env
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.noise import ActionNoise, VectorizedActionNoise
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.utils import FloatSchedule, update_learning_rate

from sb3_ddpg_paper.checkpoints import resume_pending_state
from sb3_ddpg_paper.fast_paths import denormals_are_flushed, flushed_denormals
from sb3_ddpg_paper.noise import OrnsteinUhlenbeckNoise, make_ou_noise
from sb3_ddpg_paper.policies import Actor, CnnPolicy, Critic, MlpPolicy, MultiInputPolicy, PaperDDPGPolicy
from sb3_ddpg_paper.safe_algorithm import SafeOffPolicyAlgorithm
from sb3_ddpg_paper.torch_compat import copy_, lerp_
from sb3_ddpg_paper.torch_layers import batch_norm_modules
from sb3_ddpg_paper.update import GradientStep, gradient_step_for
from sb3_ddpg_paper.validation import (
    OU_NOISE,
    check_action_space,
    check_hyperparameters,
    check_losses_finite,
    check_observation_space,
    check_replay_buffer_fits,
    python_scalar,
)

SelfPaperDDPG = TypeVar("SelfPaperDDPG", bound="PaperDDPG")


class PaperDDPG(SafeOffPolicyAlgorithm):
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
    :param train_freq: update the model every ``train_freq`` steps, or ``(5, "step")`` / ``(2, "episode")``
    :param gradient_steps: gradient steps after each rollout; ``-1``: as many as environment steps in the rollout
    :param action_noise: the exploration noise. Default ``"ornstein-uhlenbeck"``: the paper's OU process
        (:class:`~sb3_ddpg_paper.noise.OrnsteinUhlenbeckNoise`, configured by ``action_noise_kwargs``).
        Any SB3 ``ActionNoise`` is accepted; ``None`` means no noise, as in SB3.
    :param replay_buffer_class: replay buffer class (e.g. ``HerReplayBuffer``); ``None``: chosen automatically
    :param replay_buffer_kwargs: keyword arguments of the replay buffer
    :param optimize_memory_usage: SB3's memory-efficient replay buffer (observations stored once)
    :param n_steps: n-step returns (with SB3's NStepReplayBuffer) when > 1; the paper uses 1-step targets
    :param tensorboard_log: the log location for tensorboard (if None, no logging)
    :param policy_kwargs: keyword arguments of the policy (:class:`~sb3_ddpg_paper.policies.PaperDDPGPolicy`)
    :param verbose: 0 no output, 1 info messages, 2 debug messages
    :param seed: seed of the pseudo random generators (the exploration noise included)
    :param device: device (cpu, cuda, ...); auto: the GPU if there is one
    :param qf_learning_rate: learning rate of the critic's Adam optimizer (paper: 1e-3); a number or a schedule
    :param action_noise_kwargs: keyword arguments of ``OrnsteinUhlenbeckNoise`` when ``action_noise`` is
        ``"ornstein-uhlenbeck"`` (e.g. ``dict(sigma=0.3, dt=1.0, min_epsilon=0.1, epsilon_decay_steps=50_000)``)
    :param critic_weight_decay: L2 weight decay of the critic (paper: 1e-2; the actor has none). Its scope is the
        policy's ``weight_decay_scope``.
    :param target_update_interval: soft-update the target networks every ``target_update_interval`` gradient steps
    :param actor_target_update_interval: the same for the target actor only (``None``: ``target_update_interval``)
    :param critic_target_update_interval: the same for the target critic only (``None``: ``target_update_interval``)
    :param stats_window_size: episodes over which the rollout logs average success rate, length and reward
    :param flush_denormal: flush denormal floats to zero during the gradient updates (``torch.set_flush_denormal``,
        restored on exit): with the critic's weight decay, denormal weights otherwise make updates 3-6 times slower
        after a few thousand steps (docs/speed.md). Values below 1.2e-38 become 0; nothing else changes.
    :param mlp_update: for fully connected networks (``MlpPolicy``), run each gradient step with hand-written forward
        and backward passes (:class:`~sb3_ddpg_paper.mlp_update.MLPUpdate`): the same gradients (to float rounding),
        less time per update on a CPU (docs/speed.md). ``False``: always autograd (e.g. to use module or tensor hooks,
        which the hand-written passes do not call)
    :param cnn_update: the same for the paper's pixel networks (``CnnPolicy``,
        :class:`~sb3_ddpg_paper.cnn_update.CNNUpdate`; docs/speed.md, "Pixels"). ``False``: always autograd
    :param _init_setup_model: Whether or not to build the network at the creation of the instance
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": MlpPolicy,
        "CnnPolicy": CnnPolicy,
        "MultiInputPolicy": MultiInputPolicy,
    }
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
        policy, env = _policy_and_env(self.policy_aliases, policy, env)
        # NumPy scalars (e.g. from a config file or a sweep) are valid numbers; SB3 expects Python ones
        learning_rate, qf_learning_rate, buffer_size, learning_starts, batch_size, tau, gamma, gradient_steps = map(
            python_scalar,
            (learning_rate, qf_learning_rate, buffer_size, learning_starts, batch_size, tau, gamma, gradient_steps),
        )
        n_steps, critic_weight_decay = python_scalar(n_steps), python_scalar(critic_weight_decay)
        images = env is not None and not isinstance(env, str) and is_image_space(env.observation_space, check_channels=False)
        defaults = self.pixel_defaults if images else self.low_dim_defaults
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
            supported_action_spaces=None,  # checked in _policy_and_env, with a clearer message than SB3's
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

        if _init_setup_model:
            self._setup_model()

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
        # Lines 12-14 of Algorithm 1, chosen once: the hand-written step for these networks, or autograd's (update.py)
        self.gradient_step: GradientStep = gradient_step_for(
            self.policy, getattr(self, "mlp_update", True), getattr(self, "cnn_update", True)
        )
        # The tensors of line 15 (soft target updates): target and online parameters, then batch-norm statistics
        self._actor_tensors = _target_tensors(self.actor_target, self.actor)
        self._critic_tensors = _target_tensors(self.critic_target, self.critic)

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
        with flushed_denormals(self.flush_denormal, getattr(self, "_flushed_outside", None)):
            for _ in range(gradient_steps):
                self._n_updates += 1
                # Algorithm 1, line 11: a random minibatch of N transitions (s_i, a_i, r_i, s_i+1) from R
                batch = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)
                # n-step returns (not in the paper): the buffer gives gamma**k for the k steps actually used
                discounts = batch.discounts if batch.discounts is not None else self.gamma
                # Lines 12-14: the target y_i from the target networks, the critic step, the actor step
                losses.append(th.stack(self.gradient_step(batch, discounts)))
                # Line 15: theta' <- tau * theta + (1 - tau) * theta' for the critic and the actor
                if self._n_updates % critic_interval == 0:
                    _soft_update(*self._critic_tensors, self.tau)
                if self._n_updates % actor_interval == 0:
                    _soft_update(*self._actor_tensors, self.tau)

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        if losses:
            # One device-to-host transfer per call, not one per loss and gradient step
            critic_loss, actor_loss, q_mean = (losses[0] if len(losses) == 1 else th.stack(losses).mean(0)).tolist()
            check_losses_finite(critic_loss, actor_loss, self._n_updates)
            self.logger.record("train/critic_loss", critic_loss)
            self.logger.record("train/actor_loss", actor_loss)
            self.logger.record("train/q_mean", q_mean)

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
            "gradient_step",
            "_actor_tensors",
            "_critic_tensors",
            "_flushed_outside",
        ]

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        state_dicts = ["policy", "actor.optimizer", "critic.optimizer"]
        return state_dicts, []

    # ------------------------------------------------------------------ the rest of SB3's loop: acting, storing, noise
    def _setup_learn(
        self,
        total_timesteps: int,
        callback: MaybeCallback = None,
        reset_num_timesteps: bool = True,
        tb_log_name: str = "run",
        progress_bar: bool = False,
    ):
        assert self.env is not None, "You must set the environment before calling learn()"
        if isinstance(self.action_noise, VectorizedActionNoise) and self.action_noise.n_envs != self.env.num_envs:
            # SB3 would keep a wrapper sized for the env count the model was trained with, and crash
            self.action_noise = self.action_noise.base_noise
        if isinstance(self.action_noise, OrnsteinUhlenbeckNoise) and self.action_noise.n_envs != self.env.num_envs:
            self.action_noise.set_n_envs(self.env.num_envs)
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
        resume_pending_state(self)  # after load_checkpoint: the RNG and noise state that loading and SB3 reset
        return result

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
        actions, _ = self.policy.predict(self._last_obs)  # unchecked: every observation is checked as it is stored
        scaled_actions = self.policy.scale_action(actions)
        if action_noise is not None:
            noise = np.asarray(action_noise())
            if noise.size == scaled_actions.size:  # e.g. a flat noise for a (2, 2) action space
                noise = noise.reshape(scaled_actions.shape)
            scaled_actions = np.clip(scaled_actions + noise, -1, 1)
        return self.policy.unscale_action(scaled_actions), scaled_actions

    def dump_logs(self) -> None:
        if isinstance(self.action_noise, OrnsteinUhlenbeckNoise):
            self.logger.record("rollout/exploration_epsilon", self.action_noise.epsilon)
        super().dump_logs()

    def set_random_seed(self, seed: int | None = None) -> None:
        super().set_random_seed(seed)
        if seed is not None and isinstance(self.action_noise, OrnsteinUhlenbeckNoise):
            self.action_noise.seed(seed)


def _policy_and_env(
    aliases: dict[str, type[BasePolicy]], policy: str | type[PaperDDPGPolicy] | None, env: GymEnv | str | None
) -> tuple[str | type[PaperDDPGPolicy], GymEnv | str | None]:
    """``PaperDDPG("Pendulum-v1")`` and ``PaperDDPG(env=...)``: the policy chosen from the observation space."""
    if isinstance(policy, str) and policy not in aliases:
        if env is not None:
            raise ValueError(
                f"Unknown policy {policy!r}: expected one of {sorted(aliases)} or a policy class "
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
    if isinstance(env.observation_space, spaces.Dict):
        return "MultiInputPolicy", env
    return ("CnnPolicy" if is_image_space(env.observation_space, check_channels=False) else "MlpPolicy"), env


_Tensors = list[th.Tensor]


def _target_tensors(target: th.nn.Module, online: th.nn.Module) -> tuple[_Tensors, _Tensors, _Tensors, _Tensors]:
    return list(target.parameters()), list(online.parameters()), list(target.buffers()), list(online.buffers())


def _soft_update(
    target_params: list[th.Tensor],
    params: list[th.Tensor],
    target_buffers: list[th.Tensor],
    buffers: list[th.Tensor],
    tau: float,
) -> None:
    """Algorithm 1, line 15: theta' <- tau * theta + (1 - tau) * theta'; batch-norm running statistics are copied."""
    with th.no_grad():
        lerp_(target_params, params, tau)
        if buffers:
            copy_(target_buffers, buffers)
