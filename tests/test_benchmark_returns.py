"""The learning-curve matrix machinery (benchmarks/returns.py) on a tiny matrix: CSV schema, resume, plots, tables."""

import csv
import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import returns  # noqa: E402

from sb3_ddpg_paper.fast_paths import denormals_are_flushed  # noqa: E402

TINY = dict(configs=["paper", "sb3-ddpg"], envs=["Pendulum-v1"], seeds=[0, 1], steps=400, eval_freq=200, n_eval_episodes=1)


def _cli(out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(BENCHMARKS / "returns.py"),
        "run",
        "--out",
        str(out),
        "--configs",
        "paper,sb3-ddpg",
        "--envs",
        "Pendulum-v1",
        "--seeds",
        "0,1",
        "--steps",
        "400",
        "--eval-freq",
        "200",
        "--eval-episodes",
        "1",
        *extra,
    ]


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


def test_tiny_matrix_csv_resume_and_report(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # Interrupt the matrix once its first run is in the CSV (one process at a time, so the others are unfinished)
    proc = subprocess.Popen([*_cli(tmp_path, "--jobs", "1", "--no-report")], env=env, stdout=subprocess.PIPE, text=True)
    csv_path = tmp_path / "returns.csv"
    deadline = time.monotonic() + 240
    while not csv_path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert csv_path.exists(), "the first run never reached the CSV"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    first = returns.read_rows(csv_path)
    done_before = returns.completed(first)
    assert 1 <= len(done_before) < 4

    # CSV schema: the columns, one row per evaluation (step 0 included), budget reached
    with open(csv_path, newline="") as file:
        assert next(csv.reader(file)) == returns.FIELDS
    for key in done_before:
        steps = [r["step"] for r in first if (r["config"], r["env"], r["seed"]) == key]
        assert steps == [0, 200, 400]

    # Resume: the finished runs are not redone (their rows, wall times included, are unchanged), the rest is run
    result = subprocess.run(_cli(tmp_path, "--jobs", "2"), env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{len(done_before)} already done, {4 - len(done_before)} to run" in result.stdout
    rows = returns.read_rows(csv_path)
    assert returns.completed(rows) == {(c, "Pendulum-v1", s) for c in ("paper", "sb3-ddpg") for s in (0, 1)}
    assert len(rows) == 4 * 3
    assert [r for r in rows if (r["config"], r["env"], r["seed"]) in done_before] == first
    assert all(r["train_seconds"] > 0 for r in rows if r["step"] > 0)
    assert not list(tmp_path.glob(".returns.csv.*.tmp"))

    # Plots and tables, regenerated from the CSV alone
    (tmp_path / "curve-Pendulum-v1.png").unlink()
    (tmp_path / "tables.md").unlink()
    written = returns.write_report(csv_path, tmp_path)
    assert (tmp_path / "curve-Pendulum-v1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (tmp_path / "tables.md").read_text()
    assert tmp_path / "tables.md" in written
    assert "### Pendulum-v1 (400 steps)" in table
    for config in ("paper", "sb3-ddpg"):
        line = next(line for line in table.splitlines() if line.startswith(f"| {config} |"))
        cell = returns.summarise(rows)[("Pendulum-v1", config)]
        assert f"| 2 | {cell['final_mean']:.1f} +- {cell['final_std']:.1f} |" in line
    # Per-seed returns at chosen steps: only the steps this env's evaluations hit become columns
    returns.write_report(csv_path, tmp_path, at_steps=[200, 300, 400])
    table = (tmp_path / "tables.md").read_text()
    assert "| config | seed | 200 | 400 |" in table
    seed_line = next(line for line in table.splitlines() if line.startswith("| paper | 0 |"))
    assert seed_line.count("|") == 5 and "|  |" not in seed_line


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
    assert cell["steps_per_second"] == pytest.approx(10.0)


def _record_many(csv_path: str, config: str, n_runs: int) -> None:
    for seed in range(n_runs):
        row = dict(config=config, env="X-v0", seed=seed, budget=1, step=1, eval_mean=0.0, eval_std=0.0, train_seconds=1.0)
        returns.record_run(Path(csv_path), (config, "X-v0", seed), [row])


def test_matrix_processes_sharing_one_csv_lose_no_run(tmp_path):
    """Two matrix processes (e.g. different --envs) write the same CSV: the lock keeps every finished run."""
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


def test_a_run_another_matrix_process_has_is_not_run_again(tmp_path):
    """Two matrix processes listed the same run: the second one neither trains it again nor records it twice."""
    import fcntl

    csv_path = tmp_path / "returns.csv"
    (run,) = returns.plan(configs=["paper"], envs=["Pendulum-v1"], seeds=[0], steps=400, eval_freq=200, n_eval_episodes=1)
    work_dir = returns.work_dir_of(run, returns.progress_dir_of(csv_path))
    work_dir.parent.mkdir(parents=True)
    with open(work_dir.with_name(f"{work_dir.name}.lock"), "w") as lock_file:  # the other process is running it
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        assert returns._execute_in_child((run, str(csv_path))) == (run, None, None)
    assert not csv_path.exists()
    # ... and has finished it since this process listed its work: only the other process's rows are in the CSV
    finished = [
        dict(config="paper", env="Pendulum-v1", seed=0, budget=400, step=400, eval_mean=-1.0, eval_std=0.0, train_seconds=1.0)
    ]
    returns.record_run(csv_path, run.key, finished)
    assert returns._execute_in_child((run, str(csv_path))) == (run, None, None)
    assert [row["eval_mean"] for row in returns.read_rows(csv_path)] == [-1.0]
    assert not work_dir.exists()


@pytest.mark.parametrize(("config", "budget", "eval_freq"), [("paper", 1_500, 500), ("sb3-td3", 600, 200)])
def test_interrupted_run_resumes_from_its_checkpoint_exactly(tmp_path, monkeypatch, config, budget, eval_freq):
    import sb3_ddpg_paper.checkpoints as checkpoints

    run = returns.Run(config, "Pendulum-v1", 0, budget, eval_freq, n_eval_episodes=1)
    reference = returns.execute(run)  # uninterrupted, no checkpoints
    work_dir = tmp_path / "run"
    save, evaluate = checkpoints.save_checkpoint, returns.evaluate

    def save_failing_at(step):
        def failing(model, *args, **kwargs):
            if model.num_timesteps == step:
                raise KeyboardInterrupt("killed while writing a checkpoint")
            return save(model, *args, **kwargs)

        return failing

    # 1. Killed after the evaluation at 2 * eval_freq was written, before its checkpoint: resumes from eval_freq
    monkeypatch.setattr(checkpoints, "save_checkpoint", save_failing_at(2 * eval_freq))
    with pytest.raises(KeyboardInterrupt):
        returns.execute(run, work_dir)
    assert [r["step"] for r in returns.read_rows(work_dir / returns.ROWS_NAME)] == [0, eval_freq, 2 * eval_freq]
    checkpoint, rows = returns.resume_point(run, work_dir)
    assert checkpoint.name.endswith(f"{eval_freq:012d}") and [r["step"] for r in rows] == [0, eval_freq]
    # 2. Killed during the evaluation at the budget: resumes from 2 * eval_freq
    monkeypatch.setattr(checkpoints, "save_checkpoint", save)
    calls = []

    def evaluate_failing_at_budget(model, *args):
        if model.num_timesteps == budget:
            raise KeyboardInterrupt("killed during an evaluation")
        calls.append(model.num_timesteps)
        return evaluate(model, *args)

    monkeypatch.setattr(returns, "evaluate", evaluate_failing_at_budget)
    with pytest.raises(KeyboardInterrupt):
        returns.execute(run, work_dir)
    assert calls == [2 * eval_freq]  # nothing before the checkpoint was trained or evaluated again
    assert returns.resume_point(run, work_dir)[1][-1]["step"] == 2 * eval_freq
    # 3. The resumed run ends exactly where the uninterrupted one did
    monkeypatch.setattr(returns, "evaluate", evaluate)
    resumed = returns.execute(run, work_dir)
    assert [r["step"] for r in resumed] == [r["step"] for r in reference] == list(range(0, budget + 1, eval_freq))
    assert [f"{r['eval_mean']:.3f}" for r in resumed] == [f"{r['eval_mean']:.3f}" for r in reference]
    assert len({r["eval_mean"] for r in reference}) > 1  # the policy changed: training happened between evaluations
    # A checkpoint of other settings is never resumed
    assert returns.resume_point(dataclasses.replace(run, budget=2 * budget), work_dir) is None


def test_a_checkpoint_that_cannot_be_loaded_means_starting_over(tmp_path, monkeypatch, capsys):
    import sb3_ddpg_paper.checkpoints as checkpoints

    run = returns.Run("paper", "Pendulum-v1", 0, 400, 200, n_eval_episodes=1)
    evaluate = returns.evaluate

    def evaluate_failing_at_budget(model, *args):
        if model.num_timesteps == 400:
            raise KeyboardInterrupt("killed during an evaluation")
        return evaluate(model, *args)

    monkeypatch.setattr(returns, "evaluate", evaluate_failing_at_budget)
    with pytest.raises(KeyboardInterrupt):
        returns.execute(run, tmp_path)
    assert returns.resume_point(run, tmp_path) is not None
    monkeypatch.setattr(returns, "evaluate", evaluate)
    monkeypatch.setattr(checkpoints, "load_checkpoint", _raise_incompatible)
    rows = returns.execute(run, tmp_path)
    assert [r["step"] for r in rows] == [0, 200, 400]
    err = capsys.readouterr().err
    assert "cannot resume from" in err and "ValueError: written by an incompatible version); starting over" in err
    # Runs flush denormals (and use one thread); an in-process caller gets its own floating-point mode back
    assert not denormals_are_flushed()


def _raise_incompatible(*args, **kwargs):
    raise ValueError("written by an incompatible version")
