"""
The optimised update is Algorithm 1: same parameters as a straightforward implementation on the same batches.

PaperDDPG's hot path uses fused Adam, gradients w.r.t. the actor's parameters only in the actor step, a lean replay
sampler, a lean ``predict`` and flushed denormal floats (docs/speed.md). The reference below uses none of them: SB3's
``ReplayBuffer.sample``, PyTorch's default single-tensor Adam, full ``backward()`` passes and the soft update written
out, each line as Lillicrap et al. 2016 (Algorithm 1) state it.
"""

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from conftest import SMALL, RandomImageEnv
from stable_baselines3 import TD3
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import BitFlippingEnv
from stable_baselines3.common.vec_env import VecNormalize
from torch import nn

from sb3_ddpg_paper import PaperDDPG
from sb3_ddpg_paper.fast_paths import denormals_are_flushed
from sb3_ddpg_paper.mlp_update import MLPUpdate
from sb3_ddpg_paper.policies import PaperDDPGPolicy
from sb3_ddpg_paper.torch_compat import apply_gradients

TAU, GAMMA, ACTOR_LR, CRITIC_LR, WEIGHT_DECAY = 0.05, 0.99, 1e-3, 2e-3, 1e-2


def filled_model(batch_norm: bool, action_layer: int = 1, n_envs: int = 2, mlp_update: bool = True) -> PaperDDPG:
    """A model whose replay buffer holds real Pendulum transitions (truncations included) and no update yet."""
    env = make_vec_env("Pendulum-v1", n_envs=n_envs, seed=0, env_kwargs=dict(max_episode_steps=50))
    model = PaperDDPG(
        "MlpPolicy",
        env,
        learning_rate=ACTOR_LR,
        qf_learning_rate=CRITIC_LR,
        critic_weight_decay=WEIGHT_DECAY,
        tau=TAU,
        gamma=GAMMA,
        learning_starts=300,
        policy_kwargs=dict(net_arch=[16, 12], batch_norm=batch_norm, action_layer=action_layer),
        mlp_update=mlp_update,
        seed=0,
    )
    model.learn(300)  # warm-up only: random actions, no update
    assert model._n_updates == 0 and model.replay_buffer.timeouts.any()
    # Some true terminals too, so that the (1 - done) mask is exercised (Pendulum never terminates)
    model.replay_buffer.dones[::7] = 1.0
    return model


class ReferenceDDPG:
    """Algorithm 1 of Lillicrap et al. 2016, written out plainly on copies of the model's networks."""

    def __init__(self, model: PaperDDPG):
        self.actor = copy.deepcopy(model.actor)
        self.critic = copy.deepcopy(model.critic)
        self.actor_target = copy.deepcopy(model.actor_target)
        self.critic_target = copy.deepcopy(model.critic_target)
        self.actor.train()
        self.critic.train()
        # Plain single-tensor Adam; coupled L2 decay on the critic's Linear weights only (sec. 7)
        decayed = {id(m.weight) for m in self.critic.modules() if isinstance(m, nn.Linear)}
        critic_params = list(self.critic.parameters())
        self.actor_optimizer = th.optim.Adam(self.actor.parameters(), lr=ACTOR_LR, foreach=False)
        self.critic_optimizer = th.optim.Adam(
            [
                {"params": [p for p in critic_params if id(p) in decayed], "weight_decay": WEIGHT_DECAY},
                {"params": [p for p in critic_params if id(p) not in decayed], "weight_decay": 0.0},
            ],
            lr=CRITIC_LR,
            foreach=False,
        )

    def step(self, batch) -> tuple[float, float]:
        s, a, r, s2, d = batch.observations, batch.actions, batch.rewards, batch.next_observations, batch.dones
        # y_i = r_i + gamma Q'(s_{i+1}, mu'(s_{i+1}))
        with th.no_grad():
            y = r + GAMMA * (1 - d) * self.critic_target(s2, self.actor_target(s2))[0]
        # Update the critic by minimising L = 1/N sum (y_i - Q(s_i, a_i))^2
        critic_loss = ((y - self.critic(s, a)[0]) ** 2).mean()
        self.critic_optimizer.zero_grad()
        critic_loss.backward()
        self.critic_optimizer.step()
        # Update the actor with the sampled policy gradient through the updated critic; the critic's batch-norm
        # running statistics must not count this batch a second time: save and restore them.
        saved = [b.clone() for b in self.critic.buffers()]
        actor_loss = -self.critic(s, self.actor(s))[0].mean()
        self.actor_optimizer.zero_grad()
        actor_loss.backward()
        self.actor_optimizer.step()
        with th.no_grad():
            for buffer, value in zip(self.critic.buffers(), saved, strict=True):
                buffer.copy_(value)
        # theta' <- tau theta + (1 - tau) theta'; batch-norm statistics copied
        with th.no_grad():
            for target, online in ((self.critic_target, self.critic), (self.actor_target, self.actor)):
                for p_target, p in zip(target.parameters(), online.parameters(), strict=True):
                    p_target.copy_(TAU * p + (1 - TAU) * p_target)
                for b_target, b in zip(target.buffers(), online.buffers(), strict=True):
                    b_target.copy_(b)
        return critic_loss.item(), actor_loss.item()


# A bias whose output reaches a batch norm through affine layers only (Linear layers: no activation, no action
# concatenated on the way) is shift-invariant: the batch norm subtracts the batch mean, so any constant shift cancels
# and the bias's true gradient is zero. Its computed gradient is float rounding noise, which Adam scales up to steps
# of up to about lr, so two correct implementations that round differently move it differently (and, through it, the
# running mean of that batch norm). Exactly those entries are compared to within Adam's step size; every other entry,
# every real bias included (no batch norm, or a batch norm followed by the action input), to float precision.
_ACTION_INPUT = "the action is concatenated here"


def _layer_chain(net: nn.Module) -> list[tuple[str, nn.Module | None]]:
    """The layers of an actor or critic in forward order, by state-dict prefix; the critic's action input marked."""
    if hasattr(net, "mu"):
        return [(f"mu.{i}", layer) for i, layer in enumerate(net.mu)]
    q_net = net.q_networks[0]
    return [
        *((f"qf0.state_net.{i}", layer) for i, layer in enumerate(q_net.state_net)),
        (_ACTION_INPUT, None),
        *((f"qf0.joint_net.{i}", layer) for i, layer in enumerate(q_net.joint_net)),
    ]


def shift_invariant_keys(net: nn.Module) -> set[str]:
    """State-dict keys of the biases that feed a batch norm through Linear layers only, and of that norm's running mean."""
    keys = set()
    chain = _layer_chain(net)
    for i, (name, layer) in enumerate(chain):
        if getattr(layer, "bias", None) is None:
            continue
        for later_name, later in chain[i + 1 :]:
            if isinstance(later, nn.BatchNorm1d):
                keys |= {f"{name}.bias", f"{later_name}.running_mean"}
            if not isinstance(later, nn.Linear):  # the batch norm ends the search; ReLU, tanh, the action break it
                break
    return keys


@pytest.mark.parametrize(
    "batch_norm, action_layer, actor_keys, critic_keys",
    [
        (True, 1, {"mu.0.bias", "mu.2.running_mean"}, {"qf0.state_net.0.bias", "qf0.state_net.2.running_mean"}),
        (True, 0, {"mu.0.bias", "mu.2.running_mean"}, set()),  # input BN -> action concatenated -> Linear -> ReLU
        (False, 1, set(), set()),  # without batch norm no bias is shift-invariant
        (False, 0, set(), set()),
    ],
)
def test_shift_invariant_exemption_holds_only_true_zero_gradients(batch_norm, action_layer, actor_keys, critic_keys):
    """The exempt biases have a zero gradient (to rounding); every other bias, the first layers' included, does not."""
    model = filled_model(batch_norm, action_layer)
    assert shift_invariant_keys(model.actor) == actor_keys and shift_invariant_keys(model.critic) == critic_keys
    np.random.seed(0)
    batch = model.replay_buffer.sample(64)
    actor, critic = copy.deepcopy(model.actor).train(), copy.deepcopy(model.critic).train()
    critic_loss = (critic(batch.observations, batch.actions)[0] - batch.rewards).square().mean()
    actor_loss = -critic(batch.observations, actor(batch.observations))[0].mean()
    for net, loss, exempt in ((critic, critic_loss, critic_keys), (actor, actor_loss, actor_keys)):
        biases = {key: p for key, p in net.named_parameters() if key.endswith(".bias")}
        grads = dict(zip(biases, th.autograd.grad(loss, list(biases.values())), strict=True))
        scale = max(g.abs().max().item() for g in grads.values())
        assert scale > 0
        for key, grad in grads.items():
            if key in exempt:
                assert grad.abs().max().item() < 1e-7 * scale, key  # rounding noise only
            else:
                assert grad.abs().max().item() > 1e-5 * scale, key  # a real gradient: compared to float precision


def assert_same_networks(model: PaperDDPG, reference: ReferenceDDPG, n_steps: int) -> None:
    """Every entry of every network's state dict agrees; all the entries that differ are listed, not only the first."""
    mismatches = []
    for name in ("actor", "critic", "actor_target", "critic_target"):
        ours, theirs = getattr(model, name).state_dict(), getattr(reference, name).state_dict()
        assert ours.keys() == theirs.keys()
        exempt = shift_invariant_keys(getattr(model, name.removesuffix("_target")))
        for key in ours:
            if key in exempt:  # Adam's steps on rounding noise: at most about lr per step
                tolerance = dict(rtol=0.0, atol=n_steps * CRITIC_LR)
            else:  # float32 rounding of fused vs. single-tensor Adam, lerp vs. written-out soft update
                tolerance = dict(rtol=1e-4, atol=1e-6)
            try:
                th.testing.assert_close(ours[key], theirs[key], **tolerance)
            except AssertionError as error:
                mismatches.append(f"{name}.{key} differs: {' '.join(str(error).splitlines()[2:])}")
    assert not mismatches, "\n".join(mismatches)


@pytest.mark.parametrize("mlp_update", [True, False])
@pytest.mark.parametrize("batch_norm", [True, False])
@pytest.mark.parametrize("action_layer", [0, 1])
def test_optimised_train_matches_reference_algorithm_1(batch_norm, action_layer, mlp_update):
    model = filled_model(batch_norm, action_layer, mlp_update=mlp_update)
    # Both update paths, the hand-written passes (default) and autograd, are checked against the reference
    assert isinstance(model.gradient_step, MLPUpdate) == mlp_update
    reference = ReferenceDDPG(model)
    initial_weight = next(model.actor.parameters()).clone()
    # Several steps, in two train() calls, on the same batches: numpy's global generator drives both samplers
    np.random.seed(123)
    model.train(gradient_steps=4, batch_size=32)
    model.train(gradient_steps=3, batch_size=32)
    np.random.seed(123)
    losses = [reference.step(model.replay_buffer.sample(32)) for _ in range(7)]
    assert model._n_updates == 7
    assert_same_networks(model, reference, n_steps=7)
    # The logged losses are the means over the last train() call (3 steps), computed on device and fetched once
    critic_losses, actor_losses = zip(*losses[4:], strict=True)
    assert model.logger.name_to_value["train/critic_loss"] == pytest.approx(np.mean(critic_losses), rel=1e-4)
    assert model.logger.name_to_value["train/actor_loss"] == pytest.approx(np.mean(actor_losses), rel=1e-4, abs=1e-6)
    # The parameters did move, and the targets lag behind (a test that compares unchanged networks proves nothing)
    first_weight = next(model.actor.parameters())
    assert not th.allclose(first_weight, initial_weight)
    assert not th.allclose(first_weight, next(model.actor_target.parameters()))


@pytest.mark.parametrize("mlp_update", [True, False])
@pytest.mark.parametrize("batch_norm", [True, False])
def test_optimised_train_matches_reference_after_learning_starts(batch_norm, mlp_update):
    """The same through learn(): acting, storing and updating interleaved (lean predict and sampling in the loop)."""
    model = filled_model(batch_norm=batch_norm, mlp_update=mlp_update)
    model.action_noise = None
    reference = ReferenceDDPG(model)
    for _ in range(5):
        state = np.random.get_state()
        model.learn(1, reset_num_timesteps=False)  # one env step, then one update on a freshly drawn batch
        # The reference acts like SB3's predict and must pick the same action the model stored
        np.random.set_state(state)
        reference.step(model.replay_buffer.sample(model.batch_size))
    assert model._n_updates == 5
    assert_same_networks(model, reference, n_steps=5)


# ----------------------------------------------------------------------------- replay sampling
def test_vec_normalize_training_still_normalises():
    env = VecNormalize(make_vec_env("Pendulum-v1", n_envs=1))
    model = PaperDDPG("MlpPolicy", env, learning_starts=100, policy_kwargs=SMALL)
    model.learn(120)
    np.random.seed(0)
    batch = model.replay_buffer.sample(16, env=model._vec_normalize_env)
    np.random.seed(0)
    raw = model.replay_buffer.sample(16)  # without the env: unnormalised
    assert not th.allclose(batch.observations, raw.observations)
    seen = []
    sample = model.replay_buffer.sample
    model.replay_buffer.sample = lambda *args, **kwargs: seen.append(kwargs.get("env")) or sample(*args, **kwargs)
    model.train(gradient_steps=1, batch_size=16)
    assert seen == [model._vec_normalize_env]  # train() samples normalised batches


# ----------------------------------------------------------------------------- predict
@pytest.mark.parametrize("batch_norm", [True, False])
def test_predict_is_sb3_policy_predict_with_running_statistics(batch_norm):
    model = PaperDDPG("HalfCheetah-v5", policy_kwargs=dict(net_arch=[16, 12], batch_norm=batch_norm), seed=1)
    with th.no_grad():  # non-trivial batch-norm running statistics: predict must use them (eval mode)
        for layer in model.actor.modules():
            if isinstance(layer, nn.BatchNorm1d):
                layer.running_mean.uniform_(-1, 1)
                layer.running_var.uniform_(0.5, 2)
    model.policy.set_training_mode(True)
    single = model.observation_space.sample()
    batch = np.stack([model.observation_space.sample() for _ in range(5)])
    for observation in (single, batch):
        ours, state = model.predict(observation, state=None)
        model.policy.set_training_mode(False)
        with th.no_grad():
            obs = th.as_tensor(observation.reshape(-1, *model.observation_space.shape), dtype=th.float32)
            expected = model.policy.unscale_action(model.actor(obs).numpy()).reshape(ours.shape)
        assert state is None
        np.testing.assert_allclose(ours, expected, rtol=1e-6)
    assert not model.policy.training


def test_predict_dict_observations_falls_back_to_sb3():
    env = BitFlippingEnv(n_bits=4, continuous=True)
    model = PaperDDPG("MultiInputPolicy", env, policy_kwargs=SMALL, seed=0)
    observation = env.observation_space.sample()
    np.testing.assert_array_equal(model.predict(observation)[0], model.policy.predict(observation)[0])


# ----------------------------------------------------------------------------- fused Adam, denormals
def test_fused_adam_by_default_unless_chosen():
    model = PaperDDPG("Pendulum-v1", policy_kwargs=SMALL)
    for optimizer in (model.actor.optimizer, model.critic.optimizer):
        assert all(group["fused"] for group in optimizer.param_groups)
    model = PaperDDPG("Pendulum-v1", policy_kwargs=dict(SMALL, optimizer_kwargs=dict(foreach=True)))
    assert all(group["foreach"] and not group["fused"] for group in model.critic.optimizer.param_groups)
    model = PaperDDPG("Pendulum-v1", policy_kwargs=dict(SMALL, optimizer_class=th.optim.SGD))
    assert isinstance(model.actor.optimizer, th.optim.SGD)


@pytest.mark.parametrize("flush_denormal", [True, False])
def test_denormals_flushed_during_updates_only(flush_denormal):
    model = PaperDDPG("Pendulum-v1", learning_starts=50, policy_kwargs=SMALL, flush_denormal=flush_denormal)
    seen = []
    step = model.critic.optimizer.step

    def recording_step(*args, **kwargs):
        seen.append(denormals_are_flushed())
        return step(*args, **kwargs)

    model.critic.optimizer.step = recording_step  # type: ignore[method-assign]
    assert not denormals_are_flushed()
    model.learn(60)
    assert seen and all(flag == flush_denormal for flag in seen)
    assert not denormals_are_flushed()  # the caller's mode is restored
    # A caller that flushes already keeps flushing
    th.set_flush_denormal(True)
    try:
        model.learn(5, reset_num_timesteps=False)
        assert denormals_are_flushed()
    finally:
        th.set_flush_denormal(False)


# ----------------------------------------------------------------------------- hand-written MLP update
@pytest.mark.parametrize(
    "batch_norm, target_batch_norm", [(True, "batch"), (True, "running"), (False, "batch")], ids=["bn", "bn-running", "no-bn"]
)
@pytest.mark.parametrize("action_layer", [0, 1, 2])
@pytest.mark.parametrize("env_id", ["Pendulum-v1", "HalfCheetah-v5"])
def test_mlp_update_matches_autograd_update(env_id, action_layer, batch_norm, target_batch_norm):
    """Full-size networks, the paper's weight decay, many steps: the hand-written passes track autograd's."""
    models = []
    for mlp_update in (True, False):
        model = PaperDDPG(
            env_id,
            learning_starts=200,
            batch_size=64,
            policy_kwargs=dict(batch_norm=batch_norm, action_layer=action_layer, target_batch_norm=target_batch_norm),
            mlp_update=mlp_update,
            seed=3,
        )
        assert isinstance(model.gradient_step, MLPUpdate) == mlp_update
        model.learn(200)
        np.random.seed(7)
        model.train(gradient_steps=30, batch_size=64)
        models.append(model)
    ours, theirs = models
    mismatches = []
    for name in ("actor", "critic", "actor_target", "critic_target"):
        ours_state, theirs_state = getattr(ours, name).state_dict(), getattr(theirs, name).state_dict()
        assert ours_state.keys() == theirs_state.keys()
        exempt = shift_invariant_keys(getattr(ours, name.removesuffix("_target")))
        for key, value in ours_state.items():
            if key in exempt:  # rounding noise scaled up by Adam (see above)
                tolerance = dict(rtol=0.0, atol=30 * 1e-3)
            else:
                tolerance = dict(rtol=1e-4, atol=1e-5)
            try:
                th.testing.assert_close(value, theirs_state[key], **tolerance)
            except AssertionError as error:
                mismatches.append(f"{name}.{key} differs: {' '.join(str(error).splitlines()[2:])}")
    assert not mismatches, "\n".join(mismatches)
    for key in ("train/critic_loss", "train/actor_loss", "train/q_mean"):
        assert ours.logger.name_to_value[key] == pytest.approx(theirs.logger.name_to_value[key], rel=1e-4, abs=1e-6)
    for optimizer in ("actor", "critic"):  # Adam's state advanced alike (state dicts save and load as before)
        ours_state = getattr(ours, optimizer).optimizer.state_dict()["state"]
        theirs_state = getattr(theirs, optimizer).optimizer.state_dict()["state"]
        assert ours_state.keys() == theirs_state.keys()
        for index in ours_state:
            assert ours_state[index]["step"] == theirs_state[index]["step"] == 30


def test_mlp_update_only_for_fully_connected_networks():
    for batch_norm in (True, False):
        model = PaperDDPG("Pendulum-v1", policy_kwargs=dict(batch_norm=batch_norm))
        assert MLPUpdate.for_policy(model.policy) is not None
    others = [
        PaperDDPG("Pendulum-v1", policy_kwargs=dict(batch_norm=False, activation_fn=nn.Tanh)),
        PaperDDPG("MultiInputPolicy", BitFlippingEnv(n_bits=4, continuous=True), policy_kwargs=dict(batch_norm=False)),
        PaperDDPG("Pendulum-v1", policy_kwargs=dict(batch_norm=False), mlp_update=False),
    ]
    for model in others:
        assert not isinstance(model.gradient_step, MLPUpdate)
    # SB3's TD3 with this package's policy: two critics
    td3 = TD3(PaperDDPGPolicy, "Pendulum-v1", policy_kwargs=dict(batch_norm=False, n_critics=2))
    assert MLPUpdate.for_policy(td3.policy) is None
    # A model built without it (or loaded) still trains, through autograd
    others[-1].learning_starts = 10
    others[-1].learn(20)
    assert others[-1]._n_updates == 10


def test_mlp_update_survives_save_and_load(tmp_path):
    model = PaperDDPG("Pendulum-v1", learning_starts=50, policy_kwargs=dict(net_arch=[32, 24]))
    model.learn(60)
    model.save(tmp_path / "model.zip")
    loaded = PaperDDPG.load(tmp_path / "model.zip", env=gym.make("Pendulum-v1"))
    assert isinstance(loaded.gradient_step, MLPUpdate) and loaded.gradient_step.actor[1] is loaded.actor.mu[1]
    loaded.learn(20, reset_num_timesteps=False)
    assert loaded.critic.optimizer.state_dict()["state"][0]["step"] == 30


# ----------------------------------------------------------------------------- optimizer steps
def _adam_pair(**kwargs):
    params = [nn.Parameter(th.randn(7, 5, generator=th.Generator().manual_seed(i))) for i in range(2)]
    twin = [nn.Parameter(p.detach().clone()) for p in params]
    groups = lambda ps: [{"params": [ps[0]], "weight_decay": 0.1}, {"params": [ps[1]]}]  # noqa: E731
    return params, th.optim.Adam(groups(params), lr=1e-2, **kwargs), twin, th.optim.Adam(groups(twin), lr=1e-2, **kwargs)


@pytest.mark.parametrize("fused", [True, False])
def test_apply_gradients_is_an_optimizer_step(fused):
    params, optimizer, twin, reference = _adam_pair(fused=fused)
    for step in range(4):
        grads = [th.randn(7, 5, generator=th.Generator().manual_seed(10 * step + i)) for i in range(2)]
        apply_gradients(optimizer, dict(zip(params, grads, strict=True)))
        reference.zero_grad()
        for p, g in zip(twin, grads, strict=True):
            p.grad = g.clone()
        reference.step()
        for p, q in zip(params, twin, strict=True):
            assert th.equal(p, q)  # the same kernel with the same inputs: bitwise
    assert optimizer.state_dict()["state"][0]["step"] == 4


def test_apply_gradients_respects_hooks_and_missing_gradients():
    params, optimizer, _, _ = _adam_pair(fused=True)
    calls = []
    optimizer.register_step_post_hook(lambda *args: calls.append(1))
    for _ in range(3):
        apply_gradients(optimizer, {params[0]: th.ones(7, 5), params[1]: None})
    assert len(calls) == 3  # a hooked optimizer runs its step()
    assert params[1] not in optimizer.state  # no gradient: not stepped, as optimizer.step() skips it
    assert optimizer.state[params[0]]["step"] == 3


# ----------------------------------------------------------------------------- hand-written CNN update (issue 15)
from stable_baselines3.common.torch_layers import NatureCNN  # noqa: E402

from sb3_ddpg_paper import PaperCNN  # noqa: E402
from sb3_ddpg_paper.cnn_update import CNNUpdate  # noqa: E402
from sb3_ddpg_paper.update import AutogradStep  # noqa: E402

PIXEL_SMALL = dict(net_arch=[32, 24], features_extractor_kwargs=dict(filters=8))


def filled_pixel_model(cnn_update: bool = True, device: str = "cpu", **policy_kwargs) -> PaperDDPG:
    """A pixel model (CnnPolicy) whose replay buffer holds random-image transitions (truncations, terminals) only."""
    env = make_vec_env(
        RandomImageEnv, n_envs=2, seed=0, wrapper_class=gym.wrappers.TimeLimit, wrapper_kwargs=dict(max_episode_steps=20)
    )
    model = PaperDDPG(
        "CnnPolicy",
        env,
        learning_rate=ACTOR_LR,
        qf_learning_rate=CRITIC_LR,
        critic_weight_decay=WEIGHT_DECAY,
        tau=TAU,
        gamma=GAMMA,
        buffer_size=500,
        learning_starts=120,
        batch_size=16,
        policy_kwargs={**PIXEL_SMALL, **policy_kwargs},
        cnn_update=cnn_update,
        seed=0,
        device=device,
    )
    model.learn(120)  # warm-up only
    assert model._n_updates == 0 and model.replay_buffer.timeouts.any()
    model.replay_buffer.dones[::7] = 1.0
    return model


class ReferenceCnnDDPG(ReferenceDDPG):
    """:class:`ReferenceDDPG` for the pixel networks: the critic's conv weights are decayed too (sec. 7, "weights")."""

    def __init__(self, model: PaperDDPG):
        super().__init__(model)
        decayed = {id(m.weight) for m in self.critic.modules() if isinstance(m, nn.Linear | nn.Conv2d)}
        critic_params = list(self.critic.parameters())
        self.critic_optimizer = th.optim.Adam(
            [
                {"params": [p for p in critic_params if id(p) in decayed], "weight_decay": WEIGHT_DECAY},
                {"params": [p for p in critic_params if id(p) not in decayed], "weight_decay": 0.0},
            ],
            lr=CRITIC_LR,
            foreach=False,
        )


def cnn_shift_invariant(model: PaperDDPG) -> dict[str, set[str]]:
    """
    The entries whose gradient is zero in exact arithmetic (see ``SHIFT_INVARIANT``): the shift of a batch norm that
    is followed by a bias-free layer and another batch norm. In the pixel networks: the input batch norm's shift (the
    first conv layer and its batch norm follow), the running mean of that conv layer's batch norm, and the same pair at
    the fully connected layers when a hidden layer with batch norm follows the features' batch norm.
    """
    entries: dict[str, set[str]] = {"actor": set(), "critic": set()}
    if model.policy.batch_norm:
        for name in entries:
            entries[name] |= {"features_extractor.cnn.0.bias", "features_extractor.cnn.2.running_mean"}
        if model.actor.net_arch:
            entries["actor"] |= {"mu.0.bias", "mu.2.running_mean"}
        projection = model.actor.features_extractor.cnn[-2]
        if isinstance(projection, nn.Linear):  # features_dim: Linear -> ReLU -> the features' batch norm; units active
            for name in entries:  # for the whole batch pass a shift of its bias on to that batch norm unchanged
                entries[name].add(f"features_extractor.cnn.{len(model.actor.features_extractor.cnn) - 2}.bias")
        if model.policy.action_layer >= 1:
            entries["critic"] |= {"qf0.state_net.0.bias", "qf0.state_net.2.running_mean"}
    return entries


def assert_same_pixel_networks(model: PaperDDPG, other, n_steps: int, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    shift_invariant = cnn_shift_invariant(model)
    for name in ("actor", "critic", "actor_target", "critic_target"):
        ours, theirs = getattr(model, name).state_dict(), getattr(other, name).state_dict()
        assert ours.keys() == theirs.keys()
        for key in ours:
            if key in shift_invariant[name.removesuffix("_target")]:  # rounding noise scaled up by Adam
                th.testing.assert_close(ours[key], theirs[key], rtol=0, atol=n_steps * CRITIC_LR, msg=f"{name}.{key}")
            else:
                th.testing.assert_close(ours[key], theirs[key], rtol=rtol, atol=atol, msg=f"{name}.{key} differs")


@pytest.mark.parametrize("cnn_update", [True, False])
@pytest.mark.parametrize("batch_norm", [True, False])
@pytest.mark.parametrize("action_layer", [0, 1])
def test_cnn_update_matches_reference_algorithm_1(batch_norm, action_layer, cnn_update):
    """The pixel networks' step, hand-written (default) or autograd, against Algorithm 1 written out with autograd."""
    model = filled_pixel_model(cnn_update, batch_norm=batch_norm, action_layer=action_layer)
    assert isinstance(model.gradient_step, CNNUpdate) == cnn_update
    reference = ReferenceCnnDDPG(model)
    initial = {name: p.clone() for name, p in model.policy.named_parameters()}
    np.random.seed(123)
    model.train(gradient_steps=4, batch_size=16)
    model.train(gradient_steps=3, batch_size=16)
    np.random.seed(123)
    losses = [reference.step(model.replay_buffer.sample(16)) for _ in range(7)]
    assert model._n_updates == 7
    assert_same_pixel_networks(model, reference, n_steps=7)
    critic_losses, actor_losses = zip(*losses[4:], strict=True)
    assert model.logger.name_to_value["train/critic_loss"] == pytest.approx(np.mean(critic_losses), rel=1e-4)
    assert model.logger.name_to_value["train/actor_loss"] == pytest.approx(np.mean(actor_losses), rel=1e-4, abs=1e-6)
    # Every parameter moved (the conv towers and the input batch norm included); the targets lag behind
    assert all(not th.equal(p, initial[name]) for name, p in model.policy.named_parameters()), "a parameter did not move"
    first_conv = model.actor.features_extractor.cnn[1 if batch_norm else 0].weight
    assert not th.allclose(first_conv, model.actor_target.features_extractor.cnn[1 if batch_norm else 0].weight)
    if batch_norm:  # the conv batch norms' running statistics follow the batches (the critic's counted once per step)
        critic_bn = model.critic.features_extractor.cnn[0]
        assert int(critic_bn.num_batches_tracked) == 7 and not th.equal(critic_bn.running_var, th.ones(9))


@pytest.mark.parametrize(
    "policy_kwargs",
    [
        dict(target_batch_norm="running"),
        dict(features_extractor_kwargs=dict(filters=8, features_dim=24)),
        dict(batch_norm=False, features_extractor_kwargs=dict(filters=8, padding=1, stride=3, kernel_size=4)),
        dict(batch_norm_momentum=0.3, batch_norm_eps=1e-3, weight_decay_scope="all"),
    ],
    ids=["running-targets", "features-dim", "no-bn-padding", "bn-settings-decay-all"],
)
def test_cnn_update_matches_autograd_in_other_configurations(policy_kwargs):
    models = []
    for cnn_update in (True, False):
        model = filled_pixel_model(cnn_update, **policy_kwargs)
        assert isinstance(model.gradient_step, CNNUpdate) == cnn_update
        np.random.seed(7)
        model.train(gradient_steps=6, batch_size=16)
        models.append(model)
    ours, theirs = models
    assert_same_pixel_networks(ours, theirs, n_steps=6)
    for key in ("train/critic_loss", "train/actor_loss", "train/q_mean"):
        assert ours.logger.name_to_value[key] == pytest.approx(theirs.logger.name_to_value[key], rel=1e-4, abs=1e-6)


def test_cnn_update_matches_reference_through_learn(device):
    """Acting, storing and updating interleaved (one update per env step), on every device."""
    model = filled_pixel_model(device=device)
    assert isinstance(model.gradient_step, CNNUpdate)
    model.action_noise = None
    reference = ReferenceCnnDDPG(model)
    for _ in range(4):
        state = np.random.get_state()
        model.learn(1, reset_num_timesteps=False)
        np.random.set_state(state)
        reference.step(model.replay_buffer.sample(model.batch_size))
    assert model._n_updates == 4
    assert_same_pixel_networks(model, reference, n_steps=4)


@pytest.mark.parametrize("env_id", ["random-images", "sb3_ddpg_paper/PixelPendulum-v1"])
def test_cnn_update_is_as_close_to_autograd_as_autograd_in_another_memory_layout(env_id):
    """
    The paper's pixel networks and batch (CnnPolicy defaults: 32 filters, 200-200, batch 16), 6 steps.

    At this size float rounding is amplified: at initialisation the actor's gradients are tiny and nearly the same for
    every state of a batch, so its batch-norm backward passes cancel most of their digits; Pendulum's renders share a
    constant background, which batch norm turns into rounding noise. Adam then turns gradients that are rounding noise
    into steps of up to its learning rate, so any two float32 implementations of the same update drift apart by up
    to that much within a few steps, autograd included: autograd with channels-last weights (the same math, other
    kernels) is the yardstick. The hand-written step must be as close to autograd as that (within 3 times, plus float
    precision), in every parameter, batch-norm statistic and loss; the shift-invariant entries within Adam's steps.
    """
    models = []
    for variant in ("cnn_update", "autograd", "autograd, channels last"):
        if env_id == "random-images":
            model = filled_pixel_model(variant == "cnn_update", net_arch=None, features_extractor_kwargs=None)
        else:
            model = PaperDDPG(env_id, buffer_size=300, learning_starts=100, seed=1, cnn_update=variant == "cnn_update")
            model.learn(100)
        assert isinstance(model.gradient_step, CNNUpdate) == (variant == "cnn_update")
        if variant == "autograd, channels last":
            model.policy.to(memory_format=th.channels_last)
        np.random.seed(5)
        model.train(gradient_steps=6, batch_size=16)
        models.append(model)
    ours, autograd, channels_last = models
    assert ours.actor.net_arch == [200, 200] and ours.actor.features_extractor.features_dim == 32 * 7 * 7
    shift_invariant = cnn_shift_invariant(ours)
    adam_steps = 2 * 6 * max(group["lr"] for net in (ours.actor, ours.critic) for group in net.optimizer.param_groups)
    for name in ("actor", "critic", "actor_target", "critic_target"):
        for key, reference in getattr(autograd, name).state_dict().items():
            value, other = getattr(ours, name).state_dict()[key], getattr(channels_last, name).state_dict()[key]
            if key in shift_invariant[name.removesuffix("_target")]:  # two sets of 6 Adam steps of rounding noise
                th.testing.assert_close(value, reference, rtol=0, atol=adam_steps, msg=f"{name}.{key}")
                continue
            yardstick = (other - reference).abs().max() * 3 + reference.abs().max() * 1e-5
            assert (value - reference).abs().max() <= yardstick, f"{name}.{key}"
    for key in ("train/critic_loss", "train/actor_loss", "train/q_mean"):
        values = [model.logger.name_to_value[key] for model in models]
        assert abs(values[0] - values[1]) <= 3 * abs(values[2] - values[1]) + 1e-6 * abs(values[1]), key


def test_cnn_update_only_for_the_supported_pixel_networks():
    env = RandomImageEnv()
    assert isinstance(PaperDDPG("CnnPolicy", env, buffer_size=100, policy_kwargs=PIXEL_SMALL).gradient_step, CNNUpdate)
    others = [
        PaperDDPG("CnnPolicy", env, buffer_size=100, policy_kwargs=PIXEL_SMALL, cnn_update=False),
        PaperDDPG("CnnPolicy", env, buffer_size=100, policy_kwargs=dict(PIXEL_SMALL, share_features_extractor=True)),
        PaperDDPG("CnnPolicy", env, buffer_size=100, policy_kwargs=dict(features_extractor_class=NatureCNN)),
        # Padding after the input batch norm: its shift would not reach the border windows alike (no fold)
        PaperDDPG("CnnPolicy", env, buffer_size=100, policy_kwargs=dict(features_extractor_kwargs=dict(filters=8, padding=1))),
        PaperDDPG("CnnPolicy", env, buffer_size=100, policy_kwargs=dict(PIXEL_SMALL, activation_fn=nn.Tanh)),
    ]
    for model in others:
        assert isinstance(model.gradient_step, AutogradStep)
    assert CNNUpdate.for_policy(PaperDDPG("Pendulum-v1").policy) is None  # and MLPs keep their own update
    td3 = TD3(
        PaperDDPGPolicy, env, buffer_size=100, policy_kwargs=dict(PIXEL_SMALL, n_critics=2, features_extractor_class=PaperCNN)
    )
    assert CNNUpdate.for_policy(td3.policy) is None
    # A model built without it still trains, through autograd
    others[-2].learning_starts = 10
    others[-2].learn(14)
    assert others[-2]._n_updates == 4


def test_cnn_update_survives_save_and_load(tmp_path):
    model = filled_pixel_model()
    model.train(gradient_steps=2, batch_size=16)
    model.save(tmp_path / "model.zip")
    loaded = PaperDDPG.load(tmp_path / "model.zip", env=make_vec_env(RandomImageEnv, n_envs=2), buffer_size=500)
    assert (
        isinstance(loaded.gradient_step, CNNUpdate)
        and loaded.gradient_step.actor.tower.layers[0] is loaded.actor.features_extractor.cnn[1]
    )
    autograd = PaperDDPG.load(tmp_path / "model.zip", buffer_size=500, cnn_update=False)
    assert isinstance(autograd.gradient_step, AutogradStep)
    loaded.learning_starts = 0
    loaded.learn(4, reset_num_timesteps=False)
    assert loaded._n_updates > 2 and loaded.critic.optimizer.state_dict()["state"][0]["step"] == loaded._n_updates
