"""
Building blocks of the paper's networks: weight initialisation, batch-norm handling and the MLP bodies.

Every paper-driven choice cites Lillicrap et al. 2016 ("Continuous control with deep reinforcement learning",
ICLR 2016, arXiv:1509.02971 v6); section 7 ("Experiment details") is where the numbers live.
"""

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence

import torch as th
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

# Lillicrap et al. 2016, sec. 7: "The final layer weights and biases of both the actor and critic were initialized
# from a uniform distribution [-3e-3, 3e-3] and [-3e-4, 3e-4] for the low dimensional and pixel cases respectively."
# (The paper prints the pixel interval without its minus sign: a typo.)
FINAL_LAYER_INIT_BOUND = 3e-3
PIXEL_FINAL_LAYER_INIT_BOUND = 3e-4

_WEIGHTED_LAYERS = (nn.Linear, nn.Conv2d)


def init_fan_in_uniform(module: nn.Module) -> None:
    """
    The paper's init for all but the final layer: weights and biases from U(-1/sqrt(f), 1/sqrt(f)), f the fan-in
    (Lillicrap et al. 2016, sec. 7). This is exactly PyTorch's default ``nn.Linear`` / ``nn.Conv2d`` init; it is
    spelled out here so that the choice is visible and does not depend on PyTorch's defaults.

    :param module: a module; every ``nn.Linear`` / ``nn.Conv2d`` inside it is initialised
    """
    for layer in module.modules():
        if isinstance(layer, _WEIGHTED_LAYERS):
            bound = 1.0 / math.sqrt(nn.init._calculate_correct_fan(layer.weight, "fan_in"))
            nn.init.uniform_(layer.weight, -bound, bound)
            if layer.bias is not None:
                nn.init.uniform_(layer.bias, -bound, bound)


def init_xavier_uniform(module: nn.Module, bias: float = 0.01) -> None:
    """
    Xavier/Glorot-uniform weights and a constant bias (the reference notebook's ``init_xavier_uniform_weights``).

    :param module: a module; every ``nn.Linear`` / ``nn.Conv2d`` inside it is initialised
    :param bias: constant value for the biases
    """
    for layer in module.modules():
        if isinstance(layer, _WEIGHTED_LAYERS):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.constant_(layer.bias, bias)


def init_kaiming_normal(module: nn.Module, bias: float = 0.01) -> None:
    """
    Kaiming/He-normal (fan-in) weights and a constant bias (the reference notebook's ``init_kaiming_normal_weights``).

    :param module: a module; every ``nn.Linear`` / ``nn.Conv2d`` inside it is initialised
    :param bias: constant value for the biases
    """
    for layer in module.modules():
        if isinstance(layer, _WEIGHTED_LAYERS):
            nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
            if layer.bias is not None:
                nn.init.constant_(layer.bias, bias)


def init_uniform(module: nn.Module, bound: float) -> None:
    """
    Weights AND biases from U(-bound, bound): the paper's final-layer init (the notebook's ``init_uniform_weights``).

    :param module: a module; every ``nn.Linear`` / ``nn.Conv2d`` inside it is initialised
    :param bound: half-width of the interval (3e-3 low-dimensional, 3e-4 pixels in the paper)
    """
    for layer in module.modules():
        if isinstance(layer, _WEIGHTED_LAYERS):
            nn.init.uniform_(layer.weight, -bound, bound)
            if layer.bias is not None:
                nn.init.uniform_(layer.bias, -bound, bound)


WEIGHT_INITS: dict[str, Callable[[nn.Module], None]] = {
    "fan_in_uniform": init_fan_in_uniform,
    "xavier_uniform": init_xavier_uniform,
    "kaiming_normal": init_kaiming_normal,
}


def get_weight_init(weight_init: str | Callable[[nn.Module], None]) -> Callable[[nn.Module], None]:
    """
    Resolve a hidden-layer init strategy given by name (``"fan_in_uniform"``, the paper's, ``"xavier_uniform"``,
    ``"kaiming_normal"``) or as a callable taking a module.
    """
    if callable(weight_init):
        return weight_init
    if weight_init not in WEIGHT_INITS:
        raise ValueError(f"Unknown weight_init {weight_init!r}: expected one of {sorted(WEIGHT_INITS)} or a callable.")
    return WEIGHT_INITS[weight_init]


def batch_norm_modules(module: nn.Module) -> list[_BatchNorm]:
    """All batch-norm layers inside ``module`` (the only layers of these networks whose behaviour depends on mode)."""
    return [m for m in module.modules() if isinstance(m, _BatchNorm)]


def use_batch_statistics(layers: Sequence[_BatchNorm]) -> None:
    """
    Make batch-norm layers normalise with the statistics of the batch they see WITHOUT updating their running
    statistics (train mode with ``track_running_stats=False``; the running buffers stay in the state dict so that
    they can still be copied and saved). Used for the target networks (see ``PaperDDPGPolicy``).
    """
    for layer in layers:
        layer.train(True)
        layer.track_running_stats = False


@contextlib.contextmanager
def frozen_running_statistics(layers: Sequence[_BatchNorm]) -> Iterator[None]:
    """
    Within the context, batch-norm layers normalise with batch statistics but leave their running statistics alone.
    Used for the critic during the actor step: the critic already saw this batch in its own step.
    """
    previous = [(layer.training, layer.track_running_stats) for layer in layers]
    use_batch_statistics(layers)
    try:
        yield
    finally:
        for layer, (training, track) in zip(layers, previous, strict=True):
            layer.training = training
            layer.track_running_stats = track


def _batch_norm(n_features: int, momentum: float, eps: float) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(n_features, momentum=momentum, eps=eps)


def _hidden_block(
    in_dim: int,
    out_dim: int,
    activation_fn: type[nn.Module],
    batch_norm: bool,
    bn_momentum: float,
    bn_eps: float,
) -> list[nn.Module]:
    if not batch_norm:
        return [nn.Linear(in_dim, out_dim), activation_fn()]
    # Linear -> BN -> activation, as the reference implementation (rllab, Lasagne's ``batch_norm`` helper) built it.
    # The paper does not say whether BN sits before or after the ReLU. The Linear layer has no bias because BN's own
    # shift makes it redundant (it cancels exactly in both train and eval mode), as Lasagne also removes it.
    return [nn.Linear(in_dim, out_dim, bias=False), _batch_norm(out_dim, bn_momentum, bn_eps), activation_fn()]


def create_actor_net(
    features_dim: int,
    action_dim: int,
    net_arch: Sequence[int],
    activation_fn: type[nn.Module] = nn.ReLU,
    batch_norm: bool = True,
    bn_momentum: float = 0.1,
    bn_eps: float = 1e-5,
) -> nn.Sequential:
    """
    The actor body mu(s): [BN(s)] -> (Linear -> [BN] -> act) per hidden layer -> Linear -> tanh.

    Lillicrap et al. 2016, sec. 7: ReLU hidden layers, tanh output "to bound the actions", and batch norm "on the
    state input and all layers of the mu network". Initialisation is applied by the caller.
    """
    layers: list[nn.Module] = [_batch_norm(features_dim, bn_momentum, bn_eps)] if batch_norm else []
    last_dim = features_dim
    for width in net_arch:
        layers += _hidden_block(last_dim, width, activation_fn, batch_norm, bn_momentum, bn_eps)
        last_dim = width
    layers += [nn.Linear(last_dim, action_dim), nn.Tanh()]
    return nn.Sequential(*layers)


class QNetwork(nn.Module):
    """
    One Q(s, a) body with the action entering at a chosen layer.

    Lillicrap et al. 2016, sec. 7: "Actions were not included until the 2nd hidden layer of Q" and batch norm on
    "the state input ... and all layers of the Q network prior to the action input". With ``action_layer=1`` (the
    default of the policy) that is: BN(s) -> Linear(400) -> BN -> ReLU -> concat(a) -> Linear(300) -> ReLU -> Linear(1).

    :param features_dim: size of the state features
    :param action_dim: size of the action
    :param net_arch: hidden layer widths
    :param action_layer: index of the hidden layer whose input receives the action: 0 is the input layer,
        1 the 2nd hidden layer (the paper), ``len(net_arch)`` the output layer
    :param activation_fn: activation between layers
    :param batch_norm: whether to use batch norm on the state input and the layers before the action input
    :param bn_momentum: batch-norm momentum (PyTorch convention)
    :param bn_eps: batch-norm epsilon
    """

    def __init__(
        self,
        features_dim: int,
        action_dim: int,
        net_arch: Sequence[int],
        action_layer: int = 1,
        activation_fn: type[nn.Module] = nn.ReLU,
        batch_norm: bool = True,
        bn_momentum: float = 0.1,
        bn_eps: float = 1e-5,
    ):
        super().__init__()
        if not 0 <= action_layer <= len(net_arch):
            raise ValueError(
                f"action_layer={action_layer} is out of range for net_arch={list(net_arch)}: expected an integer "
                f"from 0 (action at the input layer) to {len(net_arch)} (action at the output layer)."
            )
        state_layers: list[nn.Module] = [_batch_norm(features_dim, bn_momentum, bn_eps)] if batch_norm else []
        last_dim = features_dim
        for width in net_arch[:action_layer]:
            state_layers += _hidden_block(last_dim, width, activation_fn, batch_norm, bn_momentum, bn_eps)
            last_dim = width
        last_dim += action_dim
        joint_layers: list[nn.Module] = []
        for width in net_arch[action_layer:]:
            # After the action has entered: no batch norm (the paper's BN stops at the action input)
            joint_layers += _hidden_block(last_dim, width, activation_fn, False, bn_momentum, bn_eps)
            last_dim = width
        joint_layers.append(nn.Linear(last_dim, 1))
        self.state_net = nn.Sequential(*state_layers)
        self.joint_net = nn.Sequential(*joint_layers)

    @property
    def output_layer(self) -> nn.Linear:
        layer = self.joint_net[-1]
        assert isinstance(layer, nn.Linear)
        return layer

    def forward(self, features: th.Tensor, actions: th.Tensor) -> th.Tensor:
        return self.joint_net(th.cat([self.state_net(features), actions], dim=1))
