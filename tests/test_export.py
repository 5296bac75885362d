"""Weights-only export: exact predictions, and tampered files rejected without executing anything."""

import json
import pickle

import numpy as np
import pytest
import torch as th
from conftest import RandomEnv
from gymnasium import spaces
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, NatureCNN

from sb3_ddpg_paper import PaperDDPG
from sb3_ddpg_paper.export import ExportError, _digest, export_policy, load_exported_policy

# Asymmetric bounds: the export must rescale actions as the policy does
ACTIONS = spaces.Box(np.array([-2.0, 0.0], dtype=np.float32), np.array([2.0, 5.0], dtype=np.float32))


@pytest.fixture(scope="module")
def trained():
    # Trained so that the batch-norm running statistics are far from their initial values
    return PaperDDPG("MlpPolicy", "Pendulum-v1", buffer_size=500, learning_starts=20, batch_size=8,
                     policy_kwargs=dict(net_arch=[16, 16]), seed=0).learn(80)  # fmt: skip


@pytest.fixture
def exported(trained, tmp_path):
    path = tmp_path / "policy.safetensors"
    digest = export_policy(trained, path, include_critic=True)
    return path, digest


def observations(space: spaces.Space, n: int, seed: int = 0):
    space.seed(seed)
    samples = [space.sample() for _ in range(n)]
    if isinstance(space, spaces.Dict):
        return {key: np.stack([s[key] for s in samples]) for key in space.spaces}
    return np.stack(samples)


def test_exported_policy_reproduces_predict_exactly(trained, exported):
    path, digest = exported
    policy = load_exported_policy(path, expected_sha256=digest)
    obs = observations(trained.observation_space, 32) * 3  # also outside the range seen in training
    assert np.array_equal(policy.predict(obs)[0], trained.predict(obs, deterministic=True)[0])
    assert np.array_equal(policy.predict(obs[0])[0], trained.predict(obs[0], deterministic=True)[0])  # one observation
    assert policy.predict(obs[0])[0].shape == (1,)
    # Batch-norm running statistics travel with the weights
    assert th.equal(policy.actor.mu[0].running_mean, trained.actor.mu[0].running_mean)
    assert not th.equal(trained.actor.mu[0].running_mean, th.zeros_like(trained.actor.mu[0].running_mean))
    # The critic too
    actions = trained.predict(obs)[0]
    trained.policy.set_training_mode(False)
    with th.no_grad():
        expected_q = trained.critic.q1_forward(th.as_tensor(obs), th.as_tensor(trained.policy.scale_action(actions)))
    assert np.array_equal(policy.q_value(obs, actions), expected_q.numpy())


IMAGE = spaces.Box(0, 255, (3, 36, 36), np.uint8)
VECTORS = spaces.Dict({"pos": spaces.Box(-1, 1, (3,)), "vel": spaces.Box(-5, 5, (2,))})
POLICIES = {  # every policy type, with default and non-default features-extractor kwargs
    "mlp": (spaces.Box(-1, 1, (3,)), dict(net_arch=[8])),
    "cnn": (IMAGE, dict(net_arch=[8])),
    "cnn-filters": (IMAGE, dict(net_arch=[8], features_extractor_kwargs=dict(filters=4, padding=1))),
    "cnn-features-dim": (IMAGE, dict(net_arch=[8], features_extractor_kwargs=dict(features_dim=16, batch_norm=False))),
    "nature-cnn": (
        spaces.Box(0, 255, (36, 36, 3), np.uint8),
        dict(net_arch=[8], features_extractor_class=NatureCNN, features_extractor_kwargs=dict(features_dim=16)),
    ),
    "multi-input": (VECTORS, dict(net_arch=[8, 8])),
    "multi-input-image": (
        spaces.Dict({"image": IMAGE, "vel": spaces.Box(-5, 5, (2,))}),
        dict(net_arch=[8], features_extractor_kwargs=dict(cnn_output_dim=12)),
    ),
}


@pytest.mark.parametrize("include_critic", [False, True])
@pytest.mark.parametrize("kind", POLICIES)
def test_every_policy_type_exports_exactly(tmp_path, kind, include_critic):
    observation_space, policy_kwargs = POLICIES[kind]
    model = PaperDDPG(env=RandomEnv(observation_space, ACTIONS), buffer_size=100, learning_starts=8, batch_size=4,
                      policy_kwargs=policy_kwargs, seed=0).learn(16)  # fmt: skip
    export_policy(model, tmp_path / "p.safetensors", include_critic=include_critic)
    policy = load_exported_policy(tmp_path / "p.safetensors")
    obs = observations(observation_space, 5)
    actions = model.predict(obs)[0]
    assert np.array_equal(policy.predict(obs)[0], actions)
    if not include_critic:
        assert policy.critic is None
        with pytest.raises(ExportError, match="exported without the critic"):
            policy.q_value(obs, actions)
        return
    model.policy.set_training_mode(False)
    with th.no_grad():
        obs_tensor, _ = model.policy.obs_to_tensor(obs)
        expected_q = model.critic.q1_forward(obs_tensor, th.as_tensor(model.policy.scale_action(actions)))
    assert np.array_equal(policy.q_value(obs, actions), expected_q.numpy())


def test_loading_unpickles_nothing(exported, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the loader must not unpickle")

    for target in ("pickle.load", "pickle.loads", "torch.load", "pickle.Unpickler"):
        monkeypatch.setattr(target, forbidden)
    monkeypatch.setattr("builtins.eval", forbidden)
    monkeypatch.setattr("builtins.exec", forbidden)
    policy = load_exported_policy(exported[0])
    assert policy.predict(np.zeros(3, dtype=np.float32))[0].shape == (1,)


def test_export_refuses_a_custom_features_extractor(tmp_path):
    class Custom(BaseFeaturesExtractor):
        def __init__(self, observation_space):
            super().__init__(observation_space, 3)
            self.linear = th.nn.Linear(3, 3)

        def forward(self, obs):
            return self.linear(obs)

    model = PaperDDPG("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(net_arch=[8], features_extractor_class=Custom))
    with pytest.raises(ExportError, match=r"Cannot export the features extractor .*Custom"):
        export_policy(model, tmp_path / "p.safetensors")
    assert not (tmp_path / "p.safetensors").exists()


# ---------------------------------------------------------------------------------------------------- tampering
def rewrite(path, edit_tensors=None, edit_architecture=None, recompute_digest=True):
    """Re-write an exported file as an attacker would, keeping the internal digest consistent unless told not to."""
    content = path.read_bytes()
    tensors = safetensors_load(content)
    metadata = json.loads(content[8 : 8 + int.from_bytes(content[:8], "little")])["__metadata__"]
    if edit_tensors:
        edit_tensors(tensors)
    if edit_architecture:
        architecture = json.loads(metadata["architecture"])
        edit_architecture(architecture)
        metadata["architecture"] = json.dumps(architecture)
    if recompute_digest:
        metadata["sha256"] = _digest(metadata["architecture"], tensors)
    path.write_bytes(safetensors_save(tensors, metadata=metadata))


def test_changed_bytes_are_rejected(exported):
    path, digest = exported
    content = bytearray(path.read_bytes())
    content[-7] ^= 0x01  # one bit of the last tensor
    path.write_bytes(bytes(content))
    with pytest.raises(ExportError, match="does not have the expected SHA-256"):
        load_exported_policy(path, expected_sha256=digest)
    with pytest.raises(ExportError, match="was modified after export"):
        load_exported_policy(path)


@pytest.mark.parametrize("size", [0, 7, 100, -10])
def test_truncated_file_is_rejected(exported, size):
    path, _ = exported
    path.write_bytes(path.read_bytes()[:size])
    with pytest.raises(ExportError, match="not a valid safetensors file"):
        load_exported_policy(path)


def test_edited_architecture_without_digest_update_is_rejected(exported):
    path, _ = exported
    rewrite(path, edit_architecture=lambda a: a["actor"].update(activation_fn="Tanh"), recompute_digest=False)
    with pytest.raises(ExportError, match="was modified after export"):
        load_exported_policy(path)


def test_wrong_shapes_are_rejected(exported):
    path, _ = exported
    rewrite(path, edit_tensors=lambda t: t.update({"actor.mu.1.weight": th.zeros(16, 4)}))
    with pytest.raises(ExportError, match=r"tensor actor.mu.1.weight has shape \(16, 4\).*needs \(16, 3\)"):
        load_exported_policy(path)


def test_unknown_and_missing_tensors_are_rejected(exported):
    path, _ = exported
    rewrite(path, edit_tensors=lambda t: t.update({"actor.extra": th.zeros(1)}))
    with pytest.raises(ExportError, match=r"unknown tensors \['actor.extra'\]"):
        load_exported_policy(path)
    rewrite(path, edit_tensors=lambda t: t.pop("actor.extra") is not None and t.pop("critic.qf0.state_net.0.running_var"))
    with pytest.raises(ExportError, match=r"tensor critic.qf0.state_net.0.running_var is missing"):
        load_exported_policy(path)


def test_non_finite_weights_are_rejected(exported):
    path, _ = exported
    rewrite(path, edit_tensors=lambda t: t["actor.mu.1.weight"].fill_(float("nan")))
    with pytest.raises(ExportError, match=r"actor.mu.1.weight holds NaN or inf"):
        load_exported_policy(path)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda a: a["actor"]["features_extractor"].update({"class": "os.system"}), "class must be one of"),
        (
            lambda a: a["actor"]["features_extractor"].update({"class": "__import__('os').system('touch PWNED')"}),
            "class must be one of",
        ),
        (lambda a: a["actor"].update(activation_fn="eval"), "activation_fn must be one of"),
        (lambda a: a["actor"]["features_extractor"]["kwargs"].update({"__class__": "x"}), "unknown keys"),
        (lambda a: a["actor"].update(__reduce__="os.system"), r"unknown keys \['__reduce__'\]"),
        (lambda a: a.update(extra=1), r"the architecture has unknown keys \['extra'\]"),
        (lambda a: a["actor"].update(net_arch=[10**9]), "net_arch must be an integer in"),
        (lambda a: a["actor"].update(net_arch=[60_000] * 60), "has shape"),  # large but bounded: checked on meta
        (lambda a: a["actor"].update(net_arch="16,16"), "net_arch must be a list"),
        (lambda a: a["observation_space"].update(shape=[10**6, 10**6]), "more than"),
        (lambda a: a["observation_space"].update(dtype="object"), "dtype must be one of"),
        (lambda a: a["observation_space"].update(type="Tuple"), "must be a Box or Dict space"),
        (lambda a: a["action_space"].update(low=float("-inf")), "finite bounds"),
        (lambda a: a["actor"].update(batch_norm="yes"), "batch_norm must be true or false"),
        (lambda a: a.update(version=99), "unsupported format version 99"),
    ],
)
def test_malicious_or_invalid_description_is_rejected(exported, tmp_path, monkeypatch, edit, match):
    path, _ = exported
    monkeypatch.chdir(tmp_path)
    rewrite(path, edit_architecture=edit)
    with pytest.raises(ExportError, match=match):
        load_exported_policy(path)
    assert not (tmp_path / "PWNED").exists()


def test_invalid_json_and_missing_metadata_are_rejected(exported, trained, tmp_path):
    path, _ = exported
    content = path.read_bytes()
    metadata = json.loads(content[8 : 8 + int.from_bytes(content[:8], "little")])["__metadata__"]
    tensors = safetensors_load(content)
    path.write_bytes(safetensors_save(tensors, metadata={**metadata, "architecture": "{not json"}))
    with pytest.raises(ExportError, match="the architecture is not JSON"):
        load_exported_policy(path)
    path.write_bytes(safetensors_save(tensors))
    with pytest.raises(ExportError, match="not a file written by export_policy"):
        load_exported_policy(path)
    # An SB3 zip (a pickle inside) is not accepted as an exported file either
    trained.save(tmp_path / "model.zip")
    with pytest.raises(ExportError, match="not a valid safetensors file"):
        load_exported_policy(tmp_path / "model.zip")
    # and a pickle is never unpickled
    (tmp_path / "evil.safetensors").write_bytes(pickle.dumps(print))
    with pytest.raises(ExportError, match="not a valid safetensors file"):
        load_exported_policy(tmp_path / "evil.safetensors")
