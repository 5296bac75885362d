"""
Where denormal floats appear in a run with the paper's defaults, and what they cost (docs/speed.md).

    OMP_NUM_THREADS=1 python benchmarks/denormals.py | tee docs/measurements/denormals.txt

Trains PaperDDPG with the paper's defaults on Pendulum-v1 twice from the same seed, with ``flush_denormal=False``
and ``True``, in chunks; prints the training speed of each chunk and, after the last, the denormal entries
(0 < |x| < 1.2e-38, float32) of every parameter, buffer and Adam state of the policy, per tensor.
"""

import argparse
import os
import platform
import time

import numpy as np
import torch as th

from sb3_ddpg_paper import PaperDDPG

TINY = float(np.finfo(np.float32).tiny)  # smallest normal float32, 1.18e-38


def denormal_counts(model: PaperDDPG) -> dict[str, tuple[int, int]]:
    """Per tensor of the policy (parameters, buffers, Adam states): (denormal entries, entries)."""
    tensors = dict(model.policy.named_parameters()) | dict(model.policy.named_buffers())
    names = {id(p): n for n, p in model.policy.named_parameters()}
    for optimizer in (model.actor.optimizer, model.critic.optimizer):
        for param, state in optimizer.state.items():
            for key, value in state.items():
                if isinstance(value, th.Tensor) and value.dim() > 0:
                    tensors[f"{names[id(param)]} [Adam {key}]"] = value
    counts = {}
    for name, tensor in tensors.items():
        if tensor.is_floating_point():
            counts[name] = (int(((tensor != 0) & (tensor.abs() < TINY)).sum()), tensor.numel())
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8000, help="environment steps per run")
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    th.set_num_threads(1)
    print(
        f"{time.strftime('%Y-%m-%d')}, Python {platform.python_version()}, torch {th.__version__}, "
        f"{os.cpu_count()} CPUs, {th.get_num_threads()} torch thread, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"PaperDDPG, paper defaults, Pendulum-v1, seed {args.seed}, {args.steps} steps (warm-up 1000 steps included)")
    for flush in (False, True):
        model = PaperDDPG("MlpPolicy", "Pendulum-v1", seed=args.seed, flush_denormal=flush)
        speeds = []
        for _ in range(args.steps // args.chunk):
            start = time.perf_counter()
            model.learn(args.chunk, reset_num_timesteps=False)
            speeds.append(args.chunk / (time.perf_counter() - start))
        print(f"flush_denormal={flush}: steps/s per chunk of {args.chunk}: " + " ".join(f"{s:.0f}" for s in speeds))
        counts = {name: c for name, c in denormal_counts(model).items() if c[0]}
        total = sum(c[0] for c in counts.values())
        print(f"  denormal entries after {model.num_timesteps} steps: {total}")
        for name, (denormal, numel) in counts.items():
            print(f"    {name}: {denormal} of {numel}")


if __name__ == "__main__":
    main()
