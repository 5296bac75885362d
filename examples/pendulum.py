"""Train PaperDDPG with the paper's defaults on Pendulum-v1 and print the evaluation return (no exploration noise).

python examples/pendulum.py [--steps 20000] [--seed 0]
"""

import argparse

import gymnasium as gym
import torch as th
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor

from sb3_ddpg_paper import PaperDDPG


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20_000, help="environment steps to train for")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-episodes", type=int, default=10)
    args = parser.parse_args()

    th.set_num_threads(1)  # one update per env step on small nets: a single thread is fastest
    model = PaperDDPG("Pendulum-v1", seed=args.seed, verbose=0)
    print(f"Training PaperDDPG (paper defaults) on Pendulum-v1 for {args.steps} steps, seed {args.seed}...")
    model.learn(args.steps, progress_bar=False)
    eval_env = Monitor(gym.make("Pendulum-v1"))  # evaluate_policy reads episode returns from Monitor
    eval_env.reset(seed=10_000 + args.seed)
    mean_return, std_return = evaluate_policy(model, eval_env, n_eval_episodes=args.eval_episodes, deterministic=True)
    print(f"Evaluation return over {args.eval_episodes} episodes without noise: {mean_return:.1f} +- {std_return:.1f}")
    print("(random policy: about -1200; solved: about -150)")


if __name__ == "__main__":
    main()
