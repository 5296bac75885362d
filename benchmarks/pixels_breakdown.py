"""
Where an agent step of PaperDDPG on ``sb3_ddpg_paper/PixelPendulum-v1`` spends its time (paper defaults, hand-written
pixel update, one torch thread): wall-clock timers around the pieces of ``CNNUpdate`` and of the environment, over
``--steps`` training steps after a warm-up of ``--learning-starts`` random steps. The timers nest (e.g. the batch
norms of the fully connected layers are inside "fully connected layers"); each line is milliseconds per agent step.

Usage::

    python benchmarks/pixels_breakdown.py --out benchmarks/results/pixels_breakdown.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
import types
from collections.abc import Callable
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pygame
import torch as th
from torch.nn import functional as F

import sb3_ddpg_paper.cnn_update as cnn_update
from sb3_ddpg_paper import PaperDDPG

SPENT: collections.defaultdict[str, float] = collections.defaultdict(float)


def _timed(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            SPENT[label] += time.perf_counter() - start

    return timed


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--learning-starts", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="pixels_breakdown.json")
    args = parser.parse_args(argv)
    th.set_num_threads(1)

    model = PaperDDPG(
        "sb3_ddpg_paper/PixelPendulum-v1", buffer_size=5_000, learning_starts=args.learning_starts, seed=args.seed
    )
    assert isinstance(model.gradient_step, cnn_update.CNNUpdate)
    model.learn(args.learning_starts + 20)  # warm-up, then 20 updates (Adam state, oneDNN kernels)

    cnn_update.F = types.SimpleNamespace(conv2d=_timed("convolutions, forward", F.conv2d))  # type: ignore[assignment]
    cnn_update._convolution_backward = _timed("convolutions, backward", cnn_update._convolution_backward)
    cnn_update._batch_norm_forward = _timed("conv batch norm, forward", cnn_update._batch_norm_forward)
    cnn_update._batch_norm_layer_backward = _timed("conv batch norm, backward", cnn_update._batch_norm_layer_backward)
    cnn_update._relu_backward = _timed("conv ReLU, backward", cnn_update._relu_backward)
    cnn_update._forward = _timed("fully connected layers, forward", cnn_update._forward)
    cnn_update._backward = _timed("fully connected layers, backward", cnn_update._backward)
    cnn_update.apply_gradients = _timed("Adam (fused)", cnn_update.apply_gradients)
    cnn_update._Images.statistics = _timed("image batches: statistics", cnn_update._Images.statistics)  # type: ignore[method-assign]
    cnn_update._Images.transformed = _timed("image batches: normalised images", cnn_update._Images.transformed)  # type: ignore[method-assign]
    model.train = _timed("update (train)", model.train)  # type: ignore[method-assign]
    model.predict = _timed("acting (predict)", model.predict)  # type: ignore[method-assign]
    pixel_env = model.env.envs[0].unwrapped  # type: ignore[union-attr]
    wrapper = model.env.envs[0]  # type: ignore[union-attr]
    while not hasattr(wrapper, "render_frame"):
        wrapper = wrapper.env
    wrapper.render_frame = _timed("environment: 3 renders", wrapper.render_frame)
    pygame.image.load = _timed("environment: pygame.image.load in Pendulum's render", pygame.image.load)
    del pixel_env

    SPENT.clear()
    start = time.perf_counter()
    model.learn(args.steps, reset_num_timesteps=False)
    total = time.perf_counter() - start
    per_step = {label: 1e3 * seconds / args.steps for label, seconds in SPENT.items()}
    per_step = {"agent step (total)": 1e3 * total / args.steps, **dict(sorted(per_step.items(), key=lambda kv: -kv[1]))}
    for label, ms in per_step.items():
        print(f"{label:55s} {ms:7.2f} ms per agent step")
    header = dict(torch=th.__version__, python=sys.version.split()[0], threads=th.get_num_threads(), argv=sys.argv)
    with open(args.out, "w") as file:
        json.dump(dict(header=header, ms_per_agent_step=per_step), file, indent=2)
    print(f"wrote {args.out}")
    return per_step


if __name__ == "__main__":
    main()
