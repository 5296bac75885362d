"""
Lines 12-14 of Algorithm 1 (Lillicrap et al. 2016): one critic step, then one actor step, behind one interface.

``PaperDDPG.train`` calls a :class:`GradientStep` once per update; which one is chosen once, at set-up, by
:func:`gradient_step_for`. Three implementations compute the same step:

- :class:`AutogradStep` (below): the reference, with autograd, for any policy. It reads as the paper does;
- :class:`~sb3_ddpg_paper.mlp_update.MLPUpdate`: the same step for fully connected networks (``MlpPolicy``), with
  the forward and backward passes written out (faster on a CPU, docs/speed.md);
- :class:`~sb3_ddpg_paper.cnn_update.CNNUpdate`: the same for the paper's pixel networks (``CnnPolicy``).

``tests/test_sameness.py`` checks all three against a straightforward autograd implementation of Algorithm 1.
"""

from typing import Any, Protocol

import torch as th
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from torch.nn import functional as F

from sb3_ddpg_paper.cnn_update import CNNUpdate
from sb3_ddpg_paper.mlp_update import Losses, MLPUpdate
from sb3_ddpg_paper.torch_compat import apply_gradients, hand_written_updates
from sb3_ddpg_paper.torch_layers import batch_norm_modules, frozen_running_statistics


class GradientStep(Protocol):
    def __call__(self, batch: ReplayBufferSamples, discounts: th.Tensor | float) -> Losses:
        """
        One critic step and one actor step on a minibatch (the target networks are not updated).

        :param batch: the minibatch sampled from the replay buffer
        :param discounts: gamma, or per sample gamma**k for n-step returns
        :return: the critic loss, the actor loss and the mean Q-value of the batch (before the critic step), detached
        """
        ...


def _minimize(optimizer: th.optim.Optimizer, loss: th.Tensor) -> None:
    """
    One step of ``optimizer`` down ``loss``: gradients w.r.t. the optimizer's own parameters only (in the actor step,
    not the critic's), handed straight to it.
    """
    params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
    grads = th.autograd.grad(loss, params, allow_unused=True)
    apply_gradients(optimizer, dict(zip(params, grads, strict=True)))


class AutogradStep:
    """The gradient step of Algorithm 1 with autograd, for any ``PaperDDPGPolicy`` (MLP, CNN, Dict observations)."""

    def __init__(self, policy: Any):
        self.actor, self.actor_target = policy.actor, policy.actor_target
        self.critic, self.critic_target = policy.critic, policy.critic_target
        self.critic_batch_norms = batch_norm_modules(self.critic)

    def __call__(self, batch: ReplayBufferSamples, discounts: th.Tensor | float) -> Losses:
        observations, next_observations = batch.observations, batch.next_observations
        # Line 12: y_i = r_i + gamma * Q'(s_{i+1}, mu'(s_{i+1})) from the TARGET networks; true terminals are masked,
        # time-limit truncations bootstrapped (the replay buffer's dones)
        with th.no_grad():
            next_q = self.critic_target.q1_forward(next_observations, self.actor_target(next_observations))
            target_q = batch.rewards + (1 - batch.dones) * discounts * next_q
        # Line 13: the critic minimises L = mean (y_i - Q(s_i, a_i))^2. Batch norm: the critic normalises with this
        # batch's statistics and updates its running statistics
        current_q = self.critic(observations, batch.actions)[0]
        critic_loss = F.mse_loss(current_q, target_q)
        _minimize(self.critic.optimizer, critic_loss)

        # Line 14: the actor follows grad J ~ mean grad_a Q(s, a)|a=mu(s) grad mu(s), i.e. minimises -mean Q(s, mu(s)),
        # with the updated critic. The critic normalises with the statistics of the batch it has just been trained
        # on, without counting that batch twice in its running statistics
        with frozen_running_statistics(self.critic_batch_norms):
            actor_loss = -self.critic.q1_forward(observations, self.actor(observations)).mean()
        _minimize(self.actor.optimizer, actor_loss)  # the critic is held fixed: gradients w.r.t. the actor only
        return critic_loss.detach(), actor_loss.detach(), current_q.detach().mean()


def gradient_step_for(policy: Any, mlp_update: bool = True, cnn_update: bool = True) -> GradientStep:
    """
    The gradient step for ``policy``: the hand-written one for its networks when there is one (and it is enabled),
    else :class:`AutogradStep`.

    :param policy: a ``PaperDDPGPolicy``
    :param mlp_update: use :class:`~sb3_ddpg_paper.mlp_update.MLPUpdate` for fully connected networks
    :param cnn_update: use :class:`~sb3_ddpg_paper.cnn_update.CNNUpdate` for the paper's pixel networks
    """
    if hand_written_updates():
        step = (MLPUpdate.for_policy(policy) if mlp_update else None) or (CNNUpdate.for_policy(policy) if cnn_update else None)
        if step is not None:
            return step
    return AutogradStep(policy)
