"""
Kernel timings behind the choices of the hand-written pixel update (issue 15, docs/speed.md "Pixels"): the layers of
the paper's conv tower at batch 16 (9x64x64 images, 3 conv layers of 32 3x3 filters, stride 2), one torch thread,
inputs hot in cache; the minimum over 5 repetitions of the mean of ``--calls`` calls.

- memory layout: batch norm and convolutions, contiguous (NCHW) vs channels last;
- merging the towers of two networks that see the same batch: one conv layer of 64 filters vs two of 32, one grouped
  conv layer (2 groups) vs two, one batch norm of 64 channels vs two of 32;
- oneDNN's convolutions vs PyTorch's native ones.

Usage::

    python benchmarks/pixels_micro.py --out benchmarks/results/pixels_micro.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch as th

CL, NCHW = th.channels_last, th.contiguous_format
_conv_backward = th.ops.aten.convolution_backward
_batch_norm = th.ops.aten.native_batch_norm


def _ms(fn: Callable[[], Any], calls: int) -> float:
    for _ in range(3):
        fn()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return 1e3 * best


def _conv(x: th.Tensor, weight: th.Tensor, groups: int = 1) -> th.Tensor:
    return th.conv2d(x, weight, None, 2, 0, 1, groups)


def _backward(g: th.Tensor, x: th.Tensor, weight: th.Tensor, mask: list[bool]) -> Any:
    bias = [weight.shape[0]] if mask[2] else None
    return _conv_backward(g, x, weight, bias, [2, 2], [0, 0], [1, 1], False, [0, 0], 1, mask)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--out", default="pixels_micro.json")
    args = parser.parse_args(argv)
    th.set_num_threads(1)
    th.manual_seed(0)
    images = th.rand(16, 9, 64, 64)
    conv1, conv2 = th.randn(32, 9, 3, 3) * 0.1, th.randn(32, 32, 3, 3) * 0.05
    hidden = th.relu(th.randn(16, 32, 31, 31))
    gamma, beta = th.ones(32), th.zeros(32)
    results: dict[str, float] = {}

    def record(name: str, fn: Callable[[], Any]) -> None:
        results[name] = _ms(fn, args.calls)
        print(f"{name:60s} {results[name]:7.3f} ms", flush=True)

    for label, fmt in (("NCHW", NCHW), ("channels last", CL)):
        x, w1, h, w2 = (t.contiguous(memory_format=fmt) for t in (images, conv1, hidden, conv2))
        g1, g2 = th.randn_like(_conv(x, w1)), th.randn_like(_conv(h, w2))
        record(
            f"batch norm 16x32x31x31, batch statistics, {label}",
            lambda h=h: _batch_norm(h, gamma, beta, None, None, True, 0.1, 1e-5),
        )
        record(f"conv1 forward (9 -> 32 channels, 64x64), {label}", lambda x=x, w1=w1: _conv(x, w1))
        record(f"conv1 weight and bias gradient, {label}", lambda g1=g1, x=x, w1=w1: _backward(g1, x, w1, [False, True, True]))
        record(f"conv1 input gradient, {label}", lambda g1=g1, x=x, w1=w1: _backward(g1, x, w1, [True, False, False]))
        record(f"conv2 forward (32 -> 32 channels, 31x31), {label}", lambda h=h, w2=w2: _conv(h, w2))
        record(
            f"conv2 input and weight gradients, {label}", lambda g2=g2, h=h, w2=w2: _backward(g2, h, w2, [True, True, False])
        )
    x, h = images.contiguous(memory_format=CL), hidden.contiguous(memory_format=CL)
    record(
        "conv1 forward, 64 filters (two networks), channels last",
        lambda: _conv(x, th.cat([conv1, conv1]).contiguous(memory_format=CL)),
    )
    wide = th.relu(th.randn(16, 64, 31, 31)).contiguous(memory_format=CL)
    w2_grouped = th.cat([conv2, conv2]).contiguous(memory_format=CL)
    record("conv2 forward, 2 groups of 32 (two networks), channels last", lambda: _conv(wide, w2_grouped, groups=2))
    record(
        "batch norm 16x64x31x31 (two networks), channels last",
        lambda: _batch_norm(wide, th.ones(64), th.zeros(64), None, None, True, 0.1, 1e-5),
    )
    w2 = conv2.contiguous(memory_format=CL)
    with th.backends.mkldnn.flags(enabled=False):
        record("conv2 forward, native (no oneDNN), channels last", lambda: _conv(h, w2))
    header = dict(torch=th.__version__, python=sys.version.split()[0], threads=th.get_num_threads(), argv=sys.argv)
    with open(args.out, "w") as file:
        json.dump(dict(header=header, ms=results), file, indent=2)
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
