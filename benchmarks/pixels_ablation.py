"""
What each measure of the hand-written pixel update buys (issue 15): milliseconds per gradient update of
``PaperDDPG("sb3_ddpg_paper/PixelPendulum-v1")`` (paper defaults: CnnPolicy, batch 16), one torch thread.

In ONE process, the variants take turns every ``--updates`` updates for ``--rounds`` rounds, on the same filled replay
buffer (no environment steps: update time only; ``benchmarks/throughput.py --pixels`` measures whole agent steps):

- ``autograd``: the autograd step (``cnn_update=False``);
- ``hand-written, NCHW``: :class:`~sb3_ddpg_paper.cnn_update.CNNUpdate` with contiguous (NCHW) activations;
- ``hand-written``: the same, channels last (the default).

``--no-malloc-thresholds`` skips :func:`~sb3_ddpg_paper.fast_paths.raise_malloc_thresholds` (glibc's malloc then
returns freed activations to the kernel and page-faults them in again); the thresholds cannot be lowered again in a
process, so run it once with and once without the flag. Minor page faults per update are reported.

Usage::

    python benchmarks/pixels_ablation.py --out benchmarks/results/pixels_ablation.json
    python benchmarks/pixels_ablation.py --no-malloc-thresholds --out benchmarks/results/pixels_ablation_no_malloc.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch as th

import sb3_ddpg_paper.cnn_update as cnn_update
from sb3_ddpg_paper import PaperDDPG

VARIANTS = ("autograd", "hand-written, NCHW", "hand-written")


def _timed_updates(model: PaperDDPG, updates: int, memory_format: th.memory_format) -> tuple[float, float]:
    """Milliseconds per update and minor page faults per update of ``updates`` gradient steps."""
    cnn_update.MEMORY_FORMAT = memory_format
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    model.train(gradient_steps=updates, batch_size=model.batch_size)
    elapsed = time.perf_counter() - start
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return 1e3 * elapsed / updates, faults / updates


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--updates", type=int, default=30, help="updates per variant and round")
    parser.add_argument("--learning-starts", type=int, default=300, help="transitions in the replay buffer")
    parser.add_argument("--no-malloc-thresholds", action="store_true", help="do not raise glibc's malloc thresholds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="pixels_ablation.json")
    args = parser.parse_args(argv)
    th.set_num_threads(1)
    if args.no_malloc_thresholds:
        cnn_update.raise_malloc_thresholds = lambda: None  # type: ignore[assignment]

    autograd, hand_written = (
        PaperDDPG("sb3_ddpg_paper/PixelPendulum-v1", buffer_size=2_000, seed=args.seed, cnn_update=flag)
        for flag in (False, True)
    )
    for model in (autograd, hand_written):
        model.learning_starts = args.learning_starts
        model.learn(args.learning_starts)  # fills the buffer, no update
        model.train(gradient_steps=3, batch_size=model.batch_size)  # warm-up (Adam state, oneDNN kernels)
    runs = {
        "autograd": (autograd, th.channels_last),
        "hand-written, NCHW": (hand_written, th.contiguous_format),
        "hand-written": (hand_written, th.channels_last),
    }
    header = dict(torch=th.__version__, python=sys.version.split()[0], threads=th.get_num_threads(), argv=sys.argv)
    print(json.dumps(header))
    results: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    for round_ in range(args.rounds):
        for name in VARIANTS[round_ % 3 :] + VARIANTS[: round_ % 3]:  # rotate who goes first
            model, memory_format = runs[name]
            np.random.seed(args.seed + round_)
            ms, faults = _timed_updates(model, args.updates, memory_format)
            results[name].append(dict(ms_per_update=ms, minor_faults_per_update=faults))
            print(f"round {round_} {name:20s} {ms:6.2f} ms/update {faults:8.1f} minor page faults/update", flush=True)
    cnn_update.MEMORY_FORMAT = th.channels_last
    summary = {name: statistics.median(r["ms_per_update"] for r in rounds) for name, rounds in results.items()}
    print("\nmedians:", ", ".join(f"{name} {ms:.2f} ms" for name, ms in summary.items()))
    output = dict(header=header, malloc_thresholds=not args.no_malloc_thresholds, runs=results, median_ms=summary)
    with open(args.out, "w") as file:
        json.dump(output, file, indent=2)
    print(f"wrote {args.out}")
    return output


if __name__ == "__main__":
    main()
