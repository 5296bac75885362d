"""
Optuna search space for ``-optimize --algo paper_ddpg``: the paper's knobs (Lillicrap et al. 2016, sec. 7).

The sampler follows rl_zoo3's convention: ``sample_*`` suggests values on the trial and returns constructor keyword
arguments through ``convert_*``, which also turns a stored trial's ``params`` back into keyword arguments (used by the
zoo's ``--trial-id``). Parameters that the sampler sets inside ``policy_kwargs`` and ``action_noise_kwargs`` are merged
into those of the hyperparameter file (rl_zoo3 would replace the whole dict), so that e.g. a file's ``net_arch`` or
OU ``dt`` survive tuning.
"""

from collections.abc import Mapping
from typing import Any

import optuna

from sb3_ddpg_paper.ddpg import OU_NOISE

#: Search space, one line per knob: name -> (kind, choices or (low, high)). Paper values in the comments.
SEARCH_SPACE: dict[str, tuple[str, Any]] = {
    "learning_rate": ("log", (1e-5, 1e-3)),  # actor, paper 1e-4
    "qf_learning_rate": ("log", (1e-4, 1e-2)),  # critic, paper 1e-3
    "tau": ("log", (1e-4, 5e-2)),  # paper 1e-3
    "batch_size": ("categorical", [16, 32, 64, 128, 256]),  # paper 64 (16 for pixels)
    "critic_weight_decay": ("categorical", [0.0, 1e-4, 1e-3, 1e-2]),  # paper 1e-2
    "batch_norm": ("categorical", [True, False]),  # paper: on
    "ou_sigma": ("float", (0.05, 0.6)),  # paper 0.2
    "ou_theta": ("log", (0.05, 1.0)),  # paper 0.15
    # Epsilon decay (the reference notebook's; 0 = none, the paper): steps to go from 1 to min_epsilon
    "epsilon_decay_steps": ("categorical", [0, 10_000, 50_000, 200_000, 1_000_000]),
    "min_epsilon": ("float", (0.0, 0.5)),
}


def _suggest(trial: optuna.Trial, name: str) -> Any:
    kind, space = SEARCH_SPACE[name]
    if kind == "categorical":
        return trial.suggest_categorical(name, space)
    return trial.suggest_float(name, *space, log=kind == "log")


def convert_paper_ddpg_params(
    sampled_params: Mapping[str, Any], base_hyperparams: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """
    Turn sampled (or stored) trial parameters into PaperDDPG keyword arguments.

    :param sampled_params: the trial's ``params`` (names of :data:`SEARCH_SPACE`)
    :param base_hyperparams: the hyperparameter file's values; their ``policy_kwargs`` and ``action_noise_kwargs``
        are kept and updated rather than replaced
    :return: keyword arguments for ``PaperDDPG``; exploration is the package's OU noise (``action_noise`` is set to
        ``"ornstein-uhlenbeck"`` so that a file's zoo ``noise_type`` does not shadow the tuned OU parameters)
    """
    base = base_hyperparams or {}
    params = dict(sampled_params)
    policy_kwargs = dict(base.get("policy_kwargs") or {})
    noise_kwargs = dict(base.get("action_noise_kwargs") or {})
    if "batch_norm" in params:
        policy_kwargs["batch_norm"] = params.pop("batch_norm")
    for name, key in (("ou_sigma", "sigma"), ("ou_theta", "theta"), ("min_epsilon", "min_epsilon")):
        if name in params:
            noise_kwargs[key] = params.pop(name)
    if "epsilon_decay_steps" in params:
        noise_kwargs["epsilon_decay_steps"] = int(params.pop("epsilon_decay_steps"))
        noise_kwargs.setdefault("max_epsilon", 1.0)
        noise_kwargs["min_epsilon"] = min(noise_kwargs.get("min_epsilon", 1.0), noise_kwargs["max_epsilon"])
    hyperparams: dict[str, Any] = {**params, "policy_kwargs": policy_kwargs, "action_noise": OU_NOISE}
    if noise_kwargs:
        hyperparams["action_noise_kwargs"] = noise_kwargs
    return hyperparams


def sample_paper_ddpg_params(
    trial: optuna.Trial,
    n_actions: int,
    n_envs: int,
    additional_args: dict[str, Any],
    base_hyperparams: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """
    rl_zoo3 sampler for PaperDDPG (``HYPERPARAMS_SAMPLER["paper_ddpg"]``): actor and critic learning rates, tau,
    batch size, critic weight decay, batch norm on/off, OU sigma and theta, and the epsilon decay.

    :param trial: the Optuna trial
    :param n_actions: action dimension (unused: the OU noise is built by PaperDDPG from the action space)
    :param n_envs: number of environments (unused)
    :param additional_args: rl_zoo3's extras (``using_her_replay_buffer``, ``her_kwargs``)
    :param base_hyperparams: the hyperparameter file's values (see :func:`convert_paper_ddpg_params`)
    :return: keyword arguments for ``PaperDDPG``
    """
    sampled = {name: _suggest(trial, name) for name in SEARCH_SPACE}
    hyperparams = convert_paper_ddpg_params(sampled, base_hyperparams)
    if additional_args.get("using_her_replay_buffer"):
        from rl_zoo3.hyperparams_opt import sample_her_params

        hyperparams = sample_her_params(trial, hyperparams, additional_args["her_kwargs"])
    return hyperparams
