"""
What reliability costs, measured: checkpoint size and write/resume time, the finite-value check per step, export size.

    OMP_NUM_THREADS=1 python benchmarks/reliability_costs.py | tee docs/measurements/reliability_costs.txt

Paper-size networks (400-300, batch norm) on Pendulum-v1 with the paper's 1e6-transition replay buffer.
"""

import os
import platform
import tempfile
import time
import timeit
from pathlib import Path

import numpy as np
import torch as th

from sb3_ddpg_paper import PaperDDPG
from sb3_ddpg_paper.checkpoints import load_checkpoint, save_checkpoint
from sb3_ddpg_paper.export import export_policy, load_exported_policy
from sb3_ddpg_paper.validation import raise_if_non_finite


def main() -> None:
    th.set_num_threads(1)
    print(
        f"{time.strftime('%Y-%m-%d')}, Python {platform.python_version()}, torch {th.__version__}, "
        f"{os.cpu_count()} CPUs, {th.get_num_threads()} torch thread, load average {os.getloadavg()[0]:.1f}"
    )
    model = PaperDDPG("MlpPolicy", "Pendulum-v1", learning_starts=100, seed=0).learn(300)
    with tempfile.TemporaryDirectory() as directory:
        start = time.perf_counter()
        path = save_checkpoint(model, directory)
        write = time.perf_counter() - start
        sizes = {p.name: p.stat().st_size for p in sorted(Path(path).iterdir())}
        start = time.perf_counter()
        load_checkpoint(directory)
        resume = time.perf_counter() - start
        print(f"checkpoint write {write:.2f} s, resume {resume:.2f} s")
        for name, size in sizes.items():
            print(f"  {name}: {size / 2**20:.2f} MiB")
        start = time.perf_counter()
        model.save_replay_buffer(Path(directory) / "sb3.pkl")  # SB3's own: the preallocated arrays whole
        print(
            f"  SB3's save_replay_buffer of the same buffer: {(Path(directory) / 'sb3.pkl').stat().st_size / 2**20:.1f} "
            f"MiB in {time.perf_counter() - start:.2f} s"
        )
        start = time.perf_counter()
        export_policy(model, Path(directory) / "actor.safetensors")
        exported = time.perf_counter() - start
        start = time.perf_counter()
        load_exported_policy(Path(directory) / "actor.safetensors")
        print(
            f"export {exported * 1e3:.1f} ms, {(Path(directory) / 'actor.safetensors').stat().st_size / 1024:.0f} KiB; "
            f"load {(time.perf_counter() - start) * 1e3:.1f} ms"
        )
    obs, reward = np.zeros((1, 3), dtype=np.float32), np.zeros(1, dtype=np.float32)
    n = 20_000

    def check() -> None:
        raise_if_non_finite("observation", obs, 0)  # what PaperDDPG._store_transition checks every step
        raise_if_non_finite("reward", reward, 0)

    per_step = timeit.timeit(check, number=n) / n
    model.learn(100, reset_num_timesteps=False)  # warm
    start = time.perf_counter()
    model.learn(200, reset_num_timesteps=False)
    step = (time.perf_counter() - start) / 200
    print(
        f"finite-value check: {per_step * 1e6:.1f} us per step (1 env, 3-dim observation); "
        f"a training step: {step * 1e3:.2f} ms"
    )


if __name__ == "__main__":
    main()
