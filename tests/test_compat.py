"""Files saved by earlier versions keep loading (fixtures made by tests/fixtures/make_v0_1_0.py at 0.1.0)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch as th

from sb3_ddpg_paper import PaperDDPG
from sb3_ddpg_paper.checkpoints import load_checkpoint
from sb3_ddpg_paper.export import load_exported_policy

V0_1_0 = Path(__file__).parent / "fixtures" / "v0.1.0"
EXPECTED = json.loads((V0_1_0 / "expected.json").read_text())
OBSERVATIONS = np.array(EXPECTED["observations"], dtype=np.float32)


def _assert_same_policy(predict) -> None:
    actions, _ = predict(OBSERVATIONS)
    np.testing.assert_allclose(actions, np.array(EXPECTED["actions"]), rtol=0, atol=1e-6)


def test_model_zip_of_0_1_0_loads_and_continues() -> None:
    model = PaperDDPG.load(V0_1_0 / "model.zip", device="cpu")
    _assert_same_policy(model.predict)
    assert model.num_timesteps == EXPECTED["num_timesteps"]
    # Float-only parameters now (batch norm's step counter is no longer saved), whatever the file held
    assert all(
        value.is_floating_point() for net in model.get_parameters().values() for value in net.values() if th.is_tensor(value)
    )


def test_checkpoint_of_0_1_0_resumes() -> None:
    model = PaperDDPG.resume(V0_1_0 / "checkpoints", device="cpu")
    _assert_same_policy(model.predict)
    assert model.replay_buffer is not None and model.replay_buffer.size() == EXPECTED["num_timesteps"]
    model.learn(50, reset_num_timesteps=False)
    assert model.num_timesteps == EXPECTED["num_timesteps"] + 50
    # Its manifest names no class: loaded as PaperDDPG, the only algorithm 0.1.0 resumed by default
    assert type(load_checkpoint(V0_1_0 / "checkpoints", device="cpu")) is PaperDDPG


@pytest.mark.parametrize("name", ["actor.safetensors", "actor_critic.safetensors"])
def test_export_of_0_1_0_loads(name: str) -> None:
    policy = load_exported_policy(V0_1_0 / name)
    _assert_same_policy(policy.predict)
