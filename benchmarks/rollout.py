"""
What a trained policy does: deterministic episodes of a saved model, with each episode's length, how it ended and its
reward split into the environment's terms (MuJoCo's ``reward_*`` entries of ``info``: forward, control, survival).

A return says how much; this says why. On Hopper, a return of 200 may be a hopper that falls after 150 steps or one
that stands still for 200: the lengths and the survival and forward terms tell which. For the planar walkers
(HalfCheetah, Hopper, Walker2d) it also gives the share of steps with the torso turned over (pitch beyond 90 degrees):
a cheetah that runs on its back.

    python benchmarks/rollout.py model.zip --env Hopper-v5
    python benchmarks/rollout.py path/to/checkpoint_000000950000 --env Hopper-v5 --episodes 10 --seed 10000

``MODEL`` is a model saved by ``model.save()`` or a crash-safe checkpoint directory (:mod:`sb3_ddpg_paper.checkpoints`,
its ``model.zip`` is used). The episodes start from the same states as ``benchmarks/returns.py``'s evaluations of the
run with seed ``--seed`` minus 10,000 (the default seed, 10,000: run seed 0).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch as th

from sb3_ddpg_paper import PaperDDPG

PLANAR_WALKERS = ("HalfCheetah", "Hopper", "Walker2d")


def model_file(path: Path) -> Path:
    """The ``model.zip`` of a checkpoint directory (the newest ``checkpoint_<steps>`` below it), or ``path`` itself."""
    if path.is_file():
        return path
    found = sorted(path.glob("**/model.zip"))
    if not found:
        raise FileNotFoundError(f"{path} is neither a saved model nor a directory holding a model.zip")
    return found[-1]


def rollout(model: PaperDDPG, env: gym.Env, seed: int | None) -> dict[str, float]:
    """One deterministic episode: its return, length, whether it terminated, mean forward velocity, reward terms."""
    obs, _ = env.reset(seed=seed)
    totals: dict[str, float] = defaultdict(float)
    velocities, upside_down = [], []
    # Planar MuJoCo walkers (HalfCheetah, Hopper, Walker2d): qpos = [rootx, rootz, rooty, ...], rooty the torso's pitch
    planar = env.spec is not None and env.spec.id.split("-")[0] in PLANAR_WALKERS
    length, terminated, truncated = 0, False, False
    while not (terminated or truncated):
        action, _ = model.predict(obs, deterministic=True)
        obs, reward, terminated, truncated, info = env.step(action)
        if planar:
            upside_down.append(float(np.cos(env.unwrapped.data.qpos[2]) < 0))  # type: ignore[attr-defined]
        totals["return"] += float(reward)
        for key, value in info.items():
            if key.startswith("reward_"):
                totals[key] += float(value)
        if "x_velocity" in info:
            velocities.append(float(info["x_velocity"]))
        length += 1
    episode = {"length": length, "fell": float(terminated), "x_velocity": float(np.mean(velocities or [np.nan]))}
    if planar:
        episode["upside_down"] = float(np.mean(upside_down))  # the share of steps with the torso turned over
    return {**episode, **totals}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a saved model (.zip) or a checkpoint directory")
    parser.add_argument("--env", required=True, help="Gymnasium environment id, e.g. Hopper-v5")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=10_000, help="seed of the first episode's reset (default: 10000)")
    args = parser.parse_args(argv)
    th.set_num_threads(1)
    path = model_file(args.model)
    model = PaperDDPG.load(path, device="cpu")
    env = gym.make(args.env)
    # Reset seeds as a vector env seeded once would give them: the first episode with the seed, then unseeded resets
    episodes = [rollout(model, env, args.seed)]
    episodes += [rollout(model, env, None) for _ in range(args.episodes - 1)]
    columns = list(episodes[0])
    print(f"{path}, {args.env}, {args.episodes} deterministic episodes\n")
    print("| episode | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for number, episode in enumerate(episodes):
        print(f"| {number} | " + " | ".join(f"{episode[c]:.2f}" for c in columns) + " |")
    print("| mean | " + " | ".join(f"{np.mean([e[c] for e in episodes]):.2f}" for c in columns) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
