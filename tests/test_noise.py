import itertools

import numpy as np
import pytest

from sb3_ddpg_paper import OrnsteinUhlenbeckNoise


@pytest.mark.parametrize("dt", [1.0, 0.1])
def test_stationary_mean_and_std_match_theory(dt):
    # Discrete OU x <- phi x + sigma sqrt(dt) N, phi = 1 - theta dt: an AR(1) process with
    # Var = sigma^2 dt / (1 - phi^2) = sigma^2 dt / (2 theta dt - (theta dt)^2)
    noise = OrnsteinUhlenbeckNoise(action_dim=1, dt=dt, seed=0)
    phi = 1 - 0.15 * dt
    expected = 0.2 * np.sqrt(dt / (2 * 0.15 * dt - (0.15 * dt) ** 2))
    assert noise.stationary_std()[0] == pytest.approx(expected)
    burn_in = int(20 / (0.15 * dt))  # 20 correlation times: what is left of the initial state is < 1e-8 of it
    n = 200_000
    samples = np.array([noise()[0] for _ in range(burn_in + n)])[burn_in:]
    # Standard errors of statistics of n correlated samples (AR(1), lag-k correlation phi^k): the mean's variance is
    # Var / n * (1 + phi) / (1 - phi), the sample variance's 2 Var^2 / n * (1 + phi^2) / (1 - phi^2)
    mean_se = expected * np.sqrt((1 + phi) / (1 - phi) / n)
    variance_se = expected**2 * np.sqrt(2 * (1 + phi**2) / (1 - phi**2) / n)
    assert abs(samples.mean()) < 4.5 * mean_se
    assert abs(samples.var() - expected**2) < 4.5 * variance_se


def test_default_is_the_papers_process():
    noise = OrnsteinUhlenbeckNoise(action_dim=2)
    assert noise.theta == 0.15 and noise.dt == 1.0
    np.testing.assert_array_equal(noise.sigma, [0.2, 0.2])
    np.testing.assert_array_equal(noise.mean, [0.0, 0.0])
    assert noise.epsilon == 1.0
    # dt=1: stationary std ~0.38 (paper-spec.md sec. 4)
    assert noise.stationary_std()[0] == pytest.approx(0.3797, abs=1e-3)


def test_epsilon_decays_linearly_over_the_stated_steps():
    noise = OrnsteinUhlenbeckNoise(action_dim=1, max_epsilon=1.0, min_epsilon=0.2, epsilon_decay_steps=100, seed=0)
    epsilons = []
    for _ in range(150):
        epsilons.append(noise.epsilon)
        noise()
    assert epsilons[0] == 1.0
    assert epsilons[50] == pytest.approx(0.6)
    assert epsilons[100] == pytest.approx(0.2)  # reached after exactly epsilon_decay_steps steps
    assert epsilons[149] == pytest.approx(0.2)
    assert all(a >= b for a, b in itertools.pairwise(epsilons))


def test_noise_is_epsilon_times_state():
    noise = OrnsteinUhlenbeckNoise(action_dim=3, max_epsilon=0.5, min_epsilon=0.5, seed=1)
    out = noise()
    np.testing.assert_allclose(out, 0.5 * noise.state[0], rtol=1e-6)
    assert out.dtype == np.float32 and out.shape == (3,)


def test_reset_restores_state_but_not_epsilon():
    noise = OrnsteinUhlenbeckNoise(action_dim=2, initial_noise=0.0, min_epsilon=0.0, epsilon_decay_steps=10, seed=0)
    for _ in range(5):
        noise()
    assert np.any(noise.state != 0)
    noise.reset()
    np.testing.assert_array_equal(noise.state, 0.0)
    assert noise.num_steps == 5
    assert noise.epsilon == pytest.approx(0.5)


def test_vectorised_reset_and_step_counting():
    noise = OrnsteinUhlenbeckNoise(action_dim=1, n_envs=3, seed=0)
    out = noise()
    assert out.shape == (3, 1)
    assert len(set(out[:, 0].tolist())) == 3  # independent processes
    assert noise.num_steps == 3  # every environment step counts once
    before = noise.state.copy()
    noise.reset(indices=[1])
    assert noise.state[1, 0] == 0.0
    assert noise.state[0, 0] == before[0, 0] and noise.state[2, 0] == before[2, 0]
    noise.set_n_envs(2)
    assert noise().shape == (2, 1) and noise.num_steps == 5


def test_seeded_noise_is_reproducible():
    a, b = OrnsteinUhlenbeckNoise(2, seed=3), OrnsteinUhlenbeckNoise(2, seed=3)
    np.testing.assert_array_equal([a() for _ in range(10)], [b() for _ in range(10)])
    c = OrnsteinUhlenbeckNoise(2, seed=4)
    assert not np.array_equal(a(), c())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(min_epsilon=0.5, max_epsilon=0.2), "min_epsilon <= max_epsilon"),
        (dict(min_epsilon=-0.1), "min_epsilon <= max_epsilon"),
        (dict(epsilon_decay_steps=-1), "epsilon_decay_steps"),
        (dict(dt=0.0), "dt must be > 0"),
        (dict(theta=-1.0), "theta"),
        (dict(sigma=-0.2), "sigma"),
    ],
)
def test_bad_noise_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OrnsteinUhlenbeckNoise(action_dim=1, **kwargs)
