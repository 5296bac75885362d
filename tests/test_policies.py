import math

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3 import DDPG, TD3
from torch import nn

from sb3_ddpg_paper import PaperDDPG, PaperDDPGPolicy
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


def test_paper_initialisation_bounds():
    policy = make_policy(batch_norm=False)
    for net in (policy.actor, policy.critic):
        *hidden, final = linears(net)
        # final layer weights AND biases from U(-3e-3, 3e-3) (Lillicrap et al. 2016, sec. 7)
        for tensor in (final.weight, final.bias):
            assert tensor.abs().max() <= 3e-3
        assert final.weight.abs().max() > 2e-3  # really drawn from the interval, not zeros
        for layer in hidden:
            bound = 1 / math.sqrt(layer.in_features)
            for tensor in (layer.weight, layer.bias):
                assert tensor.abs().max() <= bound
            assert layer.weight.abs().max() > 0.9 * bound


def test_final_layer_bound_and_weight_init_are_configurable():
    policy = make_policy(final_layer_init_bound=1e-5, weight_init="xavier_uniform", batch_norm=False)
    assert linears(policy.actor)[-1].weight.abs().max() <= 1e-5
    first = linears(policy.actor)[0]
    assert th.all(first.bias == 0.01)  # xavier_uniform helper sets a constant bias
    policy = make_policy(weight_init="kaiming_normal", batch_norm=False)
    assert th.all(linears(policy.critic)[0].bias == 0.01)
    with pytest.raises(ValueError, match="Unknown weight_init 'orthogonal'"):
        get_weight_init("orthogonal")


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
    for (k1, v1), (k2, v2) in zip(model.policy.state_dict().items(), loaded.state_dict().items(), strict=False):
        assert k1 == k2
        th.testing.assert_close(v1, v2)


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
    before = [p.clone() for p in model.actor.parameters()]
    model.learn(120)
    assert model.critic.n_critics == n_critics
    assert any(not th.equal(a, b) for a, b in zip(before, model.actor.parameters(), strict=False))
