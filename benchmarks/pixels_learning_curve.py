"""
Learning curve of PaperDDPG (paper defaults) from pixels vs. low-dimensional observations: evaluation return without
exploration noise at regular step counts, for several seeds trained round-robin in one process (so that every seed
reaches the same step count when time runs out). Each evaluation is appended to a CSV at once, so partial results
survive an interrupted run. Speed is recorded per chunk both as wall-clock steps/s and as steps per CPU-second of the
process (its speed on one idle core, independent of the load of a shared machine).

python benchmarks/pixels_learning_curve.py --env sb3_ddpg_paper/PixelPendulum-v1 --seeds 0 1 --steps 100000 \
    --eval-every 2500 --csv docs/results/pixels_pendulum.csv
"""

import argparse
import csv
import time
from pathlib import Path

import gymnasium as gym
import torch as th
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor

import sb3_ddpg_paper  # noqa: F401  (registers the sb3_ddpg_paper/Pixel* ids)
from sb3_ddpg_paper import PaperDDPG

FIELDS = [
    "env",
    "seed",
    "steps",
    "eval_return_mean",
    "eval_return_std",
    "eval_episodes",
    "train_seconds",
    "steps_per_s",
    "steps_per_cpu_s",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="sb3_ddpg_paper/PixelPendulum-v1")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=100_000, help="agent steps per seed")
    parser.add_argument("--eval-every", type=int, default=2_500)
    parser.add_argument("--eval-episodes", type=int, default=5)
    parser.add_argument("--buffer-size", type=int, default=None, help="default: PaperDDPG's for the observation space")
    parser.add_argument("--csv", type=Path, required=True)
    args = parser.parse_args()

    th.set_num_threads(1)
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    new_file = not args.csv.exists()
    with args.csv.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        if new_file:
            writer.writeheader()
        models, eval_envs = {}, {}
        for seed in args.seeds:
            kwargs = {} if args.buffer_size is None else {"buffer_size": args.buffer_size}
            models[seed] = PaperDDPG(args.env, seed=seed, **kwargs)
            eval_envs[seed] = Monitor(gym.make(args.env))
            eval_envs[seed].reset(seed=10_000 + seed)

        def evaluate(seed: int, steps: int, seconds: float, steps_per_s: float, steps_per_cpu_s: float) -> None:
            mean, std = evaluate_policy(models[seed], eval_envs[seed], n_eval_episodes=args.eval_episodes, deterministic=True)
            row = dict(
                env=args.env,
                seed=seed,
                steps=steps,
                eval_return_mean=round(float(mean), 1),
                eval_return_std=round(float(std), 1),
                eval_episodes=args.eval_episodes,
                train_seconds=round(seconds, 1),
                steps_per_s=round(steps_per_s, 2),
                steps_per_cpu_s=round(steps_per_cpu_s, 2),
            )
            writer.writerow(row)
            handle.flush()
            print(row, flush=True)

        train_seconds = dict.fromkeys(args.seeds, 0.0)
        for seed in args.seeds:
            evaluate(seed, 0, 0.0, 0.0, 0.0)
        for steps in range(args.eval_every, args.steps + 1, args.eval_every):
            for seed in args.seeds:
                start, start_cpu = time.perf_counter(), time.process_time()
                models[seed].learn(args.eval_every, reset_num_timesteps=False)
                elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
                train_seconds[seed] += elapsed
                # steps per CPU-second: what one idle core would do, whatever else the machine runs
                evaluate(seed, steps, train_seconds[seed], args.eval_every / elapsed, args.eval_every / cpu)


if __name__ == "__main__":
    main()
