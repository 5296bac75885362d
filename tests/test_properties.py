"""Property-based tests (hypothesis): the OU noise, the soft target update and the hyperparameter validation."""

import itertools
import math

import numpy as np
import pytest
import torch as th
from conftest import RandomEnv
from gymnasium import spaces
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sb3_ddpg_paper import OrnsteinUhlenbeckNoise, PaperDDPG

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

positive = st.floats(min_value=1e-3, max_value=10.0, allow_nan=False)
unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)

ACTIONS_2 = spaces.Box(-1, 1, (2,), np.float32)


# ---------------------------------------------------------------------------------------------------- noise
@st.composite
def noises(draw) -> OrnsteinUhlenbeckNoise:
    action_dim = draw(st.integers(1, 4))
    low, high = sorted((draw(unit), draw(unit)))
    return OrnsteinUhlenbeckNoise(
        action_dim,
        mean=draw(st.floats(-1, 1)),
        sigma=draw(st.floats(0, 2)),
        theta=draw(st.floats(0, 1)),
        dt=draw(st.floats(1e-3, 1.0)),
        initial_noise=draw(st.one_of(st.none(), st.floats(-1, 1))),
        min_epsilon=low,
        max_epsilon=high,
        epsilon_decay_steps=draw(st.integers(0, 50)),
        n_envs=draw(st.integers(1, 3)),
        seed=draw(st.integers(0, 2**16)),
    )


@FAST
@given(noise=noises(), steps=st.integers(0, 30))
def test_reset_restores_the_initial_state_of_every_process(noise, steps):
    initial = noise.state.copy()
    for _ in range(steps):
        noise()
    noise.reset()
    assert np.array_equal(noise.state, initial)


@FAST
@given(noise=noises(), steps=st.integers(1, 30), data=st.data())
def test_reset_of_some_envs_leaves_the_others(noise, steps, data):
    initial = noise.state.copy()
    for _ in range(steps):
        noise()
    before = noise.state.copy()
    indices = data.draw(st.sets(st.integers(0, noise.n_envs - 1)))
    noise.reset(indices)
    for env in range(noise.n_envs):
        assert np.array_equal(noise.state[env], initial[env] if env in indices else before[env])


@FAST
@given(noise=noises(), steps=st.integers(1, 80))
def test_epsilon_is_monotone_bounded_and_reaches_its_minimum(noise, steps):
    values = [noise.epsilon]
    for _ in range(steps):
        noise()
        values.append(noise.epsilon)
    assert all(later <= earlier for earlier, later in itertools.pairwise(values))
    assert all(noise.min_epsilon <= value <= noise.max_epsilon for value in values)
    assert values[0] == noise.max_epsilon
    if noise.epsilon_decay_steps == 0:
        assert set(values) == {noise.max_epsilon}
    elif noise.num_steps >= noise.epsilon_decay_steps:
        assert math.isclose(values[-1], noise.min_epsilon, abs_tol=1e-12)
    noise.reset()  # an episode end never resets epsilon
    assert noise.epsilon == values[-1]


@FAST
@given(noise=noises(), seed=st.integers(0, 2**16), steps=st.integers(0, 5))
def test_one_step_follows_the_discretised_process_with_dt_scaling(noise, seed, steps):
    for _ in range(steps):  # from any state, not only the initial one
        noise()
    noise.seed(seed)
    x, epsilon = noise.state.copy(), noise.epsilon
    out = noise()
    # x' = x + theta (mu - x) dt + sigma sqrt(dt) N(0, 1); the action noise is epsilon (before the step) * x'
    gaussian = np.random.default_rng(seed).standard_normal(x.shape)
    expected = x + noise.theta * (noise.mean - x) * noise.dt + noise.sigma * np.sqrt(noise.dt) * gaussian
    np.testing.assert_allclose(noise.state, expected, rtol=1e-12, atol=1e-12)
    assert np.array_equal(out, (epsilon * noise.state).astype(np.float32).reshape(out.shape))


@FAST
@given(sigma=st.floats(0.01, 2), theta=st.floats(0.01, 1), dt=st.floats(1e-3, 1.0))
def test_stationary_std_is_the_fixed_point_of_the_discrete_variance(sigma, theta, dt):
    # Var' = (1 - theta dt)^2 Var + sigma^2 dt: the stationary variance is the fixed point of this map
    noise = OrnsteinUhlenbeckNoise(1, sigma=sigma, theta=theta, dt=dt)
    variance = noise.stationary_std()[0] ** 2
    assert math.isclose((1 - theta * dt) ** 2 * variance + sigma**2 * dt, variance, rel_tol=1e-9)


@FAST
@given(dt=st.floats(1e-3, 1.0), sigma=st.floats(0.01, 2))
def test_without_mean_reversion_the_step_variance_is_sigma_squared_dt(dt, sigma):
    noise = OrnsteinUhlenbeckNoise(1, sigma=sigma, theta=0.0, dt=dt, n_envs=4000, seed=0)
    increments = noise()  # from the initial state 0, one step: sigma * sqrt(dt) * N(0, 1), epsilon 1
    assert math.isclose(float(np.std(increments)), sigma * math.sqrt(dt), rel_tol=0.06)


# ---------------------------------------------------------------------------------------------------- soft update
finite_arrays = st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=1, max_size=20)


@FAST
@given(target=finite_arrays, online=finite_arrays, tau=st.floats(0, 1))
def test_soft_update_primitive_is_a_convex_combination(target, online, tau):
    n = min(len(target), len(online))
    target_t, online_t = th.tensor(target[:n]), th.tensor(online[:n])
    updated = [target_t.clone()]
    # The primitive train() uses: theta' <- tau * theta + (1 - tau) * theta' (Lillicrap et al. 2016, Algorithm 1)
    th._foreach_lerp_(updated, [online_t], tau)
    low, high = th.minimum(target_t, online_t), th.maximum(target_t, online_t)
    slack = 1e-6 * (high.abs() + 1)
    assert bool(((updated[0] >= low - slack) & (updated[0] <= high + slack)).all())
    np.testing.assert_allclose(updated[0], tau * online_t + (1 - tau) * target_t, rtol=1e-5, atol=1e-4)
    if tau == 1:
        assert th.equal(updated[0], online_t)
    if tau == 0:
        assert th.equal(updated[0], target_t)


@pytest.fixture(scope="module")
def filled_model() -> PaperDDPG:
    model = PaperDDPG("MlpPolicy", RandomEnv(action_space=ACTIONS_2), buffer_size=200, learning_starts=100, batch_size=8,
                      policy_kwargs=dict(net_arch=[8, 8]), seed=0)  # fmt: skip
    model.learn(60)  # fills the buffer, no update yet
    return model


@settings(max_examples=25, deadline=None)
@given(tau=st.one_of(st.just(1.0), st.floats(1e-4, 1.0)))
def test_algorithm_soft_update_moves_targets_tau_of_the_way(filled_model, tau):
    model = filled_model
    model.tau = tau
    old_targets = [p.detach().clone() for p in (*model.actor_target.parameters(), *model.critic_target.parameters())]
    model.train(gradient_steps=1, batch_size=8)
    online = [p.detach() for p in (*model.actor.parameters(), *model.critic.parameters())]
    new_targets = [p.detach() for p in (*model.actor_target.parameters(), *model.critic_target.parameters())]
    for old, new, theta in zip(old_targets, new_targets, online, strict=True):
        if tau == 1.0:
            assert th.equal(new, theta)  # tau = 1 copies the online networks
        else:
            th.testing.assert_close(new, tau * theta + (1 - tau) * old, rtol=1e-5, atol=1e-7)
            low, high = th.minimum(old, theta), th.maximum(old, theta)
            assert bool(((new >= low - 1e-6) & (new <= high + 1e-6)).all())
    # Batch-norm running statistics are copied, not averaged
    for target_buffer, buffer in zip(model.critic_target.buffers(), model.critic.buffers(), strict=True):
        assert th.equal(target_buffer, buffer)


# ---------------------------------------------------------------------------------------------------- validation
def build(**kwargs) -> PaperDDPG:
    return PaperDDPG("MlpPolicy", RandomEnv(action_space=ACTIONS_2), _init_setup_model=False, **kwargs)


@FAST
@given(tau=st.floats(allow_nan=True, allow_infinity=True))
def test_tau_is_accepted_exactly_in_the_half_open_unit_interval(tau):
    if 0 < tau <= 1:
        assert build(tau=tau).tau == tau
    else:
        with pytest.raises(ValueError, match=r"tau must be in \(0, 1\]"):
            build(tau=tau)


@FAST
@given(gamma=st.floats(allow_nan=True, allow_infinity=True))
def test_gamma_is_accepted_exactly_in_the_unit_interval(gamma):
    if 0 <= gamma <= 1:
        assert build(gamma=gamma).gamma == gamma
    else:
        with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\]"):
            build(gamma=gamma)


@FAST
@given(
    name=st.sampled_from(["learning_rate", "qf_learning_rate"]),
    value=st.one_of(st.floats(allow_nan=True, allow_infinity=False), st.booleans(), st.text(max_size=3)),
)
def test_learning_rates_must_be_positive_numbers(name, value):
    if isinstance(value, float) and value > 0:
        assert getattr(build(**{name: value}), name) == value
    else:
        with pytest.raises(ValueError, match=f"{name} must be a positive number or a schedule"):
            build(**{name: value})


@FAST
@given(
    name_minimum=st.sampled_from(
        [("buffer_size", 1), ("batch_size", 1), ("learning_starts", 0), ("n_steps", 1), ("target_update_interval", 1)]
    ),
    value=st.one_of(st.integers(-5, 5), st.floats(-2, 2), st.booleans()),
)
def test_integer_hyperparameters_have_a_minimum_and_must_be_integers(name_minimum, value):
    name, minimum = name_minimum
    if isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
        build(**{name: value})
    else:
        with pytest.raises(ValueError, match=f"{name} must be an integer >= {minimum}"):
            build(**{name: value})


@FAST
@given(value=st.floats(allow_nan=True, allow_infinity=True))
def test_critic_weight_decay_must_be_non_negative(value):
    if 0 <= value < float("inf"):  # an infinite decay would turn the critic's weights into NaN at the first step
        build(critic_weight_decay=value)
    else:
        with pytest.raises(ValueError, match="critic_weight_decay must be a number >= 0"):
            build(critic_weight_decay=value)


@FAST
@given(low=st.floats(-1, 2), high=st.floats(-1, 2), steps=st.integers(-3, 10))
def test_noise_epsilon_arguments(low, high, steps):
    if 0 <= low <= high and steps >= 0:
        noise = OrnsteinUhlenbeckNoise(1, min_epsilon=low, max_epsilon=high, epsilon_decay_steps=steps)
        assert noise.epsilon == high
    else:
        with pytest.raises(ValueError, match=r"min_epsilon|epsilon_decay_steps"):
            OrnsteinUhlenbeckNoise(1, min_epsilon=low, max_epsilon=high, epsilon_decay_steps=steps)
