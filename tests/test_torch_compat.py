"""The private PyTorch calls of sb3_ddpg_paper.torch_compat against their public fallbacks, and the version check."""

import numpy as np
import pytest
import torch as th
from torch import nn

from sb3_ddpg_paper import PaperDDPG, torch_compat
from sb3_ddpg_paper.mlp_update import MLPUpdate
from sb3_ddpg_paper.update import AutogradStep, gradient_step_for


@pytest.fixture
def public_fallbacks(monkeypatch):
    monkeypatch.setattr(torch_compat, "PRIVATE_CALLS", False)


def _tensors(seed: int) -> list[th.Tensor]:
    generator = th.Generator().manual_seed(seed)
    return [th.randn(shape, generator=generator) for shape in ((7, 5), (5,), (3, 2, 2))]


def test_version_check():
    assert torch_compat.torch_version("2.13.0+cpu") == (2, 13)
    assert torch_compat.torch_version("2.14.0a0+git1234") == (2, 14)
    assert torch_compat.private_calls_usable((2, 3)) and torch_compat.private_calls_usable((2, 13))
    assert not torch_compat.private_calls_usable((2, 2))
    assert not torch_compat.private_calls_usable((2, 14)) and not torch_compat.private_calls_usable((3, 0))
    assert torch_compat.PRIVATE_CALLS == torch_compat.private_calls_usable(torch_compat.torch_version())


@pytest.mark.parametrize("private", [True, False])
def test_soft_update_calls_lerp_and_copy(monkeypatch, private):
    monkeypatch.setattr(torch_compat, "PRIVATE_CALLS", private)
    targets, sources = _tensors(0), _tensors(1)
    expected = [t + 0.01 * (s - t) for t, s in zip(targets, sources, strict=True)]
    torch_compat.lerp_(targets, sources, 0.01)
    for ours, theirs in zip(targets, expected, strict=True):
        th.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
    torch_compat.copy_(targets, sources)
    assert all(th.equal(t, s) for t, s in zip(targets, sources, strict=True))


def _adam(params: list[nn.Parameter]) -> th.optim.Adam:
    return th.optim.Adam([{"params": params[:1], "weight_decay": 0.1}, {"params": params[1:]}], lr=1e-2, fused=True)


def test_apply_gradients_fallback_is_the_direct_fused_call(monkeypatch):
    results = {}
    for private in (True, False):
        monkeypatch.setattr(torch_compat, "PRIVATE_CALLS", private)
        params = [nn.Parameter(t) for t in _tensors(2)]
        optimizer = _adam(params)
        for step in range(3):
            torch_compat.apply_gradients(optimizer, dict(zip(params, _tensors(10 + step), strict=True)))
        results[private] = [p.detach().clone() for p in params]
    for direct, fallback in zip(results[True], results[False], strict=True):
        assert th.equal(direct, fallback)  # the same fused kernel either way


def test_without_private_calls_training_uses_autograd_with_the_same_numbers(monkeypatch):
    def trained(private: bool) -> PaperDDPG:
        monkeypatch.setattr(torch_compat, "PRIVATE_CALLS", private)
        model = PaperDDPG("Pendulum-v1", learning_starts=64, policy_kwargs=dict(net_arch=[16, 16]), seed=3)
        assert isinstance(model.gradient_step, AutogradStep) != private
        model.learn(100)
        return model

    fast, public = trained(True), trained(False)
    for ours, theirs in zip(fast.policy.parameters(), public.policy.parameters(), strict=True):
        th.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    assert np.isfinite(public.logger.name_to_value["train/critic_loss"])


def test_hand_written_updates_need_every_kernel(monkeypatch, public_fallbacks):
    assert not torch_compat.hand_written_updates()
    monkeypatch.setattr(torch_compat, "PRIVATE_CALLS", True)
    assert torch_compat.hand_written_updates()
    model = PaperDDPG("Pendulum-v1", policy_kwargs=dict(net_arch=[8, 8]))
    assert isinstance(gradient_step_for(model.policy), MLPUpdate)
    monkeypatch.setattr(torch_compat.ATEN, "native_batch_norm_backward", None)  # as on a PyTorch without it
    assert not torch_compat.hand_written_updates()
    assert isinstance(gradient_step_for(model.policy), AutogradStep)
