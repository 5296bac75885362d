"""
Speed helpers of PaperDDPG's hot path (see docs/speed.md for what each one buys, measured).

None of them changes a number of the algorithm: fused Adam is Adam; flushing denormal floats only changes values
smaller than 1.2e-38 (to zero); the malloc thresholds change where freed memory goes. The calls into PyTorch's
private API are in :mod:`sb3_ddpg_paper.torch_compat`.
"""

import contextlib
from collections.abc import Iterator
from typing import Any

import torch as th

# ----------------------------------------------------------------------------- denormal floats
# With the paper's critic weight decay, the weights of dead ReLU units of the critic's layer after the action input
# receive no gradient but the decay, and shrink through the denormal range (< 1.2e-38), as do their Adam moments.
# Every matmul over such a weight matrix then takes the CPU's slow microcode path: a paper-defaults run slowed down
# 3 to 6 times after a few thousand steps. Flushing denormals to zero (FTZ/DAZ) removes that.


def denormals_are_flushed() -> bool:
    """Whether the calling thread currently flushes denormal floats to zero (``torch.set_flush_denormal``)."""
    return th.tensor(1e-40, dtype=th.float32).item() == 0.0


@contextlib.contextmanager
def flushed_denormals(enabled: bool, flushed_outside: bool | None = None) -> Iterator[None]:
    """
    Within the context, the calling thread flushes denormal floats to zero; on exit the previous mode is restored.

    ``torch.set_flush_denormal`` sets the floating-point mode of the calling thread (numpy and every library running
    on it included), on x86 CPUs with SSE3 and on ARM; elsewhere it is a no-op.

    :param enabled: whether to flush at all (``False``: the context does nothing)
    :param flushed_outside: whether the thread already flushes (then there is nothing to set or restore), as probed
        once by the caller with :func:`denormals_are_flushed` (the probe costs more than the switch); ``None``: probed
        here
    """
    if enabled and flushed_outside is None:
        flushed_outside = denormals_are_flushed()
    if not enabled or flushed_outside:
        yield
        return
    th.set_flush_denormal(True)
    try:
        yield
    finally:
        th.set_flush_denormal(False)


# ----------------------------------------------------------------------------- malloc
# glibc's malloc takes blocks above its mmap threshold straight from the kernel (fresh pages, faulted in on first use)
# and gives the top of its heap back to the kernel once more than its trim threshold is free there. Both thresholds
# start low (128 KiB and 256 KiB) and rise when a larger block taken from the kernel is freed, up to 32 MiB and
# 64 MiB ("dynamic mmap threshold", mallopt(3)). A pixel update allocates and frees tens of MB of 2 MB activations:
# with the thresholds where a process leaves them, it page-faults most of that memory in again at every update
# (about 2,000 page faults and 4-7 ms of system time per update, docs/speed.md, "Pixels").


def raise_malloc_thresholds() -> None:
    """
    Allocate and free one 31 MiB block: under glibc this raises the dynamic mmap and trim thresholds to 31 MiB and
    62 MiB for the rest of the process (as freeing any block of that size would), so that the heap keeps up to 62 MiB
    of freed memory for reuse instead of returning it to the kernel and faulting it in again. Thresholds set
    explicitly (``mallopt``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``) are not dynamic and stay as set;
    other C libraries simply allocate and free the block. Nothing is computed differently.
    """
    block = th.empty(31 << 20, dtype=th.uint8)
    del block


# ----------------------------------------------------------------------------- Adam
_ADAM_IMPLEMENTATION_KEYS = frozenset({"fused", "foreach", "differentiable", "capturable"})


def fast_optimizer_kwargs(optimizer_class: type[th.optim.Optimizer], optimizer_kwargs: dict[str, Any]) -> dict[str, Any]:
    """
    ``optimizer_kwargs`` plus ``fused=True`` for ``Adam`` / ``AdamW`` when the user did not choose an implementation:
    one kernel updates all parameters of a network, instead of about ten small tensor operations per parameter tensor
    (docs/speed.md). Same update rule (to float rounding).
    """
    if optimizer_class in (th.optim.Adam, th.optim.AdamW) and not _ADAM_IMPLEMENTATION_KEYS & optimizer_kwargs.keys():
        return {**optimizer_kwargs, "fused": True}
    return optimizer_kwargs


def make_optimizer(
    optimizer_class: type[th.optim.Optimizer], params: Any, lr: float, optimizer_kwargs: dict[str, Any]
) -> th.optim.Optimizer:
    """Build the optimizer with :func:`fast_optimizer_kwargs`; fall back to the plain one where fused is unsupported."""
    fast_kwargs = fast_optimizer_kwargs(optimizer_class, optimizer_kwargs)
    if fast_kwargs is not optimizer_kwargs:
        params = list(params)
        try:
            return optimizer_class(params, lr=lr, **fast_kwargs)  # type: ignore[call-arg]
        except (RuntimeError, ValueError, TypeError):  # e.g. torch < 2.4 has no fused Adam on CPU
            pass
    return optimizer_class(params, lr=lr, **optimizer_kwargs)  # type: ignore[call-arg]
