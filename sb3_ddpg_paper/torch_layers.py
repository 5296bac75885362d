"""
Building blocks of the paper's networks: weight initialisation, batch-norm handling and the MLP bodies.

Every paper-driven choice cites Lillicrap et al. 2016 ("Continuous control with deep reinforcement learning",
ICLR 2016, arXiv:1509.02971 v6); section 7 ("Experiment details") is where the numbers live.
"""

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch as th
from gymnasium import spaces
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
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
            bound = 1.0 / math.sqrt(layer.weight[0].numel())  # fan-in: inputs (x kernel size) per output unit
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


class _FloatStateBatchNorm(_BatchNorm):
    """
    Batch norm whose state dict holds float tensors only, as SB3's networks do: PyTorch's step counter
    ``num_batches_tracked`` (an integer tensor, used only when ``momentum`` is None, which these networks never are)
    is kept as a buffer but not saved, so that ``get_parameters()`` and saved files can be treated as float tensors
    throughout (averaged, randomised, interpolated). Files of version 0.1.0, which hold the counter, still load.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("num_batches_tracked", self.num_batches_tracked, persistent=False)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)  # saved by version 0.1.0
        # Not _BatchNorm's override: it only adds the counter back to state dicts without version metadata
        nn.Module._load_from_state_dict(self, state_dict, prefix, *args)


class BatchNorm1d(_FloatStateBatchNorm, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` with a float-only state dict (see ``_FloatStateBatchNorm``)."""


class BatchNorm2d(_FloatStateBatchNorm, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with a float-only state dict (see ``_FloatStateBatchNorm``)."""


def _batch_norm(n_features: int, momentum: float, eps: float) -> nn.BatchNorm1d:
    return BatchNorm1d(n_features, momentum=momentum, eps=eps)


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
        state = self.state_net(features) if len(self.state_net) else features  # action_layer=0: nothing before it
        return self.joint_net(th.cat([state, actions], dim=1))


# ---------------------------------------------------------------------------------------------------------------------
# Pixels (Lillicrap et al. 2016, sec. 7): "When learning from pixels we used 3 convolutional layers (no pooling) with
# 32 filters at each layer. This was followed by two fully connected layers with 200 units". Kernel size and stride
# are not given anywhere: 3x3 with stride 2 (no padding) is this package's documented assumption (docs/pixels.md).


def _conv_output_size(size: int, kernel_size: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel_size) // stride + 1


def ddpg_conv2d_block(
    state_sz: Sequence[int],
    filters: int = 32,
    activation_fn: type[nn.Module] = nn.ReLU,
    ignore_warning: bool = False,
    *,
    n_layers: int = 3,
    kernel_size: int = 3,
    stride: int = 2,
    padding: int = 0,
    batch_norm: bool = True,
    bn_momentum: float = 0.1,
    bn_eps: float = 1e-5,
) -> tuple[nn.Sequential, int]:
    """
    The paper's convolutional tower (the reference notebook's ``ddpg_conv2d_block``, built with ``filters`` filters
    per layer, not ``filters`` as kernel size): [BN(image)] -> (Conv -> [BN] -> activation) x ``n_layers`` -> Flatten.

    Lillicrap et al. 2016, sec. 7: 3 convolutional layers of 32 filters, no pooling, ReLU, batch norm on the state
    input and all layers before the action input. Batch-norm placement (Conv -> BN -> ReLU, the conv layer without
    bias) mirrors the low-dimensional layers; kernel size and stride are not in the paper (default 3x3, stride 2).
    Layers are initialised with the paper's U(+-1/sqrt(fan_in)).

    :param state_sz: image shape, channels first: ``(channels, height, width)``
    :param filters: number of filters of every conv layer (paper: 32)
    :param activation_fn: activation after every conv layer (paper: ReLU)
    :param ignore_warning: skip the channel-order check (for channels-first images with more channels than pixels
        in a row, which the check would take for channels-last)
    :param n_layers: number of conv layers (paper: 3)
    :param kernel_size: kernel size of every conv layer (not in the paper; default 3)
    :param stride: stride of every conv layer (not in the paper; default 2)
    :param padding: zero padding of every conv layer (default 0)
    :param batch_norm: batch norm on the input image and after every conv layer
    :param bn_momentum: batch-norm momentum (PyTorch convention)
    :param bn_eps: batch-norm epsilon
    :return: the block (input: a float batch ``(N, C, H, W)``, output: ``(N, n_features)``) and ``n_features``
    """
    shape = tuple(int(s) for s in state_sz)
    if len(shape) != 3:
        raise ValueError(f"state_sz must be an image shape (channels, height, width), got {tuple(state_sz)}.")
    channels, height, width = shape
    # The notebook's check, for any number of channels: the channel axis is the smallest one (SB3's convention too).
    if not ignore_warning and channels > min(height, width):
        raise ValueError(
            f"state_sz={shape} looks channels-last (height, width, channels): the conv block expects channels first, "
            f"i.e. {(shape[2], shape[0], shape[1])}. Transpose the observations (np.transpose(obs, (2, 0, 1)), or "
            "SB3's VecTransposeImage, which SB3 applies automatically to channels-last image spaces), or pass "
            "ignore_warning=True if the shape really is channels first."
        )
    for name, value, minimum in (("filters", filters, 1), ("n_layers", n_layers, 1), ("kernel_size", kernel_size, 1)):
        if int(value) != value or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    if int(stride) != stride or stride < 1 or int(padding) != padding or padding < 0:
        raise ValueError(f"stride must be an integer >= 1 and padding >= 0, got stride={stride!r}, padding={padding!r}.")

    layers: list[nn.Module] = [BatchNorm2d(channels, momentum=bn_momentum, eps=bn_eps)] if batch_norm else []
    in_channels = channels
    for _ in range(n_layers):
        # No bias before a batch norm: BN's shift makes it redundant (as in the fully connected layers)
        layers.append(nn.Conv2d(in_channels, filters, kernel_size, stride=stride, padding=padding, bias=not batch_norm))
        if batch_norm:
            layers.append(BatchNorm2d(filters, momentum=bn_momentum, eps=bn_eps))
        layers.append(activation_fn())
        in_channels = filters
        height = _conv_output_size(height, kernel_size, stride, padding)
        width = _conv_output_size(width, kernel_size, stride, padding)
        if height < 1 or width < 1:
            raise ValueError(
                f"Images of shape {shape} are too small for {n_layers} conv layers with kernel_size={kernel_size}, "
                f"stride={stride}, padding={padding}: use larger images, fewer layers or a smaller kernel/stride."
            )
    layers.append(nn.Flatten())
    block = nn.Sequential(*layers)
    init_fan_in_uniform(block)  # Lillicrap et al. 2016, sec. 7: hidden layers U(+-1/sqrt(fan_in))
    return block, filters * height * width


class PaperCNN(BaseFeaturesExtractor):
    """
    Features extractor of the paper's pixel networks: the conv tower of :func:`ddpg_conv2d_block` (3 layers of 32
    filters, no pooling, ReLU, batch norm; Lillicrap et al. 2016, sec. 7). The two fully connected layers of 200
    units that follow are the policy's ``net_arch`` (``CnnPolicy`` default ``[200, 200]``), so that the critic's action
    can enter at the fully connected layers ("actions were not included until the fully-connected layers").

    Images arrive scaled to [0, 1] (SB3's ``normalize_images``; the paper scales pixels to [0, 1] too).

    :param observation_space: an image space, channels first (e.g. ``Box(0, 255, (9, 64, 64), uint8)``)
    :param filters: filters per conv layer (paper: 32)
    :param n_layers: number of conv layers (paper: 3)
    :param kernel_size: kernel size (not in the paper; default 3)
    :param stride: stride (not in the paper; default 2)
    :param padding: zero padding (default 0)
    :param activation_fn: activation after every conv layer
    :param batch_norm: batch norm on the input image and after every conv layer
    :param batch_norm_momentum: batch-norm momentum (PyTorch convention)
    :param batch_norm_eps: batch-norm epsilon
    :param weight_init: init of the conv layers: ``"fan_in_uniform"`` (the paper), ``"xavier_uniform"``,
        ``"kaiming_normal"`` or a callable taking a module
    :param features_dim: ``None`` (the paper): the flattened conv features go straight to the fully connected layers.
        An integer: a linear projection of them to ``features_dim`` units, then ReLU, as SB3's ``NatureCNN`` does
        with the same keyword (not in the paper; initialised like the conv layers, no batch norm)
    """

    def __init__(
        self,
        observation_space: spaces.Box,
        filters: int = 32,
        n_layers: int = 3,
        kernel_size: int = 3,
        stride: int = 2,
        padding: int = 0,
        activation_fn: type[nn.Module] = nn.ReLU,
        batch_norm: bool = True,
        batch_norm_momentum: float = 0.1,
        batch_norm_eps: float = 1e-5,
        weight_init: str | Callable[[nn.Module], None] = "fan_in_uniform",
        features_dim: int | None = None,
    ):
        if not is_image_space(observation_space, check_channels=False, normalized_image=True):
            raise ValueError(
                f"PaperCNN needs an image observation space (a 3-dimensional Box, channels first), got {observation_space}."
            )
        cnn, n_features = ddpg_conv2d_block(
            observation_space.shape,
            filters=filters,
            activation_fn=activation_fn,
            n_layers=n_layers,
            kernel_size=kernel_size,
            stride=stride,
            padding=padding,
            batch_norm=batch_norm,
            bn_momentum=batch_norm_momentum,
            bn_eps=batch_norm_eps,
        )
        if features_dim is not None:
            if isinstance(features_dim, bool) or int(features_dim) != features_dim or features_dim < 1:
                raise ValueError(f"features_dim must be a positive integer or None (no projection), got {features_dim!r}.")
            cnn.extend([nn.Linear(n_features, int(features_dim)), nn.ReLU()])  # NatureCNN's projection
            n_features = int(features_dim)
        super().__init__(observation_space, n_features)
        get_weight_init(weight_init)(cnn)
        self.cnn = cnn

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return self.cnn(observations)
