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
from torch.optim import optimizer as optim_hooks

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


_FUSED_KERNELS = {False: th._fused_adam_, True: th._fused_adamw_}


def _direct_fused_adam(optimizer: th.optim.Optimizer) -> bool:
    """
    Whether ``optimizer.step()`` is exactly "add 1 to each step count, then one fused Adam/AdamW kernel per parameter
    group": a fused ``Adam``/``AdamW`` (not a subclass) with plain options (no AMSGrad, maximize, capturable,
    differentiable, tensor learning rate or betas, AMP gradient scaler), no step hooks, its own or global, and no
    ``step`` replaced on the instance.
    """
    if type(optimizer) not in (th.optim.Adam, th.optim.AdamW) or "step" in vars(optimizer):
        return False
    if optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks:
        return False
    if optim_hooks._global_optimizer_pre_hooks or optim_hooks._global_optimizer_post_hooks:
        return False
    if getattr(optimizer, "grad_scale", None) is not None or getattr(optimizer, "found_inf", None) is not None:
        return False
    return all(
        group["fused"]
        and not (group["amsgrad"] or group["maximize"] or group["capturable"] or group["differentiable"])
        and isinstance(group["lr"], float)
        and all(isinstance(beta, float) for beta in group["betas"])
        for group in optimizer.param_groups
    )


def apply_gradients(optimizer: th.optim.Optimizer, grads: dict[th.Tensor, th.Tensor | None]) -> None:
    """
    One step of ``optimizer`` with the given gradients (parameter -> gradient; ``None``: no gradient, the parameter
    is skipped as ``optimizer.step()`` skips it): the same as ``param.grad = grad`` for each, then ``optimizer.step()``.

    For a fused Adam/AdamW with plain options whose state exists (after its first step), its fused kernel is called
    directly with these gradients, exactly as ``Adam.step`` calls it (same kernel, same numbers): this skips the
    ``zero_grad`` and the Python of ``step`` (its wrapper, state look-ups, regrouping by device; docs/speed.md).
    Otherwise the gradients are set on the parameters and ``optimizer.step()`` runs.

    :param optimizer: the optimizer of these parameters
    :param grads: gradient of every parameter of ``optimizer`` (a parameter missing from it counts as ``None``)
    """
    if _direct_fused_adam(optimizer):
        state = optimizer.state
        calls: list[tuple[dict[str, Any], list[th.Tensor], list[th.Tensor], list[dict[str, Any]]]] = []
        for group in optimizer.param_groups:
            params = [p for p in group["params"] if grads.get(p) is not None]
            states = [state.get(p) or {} for p in params]
            if not all(states):  # first step: let Adam initialise its state
                break
            calls.append((group, params, [grads[p] for p in params], states))  # type: ignore[misc]
        else:
            for group, params, param_grads, states in calls:
                if not params:
                    continue
                steps = [s["step"] for s in states]
                th._foreach_add_(steps, 1)
                beta1, beta2 = group["betas"]
                decoupled = group.get("decoupled_weight_decay", type(optimizer) is th.optim.AdamW)
                _FUSED_KERNELS[bool(decoupled)](
                    params,
                    param_grads,
                    [s["exp_avg"] for s in states],
                    [s["exp_avg_sq"] for s in states],
                    [],
                    steps,
                    amsgrad=False,
                    lr=group["lr"],
                    beta1=beta1,
                    beta2=beta2,
                    weight_decay=group["weight_decay"],
                    eps=group["eps"],
                    maximize=False,
                    grad_scale=None,
                    found_inf=None,
                )
            return
    for group in optimizer.param_groups:
        for param in group["params"]:
            param.grad = grads.get(param)
    optimizer.step()


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
