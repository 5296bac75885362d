"""
Algorithm 1's gradient step for the paper's pixel networks (``CnnPolicy``), with the forward and backward passes
written out.

Lillicrap et al. 2016, sec. 7: each of actor, critic and their targets is a conv tower (3 conv layers of 32 filters,
batch norm) followed by fully connected layers. One update runs a tower five times (the two targets on s', the critic
in the critic step, the actor and the critic again in the actor step) and back-propagates through two of them. With
autograd, most of that time is spent on the input layer: every tower converts the same uint8 batch to float and
divides it by 255 again, batch-normalises the same 9-channel 64x64 images with the same batch statistics again, and
the backward pass computes the gradient w.r.t. the normalised image (a transposed convolution back to 64x64 pixels)
only to reduce it to the 18 affine parameters of the input batch norm. :class:`CNNUpdate` computes the same step:

- each observation batch is normalised by its batch statistics once, and shared by every tower that sees it (the
  statistics are the same: same batch, same formula). The statistics are computed exactly from the integer pixel
  values; the normalised images ``(obs / 255 - mean) / sqrt(var + eps)`` are computed as ``obs * a + b`` per channel
  (as batch norm's own kernel computes them), with SB3's division by 255 folded into ``a``;
- the input batch norm's affine transform is folded into the first convolution, which is linear:
  ``conv(W, gamma * xhat + beta) = conv(W * gamma, xhat) + sum(W * beta)`` (no padding, so every window holds image
  pixels only), and its gradients follow from the first convolution's weight gradient on ``xhat``:
  ``dL/dW = gamma * G + beta * S``, ``dL/dgamma = sum(W * G)``, ``dL/dbeta = sum(W * S)``, with ``G`` the weight
  gradient and ``S`` the bias gradient of the folded convolution. No gradient w.r.t. the 64x64 input is computed;
- every other layer runs the kernels autograd would run (``convolution``, ``native_batch_norm``, ReLU and their
  backward kernels, ``convolution_backward`` with only the gradients that are used); the fully connected part is
  :mod:`~sb3_ddpg_paper.mlp_update`'s;
- the critic's tower in the actor step runs without saving anything (the critic is held fixed there);
- activations are channels last (``MEMORY_FORMAT``), and glibc's malloc keeps the freed activations of one update for
  the next instead of returning them to the kernel (:func:`~sb3_ddpg_paper.fast_paths.raise_malloc_thresholds`).

Batch norm behaves as the modules would in their current mode (batch statistics and a running-statistics update for
the online networks, the targets as the policy configured them, the critic's layers frozen in the actor step). The
numbers are those of the autograd step to float rounding (sums in another order, the fold above):
``tests/test_sameness.py`` checks them against a straightforward autograd implementation of Algorithm 1.
"""

from __future__ import annotations

from typing import Any, NamedTuple, cast

import torch as th
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from torch import nn
from torch.nn import functional as F

from sb3_ddpg_paper.fast_paths import raise_malloc_thresholds
from sb3_ddpg_paper.mlp_update import (
    Losses,
    _backward,
    _batch_norm_forward,
    _batch_norm_layer_backward,
    _check_chain,
    _forward,
    _relu_backward,
    _Saved,
)
from sb3_ddpg_paper.torch_compat import ATEN, apply_gradients
from sb3_ddpg_paper.torch_layers import BatchNorm2d, PaperCNN

_convolution_backward = ATEN.convolution_backward

_BATCH_NORMS_2D = (nn.BatchNorm2d, BatchNorm2d)  # exact types: a subclass may change forward()
# The towers' activations are channels last (N, H, W, C in memory): oneDNN's convolutions and PyTorch's batch norm
# are faster in that layout at these sizes (batch norm of 16x32x31x31: 0.29 vs 0.92 ms; weight gradient of the first
# convolution: 0.97 vs 2.34 ms; benchmarks/results/pixels_micro.txt, docs/speed.md "Pixels").
MEMORY_FORMAT = th.channels_last


class _Tower(NamedTuple):
    """The image layers of a :class:`PaperCNN`: [input BN] -> (Conv -> [BN] -> ReLU) x n, then Flatten."""

    input_bn: nn.BatchNorm2d | None
    layers: list[nn.Module]  # Conv2d, BatchNorm2d, ReLU


def _as_tower(extractor: nn.Module) -> tuple[_Tower, list[nn.Module]] | None:
    """The tower and the fully connected layers after its Flatten (``features_dim``'s projection), or ``None``."""
    if type(extractor) is not PaperCNN:
        return None
    layers = list(extractor.cnn)
    flatten = [i for i, layer in enumerate(layers) if type(layer) is nn.Flatten]
    if len(flatten) != 1 or layers[flatten[0]].start_dim != 1 or layers[flatten[0]].end_dim != -1:
        return None
    image, flat = layers[: flatten[0]], layers[flatten[0] + 1 :]
    input_bn = cast(nn.BatchNorm2d, image.pop(0)) if image and type(image[0]) in _BATCH_NORMS_2D else None
    if not image or type(image[0]) is not nn.Conv2d:
        return None
    for i, layer in enumerate(image):
        if type(layer) is nn.Conv2d:
            if layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str):
                return None
        elif type(layer) in _BATCH_NORMS_2D:
            if not layer.affine or type(image[i - 1]) is not nn.Conv2d:
                return None
        elif type(layer) is nn.ReLU:
            if type(image[i - 1]) not in (nn.Conv2d, *_BATCH_NORMS_2D):  # in place on a layer's fresh output
                return None
        else:
            return None
    if type(image[-1]) is not nn.ReLU:
        return None
    if input_bn is not None and (not input_bn.affine or any(p != 0 for p in image[0].padding)):
        return None  # the fold of the input batch norm into the first convolution needs windows inside the image
    return _Tower(input_bn, image), flat


def _exact_chunk(size: int) -> int:
    """The largest divisor of ``size`` up to 256: float32 sums of 256 squares of integers up to 255 stay below 2**24."""
    return max(d for d in range(1, min(size, 256) + 1) if size % d == 0)


class _Images:
    """
    One observation batch, prepared once for every tower that sees it: its batch statistics per channel and its
    normalised images (the input batch norm's ``(x - mean) / sqrt(var + eps)``, before the affine transform, which is
    folded into the first convolution), channels last.
    """

    def __init__(self, observations: th.Tensor, observation_space: Any, normalize_images: bool):
        # SB3's preprocess_obs: obs.float() / 255 for uint8 images when normalize_images, else obs.float()
        self.scale = 1.0 / 255.0 if is_image_space(observation_space) and normalize_images else 1.0
        self.observations = observations
        self.values = observations.float()  # before the scale; the integer pixel values of uint8 images
        self._statistics: tuple[th.Tensor, th.Tensor] | None = None
        self._normalized: dict[float | None, th.Tensor] = {}

    @property
    def count(self) -> int:
        """Values per channel in the batch (N * H * W)."""
        return self.values.numel() // self.values.shape[1]

    def statistics(self) -> tuple[th.Tensor, th.Tensor]:
        """The batch mean and biased variance of each channel of the preprocessed images (``scale * obs``), float64."""
        if self._statistics is None:
            n, channels = self.values.shape[:2]
            if self.observations.dtype == th.uint8:
                # Exact: float32 sums of integers that never exceed 2**24 (pixel values and their squares, 256 at a
                # time), then float64
                chunks = self.values.view(-1, _exact_chunk(self.values[0, 0].numel()))
                sums = chunks.sum(1).double().view(n, channels, -1).sum((0, 2))
                squares = th.linalg.vecdot(chunks, chunks).double().view(n, channels, -1).sum((0, 2))
                mean = sums / self.count
                var = (squares - sums * mean).clamp_(min=0.0) / self.count
            else:
                var, mean = th.var_mean(self.values.double(), dim=(0, 2, 3), correction=0)
            self._statistics = (mean * self.scale, var * self.scale**2)
        return self._statistics

    def transformed(self, alpha: th.Tensor, delta: th.Tensor) -> th.Tensor:
        """``alpha * obs + delta`` per channel (float32, channels last), as batch norm computes its normalised input."""
        shape = (1, -1, 1, 1)
        out = th.empty_like(self.values, memory_format=MEMORY_FORMAT)
        return th.addcmul(delta.float().view(shape), self.values, alpha.float().view(shape), out=out)

    def normalized(self, eps: float | None) -> th.Tensor:
        """
        The images normalised with the batch statistics, or (``eps=None``) the preprocessed images, ``scale * obs``:
        computed once, shared by every tower that sees this batch.
        """
        if eps not in self._normalized:
            if eps is None:
                scale = th.full((self.values.shape[1],), self.scale, dtype=th.float64, device=self.values.device)
                self._normalized[eps] = self.transformed(scale, th.zeros_like(scale))
            else:
                mean, var = self.statistics()
                invstd = (var + eps).rsqrt()
                self._normalized[eps] = self.transformed(invstd * self.scale, -mean * invstd)
        return self._normalized[eps]


def _input_forward(bn: nn.BatchNorm2d | None, images: _Images, frozen: bool) -> th.Tensor:
    """
    The input the first convolution sees: the normalised images (the input batch norm before its affine transform,
    with the statistics ``bn`` would use, updating its running statistics as ``bn`` would), or the preprocessed
    images without an input batch norm.
    """
    if bn is None:
        return images.normalized(None)
    training, track = (True, False) if frozen else (bn.training, bn.track_running_stats)
    if not training and bn.running_mean is not None and bn.running_var is not None:  # running statistics
        invstd = (bn.running_var.double() + bn.eps).rsqrt()
        return images.transformed(invstd * images.scale, -bn.running_mean.double() * invstd)
    if training and track and bn.running_mean is not None and bn.running_var is not None:
        factor = 0.0 if bn.momentum is None else bn.momentum  # as _BatchNorm.forward computes it
        if bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            if bn.momentum is None:  # cumulative moving average
                factor = 1.0 / float(bn.num_batches_tracked)
        mean, var = images.statistics()
        bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), factor)
        # The running variance averages the unbiased batch variance, as native_batch_norm does
        count = images.count
        bn.running_var.lerp_((var * (count / max(count - 1, 1))).to(bn.running_var.dtype), factor)
    return images.normalized(bn.eps)


def _first_conv_parameters(tower: _Tower) -> tuple[th.Tensor, th.Tensor | None]:
    """
    Weight and bias of the input batch norm's affine transform and the first convolution as one convolution of the
    normalised images: ``conv(W, gamma * xhat + beta) = conv(W * gamma, xhat) + sum(W * beta)`` (no padding: every
    window lies inside the image, so the shift adds the same constant to every output).
    """
    conv, bn = tower.layers[0], tower.input_bn
    assert isinstance(conv, nn.Conv2d)
    if bn is None:
        return conv.weight.contiguous(memory_format=MEMORY_FORMAT), conv.bias
    weight = (conv.weight * bn.weight.view(1, -1, 1, 1)).contiguous(memory_format=MEMORY_FORMAT)
    bias = (conv.weight * bn.bias.view(1, -1, 1, 1)).sum((1, 2, 3))
    return weight, bias if conv.bias is None else bias + conv.bias


def _tower_forward(tower: _Tower, images: _Images, frozen: bool = False, save: bool = True) -> tuple[th.Tensor, list[Any]]:
    """The flattened features and (``save``) what the backward pass needs."""
    x = _input_forward(tower.input_bn, images, frozen)
    saved: list[Any] = []
    for i, layer in enumerate(tower.layers):
        if isinstance(layer, nn.Conv2d):
            if i == 0:
                weight, bias = _first_conv_parameters(tower)
            else:
                weight, bias = layer.weight.contiguous(memory_format=MEMORY_FORMAT), layer.bias
            if save:
                saved.append((x, weight))
            x = F.conv2d(x, weight, bias, layer.stride, layer.padding, layer.dilation)
        elif isinstance(layer, nn.BatchNorm2d):
            x, state = _batch_norm_forward(layer, x, frozen)  # type: ignore[arg-type]
            saved.append(state)
        else:  # nn.ReLU
            x = x.relu_()  # the previous layer's fresh output
            saved.append(_Saved(x))
    return x.flatten(1), saved


def _tower_backward(tower: _Tower, saved: list[Any], g: th.Tensor, grads: dict[th.Tensor, th.Tensor | None]) -> None:
    """Back-propagate ``g`` (d loss / d features) through the tower, writing its parameters' gradients into ``grads``."""
    g = g.view(saved[-1].tensor.shape).contiguous(memory_format=MEMORY_FORMAT)
    for i in range(len(tower.layers) - 1, -1, -1):
        layer, state = tower.layers[i], saved[i]
        if isinstance(layer, nn.Conv2d):
            x, weight = state
            folded = i == 0 and tower.input_bn is not None
            has_bias = layer.bias is not None or folded
            grad_input, grad_weight, grad_bias = _convolution_backward(
                g,
                x,
                weight,
                [weight.shape[0]] if has_bias else None,
                layer.stride,
                layer.padding,
                layer.dilation,
                False,
                [0, 0],
                1,
                [i > 0, True, has_bias],
            )
            grad_weight = grad_weight.contiguous()
            if folded:  # back from the folded convolution (_first_conv_parameters) to W, gamma and beta
                bn = tower.input_bn
                assert bn is not None
                gamma, beta = bn.weight.view(1, -1, 1, 1), bn.bias.view(1, -1, 1, 1)
                grads[layer.weight] = grad_weight * gamma + beta * grad_bias.view(-1, 1, 1, 1)
                grads[bn.weight] = (layer.weight * grad_weight).sum((0, 2, 3))
                grads[bn.bias] = grad_bias @ layer.weight.sum((2, 3))
            else:
                grads[layer.weight] = grad_weight
            if layer.bias is not None:
                grads[layer.bias] = grad_bias
            g = grad_input
        elif isinstance(layer, nn.BatchNorm2d):
            grad_input, grad_weight, grad_bias = _batch_norm_layer_backward(layer, state, g, [True, True, True])
            grads[layer.weight], grads[layer.bias] = grad_weight, grad_bias
            g = grad_input
        else:  # nn.ReLU
            g = _relu_backward(g, state.tensor, 0)


class _Network(NamedTuple):
    """One network: its tower, then its fully connected layers (the projection, if any, then ``mu`` or the Q net)."""

    tower: _Tower
    layers: list[nn.Module]


class CNNUpdate:
    """
    One gradient step of Algorithm 1 (critic step, then actor step with the updated critic; no target updates) for a
    :class:`~sb3_ddpg_paper.policies.PaperDDPGPolicy` with :class:`~sb3_ddpg_paper.torch_layers.PaperCNN` towers
    (``CnnPolicy``). Build it with :meth:`for_policy`, which returns ``None`` for anything else (another extractor, a
    shared extractor, padding after the input batch norm, another activation, several critics, not float32).

    :param policy: the policy (its networks, optimizers and observation preprocessing)
    :param actor: the actor's tower and fully connected layers
    :param critic: the critic's
    :param actor_target: the target actor's
    :param critic_target: the target critic's
    :param action_at: index in ``critic.layers`` of the layer whose input receives the action
    """

    def __init__(
        self,
        policy: Any,
        actor: _Network,
        critic: _Network,
        actor_target: _Network,
        critic_target: _Network,
        action_at: int,
    ):
        self.policy = policy
        self.actor = actor
        self.critic = critic
        self.actor_target = actor_target
        self.critic_target = critic_target
        self.action_at = action_at
        action_layer = critic.layers[action_at]
        assert isinstance(action_layer, nn.Linear)
        state_width = action_layer.in_features - policy.actor.mu[-2].out_features
        self.state_columns, self.action_columns = slice(0, state_width), slice(state_width, None)
        raise_malloc_thresholds()  # the towers' activations are reused memory, not fresh pages (fast_paths)

    @classmethod
    def for_policy(cls, policy: Any) -> CNNUpdate | None:
        """The update for ``policy``, or ``None`` when its networks are not the supported pixel ones (see the class)."""
        nets = (policy.actor, policy.critic, policy.actor_target, policy.critic_target)
        try:
            if policy.share_features_extractor or len(policy.critic.q_networks) != 1:
                return None
            if policy.actor.normalize_images != policy.critic.normalize_images:
                return None
            networks = []
            for net in nets:
                parts = _as_tower(net.features_extractor)
                if parts is None:
                    return None
                tower, flat = parts
                if hasattr(net, "mu"):
                    layers = flat + list(net.mu)
                else:
                    q_net = net.q_networks[0]
                    layers = flat + list(q_net.state_net) + list(q_net.joint_net)
                networks.append(_Network(tower, layers))
            action_at = len(networks[1].layers) - len(policy.critic.q_networks[0].joint_net)
        except AttributeError:
            return None
        actor, critic, actor_target, critic_target = networks
        if len({id(net.features_extractor) for net in nets}) != len(nets):
            return None
        if not (_check_chain(actor.layers, nn.Tanh) and _check_chain(actor_target.layers, nn.Tanh)):
            return None
        if not (_check_chain(critic.layers, nn.Linear) and _check_chain(critic_target.layers, nn.Linear)):
            return None
        if not isinstance(critic.layers[action_at], nn.Linear) or not isinstance(actor.layers[-2], nn.Linear):
            return None
        for net, network in ((policy.actor, actor), (policy.critic, critic)):
            # Every trainable parameter is in these layers
            layers = [*([network.tower.input_bn] if network.tower.input_bn is not None else []), *network.tower.layers]
            layers += network.layers
            if {id(p) for p in net.parameters()} != {id(p) for layer in layers for p in layer.parameters()}:
                return None
        tensors = [t for net in nets for t in (*net.parameters(), *net.buffers())]
        if any(t.device != tensors[0].device or (t.is_floating_point() and t.dtype != th.float32) for t in tensors):
            return None
        return cls(policy, actor, critic, actor_target, critic_target, action_at)

    def _images(self, observations: th.Tensor) -> _Images:
        return _Images(observations, self.policy.observation_space, self.policy.actor.normalize_images)

    def __call__(self, batch: ReplayBufferSamples, discounts: th.Tensor | float) -> Losses:
        """One critic step and one actor step (Algorithm 1, lines 12-14; see ``update.GradientStep``)."""
        observations, actions, next_observations = batch.observations, batch.actions, batch.next_observations
        rewards, dones = batch.rewards, batch.dones
        k = self.action_at
        actor, critic = self.actor, self.critic
        with th.no_grad():
            obs, next_obs = self._images(observations), self._images(next_observations)

            # Critic step (Algorithm 1): y = r + gamma * Q'(s', mu'(s')) from the target networks,
            # loss = mean((y - Q(s, a))^2)
            features, _ = _tower_forward(self.actor_target.tower, next_obs, save=False)
            next_actions, _ = _forward(self.actor_target.layers, features)
            features, _ = _tower_forward(self.critic_target.tower, next_obs, save=False)
            next_q, _ = _forward(self.critic_target.layers, features, action=next_actions, action_at=k)
            target_q = rewards + (1 - dones) * discounts * next_q
            features, tower_saved = _tower_forward(critic.tower, obs)
            current_q, saved = _forward(critic.layers, features, action=actions, action_at=k)
            error = current_q - target_q
            critic_loss = error.square().mean()
            grads: dict[th.Tensor, th.Tensor | None] = {}
            g = _backward(critic.layers, saved, error.mul_(2.0 / error.numel()), grads, k, self.state_columns, True)
            if k > 0:  # below the action layer: the state path
                g = _backward(critic.layers[:k], saved[:k], g, grads, input_grad=True)  # type: ignore[arg-type]
            _tower_backward(critic.tower, tower_saved, g, grads)  # type: ignore[arg-type]
            apply_gradients(self.policy.critic.optimizer, grads)

            # Actor step with the updated critic (Algorithm 1): loss = -mean Q(s, mu(s)), gradient w.r.t. the actor's
            # parameters only; the critic normalises with this batch's statistics without counting it again
            features, actor_tower_saved = _tower_forward(actor.tower, obs)
            mu, actor_saved = _forward(actor.layers, features)
            features, _ = _tower_forward(critic.tower, obs, frozen=True, save=False)
            q, q_saved = _forward(critic.layers, features, frozen=True, action=mu, action_at=k)
            actor_loss = -q.mean()
            g = th.full_like(q, -1.0 / q.numel())
            grad_mu = _backward(critic.layers, q_saved, g, None, stop=max(k, 1), input_columns=self.action_columns)
            assert grad_mu is not None
            if k == 0:  # the action at the first fully connected layer: its action columns
                action_layer = critic.layers[0]
                assert isinstance(action_layer, nn.Linear)
                grad_mu = grad_mu.mm(action_layer.weight[:, self.action_columns])
            grads = {}
            g = _backward(actor.layers, actor_saved, grad_mu, grads, input_grad=True)
            _tower_backward(actor.tower, actor_tower_saved, g, grads)  # type: ignore[arg-type]
            apply_gradients(self.policy.actor.optimizer, grads)
        return critic_loss, actor_loss, current_q.mean()
