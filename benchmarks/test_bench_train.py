"""
Micro-benchmarks of PaperDDPG's hot path: ``pytest benchmarks --benchmark-enable`` (docs/speed.md quotes them).

One gradient step of ``train()`` and one ``predict()``, each against SB3's DDPG; then each optimisation on its own,
old way against new way, so that docs/speed.md can say what each one buys.
"""

import copy

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.utils import polyak_update
from torch.nn import functional as F

from sb3_ddpg_paper import torch_compat
from sb3_ddpg_paper.torch_compat import apply_gradients
from sb3_ddpg_paper.update import AutogradStep


# ----------------------------------------------------------------------------- whole steps
@pytest.mark.parametrize("which", ["paper_model", "sb3_math_model", "sb3_model"])
def test_train_one_gradient_step(benchmark, request, which):
    model = request.getfixturevalue(which)
    before = model._n_updates
    benchmark(model.train, gradient_steps=1, batch_size=64)
    assert model._n_updates > before


@pytest.mark.parametrize("which", ["paper_model", "sb3_model"])
def test_predict_one_observation(benchmark, request, which):
    model = request.getfixturevalue(which)
    observation = model.observation_space.sample()
    action, _ = benchmark(model.predict, observation)
    assert action.shape == model.action_space.shape


# ----------------------------------------------------------------------------- one optimisation at a time
@pytest.mark.parametrize("implementation", ["single_tensor", "foreach", "fused"])
def test_adam_step_of_the_paper_critic(benchmark, paper_model, implementation):
    """SB3 builds Adam with PyTorch's CPU default (single tensor); PaperDDPG builds it fused."""
    critic = copy.deepcopy(paper_model.critic)
    groups = [dict(group, params=list(group["params"])) for group in paper_model.critic.optimizer.param_groups]
    # Map the deep-copied parameters onto the groups (same order)
    params = iter(critic.parameters())
    id_to_copy = {id(p): next(params) for p in paper_model.critic.parameters()}
    for group in groups:
        group["params"] = [id_to_copy[id(p)] for p in group["params"]]
        for key in ("fused", "foreach"):
            group.pop(key, None)
    kwargs = {"single_tensor": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}[implementation]
    optimizer = th.optim.Adam(groups, lr=1e-3, **kwargs)
    for p in critic.parameters():
        p.grad = th.randn_like(p)
    benchmark(optimizer.step)


@pytest.mark.parametrize("update", ["autograd", "mlp_update"])
def test_gradient_step_of_plain_mlps(benchmark, sb3_math_model, update):
    """One train() step of the no-batch-norm networks: autograd against the hand-written passes (MLPUpdate)."""
    model = sb3_math_model
    saved = model.gradient_step
    assert not isinstance(saved, AutogradStep)
    if update == "autograd":
        model.gradient_step = AutogradStep(model.policy)
    try:
        benchmark(model.train, gradient_steps=1, batch_size=64)
    finally:
        model.gradient_step = saved


@pytest.mark.parametrize("call", ["zero_grad_and_step", "apply_gradients"])
def test_fused_adam_step_call(benchmark, sb3_math_model, call):
    """The same fused kernel, called through Optimizer.step (after zero_grad) or directly by apply_gradients."""
    critic = copy.deepcopy(sb3_math_model.critic)
    optimizer = th.optim.Adam(critic.parameters(), lr=1e-3, fused=True)
    grads = {p: th.randn_like(p) for p in critic.parameters()}
    apply_gradients(optimizer, grads)  # the first step creates Adam's state

    def step():
        if call == "apply_gradients":
            apply_gradients(optimizer, grads)
        else:
            optimizer.zero_grad()
            for param, grad in grads.items():
                param.grad = grad
            optimizer.step()

    benchmark(step)


@pytest.mark.parametrize("gradients", ["all_parameters", "actor_only"])
def test_actor_step_gradients(benchmark, sb3_math_model, gradients):
    """The actor step needs grad_a Q and grad mu only; a plain backward() also computes the critic's weight grads."""
    model = sb3_math_model
    np.random.seed(0)
    batch = model.replay_buffer.sample(64)
    actor_params = list(model.actor.parameters())

    def actor_gradients():
        actor_loss = -model.critic.q1_forward(batch.observations, model.actor(batch.observations)).mean()
        if gradients == "all_parameters":
            model.actor.optimizer.zero_grad()
            model.critic.optimizer.zero_grad()
            actor_loss.backward()
        else:
            for param, grad in zip(actor_params, th.autograd.grad(actor_loss, actor_params), strict=True):
                param.grad = grad

    benchmark(actor_gradients)


@pytest.mark.parametrize("update", ["sb3_polyak_update", "foreach_lerp"])
def test_soft_update(benchmark, sb3_math_model, update):
    params, target_params = list(sb3_math_model.critic.parameters()), list(sb3_math_model.critic_target.parameters())

    def soft_update():
        with th.no_grad():
            if update == "foreach_lerp":
                torch_compat.lerp_(target_params, params, 0.005)
            else:
                polyak_update(params, target_params, 0.005)

    benchmark(soft_update)


@pytest.mark.parametrize("flush", [False, True])
def test_critic_pass_with_denormal_weights(benchmark, paper_model, flush):
    """A quarter of the weights of the critic's layer after the action input denormal, as after a long paper run."""
    critic = copy.deepcopy(paper_model.critic)
    layer = critic.q_networks[0].joint_net[0]
    with th.no_grad():
        layer.weight[: layer.weight.shape[0] // 4] = 1e-40
    np.random.seed(0)
    batch = paper_model.replay_buffer.sample(64)

    def critic_pass():
        loss = F.mse_loss(critic(batch.observations, batch.actions)[0], batch.rewards)
        critic.zero_grad()
        loss.backward()

    previous = th.tensor(1e-40, dtype=th.float32).item() == 0.0
    th.set_flush_denormal(flush)
    try:
        benchmark(critic_pass)
    finally:
        th.set_flush_denormal(previous)
