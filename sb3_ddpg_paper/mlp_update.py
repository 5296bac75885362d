"""
Algorithm 1's gradient step for the paper's fully connected networks, with the forward and backward passes written out.

The low-dimensional actor and critic are chains of ``Linear``, ``BatchNorm1d`` and ``ReLU`` layers (plus the actor's
final tanh), and one update of Algorithm 1 is about thirty matrix products. With autograd, building and walking the
graph, ``zero_grad`` and the optimizer's ``step`` wrapper cost about as much again as the products themselves at the
paper's batch of 64 on a CPU (docs/speed.md). :class:`MLPUpdate` runs the same kernels autograd would run: forward
``addmm`` and ``native_batch_norm``, backward ``grad_W = g^T x``, ``grad_b = sum(g)``, ``grad_x = g W``,
``native_batch_norm_backward`` and the ReLU and tanh derivatives, so the gradients are the same (sums may be rounded
in another order), and hands them to the optimizers through :func:`~sb3_ddpg_paper.torch_compat.apply_gradients`. It also
skips what autograd would compute for nothing: in the actor step, only the action's columns of the critic's action
layer are back-propagated through, never the state's.

Batch norm behaves exactly as the modules would in their current mode (``training``, ``track_running_stats``):
batch statistics and a running-statistics update for the online networks, the target networks as the policy
configured them (see ``PaperDDPGPolicy``), and in the actor step the critic normalises with the batch statistics
without counting the batch twice (as ``frozen_running_statistics`` does on the autograd path).

``tests/test_sameness.py`` checks it against a straightforward autograd implementation of Algorithm 1.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch as th
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from torch import nn

from sb3_ddpg_paper.torch_compat import ATEN, apply_gradients
from sb3_ddpg_paper.torch_layers import BatchNorm1d

# The kernels autograd runs for these layers (torch_compat: used only where they exist; else the update is autograd's)
_relu_backward = ATEN.threshold_backward
_tanh_backward = ATEN.tanh_backward
_batch_norm = ATEN.native_batch_norm
_batch_norm_backward = ATEN.native_batch_norm_backward

Losses = tuple[th.Tensor, th.Tensor, th.Tensor]  # critic loss, actor loss, mean Q-value of the batch (detached)

_BATCH_NORMS = (nn.BatchNorm1d, BatchNorm1d)  # exact types: a subclass may change forward()
_SUPPORTED = (nn.Linear, *_BATCH_NORMS, nn.ReLU, nn.Tanh)


class _Saved(NamedTuple):
    """What a layer's backward pass needs from its forward pass."""

    tensor: th.Tensor  # Linear, BatchNorm1d: the input; ReLU, Tanh: the output
    save_mean: th.Tensor | None = None  # BatchNorm1d only
    save_invstd: th.Tensor | None = None
    running_mean: th.Tensor | None = None
    running_var: th.Tensor | None = None
    batch_statistics: bool = True


def _batch_norm_layer_backward(layer: nn.Module, state: _Saved, g: th.Tensor, output_mask: list[bool]) -> Any:
    """``native_batch_norm_backward`` of one batch-norm layer from what its forward pass saved."""
    return _batch_norm_backward(
        g,
        state.tensor,
        layer.weight,
        state.running_mean,
        state.running_var,
        state.save_mean,
        state.save_invstd,
        state.batch_statistics,
        layer.eps,
        output_mask,
    )


def _check_chain(modules: list[nn.Module], last: type[nn.Module]) -> bool:
    """Linear / affine BatchNorm1d / ReLU layers ending with ``last``, each Linear followed by at most BN and ReLU."""
    if not modules or type(modules[-1]) is not last:
        return False
    for i, module in enumerate(modules):
        if type(module) not in _SUPPORTED:
            return False
        # Activations run in place on the output of the layer before them, never on an input
        if isinstance(module, nn.ReLU | nn.Tanh) and (i == 0 or type(modules[i - 1]) not in (nn.Linear, *_BATCH_NORMS)):
            return False
        if isinstance(module, nn.BatchNorm1d) and not module.affine:
            return False
        if isinstance(module, nn.Tanh) and module is not modules[-1]:
            return False
    return True


def _batch_norm_forward(bn: nn.BatchNorm1d, x: th.Tensor, frozen: bool) -> tuple[th.Tensor, _Saved]:
    """``bn(x)`` as ``_BatchNorm.forward`` computes it (``frozen``: batch statistics, running statistics untouched)."""
    training, track = (True, False) if frozen else (bn.training, bn.track_running_stats)
    factor = 0.0 if bn.momentum is None else bn.momentum
    if training and track and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:  # cumulative moving average
            factor = 1.0 / float(bn.num_batches_tracked)
    batch_statistics = training or (bn.running_mean is None and bn.running_var is None)
    pass_statistics = not training or track
    running_mean = bn.running_mean if pass_statistics else None
    running_var = bn.running_var if pass_statistics else None
    y, save_mean, save_invstd = _batch_norm(x, bn.weight, bn.bias, running_mean, running_var, batch_statistics, factor, bn.eps)
    return y, _Saved(x, save_mean, save_invstd, running_mean, running_var, batch_statistics)


def _forward(
    layers: list[nn.Module], x: th.Tensor, frozen: bool = False, action: th.Tensor | None = None, action_at: int = -1
) -> tuple[th.Tensor, list[_Saved]]:
    """
    The output of the chain and what its backward pass needs; ``action`` (critic) is concatenated to the input of
    layer ``action_at``. ``frozen``: batch norm normalises with batch statistics and leaves the running ones alone.
    """
    saved = []
    for i, layer in enumerate(layers):
        if i == action_at:
            x = th.cat([x, action], dim=1)  # type: ignore[list-item]
        if isinstance(layer, nn.Linear):
            saved.append(_Saved(x))
            x = th.addmm(layer.bias, x, layer.weight.t()) if layer.bias is not None else x.mm(layer.weight.t())
        elif isinstance(layer, nn.BatchNorm1d):
            x, state = _batch_norm_forward(layer, x, frozen)
            saved.append(state)
        elif isinstance(layer, nn.ReLU):
            x = x.relu_()  # the previous layer's fresh output
            saved.append(_Saved(x))
        else:  # nn.Tanh
            x = x.tanh_()
            saved.append(_Saved(x))
    return x, saved


def _backward(
    layers: list[nn.Module],
    saved: list[_Saved],
    g: th.Tensor,
    grads: dict[th.Tensor, th.Tensor | None] | None,
    stop: int = 0,
    input_columns: slice = slice(None),
    input_grad: bool = False,
) -> th.Tensor | None:
    """
    Back-propagate ``g`` (d loss / d output) from the last layer down to layer ``stop``, writing the parameters'
    gradients into ``grads`` (``None``: parameters held fixed, no weight gradient is computed); return
    d loss / d (the input of layer ``stop``, its ``input_columns`` only), or ``None`` when ``stop`` is 0 and not
    ``input_grad`` (the gradient w.r.t. the observations is not needed; a conv tower below needs its features').
    """
    for i in range(len(layers) - 1, stop - 1, -1):
        layer, state = layers[i], saved[i]
        need_input = i > 0 or input_grad
        if isinstance(layer, nn.Linear):
            if grads is not None:
                x = state.tensor
                if x.shape[1] < 8:  # a narrow input (a small observation): x^T g is the faster product (about 3x)
                    grads[layer.weight] = x.t().mm(g).t().contiguous()
                else:
                    grads[layer.weight] = g.t().mm(x)
                if layer.bias is not None:
                    grads[layer.bias] = g.sum(0)
            if need_input:
                g = g.mm(layer.weight[:, input_columns] if i == stop else layer.weight)
        elif isinstance(layer, nn.BatchNorm1d):
            grad_input, grad_weight, grad_bias = _batch_norm_layer_backward(
                layer, state, g, [need_input, grads is not None, grads is not None]
            )
            if grads is not None:
                grads[layer.weight], grads[layer.bias] = grad_weight, grad_bias
            g = grad_input
        elif isinstance(layer, nn.ReLU):
            g = _relu_backward(g, state.tensor, 0)
        else:  # nn.Tanh
            g = _tanh_backward(g, state.tensor)
    return g if stop > 0 or input_grad else None


class MLPUpdate:
    """
    One gradient step of Algorithm 1 (critic step, then actor step with the updated critic; no target updates) for a
    :class:`~sb3_ddpg_paper.policies.PaperDDPGPolicy` whose networks are fully connected. Build it with
    :meth:`for_policy`, which returns ``None`` for anything else (CNN or Dict features, another activation, several
    critics, parameters outside these layers, not float32).

    :param policy: the policy (its networks and optimizers)
    :param actor: the actor's layers (``mu``)
    :param critic: the critic's layers (state layers, then the layers after the action input)
    :param actor_target: the target actor's layers
    :param critic_target: the target critic's layers
    :param action_at: index in ``critic`` of the layer whose input receives the action
    """

    def __init__(
        self,
        policy: Any,
        actor: list[nn.Module],
        critic: list[nn.Module],
        actor_target: list[nn.Module],
        critic_target: list[nn.Module],
        action_at: int,
    ):
        self.policy = policy
        self.actor = actor
        self.critic = critic
        self.actor_target = actor_target
        self.critic_target = critic_target
        self.action_at = action_at
        action_layer = critic[action_at]
        assert isinstance(action_layer, nn.Linear)
        # The action takes the last columns of the action layer's weight, the state features the ones before
        state_width = action_layer.in_features - policy.actor.mu[-2].out_features
        self.state_columns, self.action_columns = slice(0, state_width), slice(state_width, None)

    @classmethod
    def for_policy(cls, policy: Any) -> MLPUpdate | None:
        """The update for ``policy``, or ``None`` when its networks are not the fully connected ones (see the class)."""
        try:
            if not (policy.actor._features_are_obs and policy.critic._features_are_obs):
                return None
            if len(policy.critic.q_networks) != 1:
                return None
            chains = [list(policy.actor.mu), list(policy.actor_target.mu)]
            action_at = len(policy.critic.q_networks[0].state_net)
            for critic in (policy.critic, policy.critic_target):
                q_net = critic.q_networks[0]
                chains.append(list(q_net.state_net) + list(q_net.joint_net))
        except AttributeError:
            return None
        actor, actor_target, critic, critic_target = chains
        if not (_check_chain(actor, nn.Tanh) and _check_chain(actor_target, nn.Tanh)):
            return None
        if not (_check_chain(critic, nn.Linear) and _check_chain(critic_target, nn.Linear)):
            return None
        if not isinstance(critic[action_at], nn.Linear) or not isinstance(actor[-2], nn.Linear):
            return None
        for net, layers in ((policy.actor, actor), (policy.critic, critic)):
            # Every trainable parameter is in these layers (none in a features extractor or elsewhere)
            if {id(p) for p in net.parameters()} != {id(p) for layer in layers for p in layer.parameters()}:
                return None
        tensors = [t for layers in chains for layer in layers for t in (*layer.parameters(), *layer.buffers())]
        if any(t.device != tensors[0].device or (t.is_floating_point() and t.dtype != th.float32) for t in tensors):
            return None
        return cls(policy, actor, critic, actor_target, critic_target, action_at)

    def input_layer_action_weight(self) -> th.Tensor:
        """The action's columns of the critic's input layer (action at the input, ``action_layer=0``)."""
        layer = self.critic[0]
        assert isinstance(layer, nn.Linear)
        return layer.weight[:, self.action_columns]

    def __call__(self, batch: ReplayBufferSamples, discounts: th.Tensor | float) -> Losses:
        """One critic step and one actor step (Algorithm 1, lines 12-14; see ``update.GradientStep``)."""
        observations, actions, next_observations = batch.observations, batch.actions, batch.next_observations
        rewards, dones = batch.rewards, batch.dones
        k = self.action_at
        with th.no_grad():
            obs = observations if observations.dtype == th.float32 else observations.float()
            next_obs = next_observations if next_observations.dtype == th.float32 else next_observations.float()

            # Critic step: y = r + gamma * Q'(s', mu'(s')) from the target networks, loss = mean((y - Q(s, a))^2)
            next_actions, _ = _forward(self.actor_target, next_obs)
            next_q, _ = _forward(self.critic_target, next_obs, action=next_actions, action_at=k)
            target_q = rewards + (1 - dones) * discounts * next_q
            current_q, saved = _forward(self.critic, obs, action=actions, action_at=k)
            error = current_q - target_q
            critic_loss = error.square().mean()
            grads: dict[th.Tensor, th.Tensor | None] = {}
            grad_state = _backward(self.critic, saved, error.mul_(2.0 / error.numel()), grads, k, self.state_columns)
            if grad_state is not None:  # below the action layer: the state path
                _backward(self.critic[:k], saved[:k], grad_state, grads)
            apply_gradients(self.policy.critic.optimizer, grads)

            # Actor step with the updated critic: loss = -mean Q(s, mu(s)), gradient w.r.t. the actor's parameters
            # only; the critic normalises with this batch's statistics without counting it again
            mu, actor_saved = _forward(self.actor, obs)
            q, q_saved = _forward(self.critic, obs, frozen=True, action=mu, action_at=k)
            actor_loss = -q.mean()
            g = th.full_like(q, -1.0 / q.numel())
            grad_mu = _backward(self.critic, q_saved, g, None, stop=max(k, 1), input_columns=self.action_columns)
            assert grad_mu is not None
            if k == 0:  # the action at the critic's input: the input layer's action columns
                grad_mu = grad_mu.mm(self.input_layer_action_weight())
            grads = {}
            _backward(self.actor, actor_saved, grad_mu, grads)
            apply_gradients(self.policy.actor.optimizer, grads)
        return critic_loss, actor_loss, current_q.mean()
