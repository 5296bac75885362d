"""
Algorithm 1's gradient step for plain MLP networks, with the forward and backward passes written out.

Without batch norm (``batch_norm=False``: SB3 DDPG's math, the paper's "no batch norm" ablation) the actor and the
critic are chains of ``Linear -> ReLU`` layers, and one update of Algorithm 1 is about thirty matrix products. With
autograd, building and walking the graph, ``zero_grad`` and the optimizer's ``step`` wrapper cost about as much again
as the products themselves at the paper's batch of 64 on a CPU (docs/speed.md). :class:`MLPUpdate` computes the same
gradients with the same products (``grad_W = g^T x``, ``grad_b = sum(g)``, ``grad_x = g W``, the ReLU and tanh
derivatives autograd uses), only sums may be rounded in another order, and hands them to the optimizers through
:func:`~sb3_ddpg_paper.fast_paths.apply_gradients`. It also skips what autograd would compute for nothing: in the
actor step, only the action's columns of the critic's action layer are back-propagated through, never the state's.

``tests/test_sameness.py`` checks it against a straightforward autograd implementation of Algorithm 1.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch as th
from torch import nn

from sb3_ddpg_paper.fast_paths import apply_gradients

_relu_backward = th.ops.aten.threshold_backward
_tanh_backward = th.ops.aten.tanh_backward


class _Layer(NamedTuple):
    weight: th.Tensor  # (out, in)
    bias: th.Tensor  # (out,)


def _linear_chain(modules: list[nn.Module], final: type[nn.Module] | None) -> list[_Layer] | None:
    """
    The layers of ``[Linear, ReLU] * n + [Linear] (+ [final])``, or ``None`` when ``modules`` are anything else
    (another activation, batch norm, dropout, a Linear without bias, a custom module).
    """
    expected_tail = [nn.Linear] + ([final] if final is not None else [])
    if len(modules) < len(expected_tail) or (len(modules) - len(expected_tail)) % 2:
        return None
    body, tail = modules[: len(modules) - len(expected_tail)], modules[len(modules) - len(expected_tail) :]
    pattern = [nn.Linear, nn.ReLU] * (len(body) // 2) + expected_tail
    if [type(module) for module in body + tail] != pattern:
        return None
    layers = [_Layer(m.weight, m.bias) for m in body + tail if isinstance(m, nn.Linear)]
    return None if any(layer.bias is None for layer in layers) else layers


def _forward(layers: list[_Layer], x: th.Tensor, action: th.Tensor | None = None, action_layer: int = -1) -> list[th.Tensor]:
    """
    Inputs of every layer, then the output: ``Linear -> ReLU`` for all but the last layer, the last one linear.
    ``action`` (critic) is concatenated to the input of layer ``action_layer``.
    """
    inputs = []
    last = len(layers) - 1
    for i, layer in enumerate(layers):
        if i == action_layer:
            x = th.cat([x, action], dim=1)  # type: ignore[list-item]
        inputs.append(x)
        x = th.addmm(layer.bias, x, layer.weight.t())
        if i < last:
            x = x.relu_()
    inputs.append(x)
    return inputs


def _weight_gradients(layer: _Layer, x: th.Tensor, g: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
    """d loss / d (weight, bias) of ``y = x W^T + b`` given ``g = d loss / d y``."""
    if x.shape[1] < 8:
        # A narrow input (a small observation): x^T g is the faster product at this shape (about 3x)
        grad_weight = x.t().mm(g).t().contiguous()
    else:
        grad_weight = g.t().mm(x)
    return grad_weight, g.sum(0)


class MLPUpdate:
    """
    One gradient step of Algorithm 1 (critic step, then actor step with the updated critic; no target updates) for a
    :class:`~sb3_ddpg_paper.policies.PaperDDPGPolicy` whose networks are plain MLPs. Build it with :meth:`for_policy`,
    which returns ``None`` when the policy is anything else (batch norm, another activation, several critics, a
    features extractor that is not the identity, parameters outside the layers, not float32).

    :param policy: the policy (its networks and optimizers)
    :param actor_layers: the actor's layers (ReLU between them, tanh after the last)
    :param critic_layers: the critic's layers (state layers, then the layers after the action input)
    :param actor_target_layers: same for the target actor
    :param critic_target_layers: same for the target critic
    :param action_layer: index of the critic layer whose input receives the action
    """

    def __init__(
        self,
        policy: Any,
        actor_layers: list[_Layer],
        critic_layers: list[_Layer],
        actor_target_layers: list[_Layer],
        critic_target_layers: list[_Layer],
        action_layer: int,
    ):
        self.policy = policy
        self.actor_layers = actor_layers
        self.critic_layers = critic_layers
        self.actor_target_layers = actor_target_layers
        self.critic_target_layers = critic_target_layers
        self.action_layer = action_layer
        # Width of the state part of the action layer's input (the action takes the columns after it)
        self.state_width = critic_layers[action_layer].weight.shape[1] - actor_layers[-1].weight.shape[0]

    @classmethod
    def for_policy(cls, policy: Any) -> MLPUpdate | None:
        """The update for ``policy``, or ``None`` when its networks are not plain float32 MLPs (see the class)."""
        try:
            actor, critic = policy.actor, policy.critic
            actor_target, critic_target = policy.actor_target, policy.critic_target
            if not (actor._features_are_obs and critic._features_are_obs) or len(critic.q_networks) != 1:
                return None
            chains = []
            for net, q_net in ((actor, None), (critic, critic.q_networks[0]), (actor_target, None)):
                chains.append(cls._chain(net, q_net))
            chains.append(cls._chain(critic_target, critic_target.q_networks[0]))
            # The action enters the input of the layer after the state layers
            action_layer = sum(isinstance(m, nn.Linear) for m in critic.q_networks[0].state_net)
        except AttributeError:
            return None
        if any(chain is None for chain in chains):
            return None
        actor_layers, critic_layers, actor_target_layers, critic_target_layers = chains
        for net, layers in ((actor, actor_layers), (critic, critic_layers)):
            # Every trainable parameter is in the layers (none in a features extractor or elsewhere)
            if {id(p) for p in net.parameters()} != {id(t) for layer in layers for t in layer}:  # type: ignore[union-attr]
                return None
        tensors = [t for chain in chains for layer in chain for t in layer]  # type: ignore[union-attr]
        if any(t.dtype != th.float32 or t.device != tensors[0].device for t in tensors):
            return None
        return cls(policy, actor_layers, critic_layers, actor_target_layers, critic_target_layers, action_layer)  # type: ignore[arg-type]

    @staticmethod
    def _chain(net: nn.Module, q_net: Any) -> list[_Layer] | None:
        if q_net is None:
            return _linear_chain(list(net.mu), final=nn.Tanh)  # type: ignore[union-attr, arg-type]
        modules = list(q_net.state_net) + list(q_net.joint_net)
        return _linear_chain(modules, final=None)

    def __call__(
        self,
        observations: th.Tensor,
        actions: th.Tensor,
        next_observations: th.Tensor,
        rewards: th.Tensor,
        dones: th.Tensor,
        discounts: th.Tensor | float,
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """
        One critic step and one actor step on this batch (Algorithm 1, lines 12-14).

        :return: the critic loss, the actor loss and the mean Q-value of the batch (before the critic step), detached
        """
        k = self.action_layer
        with th.no_grad():
            obs = observations if observations.dtype == th.float32 else observations.float()
            next_obs = next_observations if next_observations.dtype == th.float32 else next_observations.float()

            # Critic step: y = r + gamma * Q'(s', mu'(s')) from the target networks, loss = mean((y - Q(s, a))^2)
            next_actions = _forward(self.actor_target_layers, next_obs)[-1].tanh_()
            next_q = _forward(self.critic_target_layers, next_obs, next_actions, k)[-1]
            target_q = rewards + (1 - dones) * discounts * next_q
            inputs = _forward(self.critic_layers, obs, actions, k)
            current_q = inputs[-1]
            error = current_q - target_q
            critic_loss = error.square().mean()
            self._critic_backward(inputs, error.mul_(2.0 / error.numel()))

            # Actor step with the updated critic: loss = -mean Q(s, mu(s)), gradient w.r.t. the actor's parameters only
            actor_inputs = _forward(self.actor_layers, obs)
            mu = actor_inputs[-1].tanh_()
            q_inputs = _forward(self.critic_layers, obs, mu, k)
            actor_loss = -q_inputs[-1].mean()
            grad_q = th.full_like(q_inputs[-1], -1.0 / q_inputs[-1].numel())
            self._actor_backward(actor_inputs, mu, self._action_gradient(q_inputs, grad_q))
        return critic_loss, actor_loss, current_q.mean()

    def _critic_backward(self, inputs: list[th.Tensor], g: th.Tensor) -> None:
        layers, k = self.critic_layers, self.action_layer
        grads: dict[th.Tensor, th.Tensor | None] = {}
        for i in range(len(layers) - 1, -1, -1):
            layer = layers[i]
            grads[layer.weight], grads[layer.bias] = _weight_gradients(layer, inputs[i], g)
            if i == 0:
                break
            if i == k:  # the gradient of the state part of the input only (the action is data here)
                g = _relu_backward(g.mm(layer.weight[:, : self.state_width]), inputs[i][:, : self.state_width], 0)
            else:
                g = _relu_backward(g.mm(layer.weight), inputs[i], 0)
        apply_gradients(self.policy.critic.optimizer, grads)

    def _action_gradient(self, inputs: list[th.Tensor], g: th.Tensor) -> th.Tensor:
        """d loss / d action: back through the critic's layers down to its action layer, and the action's columns."""
        layers, k = self.critic_layers, self.action_layer
        for i in range(len(layers) - 1, k, -1):
            g = _relu_backward(g.mm(layers[i].weight), inputs[i], 0)
        return g.mm(layers[k].weight[:, self.state_width :])

    def _actor_backward(self, inputs: list[th.Tensor], mu: th.Tensor, grad_mu: th.Tensor) -> None:
        layers = self.actor_layers
        grads: dict[th.Tensor, th.Tensor | None] = {}
        g = _tanh_backward(grad_mu, mu)
        for i in range(len(layers) - 1, -1, -1):
            layer = layers[i]
            grads[layer.weight], grads[layer.bias] = _weight_gradients(layer, inputs[i], g)
            if i > 0:
                g = _relu_backward(g.mm(layer.weight), inputs[i], 0)
        apply_gradients(self.policy.actor.optimizer, grads)
