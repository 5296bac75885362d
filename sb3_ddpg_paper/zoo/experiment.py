"""rl_zoo3's ``ExperimentManager`` with PaperDDPG's additions: safe configuration, default file, noise, tuning."""

import functools
import inspect
import os
import random
import time
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import optuna
from rl_zoo3.exp_manager import ExperimentManager
from rl_zoo3.hyperparams_opt import HYPERPARAMS_SAMPLER
from rl_zoo3.utils import ALGOS, SimpleLinearSchedule
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv

from sb3_ddpg_paper.ddpg import OU_NOISE, PaperDDPG
from sb3_ddpg_paper.noise import SETTINGS, OrnsteinUhlenbeckNoise, make_ou_noise
from sb3_ddpg_paper.zoo.safe_config import sanitize_hyperparams
from sb3_ddpg_paper.zoo.tuning import convert_paper_ddpg_params, sample_paper_ddpg_params

ALGO_NAME = "paper_ddpg"
#: The hyperparameter file used for ``--algo paper_ddpg`` when no ``-conf`` is given.
DEFAULT_HYPERPARAMS = Path(__file__).parent / "hyperparams" / f"{ALGO_NAME}.yml"
# Arguments of OrnsteinUhlenbeckNoise a hyperparameter file may set (the others come from the algorithm)
NOISE_KEYS = SETTINGS


def is_paper_ddpg(algo: str) -> bool:
    """Whether the zoo's algorithm key designates PaperDDPG (or a subclass registered under another name)."""
    cls = ALGOS.get(algo)
    return isinstance(cls, type) and issubclass(cls, PaperDDPG)


class HyperparameterError(ValueError):
    """A PaperDDPG hyperparameter of the zoo's configuration that cannot work; nothing has been built yet."""


def _parse_schedule(key: str, value: str) -> SimpleLinearSchedule:
    schedule, _, initial_value = value.partition("_")
    try:
        if schedule != "lin":
            raise ValueError
        return SimpleLinearSchedule(float(initial_value))
    except ValueError:
        accepted = "accepted: a number or 'lin_<initial value>'"
        raise HyperparameterError(f"Invalid value for {key}: {value!r}; {accepted}.") from None


def check_paper_hyperparams(hyperparams: dict[str, Any]) -> None:
    """
    Refuse PaperDDPG noise settings that cannot work, before any environment or model is built.

    :raises HyperparameterError: naming the key and what is accepted
    """
    noise_kwargs = hyperparams.get("action_noise_kwargs")
    if noise_kwargs is not None:
        if not isinstance(noise_kwargs, dict):
            raise HyperparameterError(f"action_noise_kwargs must be a mapping of {list(NOISE_KEYS)}, got {noise_kwargs!r}.")
        unknown = sorted(set(noise_kwargs) - set(NOISE_KEYS))
        if unknown:
            raise HyperparameterError(f"Unknown action_noise_kwargs {unknown}; accepted: {list(NOISE_KEYS)}.")
        if hyperparams.get("noise_type") is not None:
            raise HyperparameterError(
                "Both noise_type (the zoo's SB3 noise) and action_noise_kwargs (the package's Ornstein-Uhlenbeck noise) "
                "are set: keep one of them."
            )


def prepare_rdb_storage(url: str, attempts: int = 5) -> None:
    """
    Create Optuna's tables in a database (PostgreSQL, MySQL, ...) with retries: workers that start at the same time on
    an empty database race to create them, and the loser gets an integrity error from the server.
    """
    for attempt in range(attempts):
        try:
            optuna.storages.RDBStorage(url)
            return
        except Exception:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 + random.random() * (attempt + 1))


class PaperExperimentManager(ExperimentManager):
    """
    rl_zoo3's experiment manager, unchanged for every algorithm except in these points:

    - every value the zoo would ``eval()`` or import by name is checked first (:mod:`sb3_ddpg_paper.zoo.safe_config`),
      for all algorithms: a refused value stops the run before anything is built;
    - ``--algo paper_ddpg`` reads the package's ``paper_ddpg.yml`` unless ``-conf`` is given;
    - ``qf_learning_rate`` accepts ``lin_<value>`` schedules like ``learning_rate``;
    - continuing training (``-i``) keeps the epsilon schedule of the package's OU noise where it was;
    - ``-optimize --algo paper_ddpg`` stores the study in a journal file in the log folder unless ``--storage`` is
      given, and names it ``<algo>_<env>`` unless ``--study-name`` is given, so that several workers share it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        bound = inspect.signature(ExperimentManager.__init__).bind(self, *args, **kwargs)
        super().__init__(*args, **kwargs)
        if bound.arguments.get("config") is None and is_paper_ddpg(self.algo):
            self.config = str(DEFAULT_HYPERPARAMS)
        if self.optimize_hyperparameters and is_paper_ddpg(self.algo):
            if self.study_name is None:
                self.study_name = f"{self.algo}_{self.env_name}"
            if self.storage is None:
                # Embedded storage (no server): a journal file, safe for several processes on this machine
                self.storage = os.path.join(self.log_folder, self.algo, "optuna", f"{self.env_name}.log")
            print(f"Optuna study {self.study_name!r} in {self.storage}")

    # ------------------------------------------------------------------ reading the file
    def read_hyperparameters(self) -> tuple[dict[str, Any], dict[str, Any]]:
        # Trial parameters (--trial-id) are merged here, after the file, so that the file's policy_kwargs survive
        trial_id, self.trial_id = self.trial_id, None
        try:
            hyperparams, saved_hyperparams = super().read_hyperparameters()
        finally:
            self.trial_id = trial_id
        if self.storage and self.study_name and self.trial_id and is_paper_ddpg(self.algo):
            print("Loading from Optuna study...")
            params = self.load_trial(self.storage, self.study_name, self.trial_id, convert=False)
            hyperparams.update(convert_paper_ddpg_params(params, sanitize_hyperparams(hyperparams)))
            hyperparams.update(self.custom_hyperparams or {})
            saved_hyperparams = OrderedDict([(key, hyperparams[key]) for key in sorted(hyperparams)])
        elif self.storage and self.study_name and self.trial_id:
            print("Loading from Optuna study...")
            hyperparams.update(self.load_trial(self.storage, self.study_name, self.trial_id))
            hyperparams.update(self.custom_hyperparams or {})
            saved_hyperparams = OrderedDict([(key, hyperparams[key]) for key in sorted(hyperparams)])
        # The saved config.yml keeps the strings as written; the zoo only ever sees their safely parsed values
        hyperparams = sanitize_hyperparams(hyperparams)
        if is_paper_ddpg(self.algo):
            check_paper_hyperparams(hyperparams)
        return hyperparams, saved_hyperparams

    @staticmethod
    def _preprocess_schedules(hyperparams: dict[str, Any]) -> dict[str, Any]:
        hyperparams = ExperimentManager._preprocess_schedules(hyperparams)
        # The critic's learning rate (PaperDDPG) takes the same "lin_<value>" schedules as learning_rate
        if isinstance(hyperparams.get("qf_learning_rate"), str):
            hyperparams["qf_learning_rate"] = _parse_schedule("qf_learning_rate", hyperparams["qf_learning_rate"])
        return hyperparams

    # ------------------------------------------------------------------ continuing training
    def _load_pretrained_agent(self, hyperparams: dict[str, Any], env: VecEnv) -> BaseAlgorithm:
        if not is_paper_ddpg(self.algo):
            return super()._load_pretrained_agent(hyperparams, env)
        # The zoo hands every file key to load(), which would replace the saved noise by a fresh one (epsilon back to
        # max_epsilon). The package's OU noise is rebuilt from the file's settings instead, continuing the schedule.
        noise_kwargs = hyperparams.pop("action_noise_kwargs", None)
        wants_paper_noise = hyperparams.get("action_noise") == OU_NOISE or (
            noise_kwargs is not None and "action_noise" not in hyperparams
        )
        if hyperparams.get("action_noise") == OU_NOISE:
            del hyperparams["action_noise"]
        critic_weight_decay = hyperparams.pop("critic_weight_decay", None)
        model = super()._load_pretrained_agent(hyperparams, env)
        assert isinstance(model, PaperDDPG)
        saved_decay = model.policy_kwargs.get("critic_weight_decay")
        if critic_weight_decay is not None and critic_weight_decay != saved_decay:
            warnings.warn(
                f"critic_weight_decay={critic_weight_decay} in the hyperparameters is ignored when continuing training: "
                f"the loaded critic optimizer keeps its weight decay ({saved_decay})."
            )
        if wants_paper_noise:
            saved_noise = model.action_noise
            noise = make_ou_noise(model.action_space, model.n_envs, model.seed, noise_kwargs)
            if isinstance(saved_noise, OrnsteinUhlenbeckNoise):
                noise.num_steps = saved_noise.num_steps
            model.action_noise = noise
            model.action_noise_kwargs = noise_kwargs
            print(f"Exploration noise: {noise} (epsilon schedule continued from the loaded model)")
        return model

    # ------------------------------------------------------------------ tuning
    def hyperparameters_optimization(self) -> None:
        if self.storage is not None and "://" in self.storage and not self.storage.startswith("sqlite"):
            prepare_rdb_storage(self.storage)
        if is_paper_ddpg(self.algo):
            # The sampler merges its policy_kwargs / action_noise_kwargs into the file's instead of replacing them
            HYPERPARAMS_SAMPLER[self.algo] = functools.partial(sample_paper_ddpg_params, base_hyperparams=self._hyperparams)
        super().hyperparameters_optimization()
