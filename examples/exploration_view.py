"""The exploration view: the actor's action against the noisy action actually taken, with epsilon, while PaperDDPG
trains on Pendulum-v1 (the reference notebook's ExplorationComparisonLogger, as an SB3 callback).

python examples/exploration_view.py [--steps 3000] [--out exploration-Pendulum-v1.png]
"""

import argparse

import torch as th

from sb3_ddpg_paper import PaperDDPG
from sb3_ddpg_paper.callbacks import ExplorationComparisonCallback


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000, help="environment steps to train for")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="exploration-Pendulum-v1.png", help="PNG file to write")
    args = parser.parse_args()

    th.set_num_threads(1)
    # Epsilon decays from 1 to 0.1 over the run so that the plot shows the schedule (the paper keeps epsilon at 1)
    model = PaperDDPG(
        "Pendulum-v1",
        seed=args.seed,
        learning_starts=min(1000, args.steps // 3),
        action_noise_kwargs=dict(min_epsilon=0.1, epsilon_decay_steps=args.steps),
    )
    callback = ExplorationComparisonCallback(plot_path=args.out)
    model.learn(args.steps, callback=callback)
    data = callback.as_arrays()
    diff = abs(data["taken_actions"] - data["model_actions"]).mean(axis=1)
    third = len(diff) // 3
    print(f"mean |taken - mu(s)|: first third {diff[:third].mean():.3f}, last third {diff[-third:].mean():.3f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
