"""Callbacks: the exploration comparison view (the reference notebook's ``ExplorationComparisonLogger`` in SB3's idiom)."""

from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from sb3_ddpg_paper.noise import OrnsteinUhlenbeckNoise


class ExplorationComparisonCallback(BaseCallback):
    """
    Record, while training, the action the actor proposes and the noisy action actually taken, and plot both.

    Every ``record_freq`` environment steps it stores, for environment ``env_index``: the step, the actor's
    deterministic action mu(s_t) (online network, running batch-norm statistics: the network that explores, Lillicrap
    et al. 2016, sec. 3), the action sent to the environment (mu(s_t) + N_t, clipped to the bounds; uniformly random
    during the ``learning_starts`` warm-up), and epsilon when the noise is an
    :class:`~sb3_ddpg_paper.noise.OrnsteinUhlenbeckNoise`. Both actions are in the environment's units.
    The mean absolute difference of the recorded steps is logged as ``rollout/exploration_abs_diff``.

    Recording costs one extra actor forward pass per recorded step (``record_freq=1``: every step).

    :param record_freq: record every ``record_freq`` calls (environment steps of the vectorised env)
    :param env_index: which of the vectorised environments to record
    :param plot_path: if given, write the plot (PNG) there at the end of training
    :param max_records: keep at most this many records (the oldest are dropped)
    :param verbose: verbosity level
    """

    def __init__(
        self,
        record_freq: int = 1,
        env_index: int = 0,
        plot_path: str | Path | None = None,
        max_records: int = 100_000,
        verbose: int = 0,
    ):
        super().__init__(verbose)
        if int(record_freq) != record_freq or record_freq < 1:
            raise ValueError(f"record_freq must be a positive integer, got {record_freq!r}.")
        if int(max_records) != max_records or max_records < 1:
            raise ValueError(f"max_records must be a positive integer, got {max_records!r}.")
        self.record_freq = int(record_freq)
        self.env_index = int(env_index)
        self.plot_path = None if plot_path is None else Path(plot_path)
        self.max_records = int(max_records)
        self.steps: list[int] = []
        self.model_actions: list[np.ndarray] = []
        self.taken_actions: list[np.ndarray] = []
        self.epsilons: list[float] = []

    def _init_callback(self) -> None:
        n_envs = self.training_env.num_envs
        if not 0 <= self.env_index < n_envs:
            raise ValueError(f"env_index must be in [0, {n_envs - 1}] for {n_envs} environments, got {self.env_index}.")

    def _on_step(self) -> bool:
        if self.n_calls % self.record_freq != 0:
            return True
        # At this point of SB3's collect_rollouts the model's _last_obs is still the observation the action was
        # chosen for (it is replaced by the new observation after the callback).
        last_obs = self.model._last_obs
        assert last_obs is not None
        obs = (
            {key: value[self.env_index : self.env_index + 1] for key, value in last_obs.items()}
            if isinstance(last_obs, dict)
            else last_obs[self.env_index : self.env_index + 1]
        )
        model_action, _ = self.model.predict(obs, deterministic=True)  # type: ignore[arg-type]
        noise = self.model.action_noise
        self.steps.append(self.num_timesteps)
        self.model_actions.append(np.asarray(model_action[0], dtype=np.float32).copy())
        self.taken_actions.append(np.asarray(self.locals["actions"][self.env_index], dtype=np.float32).copy())
        self.epsilons.append(noise.epsilon if isinstance(noise, OrnsteinUhlenbeckNoise) else float("nan"))
        if len(self.steps) > self.max_records:
            for records in (self.steps, self.model_actions, self.taken_actions, self.epsilons):
                del records[0]
        diff = np.abs(self.taken_actions[-1] - self.model_actions[-1]).mean()
        self.logger.record_mean("rollout/exploration_abs_diff", float(diff))
        return True

    def _on_training_end(self) -> None:
        if self.plot_path is not None and self.steps:
            self.plot(self.plot_path)

    def as_arrays(self) -> dict[str, np.ndarray]:
        """The records as arrays: ``steps`` (n,), ``model_actions`` and ``taken_actions`` (n, action_dim), ``epsilons``."""
        return {
            "steps": np.asarray(self.steps, dtype=np.int64),
            "model_actions": np.asarray(self.model_actions, dtype=np.float32),
            "taken_actions": np.asarray(self.taken_actions, dtype=np.float32),
            "epsilons": np.asarray(self.epsilons, dtype=np.float64),
        }

    def plot(self, path: str | Path, window: tuple[int, int] | None = None, **savefig_kwargs: Any) -> Path:
        """
        Plot the actor's actions against the actions taken (one panel per action dimension, epsilon on a second axis)
        and save the figure (e.g. PNG). Needs matplotlib.

        :param path: output file
        :param window: optional ``(first_step, last_step)`` range to show
        :param savefig_kwargs: passed to ``Figure.savefig``
        :return: the path written
        """
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        data = self.as_arrays()
        if len(data["steps"]) == 0:
            raise ValueError("Nothing recorded yet: train with this callback before plotting.")
        mask = np.ones(len(data["steps"]), dtype=bool)
        if window is not None:
            mask = (data["steps"] >= window[0]) & (data["steps"] <= window[1])
        steps = data["steps"][mask]
        action_dim = data["model_actions"].shape[1]
        fig, axes = plt.subplots(action_dim, 1, figsize=(10, 2.6 * action_dim + 0.6), sharex=True, squeeze=False)
        for dim, ax in enumerate(axes[:, 0]):
            ax.plot(steps, data["taken_actions"][mask, dim], lw=0.8, color="tab:orange", label="action taken (noisy)")
            ax.plot(steps, data["model_actions"][mask, dim], lw=1.2, color="tab:blue", label="actor mu(s)")
            ax.set_ylabel(f"action[{dim}]")
            if np.isfinite(data["epsilons"]).any():
                eps_ax = ax.twinx()
                eps_ax.plot(steps, data["epsilons"][mask], color="tab:gray", ls="--", lw=1, label="epsilon")
                eps_ax.set_ylabel("epsilon")
                eps_ax.set_ylim(0, max(1.0, float(np.nanmax(data["epsilons"]))) * 1.05)
            if dim == 0:
                ax.legend(loc="upper left", fontsize="small")
        axes[-1, 0].set_xlabel("environment step")
        fig.suptitle("Exploration: actor's action vs. action taken")
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, **savefig_kwargs)
        plt.close(fig)
        return path
