"""
The learning-curve matrix (benchmarks/returns.py) on tiny matrices and a local Ray with 2 CPUs: the CSV, a killed trial
retried from its checkpoint, an interrupted matrix resumed, plots and tables.
"""

import contextlib
import csv
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import torch as th
from ray import cloudpickle

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import returns  # noqa: E402

# Ray's workers cannot import benchmarks/returns.py the way this process does: ship the module's code with the trainable,
# as Ray does for the script run as __main__.
cloudpickle.register_pickle_by_value(returns)

# Two seeds per configuration. Each run trains after its first checkpoint (SB3's TD3 from step 100, PaperDDPG from
# 1000), which is taken in the middle of an episode (Pendulum's last 200 steps) and between two evaluations.
MATRIX = [
    returns.Run(config, "Pendulum-v1", seed, budget, eval_freq, n_eval_episodes=1, checkpoint_freq=checkpoint_freq)
    for config, budget, eval_freq, checkpoint_freq in (("paper", 1_200, 300, 900), ("sb3-td3", 600, 150, 300))
    for seed in (0, 1)
]


@contextlib.contextmanager
def local_ray(**env_vars: str) -> Iterator[str]:
    """A local Ray with 2 CPUs whose workers see ``env_vars``, shut down whatever happens; yields its address."""
    # address="local": a new Ray of its own, even where a cluster started with `ray start` runs on this machine
    # (ray.init() would join that one, where num_cpus is refused)
    ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env={"env_vars": env_vars})
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _curves(rows: list[dict[str, Any]]) -> dict[tuple[str, str, int], list[tuple[int, str]]]:
    curves: dict[tuple[str, str, int], list[tuple[int, str]]] = {}
    for row in rows:
        curves.setdefault((row["config"], row["env"], row["seed"]), []).append((row["step"], f"{row['eval_mean']:.3f}"))
    return curves


def test_plan_of_the_default_matrix():
    runs = returns.plan()
    keys = {(r.config, r.env) for r in runs}
    for env in returns.ENVS:
        assert {(c, env) for c in returns.MAIN_CONFIGS} <= keys
    assert ("paper-no-bn", "HalfCheetah-v5") in keys and ("paper-no-target", "Hopper-v5") not in keys
    assert sum(r.env == "Pendulum-v1" and r.config == "paper" for r in runs) == 5
    assert sum(r.env == "Hopper-v5" and r.config == "sb3-td3" for r in runs) == 3
    with pytest.raises(ValueError, match="Unknown config 'nope'"):
        returns.plan(configs=["nope"])
    # Checkpoints are taken at evaluations: every 10k steps fits every env's evaluation interval, 3k does not
    assert {r.checkpoint_freq for r in returns.plan(checkpoint_freq=10_000)} == {10_000}
    with pytest.raises(ValueError, match=r"checkpoint interval \(3000\) must be a multiple .* Pendulum-v1 \(2000\)"):
        returns.plan(envs=["Pendulum-v1"], checkpoint_freq=3_000)


def test_tiny_matrix_on_ray_killed_trials_and_report(tmp_path, capsys):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    with local_ray():
        assert returns.run_matrix(MATRIX, reference / "returns.csv", str(reference / ".tune")) == []
    rows = returns.read_rows(reference / "returns.csv")

    # CSV schema: the columns, one row per evaluation (step 0 included) up to the budget, training time only
    with open(reference / "returns.csv", newline="") as file:
        assert next(csv.reader(file)) == returns.FIELDS
    assert returns.completed(rows) == {run.key for run in MATRIX}
    for run in MATRIX:
        curve = [r for r in rows if (r["config"], r["env"], r["seed"]) == run.key]
        assert [r["step"] for r in curve] == list(range(0, run.budget + 1, run.eval_freq))
        assert 0 < curve[1]["train_seconds"] < curve[-1]["train_seconds"]
        assert len({r["eval_mean"] for r in curve}) > 1  # the policy changed: training happened between evaluations
    # Once all its runs are in the CSV, Tune's experiment (checkpoints, state) is deleted
    assert not any((reference / ".tune").iterdir())
    assert not list(reference.glob(".returns.csv.*.tmp"))

    # Every trial dies right after its first checkpoint and Tune retries it: it ends exactly as the uninterrupted run
    capsys.readouterr()
    seed_0 = [run for run in MATRIX if run.seed == 0]
    with local_ray(**{returns.KILL_AFTER_FIRST_CHECKPOINT: "1"}):
        assert returns.run_matrix(seed_0, killed / "returns.csv", str(killed / ".tune")) == []
    # One failure each: a retry from scratch (without the checkpoint) would have died again
    retried = [line.split(":")[0] for line in capsys.readouterr().out.splitlines() if line.endswith("after 1 failure(s)")]
    assert sorted(retried) == sorted(f"done {run.key}" for run in seed_0)
    curves = _curves(returns.read_rows(killed / "returns.csv"))
    assert curves == {run.key: _curves(rows)[run.key] for run in seed_0}

    # Each finished run's trained model is kept next to the CSV (nothing else there); a retried run's equals the
    # uninterrupted run's
    assert sorted(p.name for p in (reference / "models").iterdir()) == sorted(
        f"{run.config}_{run.env}_{run.seed}.zip" for run in MATRIX
    )
    for run in seed_0:
        algorithm = returns.algorithm_class(returns.CONFIGS[run.config])
        retried, uninterrupted = (
            algorithm.load(returns.model_path(out / "returns.csv", run), device="cpu").policy.state_dict()
            for out in (killed, reference)
        )
        assert retried.keys() == uninterrupted.keys()
        assert all(th.equal(retried[name], uninterrupted[name]) for name in retried)

    # Plots and tables, from the CSV alone
    written = returns.write_report(reference / "returns.csv", reference)
    assert (reference / "curve-Pendulum-v1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (reference / "tables.md").read_text()
    assert reference / "tables.md" in written
    assert "### Pendulum-v1 (1,200 steps)" in table
    for config, label in (("paper", "paper"), ("sb3-td3", "sb3-td3 (600 steps)")):  # TD3's runs are shorter
        line = next(line for line in table.splitlines() if line.startswith(f"| {label} |"))
        cell = returns.summarise(rows)[("Pendulum-v1", config)]
        assert f"| 2 | {cell['final_mean']:.1f} +- {cell['final_std']:.1f} |" in line
        # Each seed's final and best evaluation (with its step)
        for seed, curve in zip(cell["seeds"], cell["returns"], strict=True):
            best = int(curve.argmax())
            assert f"| {config} | {seed} | {curve[-1]:.1f} | {curve[best]:.1f} ({int(cell['steps'][best]):,}) |" in table
    # Per-seed returns at chosen steps: only the steps this env's evaluations hit become columns
    returns.write_report(reference / "returns.csv", reference, at_steps=[150, 200, 300])
    table = (reference / "tables.md").read_text()
    at_table = table.split("| config | seed | 150 | 300 |")[1].splitlines()
    td3_line = next(line for line in at_table if line.startswith("| sb3-td3 | 0 |"))
    paper_line = next(line for line in at_table if line.startswith("| paper | 0 |"))
    assert td3_line.count("|") == 5 and "|  |" not in td3_line
    assert paper_line.startswith("| paper | 0 |  | ")  # PaperDDPG evaluates every 300 steps here


def _one_done_one_checkpointed(out: Path) -> bool:
    """
    Whether a run of the matrix is in the CSV and another one, unfinished, has a checkpoint in Tune's experiment: its
    second one is being written, so its first one is registered.
    """
    done = returns.completed(returns.read_rows(out / "returns.csv"))
    trials = out.glob(".tune/*/paper_Pendulum-v1_*")  # one directory per trial, named after its run
    unfinished = [trial for trial in trials if ("paper", "Pendulum-v1", int(trial.name.rsplit("_", 1)[1])) not in done]
    return bool(done) and any(any(trial.glob("checkpoint_00000[1-9]")) for trial in unfinished)


def test_an_interrupted_matrix_resumes_without_redoing_finished_runs(tmp_path, capsys):
    csv_path = tmp_path / "returns.csv"
    with local_ray() as address:
        # The command, on the Ray cluster of this test; one run at a time, PaperDDPG training from step 1000
        cli = [sys.executable, str(BENCHMARKS / "returns.py"), "run", "--out", str(tmp_path), "--address", address]
        cli += ["--configs", "paper", "--envs", "Pendulum-v1", "--seeds", "0,1,2", "--steps", "1400"]
        cli += ["--eval-freq", "200", "--eval-episodes", "1", "--max-concurrent", "1", "--no-report"]
        # Stopped (Ctrl-C) once a run is in the CSV and the next one has a checkpoint
        with open(tmp_path / "first.log", "w") as log:
            proc = subprocess.Popen(cli, stdout=log, stderr=subprocess.STDOUT, text=True)
            try:
                deadline = time.monotonic() + 240
                while not _one_done_one_checkpointed(tmp_path) and time.monotonic() < deadline:
                    assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
                    time.sleep(0.1)
                proc.send_signal(signal.SIGINT)
                assert proc.wait(timeout=120) == 1, (tmp_path / "first.log").read_text()[-3000:]
            finally:  # never leave the driver running after a failed assertion
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        first = returns.read_rows(csv_path)
        done_before = returns.completed(first)
        assert 1 <= len(done_before) < 3
        # What is done, and the step each unfinished run resumes from (read from Tune's experiment)
        assert returns.main(["list", *cli[3:]]) == 0
        listed = capsys.readouterr().out
        assert f"{len(done_before)}/3 done" in listed and "; checkpoint at " in listed

        # The same command again: Tune's experiment is restored, the finished runs are not submitted again
        result = subprocess.run(cli, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert f"{len(done_before)} already done, {3 - len(done_before)} to run" in result.stdout
        assert "resuming the interrupted experiment" in result.stdout
        for key in done_before:
            assert f"done {key}" not in result.stdout
    rows = returns.read_rows(csv_path)
    assert returns.completed(rows) == {("paper", "Pendulum-v1", seed) for seed in (0, 1, 2)}
    assert len(rows) == 3 * 8
    assert [r for r in rows if (r["config"], r["env"], r["seed"]) in done_before] == first  # wall times included
    assert not any((tmp_path / ".tune").iterdir())


def test_summary_numbers():
    rows = []
    for seed, values in ((0, [-1000.0, -500.0, -100.0]), (1, [-1000.0, -700.0, -300.0])):
        for step, value in zip((0, 50, 100), values, strict=True):
            rows.append(
                dict(
                    config="paper",
                    env="X-v0",
                    seed=seed,
                    budget=100,
                    step=step,
                    eval_mean=value,
                    eval_std=0.0,
                    train_seconds=step / 10,
                )
            )
    rows.append(dict(config="paper", env="X-v0", seed=2, budget=100, step=0, eval_mean=0.0, eval_std=0.0, train_seconds=0.0))
    cell = returns.summarise(rows)[("X-v0", "paper")]
    assert cell["seeds"] == [0, 1]  # the unfinished seed 2 is left out
    assert cell["final_mean"] == pytest.approx(-200.0) and cell["final_std"] == pytest.approx(100.0)
    # AUC seed 0: (-750 * 50 + -300 * 50) / 100 = -525; seed 1: (-850 * 50 + -500 * 50) / 100 = -675
    assert cell["auc_mean"] == pytest.approx(-600.0)
    assert (cell["best_mean"], cell["best_step"]) == (pytest.approx(-200.0), 100)  # the TD3 paper's statistic
    assert cell["steps_per_second"] == pytest.approx(10.0)


def _record_many(csv_path: str, config: str, n_runs: int) -> None:
    for seed in range(n_runs):
        row = dict(config=config, env="X-v0", seed=seed, budget=1, step=1, eval_mean=0.0, eval_std=0.0, train_seconds=1.0)
        returns.record_run(Path(csv_path), (config, "X-v0", seed), [row])


def test_matrix_processes_sharing_one_csv_lose_no_run(tmp_path):
    """Two matrix drivers (e.g. different --envs) write the same CSV: the lock keeps every finished run."""
    import multiprocessing as mp

    csv_path = tmp_path / "returns.csv"
    context = mp.get_context("spawn")
    workers = [context.Process(target=_record_many, args=(str(csv_path), config, 25)) for config in ("paper", "sb3-td3")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    assert len(returns.completed(returns.read_rows(csv_path))) == 50


def test_report_of_a_namespaced_env_id(tmp_path):
    """Pixel ids such as sb3_ddpg_paper/PixelPendulum-v1 hold a slash: file names must not become directories."""
    env = "sb3_ddpg_paper/PixelPendulum-v1"
    rows = [
        dict(
            config="paper",
            env=env,
            seed=seed,
            budget=100,
            step=step,
            eval_mean=-1000.0 + step,
            eval_std=0.0,
            train_seconds=step,
        )
        for seed in (0, 1)
        for step in (0, 50, 100)
    ]
    returns.write_rows(tmp_path / "returns.csv", rows)
    returns.write_report(tmp_path / "returns.csv", tmp_path)
    assert (tmp_path / "curve-sb3_ddpg_paper-PixelPendulum-v1.png").stat().st_size > 0
    assert f"![{env}](curve-sb3_ddpg_paper-PixelPendulum-v1.png)" in (tmp_path / "tables.md").read_text()


def test_report_of_a_single_seed_and_of_a_shorter_budget(tmp_path):
    rows = [
        dict(
            config=config,
            env="Pendulum-v1",
            seed=0,
            budget=budget,
            step=step,
            eval_mean=-1000.0 + step,
            eval_std=0.0,
            train_seconds=step,
        )
        for config, budget in (("paper", 100), ("paper-no-bn", 50))
        for step in range(0, budget + 1, 50)
    ]
    returns.write_rows(tmp_path / "returns.csv", rows)
    returns.write_report(tmp_path / "returns.csv", tmp_path)
    tables = (tmp_path / "tables.md").read_text()
    # One seed: its value, no "+- 0.0" (final -900.0, best -900.0 at step 100, AUC -950.0 over the trapezoidal curve)
    assert "### Pendulum-v1 (100 steps)" in tables
    assert "| paper | 1 | -900.0 | -900.0 (100) | -950.0 | 100 | 1 |" in tables
    # A config that ran fewer steps than the section's budget says so
    assert "| paper-no-bn (50 steps) | 1 | -950.0 | -950.0 (50) | -975.0 | 50 | 1 |" in tables
