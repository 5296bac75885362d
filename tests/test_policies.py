import math

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from init_stats import assert_normal, assert_uniform
from stable_baselines3 import DDPG, TD3
from torch import nn

import sb3_ddpg_paper
from sb3_ddpg_paper import (
    CnnPolicy,
    PaperDDPG,
    PaperDDPGPolicy,
    init_fan_in_uniform,
    init_kaiming_normal,
    init_uniform,
    init_xavier_uniform,
)
from sb3_ddpg_paper.torch_layers import QNetwork, get_weight_init


def make_policy(**kwargs) -> PaperDDPGPolicy:
    env = gym.make("Pendulum-v1")
    return PaperDDPGPolicy(env.observation_space, env.action_space, lambda _: 1e-4, **kwargs)


def linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def test_actor_architecture_is_the_papers():
    policy = make_policy()
    layers = list(policy.actor.mu)
    kinds = [type(m).__name__ for m in layers]
    # BN(state) -> Linear(400) -> BN -> ReLU -> Linear(300) -> BN -> ReLU -> Linear(1) -> tanh
    assert kinds == ["BatchNorm1d", "Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear", "Tanh"]
    assert [(m.in_features, m.out_features) for m in linears(policy.actor)] == [(3, 400), (400, 300), (300, 1)]
    # Linear layers followed by batch norm carry no (redundant) bias
    assert [m.bias is None for m in linears(policy.actor)] == [True, True, False]


def test_critic_action_enters_at_second_hidden_layer():
    policy = make_policy()
    q_net = policy.critic.q_networks[0]
    assert [type(m).__name__ for m in q_net.state_net] == ["BatchNorm1d", "Linear", "BatchNorm1d", "ReLU"]
    assert [type(m).__name__ for m in q_net.joint_net] == ["Linear", "ReLU", "Linear"]  # no BN after the action
    assert [(m.in_features, m.out_features) for m in linears(q_net)] == [(3, 400), (401, 300), (300, 1)]
    # The action really is what enters the 2nd layer: Q depends on it only through joint_net
    obs, act = th.randn(8, 3), th.randn(8, 1)
    policy.set_training_mode(False)
    with th.no_grad():
        features = q_net.state_net(obs)
        expected = q_net.joint_net(th.cat([features, act], dim=1))
        np.testing.assert_allclose(policy.critic(obs, act)[0].numpy(), expected.numpy(), rtol=1e-6)


@pytest.mark.parametrize(
    "action_layer, expected", [(0, [(4, 400), (400, 300), (300, 1)]), (2, [(3, 400), (400, 300), (301, 1)])]
)
def test_action_layer_is_configurable(action_layer, expected):
    policy = make_policy(action_layer=action_layer)
    assert [(m.in_features, m.out_features) for m in linears(policy.critic.q_networks[0])] == expected
    n_bn = sum(isinstance(m, nn.BatchNorm1d) for m in policy.critic.modules())
    assert n_bn == 1 + action_layer  # state input + every layer before the action input


def test_action_layer_out_of_range():
    with pytest.raises(ValueError, match="action_layer=3 is out of range"):
        QNetwork(3, 1, [400, 300], action_layer=3)


def test_batch_norm_can_be_switched_off():
    policy = make_policy(batch_norm=False)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in policy.modules())
    assert all(m.bias is not None for m in linears(policy))


def test_paper_initialisation_distributions():
    """Lillicrap et al. 2016, sec. 7: final layers U(+-3e-3), the others U(+-1/sqrt(fan_in)): drawn, not just bounded."""
    th.manual_seed(0)
    policy = make_policy(batch_norm=False)
    for net in (policy.actor, policy.critic):
        *hidden, final = linears(net)
        assert final.in_features == 300
        assert_uniform([final.weight, final.bias], 3e-3)  # weights AND biases
        for layer in hidden:
            assert_uniform([layer.weight, layer.bias], 1 / math.sqrt(layer.in_features))
    # The targets start as exact copies
    for online, target in ((policy.actor, policy.actor_target), (policy.critic, policy.critic_target)):
        assert online.state_dict().keys() == target.state_dict().keys()
        assert all(th.equal(value, target.state_dict()[key]) for key, value in online.state_dict().items())


@pytest.mark.parametrize("weight_init", ["xavier_uniform", "kaiming_normal"])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_named_weight_inits_draw_the_hidden_layers_from_their_distributions(weight_init, batch_norm):
    th.manual_seed(0)
    policy = make_policy(final_layer_init_bound=1e-5, weight_init=weight_init, batch_norm=batch_norm)
    for net in (policy.actor, policy.critic):
        *hidden, final = linears(net)
        for layer in hidden:
            fan_out, fan_in = layer.weight.shape
            if weight_init == "xavier_uniform":  # Glorot: U(+-sqrt(6 / (fan_in + fan_out)))
                assert_uniform(layer.weight, math.sqrt(6 / (fan_in + fan_out)))
            else:  # He, fan-in mode, ReLU gain: N(0, 2 / fan_in)
                assert_normal(layer.weight, math.sqrt(2 / fan_in))
            if layer.bias is None:  # a Linear layer followed by batch norm has none
                assert batch_norm
            else:
                assert th.all(layer.bias == 0.01)
        assert_uniform([final.weight, final.bias], 1e-5)  # the final layer keeps U(+-final_layer_init_bound)
        for bn in (m for m in net.modules() if isinstance(m, nn.BatchNorm1d)):  # batch norm is left alone
            assert th.all(bn.weight == 1) and th.all(bn.bias == 0)
    with pytest.raises(ValueError, match="Unknown weight_init 'orthogonal'"):
        get_weight_init("orthogonal")


def test_public_init_functions_initialise_every_linear_and_conv_layer():
    assert {"init_fan_in_uniform", "init_kaiming_normal", "init_uniform", "init_xavier_uniform"} <= set(sb3_ddpg_paper.__all__)
    module = nn.Sequential(
        nn.Conv2d(4, 16, 3), nn.BatchNorm2d(16), nn.Flatten(), nn.Linear(64, 48), nn.Linear(48, 32, bias=False)
    )
    conv, bn, _, linear, no_bias = module
    weighted = (conv, linear, no_bias)
    fans = [(16 * 9, 4 * 9), (48, 64), (32, 48)]  # (fan_out, fan_in), a kernel's 3x3 entries counted
    th.manual_seed(0)

    init_fan_in_uniform(module)
    for layer, (_, fan_in) in zip(weighted, fans, strict=True):
        assert_uniform([t for t in (layer.weight, layer.bias) if t is not None], 1 / math.sqrt(fan_in))
    init_xavier_uniform(module, bias=0.5)
    for layer, (fan_out, fan_in) in zip(weighted, fans, strict=True):
        assert_uniform(layer.weight, math.sqrt(6 / (fan_in + fan_out)))
    assert th.all(conv.bias == 0.5) and th.all(linear.bias == 0.5)
    init_kaiming_normal(module, bias=-0.1)
    for layer, (_, fan_in) in zip(weighted, fans, strict=True):
        assert_normal(layer.weight, math.sqrt(2 / fan_in))
    assert th.all(conv.bias == -0.1) and th.all(linear.bias == -0.1)
    init_uniform(module, 0.25)
    for layer in weighted:
        assert_uniform([t for t in (layer.weight, layer.bias) if t is not None], 0.25)
    assert no_bias.bias is None and th.all(bn.weight == 1) and th.all(bn.bias == 0)  # nothing else touched


def orthogonal_init(module: nn.Module) -> None:
    """A user's init (module level, so that a saved policy can pickle it): orthogonal weights, biases 0.25."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear | nn.Conv2d):
            nn.init.orthogonal_(layer.weight)
            if layer.bias is not None:
                nn.init.constant_(layer.bias, 0.25)


def assert_orthogonal(weight: th.Tensor) -> None:
    matrix = weight.detach().flatten(1)
    gram = matrix @ matrix.T if matrix.shape[0] <= matrix.shape[1] else matrix.T @ matrix
    th.testing.assert_close(gram, th.eye(len(gram)), atol=1e-4, rtol=0)


def test_weight_init_callable_is_applied_to_the_hidden_layers(tmp_path):
    th.manual_seed(0)
    model = PaperDDPG("Pendulum-v1", policy_kwargs=dict(weight_init=orthogonal_init, batch_norm=False), seed=0)
    for net in (model.actor, model.critic, model.actor_target, model.critic_target):
        *hidden, final = linears(net)
        assert len(hidden) == 2
        for layer in hidden:
            assert_orthogonal(layer.weight)
            assert th.all(layer.bias == 0.25)
        assert_uniform([final.weight, final.bias], 3e-3)  # the paper's final-layer init still applies
    # Saved with the model and the policy: a reload builds the same networks with the same init
    model.save(tmp_path / "model.zip")
    loaded = PaperDDPG.load(tmp_path / "model.zip")
    assert loaded.policy.weight_init is orthogonal_init
    model.policy.save(tmp_path / "policy.pth")
    assert PaperDDPGPolicy.load(tmp_path / "policy.pth").actor.weight_init is orthogonal_init
    # The pixel network's conv tower gets it too (CnnPolicy passes the policy's weight_init on)
    image_space = gym.spaces.Box(0, 255, (9, 64, 64), np.uint8)
    cnn = CnnPolicy(image_space, model.action_space, lambda _: 1e-4, weight_init=orthogonal_init, batch_norm=False)
    convs = [m for m in cnn.actor.features_extractor.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 3
    for layer in [*convs, *linears(cnn.critic)[:-1]]:
        assert_orthogonal(layer.weight)
        assert th.all(layer.bias == 0.25)


def test_net_arch_dict():
    policy = make_policy(net_arch=dict(pi=[64], qf=[128, 32]), batch_norm=False)
    assert [m.out_features for m in linears(policy.actor)] == [64, 1]
    assert [m.out_features for m in linears(policy.critic)] == [128, 32, 1]


def test_critic_only_weight_decay_and_separate_learning_rates():
    model = PaperDDPG("Pendulum-v1", learning_starts=10, seed=0)
    model.learn(30)
    actor_groups = model.actor.optimizer.param_groups
    assert [g["lr"] for g in actor_groups] == [1e-4]
    assert [g["weight_decay"] for g in actor_groups] == [0]
    critic_groups = model.critic.optimizer.param_groups
    assert [g["lr"] for g in critic_groups] == [1e-3, 1e-3]
    assert [g["weight_decay"] for g in critic_groups] == [1e-2, 0.0]
    decayed = {id(p) for p in critic_groups[0]["params"]}
    weights = {id(m.weight) for m in linears(model.critic)}
    assert decayed == weights  # default scope: Linear weights only
    model = PaperDDPG("Pendulum-v1", policy_kwargs=dict(weight_decay_scope="all"), critic_weight_decay=0.05)
    assert [g["weight_decay"] for g in model.critic.optimizer.param_groups] == [0.05]
    assert len(model.critic.optimizer.param_groups[0]["params"]) == len(list(model.critic.parameters()))


def test_weight_decay_in_optimizer_kwargs_is_refused():
    with pytest.raises(ValueError, match="critic_weight_decay"):
        make_policy(optimizer_kwargs=dict(weight_decay=0.1))


def test_batch_norm_train_and_eval_behaviour():
    policy = make_policy()
    obs = th.randn(64, 3) * 5 + 2
    policy.set_training_mode(True)
    with th.no_grad():
        batch_out = policy.actor(obs)
        # train mode: batch statistics, so one sample's output depends on the rest of the batch
        assert not th.allclose(policy.actor(obs[:8])[:4], batch_out[:4])
    policy.set_training_mode(False)
    with th.no_grad():
        # eval mode (acting, predict): running statistics, outputs independent of the batch
        th.testing.assert_close(policy.actor(obs[:8])[:4], policy.actor(obs)[:4])
    assert not policy.actor.mu[0].training and not policy.critic.q_networks[0].state_net[0].training


def test_target_networks_batch_norm_modes():
    policy = make_policy()
    for layer in policy.actor_target.modules():
        if isinstance(layer, nn.BatchNorm1d):
            assert layer.training and not layer.track_running_stats
    before = {k: v.clone() for k, v in policy.actor_target.state_dict().items()}
    obs = th.randn(16, 3)
    with th.no_grad():
        policy.actor_target(obs)
    for key, value in policy.actor_target.state_dict().items():
        th.testing.assert_close(value, before[key])  # batch statistics, running statistics untouched
    # nn.Module.train/eval on the whole policy keeps the targets' mode
    policy.eval()
    assert policy.actor_target.mu[0].training
    policy = make_policy(target_batch_norm="running")
    assert not policy.actor_target.mu[0].training and not policy.critic_target.q_networks[0].state_net[0].training
    with pytest.raises(ValueError, match="target_batch_norm"):
        make_policy(target_batch_norm="other")


def test_policy_save_load_with_non_default_kwargs(tmp_path):
    kwargs = dict(
        net_arch=dict(pi=[16, 8], qf=[24, 12]),
        activation_fn=nn.Tanh,
        batch_norm=True,
        batch_norm_momentum=0.01,
        batch_norm_eps=1e-3,
        action_layer=0,
        weight_init="xavier_uniform",
        final_layer_init_bound=1e-4,
        weight_decay_scope="all",
        target_batch_norm="running",
    )
    model = PaperDDPG("Pendulum-v1", policy_kwargs=kwargs, learning_starts=20, seed=0)
    model.learn(50)
    model.policy.save(tmp_path / "policy.pth")
    loaded = PaperDDPGPolicy.load(tmp_path / "policy.pth")
    params = loaded._get_constructor_parameters()
    for key, value in kwargs.items():
        assert params[key] == value, key
    assert params["critic_weight_decay"] == 1e-2
    obs = np.array([[0.1, -0.2, 0.3]], dtype=np.float32)
    np.testing.assert_array_equal(model.policy.predict(obs)[0], loaded.predict(obs)[0])
    saved_state, loaded_state = model.policy.state_dict(), loaded.state_dict()
    assert list(saved_state) == list(loaded_state)
    for key, value in saved_state.items():
        assert th.equal(value, loaded_state[key]), key


@pytest.mark.parametrize("algo", [DDPG, TD3])
def test_sb3_algorithms_can_train_with_this_policy(algo):
    n_critics = 1 if algo is DDPG else 2
    model = algo(
        PaperDDPGPolicy,
        "Pendulum-v1",
        policy_kwargs=dict(net_arch=[32, 32], n_critics=n_critics),
        learning_starts=50,
        batch_size=16,
        seed=0,
    )
    before = {name: p.clone() for name, p in model.actor.named_parameters()}
    model.learn(120)
    assert model.critic.n_critics == n_critics
    after = dict(model.actor.named_parameters())
    assert after.keys() == before.keys()
    assert any(not th.equal(before[name], after[name]) for name in before)
