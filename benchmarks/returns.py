"""
Learning-curve matrix: PaperDDPG (paper defaults and the paper's Figure-2 ablations) against SB3's DDPG and TD3.

Every (configuration, environment, seed) cell runs as an independent process with one torch thread, as many at once
as ``--jobs`` (default: the number of cores). Each run is evaluated without exploration noise every ``eval_freq``
environment steps (and at step 0) on ``n_eval_episodes`` episodes of a separate environment seeded identically at
every evaluation. Finished runs are written to ONE CSV file (atomically: temporary file + rename), so an interrupted
matrix resumes where it stopped: a run whose last evaluation is at its budget is never redone.

    python benchmarks/returns.py run                       # the full matrix (hours), then the report
    python benchmarks/returns.py run --envs Pendulum-v1 --configs paper,paper-no-bn --seeds 0,1,2
    python benchmarks/returns.py report                    # plots and tables from the CSV alone
    python benchmarks/returns.py list                      # the matrix and what is done

Outputs (``--out``, default ``docs/results``): ``returns.csv`` (one row per evaluation point), one
``curve-<env>.png`` per environment (mean over seeds, band: min to max) and ``tables.md`` (final return mean +- std over
seeds, area under the curve, wall time and training steps/s per run).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import fcntl
import json
import multiprocessing as mp
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

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "docs" / "results"
CSV_NAME = "returns.csv"
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
) -> list[Run]:
    """The runs of the default matrix, optionally restricted (configs, envs, seeds) or resized (steps, eval_freq)."""
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
            runs.append(Run(config, env, seed, budget, freq, n_eval_episodes))
    return runs


# --------------------------------------------------------------------------------------------------- one run
def make_model(config: Config, env: Any, seed: int) -> Any:
    """Build the algorithm of a configuration (imported here: children import torch once, with one thread)."""
    if config.algo == "paper":
        from sb3_ddpg_paper import PaperDDPG

        return PaperDDPG("MlpPolicy", env, seed=seed, policy_kwargs=dict(config.policy_kwargs) or None, **config.kwargs)
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


ROWS_NAME = "rows.csv"  # in a run's working directory: its evaluations so far (same columns as the matrix CSV)
SETTINGS_NAME = "run.json"  # in a run's working directory: the run's settings, which a resume must match


def algorithm_class(config: Config) -> Any:
    if config.algo == "paper":
        from sb3_ddpg_paper import PaperDDPG

        return PaperDDPG
    from stable_baselines3 import DDPG, TD3

    return {"sb3-ddpg": DDPG, "sb3-td3": TD3}[config.algo]


def resume_point(run: Run, work_dir: Path) -> tuple[Path, list[dict[str, Any]]] | None:
    """
    The newest complete checkpoint of an interrupted run with these settings, and its evaluations up to that step;
    ``None`` when there is nothing (consistent) to resume.
    """
    from sb3_ddpg_paper.checkpoints import CheckpointError, latest_checkpoint, verify_checkpoint

    try:
        if json.loads((work_dir / SETTINGS_NAME).read_text()) != dataclasses.asdict(run):
            return None
        checkpoint = latest_checkpoint(work_dir)
        step = verify_checkpoint(checkpoint)["num_timesteps"]
        rows = [row for row in read_rows(work_dir / ROWS_NAME) if row["step"] <= step]
    except (OSError, ValueError, CheckpointError):
        return None
    # Checkpoints are taken at evaluation steps, after the evaluation is written: the rows must reach the checkpoint
    return (checkpoint, rows) if rows and rows[-1]["step"] == step else None


def execute(run: Run, work_dir: Path | None = None) -> list[dict[str, Any]]:
    """
    Train one cell and return its evaluation rows (runs in a child process).

    With a ``work_dir``, the run writes its evaluations so far (``rows.csv``) and a crash-safe checkpoint at every
    evaluation (:mod:`sb3_ddpg_paper.checkpoints`: model, optimizers, replay buffer, RNGs, noise, and the environment
    mid-episode, MuJoCo physics included), and an interrupted run resumes from its last checkpoint, continuing exactly
    as the uninterrupted run would have (on CPU). ``train_seconds`` counts training only: not evaluations, checkpoint
    writes, or the time between an interruption and the resume.
    """
    import torch as th

    from sb3_ddpg_paper.fast_paths import denormals_are_flushed

    threads, flushed = th.get_num_threads(), denormals_are_flushed()
    th.set_num_threads(1)
    # Every configuration runs with denormals flushed to zero: without it, Adam's moments of units whose gradient is
    # zero decay into the denormal range and every update becomes several times slower (SB3's algorithms too).
    th.set_flush_denormal(True)
    try:
        return _train(run, work_dir)
    finally:  # an in-process caller (the tests) gets its thread count and floating-point mode back
        th.set_num_threads(threads)
        th.set_flush_denormal(flushed)


def _train(run: Run, work_dir: Path | None) -> list[dict[str, Any]]:
    import gymnasium as gym
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    from sb3_ddpg_paper.checkpoints import CrashSafeCheckpointCallback, load_checkpoint

    config = CONFIGS[run.config]
    eval_env = DummyVecEnv([lambda: Monitor(gym.make(run.env))])
    eval_seed = 10_000 + run.seed
    resume = None if work_dir is None else resume_point(run, work_dir)
    if resume is not None:
        try:
            model = load_checkpoint(resume[0], algorithm_class=algorithm_class(config))
        except Exception as error:  # e.g. written by an incompatible version: starting over is slower, never wrong
            problem = f"{type(error).__name__}: {error}"
            print(f"{run.key}: cannot resume from {resume[0]} ({problem}); starting over", file=sys.stderr)
            resume = None
    if work_dir is not None and resume is None:  # a new run: nothing left of an older one with other settings
        shutil.rmtree(work_dir, ignore_errors=True)
        work_dir.mkdir(parents=True)
        (work_dir / SETTINGS_NAME).write_text(json.dumps(dataclasses.asdict(run)))
    rows: list[dict[str, Any]] = [] if resume is None else resume[1]
    clock = {"train": rows[-1]["train_seconds"] if rows else 0.0, "since": 0.0}

    def record(step: int) -> None:
        clock["train"] += time.perf_counter() - clock["since"]
        mean, std = evaluate(model, eval_env, run.n_eval_episodes, eval_seed)
        values = [run.config, run.env, run.seed, run.budget, step, mean, std, clock["train"]]
        rows.append(dict(zip(FIELDS, values, strict=True)))
        if work_dir is not None:  # before the checkpoint of this step: a checkpoint's evaluations are always on disk
            write_rows(work_dir / ROWS_NAME, rows)
        clock["since"] = time.perf_counter()

    class EvalEvery(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps % run.eval_freq == 0:
                record(self.num_timesteps)
            return True

    class Checkpoints(CrashSafeCheckpointCallback):
        def save(self) -> Path:
            started = time.perf_counter()
            path = super().save()
            clock["since"] += time.perf_counter() - started  # not training time
            return path

    if resume is None:
        model = make_model(config, gym.make(run.env), run.seed)
    clock["since"] = time.perf_counter()
    if not rows:  # a new run: evaluate the untrained policy
        record(0)
    callbacks: list[BaseCallback] = [EvalEvery()]
    if work_dir is not None:
        callbacks.append(Checkpoints(work_dir, save_freq=run.eval_freq, keep_last=1))
    if model.num_timesteps < run.budget:
        model.learn(run.budget - model.num_timesteps, callback=callbacks, reset_num_timesteps=resume is None)
    if rows[-1]["step"] != run.budget:
        record(run.budget)
    assert model.env is not None
    model.env.close()
    eval_env.close()
    return rows


def progress_dir_of(csv_path: Path) -> Path:
    """Where the runs in progress of a matrix CSV keep their working directories."""
    return csv_path.parent / ".progress"


def work_dir_of(run: Run, progress_dir: Path) -> Path:
    """Where a run in progress keeps its evaluations and checkpoints (removed once the run is in the CSV)."""
    return progress_dir / f"{run.config}__{run.env}__{run.seed}"


def _remove_work_dir(work_dir: Path) -> None:
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.with_name(f"{work_dir.name}.lock").unlink(missing_ok=True)


def _execute_in_child(args: tuple[Run, str]) -> tuple[Run, list[dict[str, Any]] | None, str | None]:
    """
    Train one run in this (child) process and record it in the CSV: ``(run, rows, None)`` when it ran,
    ``(run, None, reason)`` when it failed, and ``(run, None, None)`` when another matrix process sharing the CSV has
    it (running, or finished since this process listed what to do).
    """
    run, csv_name = args
    csv_path = Path(csv_name)
    work_dir = work_dir_of(run, progress_dir_of(csv_path))
    try:
        with open(work_dir.with_name(f"{work_dir.name}.lock"), "w") as lock_file:
            try:  # one process per run: two writers would overwrite each other's checkpoints
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return run, None, None
            if run.key in completed(read_rows(csv_path)):
                return run, None, None
            rows = execute(run, work_dir)
            # Recorded before the lock is released (and its file removed): whoever takes the lock next sees it done
            record_run(csv_path, run.key, rows)
            _remove_work_dir(work_dir)
            return run, rows, None
    except Exception as error:  # a failed cell must not stop the matrix; it is reported and retried next time
        return run, None, f"{type(error).__name__}: {error}"


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
    """Hold an exclusive lock (``<csv>.lock``) for a read-modify-write of the CSV shared by several matrix processes."""
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path.with_name(f".{csv_path.name}.lock"), "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def record_run(csv_path: Path, key: tuple[str, str, int], rows: list[dict[str, Any]]) -> None:
    """Put one finished run's rows into the CSV (replacing any earlier rows of that run), under the CSV's lock."""
    with locked(csv_path):  # other matrix processes (e.g. other --envs) may share this CSV
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


def run_matrix(runs: list[Run], csv_path: Path, jobs: int, log: Callable[[str], None] = print) -> list[str]:
    """Run what is not done yet, ``jobs`` processes at a time; return the failures."""
    done = completed(read_rows(csv_path))
    todo = [run for run in runs if run.key not in done]
    progress_dir = progress_dir_of(csv_path)
    for run in runs:  # finished runs need no checkpoints (e.g. the CSV was written, then the process was killed)
        if run.key in done:
            _remove_work_dir(work_dir_of(run, progress_dir))
    resumable = sum(resume_point(run, work_dir_of(run, progress_dir)) is not None for run in todo)
    log(
        f"{len(runs)} runs in the matrix, {len(runs) - len(todo)} already done, {len(todo)} to run with {jobs} "
        f"processes ({resumable} resume from a checkpoint)"
    )
    failures: list[str] = []
    if not todo:
        return failures
    progress_dir.mkdir(parents=True, exist_ok=True)
    # Longest first, so that the matrix does not end with one long run on an otherwise idle machine
    todo.sort(key=lambda r: -r.budget)
    context = mp.get_context("spawn")  # fresh interpreters: no inherited torch threads or RNG state
    with context.Pool(jobs, maxtasksperchild=1) as pool:
        for run, rows, error in pool.imap_unordered(_execute_in_child, [(r, str(csv_path)) for r in todo]):
            if error is not None:
                failures.append(f"{run.key}: {error}")
                log(f"FAILED {run.key}: {error}")
            elif rows is None:
                log(f"skipped {run.key}: another matrix process is running it or has finished it")
            else:
                seconds = rows[-1]["train_seconds"]
                log(
                    f"done {run.key}: final {rows[-1]['eval_mean']:.1f} after {run.budget} steps, "
                    f"{seconds:.0f}s training ({run.budget / max(seconds, 1e-9):.0f} steps/s)"
                )
    return failures


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
        curves = {seed: sorted(r, key=lambda r: r["step"]) for seed, r in by_seed.items()}
        steps = [r["step"] for r in next(iter(curves.values()))]
        returns = np.array([[r["eval_mean"] for r in curve] for curve in curves.values()])
        budget = steps[-1]
        # Area under the curve: trapezoidal mean of the evaluation return over the training budget
        auc = np.array([np.trapezoid(curve, steps) / budget for curve in returns])
        seconds = np.array([curve[-1]["train_seconds"] for curve in curves.values()])
        summary[cell] = {
            "seeds": sorted(curves),
            "steps": np.array(steps),
            "returns": returns,
            "final_mean": float(returns[:, -1].mean()),
            "final_std": float(returns[:, -1].std()),
            "auc_mean": float(auc.mean()),
            "auc_std": float(auc.std()),
            "seconds": float(seconds.mean()),
            "steps_per_second": float(budget / seconds.mean()),
        }
    return summary


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
        "Final: evaluation return (10 episodes, no noise) at the end of the budget, mean +- std over seeds. "
        "AUC: mean evaluation return over the whole budget (trapezoidal), mean +- std over seeds. "
        "Time: training wall time per run (evaluation excluded), one torch thread, two runs at a time on 2 cores.",
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
        png = out_dir / f"curve-{env}.png"
        fig.savefig(png, dpi=90)
        plt.close(fig)
        written.append(png)

        budget = int(summary[(env, configs[0])]["steps"][-1])
        lines += [
            "",
            f"### {env} ({budget:,} steps)",
            "",
            f"![{env}](curve-{env}.png)",
            "",
            "| config | seeds | final return | AUC | time per run (s) | steps/s |",
            "|---|---|---|---|---|---|",
        ]
        for config in configs:
            cell = summary[(env, config)]
            lines.append(
                f"| {config} | {len(cell['seeds'])} | {cell['final_mean']:.1f} +- {cell['final_std']:.1f} | "
                f"{cell['auc_mean']:.1f} +- {cell['auc_std']:.1f} | {cell['seconds']:.0f} | {cell['steps_per_second']:.0f} |"
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
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs in parallel (default: cores)")
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
    )
    if args.command == "list":
        done = completed(read_rows(csv_path))
        total = 0
        for run in runs:
            resume = None if run.key in done else resume_point(run, work_dir_of(run, progress_dir_of(csv_path)))
            at = 0 if resume is None else resume[1][-1]["step"]
            total += 0 if run.key in done else run.budget - at
            print(
                f"{'done' if run.key in done else 'todo'}  {run.config:24s} {run.env:22s} seed {run.seed}  "
                f"{run.budget:>7} steps, eval every {run.eval_freq}" + (f"; checkpoint at {at}" if at else "")
            )
        print(f"{sum(r.key in done for r in runs)}/{len(runs)} done; {total:,} environment steps to go")
        return 0
    failures = run_matrix(runs, csv_path, max(1, args.jobs))
    if not args.no_report and csv_path.exists():
        for path in write_report(csv_path, args.out):
            print(f"wrote {path}")
    if failures:
        print("Failed runs (rerun the same command to retry them):\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
