"""Ornstein-Uhlenbeck exploration with epsilon decay, as an SB3 ``ActionNoise`` (Lillicrap et al. 2016, sec. 3 and 7)."""

import inspect
from collections.abc import Iterable
from numbers import Integral
from typing import Any

import numpy as np
from gymnasium import spaces
from numpy.typing import DTypeLike
from stable_baselines3.common.noise import ActionNoise


def _broadcast(name: str, value: float | np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    try:
        return np.broadcast_to(np.asarray(value, dtype=np.float64), shape).copy()
    except ValueError as error:
        raise ValueError(f"{name} must be a number or an array of the action's shape {shape}, got {value!r}.") from error


class OrnsteinUhlenbeckNoise(ActionNoise):
    """
    Temporally correlated exploration noise, one Ornstein-Uhlenbeck process per environment, scaled by a linearly
    decaying epsilon.

    The process follows ``x <- x + theta * (mu - x) * dt + sigma * sqrt(dt) * N(0, I)`` and the noise added to the
    actor's action (in SB3's normalised [-1, 1] action space) is ``epsilon * x``. Lillicrap et al. 2016, sec. 7:
    "we used an Ornstein-Uhlenbeck process with theta = 0.15 and sigma = 0.2"; Algorithm 1 re-initialises the process
    at the start of every episode, so :meth:`reset` (called by SB3 when an episode ends) sets the state back to
    ``initial_noise``.

    ``dt`` is not given in the paper. The default ``dt=1`` is the per-step process of the reference implementation
    (rllab) and of most DDPG code of the paper's era: stationary std ``sigma / sqrt(2 * theta - theta**2 * dt)`` ~ 0.38
    and a correlation time of ~7 steps. SB3's own ``OrnsteinUhlenbeckActionNoise`` defaults to ``dt=0.01``, which
    gives a std of only ~0.06 after 10 steps and a correlation time of ~667 steps.

    Epsilon decays linearly from ``max_epsilon`` to ``min_epsilon`` over ``epsilon_decay_steps`` environment steps
    and stays at ``min_epsilon`` afterwards; ``epsilon_decay_steps=0`` (the default) keeps epsilon at ``max_epsilon``
    = 1, which is the paper. The decay counts every environment step once (``n_envs`` per call) and is never reset:
    it continues across ``learn()`` calls and is saved with the model. (The reference notebook's
    ``max(min_eps, max_eps - step / max_steps)`` reaches ``min_eps`` after ``(max_eps - min_eps) * max_steps`` steps,
    not ``max_steps``; this class decays over exactly ``epsilon_decay_steps``.)

    ``PaperDDPG`` sizes the noise to its number of environments (:meth:`set_n_envs`): one process per environment,
    one epsilon schedule for all. SB3's own algorithms (``TD3``, ``DDPG``, ``SAC``) instead wrap any noise in their
    ``VectorizedActionNoise``, which deep-copies it once per environment: there each copy is one environment's process
    and counts that environment's steps, so epsilon decays over ``epsilon_decay_steps`` steps of each environment.
    With ``seed=None`` the draws come from NumPy's global generator (as in SB3's own noises, seeded by the algorithm's
    ``seed``), so that such copies draw different noise; a seeded noise has a generator of its own.

    :param action_dim: size of the action, or the shape of the action space (e.g. ``(2, 2)``): the noise has that
        shape (with a leading environment dimension when ``n_envs > 1``)
    :param mean: mean ``mu`` of the process (scalar or per action dimension)
    :param sigma: volatility ``sigma`` (scalar or per action dimension)
    :param theta: rate of mean reversion
    :param dt: time step of the discretised process
    :param initial_noise: state at the start of every episode (``None``: the mean)
    :param min_epsilon: final value of epsilon
    :param max_epsilon: initial value of epsilon
    :param epsilon_decay_steps: number of environment steps over which epsilon goes from max to min (0: no decay)
    :param n_envs: number of parallel environments (resized automatically by ``PaperDDPG``)
    :param seed: seed of the noise's own random generator (``PaperDDPG`` seeds it with the algorithm's seed);
        ``None``: NumPy's global generator
    :param dtype: type of the output noise
    """

    def __init__(
        self,
        action_dim: int | tuple[int, ...],
        mean: float | np.ndarray = 0.0,
        sigma: float | np.ndarray = 0.2,
        theta: float = 0.15,
        dt: float = 1.0,
        initial_noise: float | np.ndarray | None = None,
        min_epsilon: float = 1.0,
        max_epsilon: float = 1.0,
        epsilon_decay_steps: int = 0,
        n_envs: int = 1,
        seed: int | None = None,
        dtype: DTypeLike = np.float32,
    ) -> None:
        super().__init__()
        shape = tuple(action_dim) if isinstance(action_dim, tuple | list) else (action_dim,)
        if not shape or any(isinstance(n, bool) or not isinstance(n, Integral) or n < 1 for n in shape):
            raise ValueError(f"action_dim must be a positive integer or a shape of positive integers, got {action_dim!r}.")
        shape = tuple(int(n) for n in shape)
        self._mu = _broadcast("mean", mean, shape)
        self._sigma = _broadcast("sigma", sigma, shape)
        if np.any(self._sigma < 0):
            raise ValueError(f"sigma must be >= 0, got {sigma!r}.")
        if not theta >= 0:
            raise ValueError(f"theta must be >= 0, got {theta!r}.")
        if not dt > 0:
            raise ValueError(f"dt must be > 0, got {dt!r}.")
        if not 0 <= min_epsilon <= max_epsilon:
            raise ValueError(
                f"Expected 0 <= min_epsilon <= max_epsilon, got min_epsilon={min_epsilon!r}, max_epsilon={max_epsilon!r}."
            )
        if int(epsilon_decay_steps) != epsilon_decay_steps or epsilon_decay_steps < 0:
            raise ValueError(f"epsilon_decay_steps must be an integer >= 0 (0: no decay), got {epsilon_decay_steps!r}.")
        self.action_dim = int(np.prod(shape))
        self._theta = float(theta)
        self._dt = float(dt)
        self._initial = self._mu.copy() if initial_noise is None else _broadcast("initial_noise", initial_noise, shape)
        self.min_epsilon = float(min_epsilon)
        self.max_epsilon = float(max_epsilon)
        self.epsilon_decay_steps = int(epsilon_decay_steps)
        self._dtype = dtype
        self.num_steps = 0  # environment steps seen so far: drives the epsilon schedule
        self.seed(seed)
        self.set_n_envs(n_envs)

    # --- parameters, read-only ---
    @property
    def mean(self) -> np.ndarray:
        return self._mu.copy()

    @property
    def sigma(self) -> np.ndarray:
        return self._sigma.copy()

    @property
    def theta(self) -> float:
        return self._theta

    @property
    def dt(self) -> float:
        return self._dt

    @property
    def epsilon(self) -> float:
        """Current epsilon: linear from ``max_epsilon`` to ``min_epsilon`` over ``epsilon_decay_steps`` env steps."""
        if self.epsilon_decay_steps == 0:
            return self.max_epsilon
        fraction = min(1.0, self.num_steps / self.epsilon_decay_steps)
        # Clamped: rounding could otherwise end a hair outside [min_epsilon, max_epsilon] (found by hypothesis)
        return min(
            self.max_epsilon, max(self.min_epsilon, self.max_epsilon + fraction * (self.min_epsilon - self.max_epsilon))
        )

    def stationary_std(self) -> np.ndarray:
        """Standard deviation of the discretised process at stationarity (before epsilon scaling)."""
        return self._sigma * np.sqrt(self._dt / (2 * self._theta * self._dt - (self._theta * self._dt) ** 2))

    # --- ActionNoise interface ---
    def __call__(self) -> np.ndarray:
        epsilon = self.epsilon
        gaussian = (self._rng or np.random).standard_normal(self.state.shape)
        self.state += self._theta * (self._mu - self.state) * self._dt + self._sigma * np.sqrt(self._dt) * gaussian
        self.num_steps += self.n_envs
        self.last_noise = (epsilon * self.state).astype(self._dtype)
        # One env: the action's shape, like SB3's single-env noises; several: (n_envs, *shape)
        return self.last_noise[0] if self.n_envs == 1 else self.last_noise

    def reset(self, indices: Iterable[int] | None = None) -> None:
        """
        Set the process state back to ``initial_noise`` for all envs, or for those in ``indices`` (an episode ended).
        Epsilon is NOT reset: SB3 calls ``reset()`` at the start of every ``learn()`` too.
        """
        if indices is None:
            self.state[:] = self._initial
        else:
            self.state[list(indices)] = self._initial

    def set_n_envs(self, n_envs: int) -> None:
        """Resize to ``n_envs`` processes (all reset), keeping the epsilon schedule."""
        if int(n_envs) != n_envs or n_envs < 1:
            raise ValueError(f"n_envs must be a positive integer, got {n_envs!r}.")
        self.n_envs = int(n_envs)
        self.state = np.broadcast_to(self._initial, (self.n_envs, *self._initial.shape)).copy()
        self.last_noise = np.zeros_like(self.state, dtype=self._dtype)

    def seed(self, seed: int | None) -> None:
        """Re-seed the noise's own random generator (``None``: draw from NumPy's global generator)."""
        self._rng = None if seed is None else np.random.default_rng(seed)

    def __repr__(self) -> str:
        return (
            f"OrnsteinUhlenbeckNoise(mu={self._mu}, sigma={self._sigma}, theta={self._theta}, dt={self._dt}, "
            f"epsilon={self.epsilon:.4g} [{self.max_epsilon} -> {self.min_epsilon} over {self.epsilon_decay_steps} steps], "
            f"n_envs={self.n_envs})"
        )


# Arguments of OrnsteinUhlenbeckNoise that the algorithm sets (from the action space, its environments and its seed);
# the others are the settings a user or a hyperparameter file chooses (``action_noise_kwargs``)
SET_BY_ALGORITHM = ("action_dim", "n_envs", "seed")
SETTINGS = tuple(name for name in inspect.signature(OrnsteinUhlenbeckNoise).parameters if name not in SET_BY_ALGORITHM)


def check_settings(settings: dict[str, Any] | None) -> None:
    """Refuse unknown ``action_noise_kwargs`` keys (their values are checked when the noise is built)."""
    unknown = sorted(set(settings or {}) - set(SETTINGS))
    if unknown:
        raise ValueError(f"Unknown action_noise_kwargs {unknown}: accepted are {sorted(SETTINGS)}.")


def make_ou_noise(
    action_space: spaces.Space, n_envs: int, seed: int | None, settings: dict[str, Any] | None
) -> OrnsteinUhlenbeckNoise:
    """
    The paper's exploration noise for an action space (Lillicrap et al. 2016, sec. 7: Ornstein-Uhlenbeck, theta 0.15,
    sigma 0.2 unless ``settings`` say otherwise), one process per environment. Used by ``PaperDDPG`` and the zoo.
    """
    check_settings(settings)
    assert action_space.shape is not None  # a Box (PaperDDPG checks the action space first)
    try:
        return OrnsteinUhlenbeckNoise(action_space.shape, n_envs=n_envs, seed=seed, **(settings or {}))
    except (TypeError, ValueError) as error:
        raise ValueError(f"Invalid action_noise_kwargs {settings!r}: {error}") from error
