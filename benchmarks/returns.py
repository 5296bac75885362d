"""
Learning-curve matrix: PaperDDPG (paper defaults and the paper's Figure-2 ablations) against SB3's DDPG and TD3.

Every (configuration, environment, seed) cell is a Ray Tune trial with one CPU and one torch thread, run on this
machine (a local Ray, started by the command itself) or on a Ray cluster (``--address``), as many at once as there
are CPUs or ``--max-concurrent``. Each run is evaluated without exploration noise every ``eval_freq`` environment
steps (and at step 0) on ``n_eval_episodes`` episodes of a separate environment seeded identically at every
evaluation, and hands Tune a crash-safe checkpoint every ``checkpoint_freq`` steps (default: at every evaluation; the
newest is kept). Tune retries a failed run from its last checkpoint, and rerunning the same command restores an
interrupted matrix: unfinished runs continue from their last checkpoint, exactly as if never interrupted (on CPU).
A finished run's evaluations reach the driver in its last Tune checkpoint and are written there, as the run
completes, to ONE CSV file (atomically: temporary file + rename); a run whose last evaluation in the CSV is at its
budget is not submitted again.

    python benchmarks/returns.py run                       # the full matrix (hours), then the report
    python benchmarks/returns.py run --envs Pendulum-v1 --configs paper,paper-no-bn --seeds 0,1,2
    python benchmarks/returns.py run --address auto        # the same, on the Ray cluster this machine belongs to
    python benchmarks/returns.py report                    # plots and tables from the CSV alone
    python benchmarks/returns.py list                      # the matrix and what is done

Outputs (``--out``, default ``docs/results``): ``returns.csv`` (one row per evaluation point), one
``curve-<env>.png`` per environment (mean over seeds, band: min to max) and ``tables.md`` (final return mean +- std over
seeds, area under the curve, wall time and training steps/s per run), and ``models/<config>_<env>_<seed>.zip``: each
finished run's trained model (``model.save``; see ``benchmarks/rollout.py``). Tune's experiment (trial checkpoints and state)
lives in ``--storage`` (default: ``.tune`` next to the CSV) until all its runs are in the CSV.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs
import ray
from ray import tune

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "docs" / "results"
CSV_NAME = "returns.csv"
STORAGE_NAME = ".tune"  # Tune's storage by default: next to the CSV
ROWS_NAME = "rows.json"  # in a trial's Tune checkpoint: its evaluations up to the checkpoint
FINAL_MODEL_NAME = "model.zip"  # in a finished trial's last Tune checkpoint: the trained model (model.save)
MODELS_NAME = "models"  # next to the CSV: each finished run's trained model, <config>_<env>_<seed>.zip
# Test hook (tests/test_benchmark_returns.py): set in the trials' environment, it makes the first attempt of every
# trial die right after it has handed Tune its first checkpoint.
KILL_AFTER_FIRST_CHECKPOINT = "RETURNS_TEST_KILL_AFTER_FIRST_CHECKPOINT"
FIELDS = ["config", "env", "seed", "budget", "step", "eval_mean", "eval_std", "train_seconds"]


# ----------------------------------------------------------------------------------------------------- the matrix
@dataclasses.dataclass(frozen=True)
class Config:
    """One algorithm configuration of the matrix: ``algo`` is ``paper``, ``sb3-ddpg`` or ``sb3-td3``."""

    algo: str
    description: str
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    policy_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    gaussian_noise: float | None = None  # SB3 algorithms: NormalActionNoise sigma (fraction of the action range)


CONFIGS: dict[str, Config] = {
    "paper": Config("paper", "PaperDDPG, paper defaults (Lillicrap et al. 2016, sec. 7)"),
    # The paper's Figure 2 ablations ("original DDPG minus ...")
    "paper-no-bn": Config("paper", "PaperDDPG without batch norm", policy_kwargs={"batch_norm": False}),
    "paper-no-target": Config("paper", "PaperDDPG without target networks (tau = 1)", kwargs={"tau": 1.0}),
    "paper-action-input": Config("paper", "PaperDDPG, action at the critic's input layer", policy_kwargs={"action_layer": 0}),
    "paper-ou-dt0.01": Config(
        "paper", "PaperDDPG, OU noise with dt = 0.01 (SB3's default)", kwargs={"action_noise_kwargs": {"dt": 0.01}}
    ),
    "paper-running-target-bn": Config(
        "paper", "PaperDDPG, targets normalise with running BN statistics", policy_kwargs={"target_batch_norm": "running"}
    ),
    # Not in the default matrix: a diagnostic for where the paper's configuration loses (docs/results.md), run with
    # --configs paper-no-weight-decay --envs <env>
    "paper-no-weight-decay": Config(
        "paper", "PaperDDPG without the critic's L2 weight decay", kwargs={"critic_weight_decay": 0.0}
    ),
    # Not in the default matrix: the warm-up length against SB3's default (docs/results.md, "Warm-up"), run with
    # --configs paper,paper-learning-starts-100 --envs Pendulum-v1,InvertedPendulum-v5
    "paper-learning-starts-100": Config(
        "paper", "PaperDDPG, learning_starts=100 (SB3's default)", kwargs={"learning_starts": 100}
    ),
    # What users would pick otherwise: SB3's own defaults, with the Gaussian exploration noise of SB3's documentation
    # examples and the RL Zoo (sigma 0.1; SB3's default is no noise at all).
    "sb3-ddpg": Config("sb3-ddpg", "SB3 DDPG defaults + Gaussian noise 0.1", gaussian_noise=0.1),
    "sb3-td3": Config("sb3-td3", "SB3 TD3 defaults + Gaussian noise 0.1", gaussian_noise=0.1),
}

# env id -> (budget in environment steps, evaluation interval)
ENVS: dict[str, tuple[int, int]] = {
    "Pendulum-v1": (30_000, 2_000),
    "InvertedPendulum-v5": (50_000, 2_500),
    "Reacher-v5": (100_000, 5_000),
    "HalfCheetah-v5": (150_000, 10_000),
    "Hopper-v5": (150_000, 10_000),
}
MAIN_CONFIGS = ["paper", "sb3-ddpg", "sb3-td3"]
ABLATIONS = ["paper-no-bn", "paper-no-target", "paper-action-input", "paper-ou-dt0.01", "paper-running-target-bn"]


def seeds_for(env_id: str) -> list[int]:
    return list(range(5)) if env_id == "Pendulum-v1" else list(range(3))


def default_matrix() -> list[tuple[str, str]]:
    """(config, env) cells: main configs on every env, ablations on Pendulum and InvertedPendulum, no-BN on HalfCheetah."""
    cells = [(config, env) for env in ENVS for config in MAIN_CONFIGS]
    cells += [(config, env) for env in ("Pendulum-v1", "InvertedPendulum-v5") for config in ABLATIONS]
    cells.append(("paper-no-bn", "HalfCheetah-v5"))
    return cells


@dataclasses.dataclass(frozen=True)
class Run:
    config: str
    env: str
    seed: int
    budget: int
    eval_freq: int
    n_eval_episodes: int = 10
    checkpoint_freq: int | None = None  # default: at every evaluation

    def __post_init__(self) -> None:
        if self.checkpoint_freq is not None and (self.checkpoint_freq <= 0 or self.checkpoint_freq % self.eval_freq):
            raise ValueError(
                f"The checkpoint interval ({self.checkpoint_freq}) must be a multiple of the evaluation interval of "
                f"{self.env} ({self.eval_freq}): checkpoints are taken at evaluations."
            )

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.config, self.env, self.seed)


def plan(
    configs: Sequence[str] | None = None,
    envs: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    steps: int | None = None,
    eval_freq: int | None = None,
    n_eval_episodes: int = 10,
    checkpoint_freq: int | None = None,
) -> list[Run]:
    """
    The runs of the default matrix, optionally restricted (configs, envs, seeds) or resized (steps, eval_freq).

    :param checkpoint_freq: the checkpoint interval of every run, a multiple of its evaluation interval (default: the
        evaluation interval)
    """
    for name in configs or []:
        if name not in CONFIGS:
            raise ValueError(f"Unknown config {name!r}: expected one of {sorted(CONFIGS)}.")
    cells = default_matrix()
    if configs:
        cells = [(c, e) for c, e in cells if c in configs]
        # A config asked for explicitly also runs on an explicitly asked env outside the default matrix
        if envs:
            cells += [(c, e) for c in configs for e in envs if (c, e) not in cells]
    if envs:
        cells = [(c, e) for c, e in cells if e in envs]
    runs = []
    for config, env in cells:
        budget, freq = ENVS.get(env, (steps or 0, eval_freq or 0))
        budget, freq = steps or budget, eval_freq or freq
        if budget <= 0 or freq <= 0:
            raise ValueError(f"No budget known for {env!r}: pass --steps and --eval-freq.")
        for seed in seeds if seeds is not None else seeds_for(env):
            runs.append(Run(config, env, seed, budget, freq, n_eval_episodes, checkpoint_freq))
    return runs


# --------------------------------------------------------------------------------------------------- one run
def make_model(config: Config, env: Any, seed: int) -> Any:
    """Build the algorithm of a configuration (imported here: the driver needs no torch)."""
    if config.algo == "paper":
        from sb3_ddpg_paper import PaperDDPG

        # The policy from the observation space: MlpPolicy for states, the paper's CnnPolicy for pixels
        return PaperDDPG(env=env, seed=seed, policy_kwargs=dict(config.policy_kwargs) or None, **config.kwargs)
    from stable_baselines3 import DDPG, TD3
    from stable_baselines3.common.noise import NormalActionNoise

    algo_class = {"sb3-ddpg": DDPG, "sb3-td3": TD3}[config.algo]
    n_actions = env.action_space.shape[0]
    noise = None
    if config.gaussian_noise is not None:
        noise = NormalActionNoise(np.zeros(n_actions), config.gaussian_noise * np.ones(n_actions))
    return algo_class(
        "MlpPolicy", env, seed=seed, action_noise=noise, policy_kwargs=dict(config.policy_kwargs) or None, **config.kwargs
    )


def evaluate(model: Any, eval_env: Any, n_episodes: int, seed: int) -> tuple[float, float]:
    """Mean and std return of ``n_episodes`` without exploration noise, from the same start states every time."""
    from stable_baselines3.common.evaluation import evaluate_policy

    eval_env.seed(seed)
    returns, _ = evaluate_policy(model, eval_env, n_eval_episodes=n_episodes, deterministic=True, return_episode_rewards=True)
    return float(np.mean(returns)), float(np.std(returns))  # what evaluate_policy returns without return_episode_rewards


def algorithm_class(config: Config) -> Any:
    if config.algo == "paper":
        from sb3_ddpg_paper import PaperDDPG

        return PaperDDPG
    from stable_baselines3 import DDPG, TD3

    return {"sb3-ddpg": DDPG, "sb3-td3": TD3}[config.algo]


def _metrics(row: dict[str, Any]) -> dict[str, Any]:
    """What Tune shows of an evaluation."""
    return {name: row[name] for name in ("step", "eval_mean", "eval_std", "train_seconds")}


def train_run(config: dict[str, Any]) -> None:
    """
    Train one run of the matrix: a Tune function trainable, ``config["run"]`` holding the fields of a :class:`Run`.

    Each evaluation is reported to Tune. Every ``checkpoint_freq`` steps the run writes a crash-safe checkpoint
    (:mod:`sb3_ddpg_paper.checkpoints`: model, optimizers, replay buffer, RNGs, noise, and the environment mid-episode,
    MuJoCo physics included) and reports it to Tune with its evaluations so far. A trial that Tune retries (after a
    failure) or restores (after an interruption) continues from that checkpoint exactly as the uninterrupted run would
    have (on CPU). The last report's checkpoint holds the evaluation rows alone: the driver puts them into the CSV
    (:class:`RecordRuns`), and a finished run that Tune starts again only reports them again. ``train_seconds`` counts
    training only: not evaluations, checkpoints, or the time between an interruption and the resume.
    """
    import torch as th

    th.set_num_threads(1)
    # Every configuration runs with denormals flushed to zero: without it, Adam's moments of units whose gradient is
    # zero decay into the denormal range and every update becomes several times slower (SB3's algorithms too).
    th.set_flush_denormal(True)
    run = Run(**config["run"])
    # In the trial's working directory (in Ray's session directory on this node), which also keeps what a killed
    # attempt leaves behind
    with tempfile.TemporaryDirectory(dir=tune.get_context().get_trial_dir()) as tmp:
        work_dir = Path(tmp)  # the newest checkpoint and the evaluations up to it: a Tune checkpoint
        checkpoint = tune.get_checkpoint()
        rows: list[dict[str, Any]] = []
        if checkpoint is not None:
            checkpoint.to_directory(work_dir)
            rows = json.loads((work_dir / ROWS_NAME).read_text())
        if not rows or rows[-1]["step"] != run.budget:
            _train(run, work_dir, rows)
        final = work_dir / "final"
        final.mkdir()
        (final / ROWS_NAME).write_text(json.dumps(rows))
        if (work_dir / FINAL_MODEL_NAME).exists():  # saved by _train, or restored with a finished run's checkpoint
            shutil.copy(work_dir / FINAL_MODEL_NAME, final / FINAL_MODEL_NAME)
        tune.report(_metrics(rows[-1]), checkpoint=tune.Checkpoint.from_directory(final))


def _train(run: Run, work_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Train from the checkpoint in ``work_dir`` (when ``rows`` are given) or from scratch, appending the evaluations."""
    import gymnasium as gym
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    from sb3_ddpg_paper.checkpoints import CrashSafeCheckpointCallback, load_checkpoint

    config = CONFIGS[run.config]
    checkpoint_freq = run.checkpoint_freq or run.eval_freq
    eval_env = DummyVecEnv([lambda: Monitor(gym.make(run.env))])
    eval_seed = 10_000 + run.seed
    resumed = bool(rows)
    if resumed:
        model = load_checkpoint(work_dir, algorithm_class=algorithm_class(config))
    else:
        model = make_model(config, gym.make(run.env), run.seed)
    clock = {"train": rows[-1]["train_seconds"] if rows else 0.0, "since": 0.0}

    def record(step: int) -> None:
        clock["train"] += time.perf_counter() - clock["since"]
        mean, std = evaluate(model, eval_env, run.n_eval_episodes, eval_seed)
        values = [run.config, run.env, run.seed, run.budget, step, mean, std, clock["train"]]
        rows.append(dict(zip(FIELDS, values, strict=True)))
        if step % checkpoint_freq != 0:  # else reported with the checkpoint of this step (at the next rollout start)
            tune.report(_metrics(rows[-1]))
        clock["since"] = time.perf_counter()

    class EvalEvery(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps % run.eval_freq == 0:
                record(self.num_timesteps)
            return True

    class Checkpoints(CrashSafeCheckpointCallback):
        def save(self) -> Path:
            started = time.perf_counter()
            path = super().save()  # keep_last=1: the directory holds this checkpoint only
            (self.directory / ROWS_NAME).write_text(json.dumps(rows))
            tune.report(_metrics(rows[-1]), checkpoint=tune.Checkpoint.from_directory(self.directory))
            if os.environ.get(KILL_AFTER_FIRST_CHECKPOINT) and not resumed:
                os._exit(1)
            clock["since"] += time.perf_counter() - started  # not training time
            return path

        def _on_training_end(self) -> None:
            pass  # no checkpoint at the end: the last checkpoint of a finished run holds its evaluations alone

    clock["since"] = time.perf_counter()
    if not rows:  # a new run: evaluate the untrained policy
        record(0)
    callbacks = [EvalEvery(), Checkpoints(work_dir, save_freq=checkpoint_freq, keep_last=1)]
    if model.num_timesteps < run.budget:
        model.learn(run.budget - model.num_timesteps, callback=callbacks, reset_num_timesteps=not resumed)
    if rows[-1]["step"] != run.budget:
        record(run.budget)
    model.save(work_dir / FINAL_MODEL_NAME)  # the trained model, for the driver to keep (RecordRuns)
    assert model.env is not None
    model.env.close()
    eval_env.close()


# ----------------------------------------------------------------------------------------------- the matrix on Ray
def file_name(env_id: str) -> str:
    """An env id as a file name (``sb3_ddpg_paper/PixelPendulum-v1`` -> ``sb3_ddpg_paper-PixelPendulum-v1``)."""
    return env_id.replace("/", "-")


def _trial_name(trial: Any) -> str:
    """A trial's name and directory: its run's key."""
    run = trial.config["run"]
    return f"{run['config']}_{file_name(run['env'])}_{run['seed']}"


def experiment_name(runs: Sequence[Run], csv_path: Path) -> str:
    """The name of a matrix's Tune experiment (from its runs and its CSV): the same command finds it again."""
    matrix = json.dumps([str(csv_path.resolve()), *map(dataclasses.asdict, runs)])
    return f"returns-{hashlib.sha256(matrix.encode()).hexdigest()[:12]}"


def experiment_path(runs: Sequence[Run], csv_path: Path, storage: str) -> str:
    """Where Tune keeps that experiment: ``<storage>/<name>`` (a path or a URI)."""
    return f"{storage.rstrip('/')}/{experiment_name(runs, csv_path)}"


def checkpoint_steps(experiment: str) -> dict[tuple[str, str, int], int]:
    """The step of each run's last checkpoint in an interrupted experiment (read from its storage; Ray is not started)."""
    if not tune.Tuner.can_restore(experiment):
        return {}
    results = tune.Tuner.restore(experiment, train_run).get_results()
    return {Run(**r.config["run"]).key: r.best_checkpoints[-1][1]["step"] for r in results if r.best_checkpoints}


def model_path(csv_path: Path, run: Run) -> Path:
    """Where a finished run's trained model is kept: ``models/<config>_<env>_<seed>.zip`` next to the CSV."""
    return csv_path.parent / MODELS_NAME / f"{run.config}_{file_name(run.env)}_{run.seed}.zip"


class RecordRuns(tune.Callback):
    """
    Put each finished run into the CSV, on the driver (the trials may run on other machines of a cluster), and its
    trained model into ``models/<config>_<env>_<seed>.zip`` next to the CSV (e.g. for ``benchmarks/rollout.py``).
    """

    def __init__(self, csv_path: Path):
        self.csv_path = csv_path

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        run = Run(**trial.config["run"])
        with trial.checkpoint.as_directory() as directory:  # the trial's last checkpoint: its evaluations and model
            rows = json.loads((Path(directory) / ROWS_NAME).read_text())
            trained = Path(directory) / FINAL_MODEL_NAME
            if trained.exists():
                target = model_path(self.csv_path, run)
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_name(f".{target.name}.tmp")
                shutil.copy(trained, partial)
                partial.replace(target)  # whole or not at all
        record_run(self.csv_path, run.key, rows)
        seconds = rows[-1]["train_seconds"]
        retries = f", retried after {trial.num_failures} failure(s)" if trial.num_failures else ""
        print(
            f"done {run.key}: final {rows[-1]['eval_mean']:.1f} after {run.budget} steps, "
            f"{seconds:.0f}s training ({run.budget / max(seconds, 1e-9):.0f} steps/s){retries}"
        )


def run_matrix(
    runs: list[Run],
    csv_path: Path,
    storage: str,
    max_concurrent: int | None = None,
    max_failures: int = 3,
) -> list[str]:
    """
    Run, on the Ray this process is connected to, the runs that the CSV does not have yet, one CPU each; return the
    runs that did not finish.

    The first call starts a Tune experiment under ``storage``; after an interruption, the same call restores it:
    finished runs are kept, the others continue from their last checkpoint (failed ones too). The experiment is
    deleted once all its runs are in the CSV.

    :param storage: Tune's storage path (on a cluster: a directory every node shares, or a cloud URI)
    :param max_concurrent: runs at once (default: as many as the cluster has CPUs). A restored experiment keeps the
        value it started with, as it keeps ``max_failures``
    :param max_failures: retries of a failed run, each from its last checkpoint
    """
    done = completed(read_rows(csv_path))
    todo = [run for run in runs if run.key not in done]
    print(f"{len(runs)} runs in the matrix, {len(runs) - len(todo)} already done, {len(todo)} to run")
    if not todo:
        return []
    experiment = experiment_path(runs, csv_path, storage)
    trainable = tune.with_resources(train_run, {"cpu": 1})
    if tune.Tuner.can_restore(experiment):
        print(f"resuming the interrupted experiment {experiment}")
        tuner = tune.Tuner.restore(experiment, trainable, resume_errored=True)
    else:
        # Longest first, so that the matrix does not end with one long run on an otherwise idle machine
        todo.sort(key=lambda r: -r.budget)
        tuner = tune.Tuner(
            trainable,
            param_space={"run": tune.grid_search([dataclasses.asdict(run) for run in todo])},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=max_concurrent, trial_name_creator=_trial_name, trial_dirname_creator=_trial_name
            ),
            run_config=tune.RunConfig(
                name=experiment_name(runs, csv_path),
                storage_path=storage,
                failure_config=tune.FailureConfig(max_failures=max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                callbacks=[RecordRuns(csv_path)],
            ),
        )
    results = tuner.fit()
    done = completed(read_rows(csv_path))
    errors = {Run(**result.config["run"]).key: result.error for result in results if result.error is not None}
    if all(Run(**result.config["run"]).key in done for result in results):  # the experiment has nothing left to resume
        filesystem, path = pyarrow.fs.FileSystem.from_uri(experiment)
        filesystem.delete_dir(path)
    return [f"{run.key}: {errors.get(run.key, 'unfinished')}" for run in todo if run.key not in done]


# ------------------------------------------------------------------------------------------------ the CSV
def read_rows(csv_path: Path) -> list[dict[str, Any]]:
    if not csv_path.exists():
        return []
    with open(csv_path, newline="") as file:
        reader = csv.DictReader(file)
        if reader.fieldnames != FIELDS:
            raise ValueError(f"{csv_path} does not have the expected columns {FIELDS}: {reader.fieldnames}")
        rows = []
        for raw in reader:
            row: dict[str, Any] = dict(raw)
            for name in ("seed", "budget", "step"):
                row[name] = int(row[name])
            for name in ("eval_mean", "eval_std", "train_seconds"):
                row[name] = float(row[name])
            rows.append(row)
        return rows


def write_rows(csv_path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write the CSV atomically: a temporary file in the same directory, fsync, then rename over the old one."""
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    ordered = sorted(rows, key=lambda r: (r["env"], r["config"], r["seed"], r["step"]))
    fd, tmp = tempfile.mkstemp(dir=csv_path.parent, prefix=f".{csv_path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp creates the file readable by its owner only
        with os.fdopen(fd, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=FIELDS)
            writer.writeheader()
            for row in ordered:
                writer.writerow(
                    {
                        **row,
                        "eval_mean": f"{row['eval_mean']:.3f}",
                        "eval_std": f"{row['eval_std']:.3f}",
                        "train_seconds": f"{row['train_seconds']:.2f}",
                    }
                )
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, csv_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def locked(csv_path: Path) -> Iterator[None]:
    """Hold an exclusive lock (``<csv>.lock``) for a read-modify-write of the CSV that several matrix commands share."""
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path.with_name(f".{csv_path.name}.lock"), "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def record_run(csv_path: Path, key: tuple[str, str, int], rows: list[dict[str, Any]]) -> None:
    """Put one finished run's rows into the CSV (replacing any earlier rows of that run), under the CSV's lock."""
    with locked(csv_path):  # other matrix commands (e.g. other --envs) may share this CSV
        kept = [row for row in read_rows(csv_path) if (row["config"], row["env"], row["seed"]) != key]
        write_rows(csv_path, kept + rows)


def completed(rows: Iterable[dict[str, Any]]) -> set[tuple[str, str, int]]:
    """Keys of the runs whose evaluations reach their budget."""
    last: dict[tuple[str, str, int], int] = {}
    budget: dict[tuple[str, str, int], int] = {}
    for row in rows:
        key = (row["config"], row["env"], row["seed"])
        last[key] = max(last.get(key, -1), row["step"])
        budget[key] = row["budget"]
    return {key for key, step in last.items() if step >= budget[key]}


# ---------------------------------------------------------------------------------------------- the report
def summarise(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (env, config), over the completed seeds: curves, final return, area under the curve, wall time, steps/s."""
    done = completed(rows)
    runs: dict[tuple[str, str], dict[int, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if (row["config"], row["env"], row["seed"]) in done:
            runs[(row["env"], row["config"])][row["seed"]].append(row)
    summary = {}
    for cell, by_seed in runs.items():
        curves = {seed: sorted(r, key=lambda r: r["step"]) for seed, r in sorted(by_seed.items())}  # seed order
        steps = [r["step"] for r in next(iter(curves.values()))]
        returns = np.array([[r["eval_mean"] for r in curve] for curve in curves.values()])
        budget = steps[-1]
        # Area under the curve: trapezoidal mean of the evaluation return over the training budget
        auc = np.array([np.trapezoid(curve, steps) / budget for curve in returns])
        seconds = np.array([curve[-1]["train_seconds"] for curve in curves.values()])
        mean_curve = returns.mean(axis=0)
        summary[cell] = {
            "seeds": sorted(curves),
            "budget": budget,  # the last evaluation's step
            "steps": np.array(steps),
            "returns": returns,
            "final_mean": float(returns[:, -1].mean()),
            "final_std": float(returns[:, -1].std()),
            # The TD3 paper's statistic (Fujimoto et al. 2018, Table 1): the best evaluation of the mean over seeds
            "best_mean": float(mean_curve.max()),
            "best_step": int(steps[int(mean_curve.argmax())]),
            "aucs": auc,
            "auc_mean": float(auc.mean()),
            "auc_std": float(auc.std()),
            "seconds": float(seconds.mean()),
            "steps_per_second": float(budget / seconds.mean()),
        }
    return summary


def _spread(mean: float, std: float, n_seeds: int) -> str:
    """``mean +- std`` over seeds; one seed has no spread to show, only its value."""
    return f"{mean:.1f}" if n_seeds == 1 else f"{mean:.1f} +- {std:.1f}"


def _order(configs: Iterable[str]) -> list[str]:
    known = list(CONFIGS)
    return sorted(configs, key=lambda c: (known.index(c) if c in known else len(known), c))


def write_report(csv_path: Path, out_dir: Path, at_steps: Sequence[int] | None = None) -> list[Path]:
    """
    Plots (one PNG per env) and ``tables.md`` from the CSV alone.

    :param at_steps: also tabulate, per env, config and seed, the evaluation return at those of these steps that the
        env's evaluations hit
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarise(read_rows(csv_path))
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    envs = sorted({env for env, _ in summary}, key=lambda e: (list(ENVS).index(e) if e in ENVS else len(ENVS), e))
    lines = [
        "<!-- Generated by `python benchmarks/returns.py report` from returns.csv; do not edit by hand. -->",
        "",
        "Final: evaluation return (10 episodes, no noise) at the end of the budget, mean +- std over seeds "
        "(one seed: its value). "
        "Best mean: the best evaluation of the mean over seeds, and its step (the TD3 paper's statistic). "
        "AUC: mean evaluation return over the whole budget (trapezoidal), mean +- std over seeds. "
        "Time: training wall time per run (evaluation excluded), one torch thread, two runs at a time on 2 cores. "
        "Per seed: the final evaluation, the best evaluation (and its step) and the AUC of each run.",
    ]
    for env in envs:
        configs = _order(c for e, c in summary if e == env)
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        for config in configs:
            cell = summary[(env, config)]
            mean = cell["returns"].mean(axis=0)
            (line,) = ax.plot(cell["steps"], mean, label=f"{config} (n={len(cell['seeds'])})")
            ax.fill_between(
                cell["steps"], cell["returns"].min(axis=0), cell["returns"].max(axis=0), color=line.get_color(), alpha=0.15
            )
        ax.set_title(f"{env}: evaluation return (mean over seeds, band: min-max)")
        ax.set_xlabel("environment steps")
        ax.set_ylabel("return")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        png = out_dir / f"curve-{file_name(env)}.png"
        fig.savefig(png, dpi=90)
        plt.close(fig)
        written.append(png)

        budget = max(summary[(env, c)]["budget"] for c in configs)
        lines += [
            "",
            f"### {env} ({budget:,} steps)",
            "",
            f"![{env}](curve-{file_name(env)}.png)",
            "",
            "| config | seeds | final return | best mean (step) | AUC | time per run (s) | steps/s |",
            "|---|---|---|---|---|---|---|",
        ]
        for config in configs:
            cell = summary[(env, config)]
            n_seeds = len(cell["seeds"])
            label = config if cell["budget"] == budget else f"{config} ({cell['budget']:,} steps)"
            lines.append(
                f"| {label} | {n_seeds} | {_spread(cell['final_mean'], cell['final_std'], n_seeds)} | "
                f"{cell['best_mean']:.1f} ({cell['best_step']:,}) | {_spread(cell['auc_mean'], cell['auc_std'], n_seeds)} | "
                f"{cell['seconds']:.0f} | {cell['steps_per_second']:.0f} |"
            )
        # Per seed: the spread behind the means (one seed's best is the most a single run showed)
        lines += ["", "| config | seed | final return | best (step) | AUC |", "|---|---|---|---|---|"]
        for config in configs:
            cell = summary[(env, config)]
            for seed, curve, auc in zip(cell["seeds"], cell["returns"], cell["aucs"], strict=True):
                best = int(curve.argmax())
                lines.append(
                    f"| {config} | {seed} | {curve[-1]:.1f} | {curve[best]:.1f} ({int(cell['steps'][best]):,}) | {auc:.1f} |"
                )
        # The asked-for steps that this env's evaluations hit (the envs evaluate at different intervals)
        env_steps = [step for step in at_steps or [] if any(step in summary[(env, c)]["steps"] for c in configs)]
        if env_steps:
            lines += [
                "",
                "| config | seed | " + " | ".join(f"{step:,}" for step in env_steps) + " |",
                "|---|---|" + "---|" * len(env_steps),
            ]
            for config in configs:
                cell = summary[(env, config)]
                steps = list(cell["steps"])
                for seed, curve in zip(cell["seeds"], cell["returns"], strict=True):
                    values = [f"{curve[steps.index(step)]:.0f}" if step in steps else "" for step in env_steps]
                    lines.append(f"| {config} | {seed} | " + " | ".join(values) + " |")
    tables = out_dir / "tables.md"
    tables.write_text("\n".join(lines) + "\n")
    written.append(tables)
    return written


# ---------------------------------------------------------------------------------------------------- CLI
def _csv_list(value: str | None, cast: Callable[[str], Any] = str) -> list[Any] | None:
    return None if value is None else [cast(v) for v in value.split(",") if v]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["run", "report", "list"])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (CSV, plots, tables)")
    parser.add_argument("--csv", type=Path, default=None, help=f"CSV file (default: OUT/{CSV_NAME})")
    parser.add_argument("--configs", help=f"comma-separated subset of {','.join(CONFIGS)}")
    parser.add_argument("--envs", help="comma-separated subset of the envs (or any env id, with --steps/--eval-freq)")
    parser.add_argument("--seeds", help="comma-separated seeds (default: 5 for Pendulum-v1, 3 otherwise)")
    parser.add_argument("--steps", type=int, help="override the budget of every run")
    parser.add_argument("--eval-freq", type=int, help="override the evaluation interval")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument(
        "--checkpoint-freq", type=int, help="checkpoint interval, a multiple of the evaluation interval (default: the latter)"
    )
    parser.add_argument("--address", help="Ray cluster to run on, e.g. auto (default: a local Ray on this machine)")
    parser.add_argument(
        "--storage",
        help=f"Tune's storage: checkpoints and experiment state (default: {STORAGE_NAME} next to the CSV); on a cluster, "
        "a directory that every node mounts, or a cloud URI",
    )
    parser.add_argument(
        "--max-concurrent",
        type=int,
        help="runs at once (default: one per CPU of the Ray cluster; a resumed matrix keeps its own)",
    )
    parser.add_argument(
        "--max-failures",
        type=int,
        default=3,
        help="retries of a failed run, from its last checkpoint (a resumed matrix keeps its own)",
    )
    parser.add_argument("--at", help="report: also tabulate the return of every seed at these steps (comma-separated)")
    parser.add_argument("--no-report", action="store_true", help="run without writing plots and tables afterwards")
    args = parser.parse_args(argv)
    csv_path = args.csv or args.out / CSV_NAME

    if args.command == "report":
        for path in write_report(csv_path, args.out, _csv_list(args.at, int)):
            print(f"wrote {path}")
        return 0
    runs = plan(
        _csv_list(args.configs),
        _csv_list(args.envs),
        _csv_list(args.seeds, int),
        args.steps,
        args.eval_freq,
        args.eval_episodes,
        args.checkpoint_freq,
    )
    storage = args.storage or str(csv_path.parent / STORAGE_NAME)
    if "://" not in storage:
        storage = str(Path(storage).resolve())
    if args.command == "list":
        done = completed(read_rows(csv_path))
        checkpoints = checkpoint_steps(experiment_path(runs, csv_path, storage))
        total = 0
        for run in runs:
            at = 0 if run.key in done else checkpoints.get(run.key, 0)
            total += 0 if run.key in done else run.budget - at
            print(
                f"{'done' if run.key in done else 'todo'}  {run.config:24s} {run.env:22s} seed {run.seed}  "
                f"{run.budget:>7} steps, eval every {run.eval_freq}" + (f"; checkpoint at {at}" if at else "")
            )
        print(f"{sum(r.key in done for r in runs)}/{len(runs)} done; {total:,} environment steps to go")
        return 0
    ray.init(address=args.address)
    try:
        failures = run_matrix(runs, csv_path, storage, args.max_concurrent, args.max_failures)
    finally:
        ray.shutdown()
    if not args.no_report and csv_path.exists():
        for path in write_report(csv_path, args.out):
            print(f"wrote {path}")
    if failures:
        print("Unfinished runs (rerun the same command to resume them):\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
