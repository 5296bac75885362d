"""
Every call of the package into PyTorch's private API, in one place, each with the public code it stands for.

The private calls are faster ways to compute exactly what the public fallbacks compute (docs/speed.md measures what
each buys). They are used on the PyTorch versions whose signatures they were written against (:data:`PRIVATE_RANGE`)
and only where they exist; anywhere else the public fallback runs, with the same numbers (to float rounding).
``tests/test_torch_compat.py`` runs every fallback and checks it against the private call.

- :func:`lerp_` and :func:`copy_`: the soft target updates (``torch._foreach_lerp_`` / ``_foreach_copy_``, one
  kernel launch per parameter list instead of one per tensor);
- :func:`apply_gradients`: an optimizer step with given gradients (``torch._fused_adam_`` called directly, as
  ``Adam.step`` calls it, after checking the optimizer's private hook registries);
- :data:`ATEN`: the ATen kernels that the hand-written updates (:mod:`~sb3_ddpg_paper.mlp_update`,
  :mod:`~sb3_ddpg_paper.cnn_update`) call, the ones autograd calls; without them, :func:`hand_written_updates`
  is false and every update runs with autograd (:class:`~sb3_ddpg_paper.update.AutogradStep`).
"""

from types import SimpleNamespace
from typing import Any

import torch as th
from torch.optim import optimizer as optim_hooks

# The PyTorch versions (major, minor) whose private signatures the calls below follow: checked against the sources of
# 2.3 and of the newest release tested (2.13, and 2.11 with CUDA); a newer PyTorch gets the public fallbacks until its
# signatures are checked and this bound raised.
PRIVATE_RANGE = ((2, 3), (2, 14))


def torch_version(version: str = th.__version__) -> tuple[int, int]:
    """``(major, minor)`` of a PyTorch version string such as ``"2.13.0+cpu"``."""
    major, minor = version.split("+")[0].split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def private_calls_usable(version: tuple[int, int]) -> bool:
    """Whether the private calls of this module follow the signatures of PyTorch ``version``."""
    return PRIVATE_RANGE[0] <= version < PRIVATE_RANGE[1]


# False: every function below takes its public fallback (tests set it to check the fallbacks)
PRIVATE_CALLS = private_calls_usable(torch_version())


# ----------------------------------------------------------------------------- soft target updates
def lerp_(targets: list[th.Tensor], sources: list[th.Tensor], weight: float) -> None:
    """``target <- target + weight * (source - target)`` for each pair, in place."""
    if PRIVATE_CALLS and hasattr(th, "_foreach_lerp_"):
        th._foreach_lerp_(targets, sources, weight)
        return
    for target, source in zip(targets, sources, strict=True):
        target.lerp_(source, weight)


def copy_(targets: list[th.Tensor], sources: list[th.Tensor]) -> None:
    """``target <- source`` for each pair, in place."""
    if PRIVATE_CALLS and hasattr(th, "_foreach_copy_"):
        th._foreach_copy_(targets, sources)
        return
    for target, source in zip(targets, sources, strict=True):
        target.copy_(source)


# ----------------------------------------------------------------------------- optimizer steps
def _direct_fused_adam(optimizer: th.optim.Optimizer) -> bool:
    """
    Whether ``optimizer.step()`` is exactly "add 1 to each step count, then one fused Adam/AdamW kernel per parameter
    group": a fused ``Adam``/``AdamW`` (not a subclass) with plain options (no AMSGrad, maximize, capturable,
    differentiable, tensor learning rate or betas, AMP gradient scaler), no step hooks, its own or global, and no
    ``step`` replaced on the instance.
    """
    if not PRIVATE_CALLS or type(optimizer) not in (th.optim.Adam, th.optim.AdamW) or "step" in vars(optimizer):
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
    Otherwise (and without :data:`PRIVATE_CALLS`) the gradients are set on the parameters and ``optimizer.step()``
    runs: the public fallback.

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
                kernel = th._fused_adamw_ if decoupled else th._fused_adam_
                kernel(
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


# ----------------------------------------------------------------------------- ATen kernels of the hand-written updates
_ATEN_NAMES = (
    "threshold_backward",
    "tanh_backward",
    "native_batch_norm",
    "native_batch_norm_backward",
    "convolution_backward",
)
ATEN: Any = SimpleNamespace(**{name: getattr(th.ops.aten, name, None) for name in _ATEN_NAMES})


def hand_written_updates() -> bool:
    """Whether the hand-written updates can run: the private calls are usable and every ATen kernel they call exists."""
    return PRIVATE_CALLS and all(getattr(ATEN, name) is not None for name in _ATEN_NAMES)
