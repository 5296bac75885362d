"""
Checks of what users hand to ``PaperDDPG``: spaces, hyperparameters, memory, and the data that flows in.

Every check raises before anything is allocated or damaged, with a message that names the real cause and what is
accepted (docs/reliability.md).
"""

import math
from numbers import Integral, Real
from typing import Any

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.noise import ActionNoise

from sb3_ddpg_paper.noise import check_settings as check_noise_settings

OU_NOISE = "ornstein-uhlenbeck"


class SpaceError(ValueError, AssertionError):
    """
    An action or observation space that PaperDDPG cannot handle. A ``ValueError`` (this package's convention for bad
    input) and an ``AssertionError`` (how SB3 signals unsupported spaces), so that code written for either catches it.
    """


# ------------------------------------------------------------------------------------------------ numbers
def is_integer(value: Any) -> bool:
    """A Python or NumPy integer, not a bool."""
    return isinstance(value, Integral) and not isinstance(value, bool | np.bool_)


def is_number(value: Any) -> bool:
    """A finite real Python or NumPy number, not a bool."""
    return isinstance(value, Real) and not isinstance(value, bool | np.bool_) and bool(np.isfinite(float(value)))


def python_scalar(value: Any) -> Any:
    """A NumPy scalar as the Python number it holds (SB3 expects Python numbers), anything else as it is."""
    return value.item() if isinstance(value, np.generic) else value


def check_int(name: str, value: Any, minimum: int) -> None:
    if not is_integer(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")


def check_number(name: str, value: Any, low: float, high: float, accepted: str) -> None:
    """``value`` is a real number in ``[low, high]``; ``accepted`` describes the range in the message."""
    if not is_number(value) or not low <= value <= high:
        raise ValueError(f"{name} must be {accepted}, got {value!r}.")


def check_positive_number_or_schedule(name: str, value: Any) -> None:
    if callable(value):
        return
    if not is_number(value) or not value > 0:
        raise ValueError(f"{name} must be a positive number or a schedule (callable), got {value!r}.")


# ------------------------------------------------------------------------------------------------ hyperparameters
def check_hyperparameters(**hp: Any) -> None:
    """Refuse out-of-range hyperparameters before anything is built, naming the parameter and what is accepted."""
    check_positive_number_or_schedule("learning_rate", hp["learning_rate"])
    check_positive_number_or_schedule("qf_learning_rate", hp["qf_learning_rate"])
    check_int("buffer_size", hp["buffer_size"], 1)
    check_int("learning_starts", hp["learning_starts"], 0)
    check_int("batch_size", hp["batch_size"], 1)
    check_int("n_steps", hp["n_steps"], 1)
    check_int("target_update_interval", hp["target_update_interval"], 1)
    for name in ("actor_target_update_interval", "critic_target_update_interval"):
        if hp[name] is not None:
            check_int(name, hp[name], 1)
    check_int("gradient_steps", hp["gradient_steps"], -1)
    check_train_freq(hp["train_freq"])
    if not is_number(hp["tau"]) or not 0 < hp["tau"] <= 1:
        raise ValueError(f"tau must be in (0, 1] (1: hard copy, i.e. no target networks), got {hp['tau']!r}.")
    check_number("gamma", hp["gamma"], 0, 1, "in [0, 1]")
    check_number("critic_weight_decay", hp["critic_weight_decay"], 0, np.inf, "a number >= 0")
    check_action_noise(hp["action_noise"], hp["action_noise_kwargs"])
    policy_kwargs = hp["policy_kwargs"] or {}
    if "critic_weight_decay" in policy_kwargs:
        raise ValueError("Set critic_weight_decay as an argument of PaperDDPG, not in policy_kwargs.")
    if policy_kwargs.get("n_critics", 1) != 1:
        raise ValueError(
            f"PaperDDPG trains one critic, as the paper does; got policy_kwargs n_critics={policy_kwargs['n_critics']!r} "
            "(several critics are for SB3's TD3, which can use PaperDDPGPolicy)."
        )


def check_train_freq(train_freq: Any) -> None:
    if is_integer(train_freq) and train_freq >= 1:
        return
    if (
        isinstance(train_freq, tuple | list)
        and len(train_freq) == 2
        and is_integer(train_freq[0])
        and train_freq[0] >= 1
        and train_freq[1] in ("step", "episode")
    ):
        return
    raise ValueError(f"train_freq must be an integer >= 1 or a tuple like (5, 'step') or (2, 'episode'), got {train_freq!r}.")


def check_action_noise(noise: Any, noise_kwargs: dict[str, Any] | None) -> None:
    if not (noise is None or noise == OU_NOISE or isinstance(noise, ActionNoise)):
        raise ValueError(f"action_noise must be an SB3 ActionNoise, {OU_NOISE!r} (the paper's) or None, got {noise!r}.")
    if not noise_kwargs:
        return
    if noise != OU_NOISE:
        raise ValueError(f"action_noise_kwargs is only used with action_noise={OU_NOISE!r}, got action_noise={noise!r}.")
    check_noise_settings(noise_kwargs)


# ------------------------------------------------------------------------------------------------ spaces
def check_action_space(action_space: spaces.Space) -> None:
    if not isinstance(action_space, spaces.Box):
        raise SpaceError(
            f"PaperDDPG needs a continuous (gymnasium.spaces.Box) action space with finite bounds; got {action_space}. "
            "For discrete actions use e.g. SB3's DQN; for Dict or Tuple actions, wrap the environment so that "
            "its actions form one Box."
        )
    if not (np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))):
        raise SpaceError(
            f"PaperDDPG needs finite action bounds (the actor's tanh output is rescaled to [low, high]); "
            f"got {action_space}. Wrap the environment so that its action space has finite low and high bounds."
        )


def check_observation_space(observation_space: spaces.Space) -> None:
    flat = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)
    where = ""
    if isinstance(observation_space, spaces.Dict):
        nested = [key for key, space in observation_space.spaces.items() if not isinstance(space, flat)]
        if not nested:
            return
        where, observation_space = f" (key {nested[0]!r} of the Dict)", observation_space[nested[0]]
    elif isinstance(observation_space, flat):
        return
    raise SpaceError(
        f"PaperDDPG cannot take observations from the space {observation_space}{where}: accepted are Box, Discrete, "
        "MultiDiscrete, MultiBinary, or a Dict of these (not nested). Wrap the environment, e.g. with "
        "gymnasium.wrappers.FlattenObservation for a Tuple space."
    )


# ------------------------------------------------------------------------------------------------ memory
def _space_nbytes(space: spaces.Space) -> int:
    if isinstance(space, spaces.Dict):
        return sum(_space_nbytes(subspace) for subspace in space.spaces.values())
    return int(np.prod(space.shape or (1,))) * np.dtype(space.dtype or np.float32).itemsize


def _available_memory() -> int | None:
    """Bytes of memory available to new allocations (psutil if installed, else /proc/meminfo), None if unknown."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_replay_buffer_fits(
    buffer_size: int, observation_space: spaces.Space, action_space: spaces.Space, optimize_memory_usage: bool, n_envs: int
) -> None:
    """
    Refuse a replay buffer larger than the available memory. SB3 allocates it lazily (np.zeros) and only warns when
    psutil is installed, so an oversized pixel buffer would otherwise crash hours into training when it fills up.
    """
    n_transitions = max(buffer_size // n_envs, 1) * n_envs
    # observations (s and s', or s only with optimize_memory_usage), actions, rewards, dones and timeouts (float32)
    per_transition = (1 if optimize_memory_usage else 2) * _space_nbytes(observation_space)
    per_transition += _space_nbytes(action_space) + 3 * 4
    needed, available = n_transitions * per_transition, _available_memory()
    if available is not None and needed > available:
        fits = max(available // per_transition, 1)
        raise ValueError(
            f"The replay buffer would need {needed / 1e9:.1f} GB ({n_transitions} transitions of {per_transition} bytes) "
            f"but only {available / 1e9:.1f} GB of memory is available. Pass a smaller buffer_size (at most about {fits}, "
            "leaving room for the rest), e.g. PaperDDPG(..., buffer_size=50_000) or, when loading a model, "
            "PaperDDPG.load(path, buffer_size=...)."
        )


# ------------------------------------------------------------------------------------------------ data
def non_finite_entries(values: Any, batched: bool = True) -> tuple[int, str] | None:
    """
    ``(environment index, where)`` of the first NaN or inf in float values (an array or a dict of arrays; ``where``
    names the dict key and the entry), ``None`` when all are finite.
    """
    for key, array in values.items() if isinstance(values, dict) else ((None, values),):
        array = np.asarray(array)
        if array.dtype.kind != "f" or np.isfinite(array).all():
            continue
        batch = array if batched else array[np.newaxis]
        bad = np.argwhere(~np.isfinite(batch))
        first = tuple(int(i) for i in bad[0])
        key_part = "" if key is None else f"key {key!r}, "
        return first[0], f"{len(bad)} non-finite value(s), the first {batch[first]} at {key_part}index {list(first[1:])}"
    return None


def raise_if_non_finite(what: str, values: Any, num_timesteps: int, env_index: int | None = None) -> None:
    bad = non_finite_entries(values, batched=env_index is None)
    if bad is None:
        return
    env_index = bad[0] if env_index is None else env_index
    raise ValueError(
        f"Environment {env_index} returned a non-finite {what} (NaN or inf) in the step that brought num_timesteps to "
        f"{num_timesteps} ({bad[1]}). Training stopped before this transition entered the replay buffer: the networks, "
        "optimizers and replay buffer are as they were before it. PaperDDPG accepts only finite observations and "
        "rewards; SB3's VecCheckNan wrapper helps find where they come from."
    )


def check_losses_finite(critic_loss: float, actor_loss: float, n_updates: int) -> None:
    """Stop training when a loss is NaN or infinite, naming the optimisation as the cause (the data is checked)."""
    if not (math.isfinite(critic_loss) and math.isfinite(actor_loss)):
        raise ValueError(
            f"The losses became non-finite (critic {critic_loss}, actor {actor_loss}) by update {n_updates}: training "
            "diverged. The replay buffer holds finite data only (it is checked as it fills), so the cause is in the "
            "optimisation: lower the learning rates, scale the rewards, or keep batch norm's batch size large enough."
        )
