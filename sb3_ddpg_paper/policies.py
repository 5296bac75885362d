"""The paper's actor and critic (Lillicrap et al. 2016, sec. 7) as an SB3 policy."""

from typing import Any, Literal

import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import BaseModel, BasePolicy
from stable_baselines3.common.preprocessing import get_action_dim
from stable_baselines3.common.torch_layers import (
    BaseFeaturesExtractor,
    CombinedExtractor,
    FlattenExtractor,
    get_actor_critic_arch,
)
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from torch import nn

from sb3_ddpg_paper.fast_paths import make_optimizer
from sb3_ddpg_paper.torch_layers import (
    FINAL_LAYER_INIT_BOUND,
    PIXEL_FINAL_LAYER_INIT_BOUND,
    PaperCNN,
    QNetwork,
    batch_norm_modules,
    create_actor_net,
    get_weight_init,
    init_uniform,
    use_batch_statistics,
)

TargetBatchNorm = Literal["batch", "running"]
WeightDecayScope = Literal["weights", "all"]


def _features_are_observations(observation_space: spaces.Space, features_extractor: nn.Module) -> bool:
    """
    Whether SB3's ``extract_features`` is the identity on a float32 batch: a ``FlattenExtractor`` over a flat ``Box``
    (``preprocess_obs`` is ``.float()``, the flatten a no-op). The hot path then skips its calls (speed, same numbers).
    """
    return (
        type(features_extractor) is FlattenExtractor
        and isinstance(observation_space, spaces.Box)
        and len(observation_space.shape) == 1
    )


def _features(model: "Actor | Critic", obs: th.Tensor) -> th.Tensor:
    if model._features_are_obs and obs.dtype == th.float32 and obs.dim() == 2:
        return obs
    return model.extract_features(obs, model.features_extractor)


def _check_bn_args(batch_norm_momentum: float, batch_norm_eps: float) -> None:
    if not 0 <= batch_norm_momentum <= 1:
        raise ValueError(f"batch_norm_momentum must be in [0, 1], got {batch_norm_momentum!r}.")
    if not batch_norm_eps > 0:
        raise ValueError(f"batch_norm_eps must be > 0, got {batch_norm_eps!r}.")


class Actor(BasePolicy):
    """
    The deterministic policy mu(s) of the paper: features -> [BN] -> 400 -> [BN] -> 300 -> [BN] -> action, ReLU
    hidden layers and a tanh output (Lillicrap et al. 2016, sec. 7).

    :param observation_space: Observation space
    :param action_space: Action space
    :param net_arch: Network architecture
    :param features_extractor: Network to extract features
        (a CNN when using images, a nn.Flatten() layer otherwise)
    :param features_dim: Number of features
    :param activation_fn: Activation function
    :param normalize_images: Whether to normalize images or not,
         dividing by 255.0 (True by default)
    :param batch_norm: Whether to use batch norm on the state input and every hidden layer
    :param batch_norm_momentum: Batch-norm momentum (PyTorch convention: weight of the new batch)
    :param batch_norm_eps: Batch-norm epsilon
    :param weight_init: Init of the hidden layers: ``"fan_in_uniform"`` (the paper), ``"xavier_uniform"``,
        ``"kaiming_normal"`` or a callable taking a module
    :param final_layer_init_bound: Final-layer weights and biases are drawn from U(-bound, bound)
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        net_arch: list[int],
        features_extractor: nn.Module,
        features_dim: int,
        activation_fn: type[nn.Module] = nn.ReLU,
        normalize_images: bool = True,
        batch_norm: bool = True,
        batch_norm_momentum: float = 0.1,
        batch_norm_eps: float = 1e-5,
        weight_init: str | Any = "fan_in_uniform",
        final_layer_init_bound: float = FINAL_LAYER_INIT_BOUND,
    ):
        super().__init__(
            observation_space,
            action_space,
            features_extractor=features_extractor,
            normalize_images=normalize_images,
            squash_output=True,
        )
        _check_bn_args(batch_norm_momentum, batch_norm_eps)
        self.net_arch = net_arch
        self.features_dim = features_dim
        self.activation_fn = activation_fn
        self.batch_norm = batch_norm
        self.batch_norm_momentum = batch_norm_momentum
        self.batch_norm_eps = batch_norm_eps
        self.weight_init = weight_init
        self.final_layer_init_bound = final_layer_init_bound

        self.mu = create_actor_net(
            features_dim,
            get_action_dim(self.action_space),
            net_arch,
            activation_fn,
            batch_norm=batch_norm,
            bn_momentum=batch_norm_momentum,
            bn_eps=batch_norm_eps,
        )
        get_weight_init(weight_init)(self.mu)
        init_uniform(self.mu[-2], final_layer_init_bound)  # the last Linear, before tanh
        self._features_are_obs = _features_are_observations(observation_space, self.features_extractor)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            dict(
                net_arch=self.net_arch,
                features_dim=self.features_dim,
                activation_fn=self.activation_fn,
                features_extractor=self.features_extractor,
                batch_norm=self.batch_norm,
                batch_norm_momentum=self.batch_norm_momentum,
                batch_norm_eps=self.batch_norm_eps,
                weight_init=self.weight_init,
                final_layer_init_bound=self.final_layer_init_bound,
            )
        )
        return data

    def forward(self, obs: th.Tensor) -> th.Tensor:
        return self.mu(_features(self, obs))

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        # DDPG's policy is deterministic: ``deterministic`` is ignored, exploration is the action noise.
        return self(observation)


class Critic(BaseModel):
    """
    The paper's Q(s, a) with the action entering at a chosen hidden layer (default: the 2nd, Lillicrap et al. 2016,
    sec. 7) and batch norm on the state input and every layer before the action input.

    It keeps the interface of SB3's ``ContinuousCritic`` (``forward`` returns a tuple with one Q-value per critic,
    ``q1_forward``), so SB3's own DDPG/TD3 can train with ``PaperDDPGPolicy`` too.

    :param observation_space: Observation space
    :param action_space: Action space
    :param net_arch: Network architecture
    :param features_extractor: Network to extract features
        (a CNN when using images, a nn.Flatten() layer otherwise)
    :param features_dim: Number of features
    :param activation_fn: Activation function
    :param normalize_images: Whether to normalize images or not,
         dividing by 255.0 (True by default)
    :param n_critics: Number of critic networks to create (1 for DDPG; TD3 uses 2).
    :param share_features_extractor: Whether the features extractor is shared or not
        between the actor and the critic (this saves computation time)
    :param action_layer: Hidden layer whose input receives the action: 0 the input layer, 1 the 2nd hidden layer
        (the paper), ``len(net_arch)`` the output layer
    :param batch_norm: Whether to use batch norm on the state input and the layers before the action input
    :param batch_norm_momentum: Batch-norm momentum (PyTorch convention: weight of the new batch)
    :param batch_norm_eps: Batch-norm epsilon
    :param weight_init: Init of the hidden layers: ``"fan_in_uniform"`` (the paper), ``"xavier_uniform"``,
        ``"kaiming_normal"`` or a callable taking a module
    :param final_layer_init_bound: Final-layer weights and biases are drawn from U(-bound, bound)
    """

    features_extractor: BaseFeaturesExtractor

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        net_arch: list[int],
        features_extractor: BaseFeaturesExtractor,
        features_dim: int,
        activation_fn: type[nn.Module] = nn.ReLU,
        normalize_images: bool = True,
        n_critics: int = 1,
        share_features_extractor: bool = False,
        action_layer: int = 1,
        batch_norm: bool = True,
        batch_norm_momentum: float = 0.1,
        batch_norm_eps: float = 1e-5,
        weight_init: str | Any = "fan_in_uniform",
        final_layer_init_bound: float = FINAL_LAYER_INIT_BOUND,
    ):
        super().__init__(
            observation_space,
            action_space,
            features_extractor=features_extractor,
            normalize_images=normalize_images,
        )
        _check_bn_args(batch_norm_momentum, batch_norm_eps)
        if int(n_critics) != n_critics or n_critics < 1:
            raise ValueError(f"n_critics must be a positive integer, got {n_critics!r}.")
        self.net_arch = net_arch
        self.features_dim = features_dim
        self.activation_fn = activation_fn
        self.n_critics = n_critics
        self.share_features_extractor = share_features_extractor
        self.action_layer = action_layer
        self.batch_norm = batch_norm
        self.batch_norm_momentum = batch_norm_momentum
        self.batch_norm_eps = batch_norm_eps
        self.weight_init = weight_init
        self.final_layer_init_bound = final_layer_init_bound

        action_dim = get_action_dim(self.action_space)
        init_fn = get_weight_init(weight_init)
        self.q_networks: list[QNetwork] = []
        for idx in range(n_critics):
            q_net = QNetwork(
                features_dim,
                action_dim,
                net_arch,
                action_layer=action_layer,
                activation_fn=activation_fn,
                batch_norm=batch_norm,
                bn_momentum=batch_norm_momentum,
                bn_eps=batch_norm_eps,
            )
            init_fn(q_net)
            init_uniform(q_net.output_layer, final_layer_init_bound)
            self.add_module(f"qf{idx}", q_net)
            self.q_networks.append(q_net)
        self._features_are_obs = _features_are_observations(observation_space, self.features_extractor)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            dict(
                net_arch=self.net_arch,
                features_dim=self.features_dim,
                activation_fn=self.activation_fn,
                features_extractor=self.features_extractor,
                n_critics=self.n_critics,
                share_features_extractor=self.share_features_extractor,
                action_layer=self.action_layer,
                batch_norm=self.batch_norm,
                batch_norm_momentum=self.batch_norm_momentum,
                batch_norm_eps=self.batch_norm_eps,
                weight_init=self.weight_init,
                final_layer_init_bound=self.final_layer_init_bound,
            )
        )
        return data

    def forward(self, obs: th.Tensor, actions: th.Tensor) -> tuple[th.Tensor, ...]:
        # Learn a shared features extractor with the policy loss only (SB3's convention)
        if self._features_are_obs:  # no parameters before the Q networks: nothing to hold gradients from
            features = _features(self, obs)
        else:
            with th.set_grad_enabled(not self.share_features_extractor):
                features = self.extract_features(obs, self.features_extractor)
        return tuple(q_net(features, actions) for q_net in self.q_networks)

    def q1_forward(self, obs: th.Tensor, actions: th.Tensor) -> th.Tensor:
        """Q-value of the first critic only; the features extractor gets no gradient (used for the actor loss)."""
        if self._features_are_obs:
            features = _features(self, obs)
        else:
            with th.no_grad():
                features = self.extract_features(obs, self.features_extractor)
        return self.q_networks[0](features, actions)


class PaperDDPGPolicy(BasePolicy):
    """
    Policy class (actor, critic and their targets) for PaperDDPG: the networks of Lillicrap et al. 2016, sec. 7.

    Defaults: 400-300 ReLU layers, tanh actor output, the action entering the critic at the 2nd hidden layer, batch
    norm on the state input and all layers of the actor and all critic layers before the action input, hidden layers
    initialised U(+-1/sqrt(fan_in)) and final layers U(+-3e-3), Adam for both networks with L2 weight decay on the
    critic only.

    Batch-norm statistics (a choice the paper leaves open, see "Differences from the paper" in the docs): the online
    networks normalise with batch statistics during updates and with running statistics while acting
    (``set_training_mode(False)``), as the paper says. The target networks receive the online running statistics at
    every target update; with ``target_batch_norm="batch"`` (default) they normalise with the statistics of the
    next-state batch they are evaluated on, like the online critic in its own training pass; ``"running"`` makes them
    use the copied running statistics (SB3's TD3 convention), which was measured not to learn.

    :param observation_space: Observation space
    :param action_space: Action space
    :param lr_schedule: Learning rate schedule of the actor (the critic's is set by the algorithm from
        ``qf_learning_rate``; used for both when the policy is used on its own)
    :param net_arch: The specification of the policy and value networks: a list (shared) or
        ``dict(pi=[...], qf=[...])``
    :param activation_fn: Activation function
    :param features_extractor_class: Features extractor to use.
    :param features_extractor_kwargs: Keyword arguments
        to pass to the features extractor.
    :param normalize_images: Whether to normalize images or not,
         dividing by 255.0 (True by default)
    :param optimizer_class: The optimizer to use,
        ``th.optim.Adam`` by default
    :param optimizer_kwargs: Additional keyword arguments,
        excluding the learning rate, to pass to the optimizer of both networks
    :param n_critics: Number of critic networks to create (1 for DDPG)
    :param share_features_extractor: Whether to share or not the features extractor
        between the actor and the critic (the paper does not)
    :param batch_norm: Use batch norm where the paper put it
    :param batch_norm_momentum: Batch-norm momentum (PyTorch convention: weight of the new batch)
    :param batch_norm_eps: Batch-norm epsilon
    :param action_layer: Critic hidden layer whose input receives the action (0: input layer, 1: 2nd hidden layer)
    :param weight_init: Init of the hidden layers: ``"fan_in_uniform"`` (the paper), ``"xavier_uniform"``,
        ``"kaiming_normal"`` or a callable taking a module
    :param final_layer_init_bound: Final-layer weights and biases of actor and critic are drawn from U(-bound, bound)
    :param critic_weight_decay: L2 weight decay of the critic's optimizer (the actor has none)
    :param weight_decay_scope: Critic parameters that are decayed: ``"weights"`` (weights of Linear/Conv layers, as
        the reference implementation regularised them) or ``"all"`` (biases and batch-norm affine parameters too)
    :param target_batch_norm: Statistics the target networks normalise with: ``"batch"`` or ``"running"``
    """

    actor: Actor
    actor_target: Actor
    critic: Critic
    critic_target: Critic

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        lr_schedule: Schedule,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.ReLU,
        features_extractor_class: type[BaseFeaturesExtractor] = FlattenExtractor,
        features_extractor_kwargs: dict[str, Any] | None = None,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        n_critics: int = 1,
        share_features_extractor: bool = False,
        batch_norm: bool = True,
        batch_norm_momentum: float = 0.1,
        batch_norm_eps: float = 1e-5,
        action_layer: int = 1,
        weight_init: str | Any = "fan_in_uniform",
        final_layer_init_bound: float = FINAL_LAYER_INIT_BOUND,
        critic_weight_decay: float = 1e-2,
        weight_decay_scope: WeightDecayScope = "weights",
        target_batch_norm: TargetBatchNorm = "batch",
    ):
        super().__init__(
            observation_space,
            action_space,
            features_extractor_class,
            features_extractor_kwargs,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
            squash_output=True,
            normalize_images=normalize_images,
        )
        if weight_decay_scope not in ("weights", "all"):
            raise ValueError(f"weight_decay_scope must be 'weights' or 'all', got {weight_decay_scope!r}.")
        if target_batch_norm not in ("batch", "running"):
            raise ValueError(f"target_batch_norm must be 'batch' or 'running', got {target_batch_norm!r}.")
        if not critic_weight_decay >= 0:
            raise ValueError(f"critic_weight_decay must be >= 0, got {critic_weight_decay!r}.")
        if "weight_decay" in self.optimizer_kwargs:
            raise ValueError(
                "optimizer_kwargs['weight_decay'] would apply to the actor too: use critic_weight_decay "
                "(the paper decays the critic only)."
            )
        if net_arch is None:
            net_arch = [400, 300]  # Lillicrap et al. 2016, sec. 7
        actor_arch, critic_arch = get_actor_critic_arch(net_arch)

        self.net_arch = net_arch
        self.activation_fn = activation_fn
        self.n_critics = n_critics
        self.share_features_extractor = share_features_extractor
        self.batch_norm = batch_norm
        self.batch_norm_momentum = batch_norm_momentum
        self.batch_norm_eps = batch_norm_eps
        self.action_layer = action_layer
        self.weight_init = weight_init
        self.final_layer_init_bound = final_layer_init_bound
        self.critic_weight_decay = critic_weight_decay
        self.weight_decay_scope = weight_decay_scope
        self.target_batch_norm = target_batch_norm

        common = {
            "observation_space": self.observation_space,
            "action_space": self.action_space,
            "activation_fn": activation_fn,
            "normalize_images": normalize_images,
            "batch_norm": batch_norm,
            "batch_norm_momentum": batch_norm_momentum,
            "batch_norm_eps": batch_norm_eps,
            "weight_init": weight_init,
            "final_layer_init_bound": final_layer_init_bound,
        }
        self.actor_kwargs = {**common, "net_arch": actor_arch}
        self.critic_kwargs = {
            **common,
            "net_arch": critic_arch,
            "n_critics": n_critics,
            "share_features_extractor": share_features_extractor,
            "action_layer": action_layer,
        }
        self._build(lr_schedule)

    def _build(self, lr_schedule: Schedule) -> None:
        self.actor = self.make_actor(features_extractor=None)
        self.actor_target = self.make_actor(features_extractor=None)
        self.actor_target.load_state_dict(self.actor.state_dict())
        # Lillicrap et al. 2016, sec. 7: Adam, no weight decay on the actor
        # make_optimizer: fused Adam unless optimizer_kwargs chooses an implementation (docs/speed.md)
        self.actor.optimizer = make_optimizer(
            self.optimizer_class, self.actor.parameters(), lr_schedule(1), self.optimizer_kwargs
        )

        if self.share_features_extractor:
            self.critic = self.make_critic(features_extractor=self.actor.features_extractor)
            self.critic_target = self.make_critic(features_extractor=self.actor_target.features_extractor)
        else:
            self.critic = self.make_critic(features_extractor=None)
            self.critic_target = self.make_critic(features_extractor=None)
        self.critic_target.load_state_dict(self.critic.state_dict())
        # Lillicrap et al. 2016, sec. 7: "For Q we included L2 weight decay of 10^-2". Coupled L2 (added to the
        # gradient, as Adam's ``weight_decay`` does), not AdamW's decoupled decay.
        critic_parameters = [p for name, p in self.critic.named_parameters() if not name.startswith("features_extractor")]
        if self.share_features_extractor:
            param_source = critic_parameters  # the shared extractor is trained (and decayed) by the actor only
        else:
            param_source = list(self.critic.parameters())
        self.critic.optimizer = make_optimizer(
            self.optimizer_class, self._critic_param_groups(param_source), lr_schedule(1), self.optimizer_kwargs
        )

        for target in (self.actor_target, self.critic_target):
            target.requires_grad_(False)
        self._configure_targets()
        # Flat list of the actor's and critic's modules: set_training_mode() flips them without recursing every step
        self._online_modules: list[nn.Module] = [*self.actor.modules(), *self.critic.modules()]

    def _configure_targets(self) -> None:
        """Fix the batch-norm mode of the target networks (see the class docstring); they never take gradients."""
        for target in (self.actor_target, self.critic_target):
            if self.target_batch_norm == "batch":
                use_batch_statistics(batch_norm_modules(target))
            else:
                target.set_training_mode(False)

    def _critic_param_groups(self, params: list[nn.Parameter]) -> list[dict[str, Any]]:
        if self.critic_weight_decay == 0:  # one group: one fused Adam kernel per step instead of two
            return [{"params": params, "weight_decay": 0.0}]
        decayed_ids = {id(p) for p in params}
        if self.weight_decay_scope == "weights":
            decayed_ids = {
                id(module.weight)
                for module in self.critic.modules()
                if isinstance(module, nn.Linear | nn.Conv2d) and id(module.weight) in decayed_ids
            }
        decayed = [p for p in params if id(p) in decayed_ids]
        others = [p for p in params if id(p) not in decayed_ids]
        groups = [{"params": decayed, "weight_decay": self.critic_weight_decay}]
        if others:
            groups.append({"params": others, "weight_decay": 0.0})
        return groups

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            dict(
                net_arch=self.net_arch,
                activation_fn=self.activation_fn,
                n_critics=self.n_critics,
                lr_schedule=self._dummy_schedule,  # dummy lr schedule, not needed for loading policy alone
                optimizer_class=self.optimizer_class,
                optimizer_kwargs=self.optimizer_kwargs,
                features_extractor_class=self.features_extractor_class,
                features_extractor_kwargs=self.features_extractor_kwargs,
                share_features_extractor=self.share_features_extractor,
                batch_norm=self.batch_norm,
                batch_norm_momentum=self.batch_norm_momentum,
                batch_norm_eps=self.batch_norm_eps,
                action_layer=self.action_layer,
                weight_init=self.weight_init,
                final_layer_init_bound=self.final_layer_init_bound,
                critic_weight_decay=self.critic_weight_decay,
                weight_decay_scope=self.weight_decay_scope,
                target_batch_norm=self.target_batch_norm,
            )
        )
        return data

    def make_actor(self, features_extractor: BaseFeaturesExtractor | None = None) -> Actor:
        actor_kwargs = self._update_features_extractor(self.actor_kwargs, features_extractor)
        return Actor(**actor_kwargs).to(self.device)

    def make_critic(self, features_extractor: BaseFeaturesExtractor | None = None) -> Critic:
        critic_kwargs = self._update_features_extractor(self.critic_kwargs, features_extractor)
        return Critic(**critic_kwargs).to(self.device)

    def forward(self, observation: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        return self._predict(observation, deterministic=deterministic)

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        # DDPG's policy is deterministic: ``deterministic`` is ignored, exploration is the action noise.
        return self.actor(observation)

    def set_training_mode(self, mode: bool) -> None:
        """
        Put the actor and critic in training or evaluation mode (batch norm: batch vs. running statistics).
        The targets keep the mode fixed by ``_configure_targets``.

        :param mode: if true, set to training mode, else set to evaluation mode
        """
        if mode == self.training:
            return
        for module in self._online_modules:
            # What nn.Module.train() does, minus nn.Module.__setattr__'s lookups (it runs twice per env step)
            object.__setattr__(module, "training", mode)
        self.training = mode

    def train(self, mode: bool = True) -> "PaperDDPGPolicy":
        # nn.Module.train() recurses into the targets too: restore their fixed batch-norm mode afterwards
        super().train(mode)
        self._configure_targets()
        return self


MlpPolicy = PaperDDPGPolicy


class CnnPolicy(PaperDDPGPolicy):
    """
    PaperDDPGPolicy for image observations: the paper's pixel networks (Lillicrap et al. 2016, sec. 7).

    Defaults: each of actor, critic and their targets has its own conv tower (:class:`PaperCNN`: 3 conv layers of 32
    filters, no pooling, ReLU, batch norm), followed by 2 fully connected layers of 200 units (``net_arch``); the
    critic's action enters at the first fully connected layer (``action_layer=0``: "actions were not included until
    the fully-connected layers"); final layers are initialised U(+-3e-4). The policy's ``batch_norm``,
    ``batch_norm_momentum``, ``batch_norm_eps``, ``activation_fn`` and ``weight_init`` also configure the conv tower
    unless ``features_extractor_kwargs`` sets them (``kernel_size``, ``stride``, ``padding``, ``filters``,
    ``n_layers`` go there too). See docs/pixels.md.

    :param observation_space: Observation space
    :param action_space: Action space
    :param lr_schedule: Learning rate schedule of the actor
    :param net_arch: The specification of the policy and value networks (default ``[200, 200]``).
    :param features_extractor_class: Features extractor to use (default :class:`PaperCNN`).
    :param features_extractor_kwargs: Keyword arguments
        to pass to the features extractor.
    :param action_layer: Critic fully connected layer whose input receives the action (default 0: the first)
    :param final_layer_init_bound: Final-layer weights and biases are drawn from U(-bound, bound) (default 3e-4)
    :param kwargs: every other argument of :class:`PaperDDPGPolicy`
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        lr_schedule: Schedule,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        features_extractor_class: type[BaseFeaturesExtractor] = PaperCNN,
        features_extractor_kwargs: dict[str, Any] | None = None,
        action_layer: int = 0,
        final_layer_init_bound: float = PIXEL_FINAL_LAYER_INIT_BOUND,
        **kwargs: Any,
    ):
        if net_arch is None:
            net_arch = [200, 200]  # Lillicrap et al. 2016, sec. 7: "two fully connected layers with 200 units"
        if issubclass(features_extractor_class, PaperCNN):
            # One switch for batch norm (and activation, init) in the whole network; explicit extractor kwargs win
            shared = ("activation_fn", "batch_norm", "batch_norm_momentum", "batch_norm_eps", "weight_init")
            features_extractor_kwargs = {
                **{key: kwargs[key] for key in shared if key in kwargs},
                **(features_extractor_kwargs or {}),
            }
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch=net_arch,
            features_extractor_class=features_extractor_class,
            features_extractor_kwargs=features_extractor_kwargs,
            action_layer=action_layer,
            final_layer_init_bound=final_layer_init_bound,
            **kwargs,
        )


class MultiInputPolicy(PaperDDPGPolicy):
    """
    PaperDDPGPolicy for Dict observation spaces (default features extractor: SB3's ``CombinedExtractor``).

    :param observation_space: Observation space
    :param action_space: Action space
    :param lr_schedule: Learning rate schedule of the actor
    :param net_arch: The specification of the policy and value networks.
    :param features_extractor_class: Features extractor to use.
    :param kwargs: every other argument of :class:`PaperDDPGPolicy`
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Box,
        lr_schedule: Schedule,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        features_extractor_class: type[BaseFeaturesExtractor] = CombinedExtractor,
        **kwargs: Any,
    ):
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch=net_arch,
            features_extractor_class=features_extractor_class,
            **kwargs,
        )
