"""
Speed helpers of PaperDDPG's hot path (see docs/speed.md for what each one buys, measured).

None of them changes a number of the algorithm: the replay sampling makes the same random draws and returns the same
arrays as SB3's ``ReplayBuffer.sample``; fused Adam is Adam; flushing denormal floats only changes values smaller
than 1.2e-38 (to zero).
"""

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.vec_env import VecNormalize

# ----------------------------------------------------------------------------- denormal floats
# With the paper's critic weight decay, the weights of dead ReLU units of the critic's layer after the action input
# receive no gradient but the decay, and shrink through the denormal range (< 1.2e-38), as do their Adam moments.
# Every matmul over such a weight matrix then takes the CPU's slow microcode path: a paper-defaults run slowed down
# 3 to 6 times after a few thousand steps. Flushing denormals to zero (FTZ/DAZ) removes that.


def denormals_are_flushed() -> bool:
    """Whether the calling thread currently flushes denormal floats to zero (``torch.set_flush_denormal``)."""
    return th.tensor(1e-40, dtype=th.float32).item() == 0.0


@contextlib.contextmanager
def flushed_denormals(enabled: bool, flushed_outside: bool) -> Iterator[None]:
    """
    Within the context, the calling thread flushes denormal floats to zero; on exit the previous mode is restored.

    ``torch.set_flush_denormal`` sets the floating-point mode of the calling thread (numpy and every library running
    on it included), on x86 CPUs with SSE3 and on ARM; elsewhere it is a no-op.

    :param enabled: whether to flush at all (``False``: the context does nothing)
    :param flushed_outside: whether the thread already flushes (then there is nothing to set or restore); probed
        once by the caller with :func:`denormals_are_flushed` (the probe costs more than the switch)
    """
    if not enabled or flushed_outside:
        yield
        return
    th.set_flush_denormal(True)
    try:
        yield
    finally:
        th.set_flush_denormal(False)


# ----------------------------------------------------------------------------- Adam
_ADAM_IMPLEMENTATION_KEYS = frozenset({"fused", "foreach", "differentiable", "capturable"})


def fast_optimizer_kwargs(optimizer_class: type[th.optim.Optimizer], optimizer_kwargs: dict[str, Any]) -> dict[str, Any]:
    """
    ``optimizer_kwargs`` plus ``fused=True`` for ``Adam`` / ``AdamW`` when the user did not choose an implementation:
    one kernel updates all parameters of a network, instead of about ten small tensor operations per parameter tensor
    (about 3 times faster for the 400-300 networks on a CPU). Same update rule (to float rounding).
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


# ----------------------------------------------------------------------------- replay sampling
def can_sample_fast(replay_buffer: Any, vec_normalize_env: VecNormalize | None) -> bool:
    """
    Whether :func:`sample_fast` reproduces ``replay_buffer.sample``: a plain ``ReplayBuffer`` (no subclass such as
    HER or n-step, no ``sample`` replaced on the instance), ``optimize_memory_usage=False``, nothing to normalise.
    """
    return (
        type(replay_buffer) is ReplayBuffer
        and "sample" not in vars(replay_buffer)
        and not replay_buffer.optimize_memory_usage
        and vec_normalize_env is None
    )


def sample_fast(replay_buffer: ReplayBuffer, batch_size: int) -> ReplayBufferSamples:
    """
    SB3's ``ReplayBuffer.sample`` (stable-baselines3 2.9, ``optimize_memory_usage=False``, no ``VecNormalize``) with
    the same calls to numpy's global random generator and the same arrays, minus its per-call overhead (five
    ``th.tensor`` copies of arrays that fancy indexing has already copied, normalisation no-ops).
    """
    upper_bound = replay_buffer.buffer_size if replay_buffer.full else replay_buffer.pos
    batch_inds = np.random.randint(0, upper_bound, size=batch_size)
    env_inds = np.random.randint(0, high=replay_buffer.n_envs, size=(batch_size,))
    # Only use dones that are not due to timeouts (time-limit truncations bootstrap)
    dones = replay_buffer.dones[batch_inds, env_inds] * (1 - replay_buffer.timeouts[batch_inds, env_inds])
    device = replay_buffer.device
    return ReplayBufferSamples(
        observations=th.as_tensor(replay_buffer.observations[batch_inds, env_inds, :], device=device),
        actions=th.as_tensor(replay_buffer.actions[batch_inds, env_inds, :], device=device),
        next_observations=th.as_tensor(replay_buffer.next_observations[batch_inds, env_inds, :], device=device),
        dones=th.as_tensor(dones.reshape(-1, 1), device=device),
        rewards=th.as_tensor(replay_buffer.rewards[batch_inds, env_inds].reshape(-1, 1), device=device),
    )
