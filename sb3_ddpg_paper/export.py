"""
Weights-only export of a PaperDDPG policy, and a loader that cannot execute code from the file.

``PaperDDPG.load`` unpickles parts of the zip, which can run arbitrary code: it is only for files you trust. To share a
policy, export it: :func:`export_policy` writes ONE ``.safetensors`` file holding the actor's tensors (weights and
batch-norm running statistics; optionally the critic's) and, in the safetensors header, a JSON description of the
architecture and of the observation and action spaces. :func:`load_exported_policy` reads it without unpickling
anything, checks it strictly, rebuilds the networks from classes of this package and SB3 chosen from fixed allowlists,
and returns an :class:`ExportedPolicy` whose ``predict`` returns exactly what the original model's ``predict`` returns.

Checks on load: the file's SHA-256 against ``expected_sha256`` when given (publish the value :func:`export_policy`
returns: this is what makes a file authentic), the header parsed by safetensors (no code), the JSON against a strict
schema (known keys, types, ranges and allowlisted class names only, sizes bounded so that a malicious header cannot
make the loader allocate huge networks), the networks first built on PyTorch's ``meta`` device (no memory) and their
tensor names, shapes and dtypes compared with the file's, finite values, and a SHA-256 over the architecture and every
tensor recorded at export (it detects corruption and edits that do not also rewrite the recorded digest).

Example::

    from sb3_ddpg_paper.export import export_policy, load_exported_policy

    digest = export_policy(model, "pendulum_actor.safetensors")
    policy = load_exported_policy("pendulum_actor.safetensors", expected_sha256=digest)
    action, _ = policy.predict(obs)
"""

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from stable_baselines3.common.preprocessing import get_action_dim
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, CombinedExtractor, FlattenExtractor, NatureCNN
from torch import nn

from sb3_ddpg_paper.files import atomic_write
from sb3_ddpg_paper.policies import Actor, Critic, PaperDDPGPolicy
from sb3_ddpg_paper.torch_layers import PaperCNN

FORMAT = "sb3-ddpg-paper/exported-policy"
VERSION = 1

# Allowlists: a name in the file selects one of these classes; nothing is ever imported or evaluated by name.
FEATURES_EXTRACTORS: dict[str, type[BaseFeaturesExtractor]] = {
    "FlattenExtractor": FlattenExtractor,
    "NatureCNN": NatureCNN,
    "CombinedExtractor": CombinedExtractor,
    "PaperCNN": PaperCNN,
}
# Kinds of extractor keyword values: "int" (>= 1), "int0" (>= 0), bool, float, "activation" (a name of ACTIVATIONS)
_EXTRACTOR_KWARGS: dict[str, dict[str, Any]] = {
    "FlattenExtractor": {},
    "NatureCNN": {"features_dim": "int", "normalized_image": bool},
    "CombinedExtractor": {"cnn_output_dim": "int", "normalized_image": bool},
    "PaperCNN": {
        "features_dim": "int",
        "filters": "int",
        "n_layers": "int",
        "kernel_size": "int",
        "stride": "int",
        "padding": "int0",
        "activation_fn": "activation",
        "batch_norm": bool,
        "batch_norm_momentum": float,
        "batch_norm_eps": float,
    },
}
# Keyword arguments that only affect the initial weights: irrelevant to a loaded network, left out of the file
_INIT_ONLY_KWARGS = {"weight_init"}
ACTIVATIONS: dict[str, type[nn.Module]] = {
    cls.__name__: cls for cls in (nn.ReLU, nn.Tanh, nn.ELU, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Softplus)
}
_DTYPES = {"float32", "float64", "float16", "uint8", "int8", "int16", "int32", "int64", "bool"}
_TENSOR_DTYPES = {"float32": th.float32, "float64": th.float64, "int64": th.int64}

# Bounds that a legitimate policy never reaches and that keep a hostile header from exhausting memory
MAX_SPACE_ELEMENTS = 1 << 24
MAX_LAYERS = 64
MAX_WIDTH = 1 << 16
MAX_DICT_KEYS = 64


class ExportError(ValueError):
    """The exported file is invalid, tampered with, or describes something this loader does not build."""


# ---------------------------------------------------------------------------------------------------- spaces <-> JSON
def _bound_to_json(values: np.ndarray) -> Any:
    flat = values.reshape(-1)
    if flat.size and np.all(flat == flat[0]):
        return flat[0].item()  # images: one number instead of 84 * 84 * 3
    return values.tolist()


def _space_to_json(space: spaces.Space) -> dict[str, Any]:
    if isinstance(space, spaces.Box):
        return {
            "type": "Box",
            "shape": list(space.shape),
            "dtype": str(space.dtype),
            "low": _bound_to_json(space.low),
            "high": _bound_to_json(space.high),
        }
    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "spaces": {key: _space_to_json(sub) for key, sub in space.spaces.items()}}
    raise ExportError(f"Cannot export a policy for the space {space}: Box and Dict of Box are supported.")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ExportError(f"Invalid exported policy: {message}")


def _check_keys(obj: Any, where: str, required: set[str], optional: frozenset[str] = frozenset()) -> None:
    _require(isinstance(obj, dict), f"{where} must be a JSON object")
    keys = set(obj)
    _require(required <= keys, f"{where} lacks {sorted(required - keys)}")
    _require(keys <= required | optional, f"{where} has unknown keys {sorted(keys - required - optional)}")


def _int(value: Any, where: str, low: int, high: int) -> int:
    _require(
        isinstance(value, int) and not isinstance(value, bool) and low <= value <= high,
        f"{where} must be an integer in [{low}, {high}]",
    )
    return value


def _number(value: Any, where: str) -> float:
    _require(isinstance(value, int | float) and not isinstance(value, bool), f"{where} must be a number")
    return float(value)


def _bound_from_json(value: Any, shape: tuple[int, ...], dtype: np.dtype, where: str) -> np.ndarray:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return np.full(shape, value, dtype=dtype)
    _require(isinstance(value, list), f"{where} must be a number or a nested list")
    try:
        array = np.array(value, dtype=dtype)
    except (TypeError, ValueError) as error:
        raise ExportError(f"Invalid exported policy: {where} is not numeric ({error})") from error
    _require(array.shape == shape, f"{where} has shape {array.shape}, expected {shape}")
    return array


def _space_from_json(obj: Any, where: str, depth: int = 0) -> spaces.Space:
    _require(isinstance(obj, dict) and obj.get("type") in ("Box", "Dict"), f"{where} must be a Box or Dict space")
    if obj["type"] == "Dict":
        _require(depth == 0, f"{where}: nested Dict spaces are not supported")
        _check_keys(obj, where, {"type", "spaces"})
        subspaces = obj["spaces"]
        _require(
            isinstance(subspaces, dict) and 0 < len(subspaces) <= MAX_DICT_KEYS, f"{where}.spaces must be a non-empty object"
        )
        return spaces.Dict({str(k): _space_from_json(v, f"{where}.spaces.{k}", depth + 1) for k, v in subspaces.items()})
    _check_keys(obj, where, {"type", "shape", "dtype", "low", "high"})
    shape_list = obj["shape"]
    _require(isinstance(shape_list, list) and 0 < len(shape_list) <= 8, f"{where}.shape must be a list of 1 to 8 sizes")
    shape = tuple(_int(n, f"{where}.shape", 1, MAX_SPACE_ELEMENTS) for n in shape_list)
    _require(math.prod(shape) <= MAX_SPACE_ELEMENTS, f"{where} has more than {MAX_SPACE_ELEMENTS} elements")
    _require(obj["dtype"] in _DTYPES, f"{where}.dtype must be one of {sorted(_DTYPES)}")
    dtype = np.dtype(obj["dtype"])
    low = _bound_from_json(obj["low"], shape, dtype, f"{where}.low")
    high = _bound_from_json(obj["high"], shape, dtype, f"{where}.high")
    _require(bool(np.all(low <= high)), f"{where}: low > high")
    return spaces.Box(low=low, high=high, shape=shape, dtype=dtype)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------- networks <-> JSON
def _network_to_json(net: Actor | Critic, policy: PaperDDPGPolicy) -> dict[str, Any]:
    extractor_name = type(net.features_extractor).__name__
    if FEATURES_EXTRACTORS.get(extractor_name) is not type(net.features_extractor):
        raise ExportError(
            f"Cannot export the features extractor {type(net.features_extractor).__qualname__}: the loader only rebuilds "
            f"{sorted(FEATURES_EXTRACTORS)} (a custom extractor would need its code, which export leaves out on purpose)."
        )
    extractor_kwargs = {k: v for k, v in policy.features_extractor_kwargs.items() if k not in _INIT_ONLY_KWARGS}
    if "activation_fn" in extractor_kwargs:
        extractor_activation = extractor_kwargs["activation_fn"]
        if ACTIVATIONS.get(getattr(extractor_activation, "__name__", "")) is not extractor_activation:
            raise ExportError(f"Cannot export the activation {extractor_activation}: supported {sorted(ACTIVATIONS)}.")
        extractor_kwargs["activation_fn"] = extractor_activation.__name__  # type: ignore[union-attr]
    allowed = _EXTRACTOR_KWARGS[extractor_name]
    if set(extractor_kwargs) - set(allowed):
        raise ExportError(f"Cannot export {extractor_name} kwargs {sorted(set(extractor_kwargs) - set(allowed))}.")
    activation = net.activation_fn.__name__
    if ACTIVATIONS.get(activation) is not net.activation_fn:
        raise ExportError(f"Cannot export the activation {net.activation_fn}: supported {sorted(ACTIVATIONS)}.")
    description = {
        "net_arch": list(net.net_arch),
        "features_dim": int(net.features_dim),
        "activation_fn": activation,
        "normalize_images": bool(net.normalize_images),
        "batch_norm": bool(net.batch_norm),
        "batch_norm_momentum": float(net.batch_norm_momentum),
        "batch_norm_eps": float(net.batch_norm_eps),
        "features_extractor": {"class": extractor_name, "kwargs": extractor_kwargs},
    }
    if isinstance(net, Critic):
        description.update(n_critics=int(net.n_critics), action_layer=int(net.action_layer))
    return description


_NETWORK_KEYS = {
    "net_arch",
    "features_dim",
    "activation_fn",
    "normalize_images",
    "batch_norm",
    "batch_norm_momentum",
    "batch_norm_eps",
    "features_extractor",
}


def _build_network(
    obj: Any, kind: str, observation_space: spaces.Space, action_space: spaces.Box, device: th.device | str
) -> Actor | Critic:
    where = kind
    critic_keys = {"n_critics", "action_layer"} if kind == "critic" else set()
    _check_keys(obj, where, _NETWORK_KEYS | critic_keys)
    net_arch = obj["net_arch"]
    _require(
        isinstance(net_arch, list) and len(net_arch) <= MAX_LAYERS,
        f"{where}.net_arch must be a list of <= {MAX_LAYERS} widths",
    )
    net_arch = [_int(width, f"{where}.net_arch", 1, MAX_WIDTH) for width in net_arch]
    _require(obj["activation_fn"] in ACTIVATIONS, f"{where}.activation_fn must be one of {sorted(ACTIVATIONS)}")
    for key in ("normalize_images", "batch_norm"):
        _require(isinstance(obj[key], bool), f"{where}.{key} must be true or false")
    momentum, eps = (
        _number(obj["batch_norm_momentum"], f"{where}.batch_norm_momentum"),
        _number(obj["batch_norm_eps"], f"{where}.batch_norm_eps"),
    )
    _require(
        0 <= momentum <= 1 and 0 < eps < 1, f"{where}: batch_norm_momentum must be in [0, 1] and batch_norm_eps in (0, 1)"
    )
    extractor = obj["features_extractor"]
    _check_keys(extractor, f"{where}.features_extractor", {"class", "kwargs"})
    _require(
        extractor["class"] in FEATURES_EXTRACTORS,
        f"{where}.features_extractor.class must be one of {sorted(FEATURES_EXTRACTORS)}",
    )
    allowed = _EXTRACTOR_KWARGS[extractor["class"]]
    _check_keys(extractor["kwargs"], f"{where}.features_extractor.kwargs", set(), frozenset(allowed))
    extractor_kwargs: dict[str, Any] = {}
    for key, value in extractor["kwargs"].items():
        value_kind, key_where = allowed[key], f"{where}.features_extractor.kwargs.{key}"
        if value_kind in ("int", "int0"):
            extractor_kwargs[key] = _int(value, key_where, 1 if value_kind == "int" else 0, MAX_WIDTH)
        elif value_kind is float:
            extractor_kwargs[key] = _number(value, key_where)
        elif value_kind == "activation":
            _require(value in ACTIVATIONS, f"{key_where} must be one of {sorted(ACTIVATIONS)}")
            extractor_kwargs[key] = ACTIVATIONS[value]
        else:
            _require(isinstance(value, bool), f"{key_where} must be true or false")
            extractor_kwargs[key] = value
    kwargs: dict[str, Any] = dict(
        observation_space=observation_space,
        action_space=action_space,
        net_arch=net_arch,
        activation_fn=ACTIVATIONS[obj["activation_fn"]],
        normalize_images=obj["normalize_images"],
        batch_norm=obj["batch_norm"],
        batch_norm_momentum=momentum,
        batch_norm_eps=eps,
    )
    if kind == "critic":
        kwargs["n_critics"] = _int(obj["n_critics"], "critic.n_critics", 1, 16)
        kwargs["action_layer"] = _int(obj["action_layer"], "critic.action_layer", 0, len(net_arch))
    try:
        with th.device(device):
            features_extractor = FEATURES_EXTRACTORS[extractor["class"]](observation_space, **extractor_kwargs)
            _require(
                features_extractor.features_dim == obj["features_dim"],
                f"{where}.features_dim is {obj['features_dim']!r}, but the extractor gives {features_extractor.features_dim}",
            )
            network_class = Critic if kind == "critic" else Actor
            return network_class(features_extractor=features_extractor, features_dim=obj["features_dim"], **kwargs)
    except ExportError:
        raise
    except (AssertionError, ValueError, TypeError, RuntimeError) as error:
        raise ExportError(f"Invalid exported policy: the {where} described cannot be built ({error})") from error


# ---------------------------------------------------------------------------------------------------- digest
def _digest(architecture: str, tensors: dict[str, th.Tensor]) -> str:
    digest = hashlib.sha256(architecture.encode())
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"\0{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(th.uint8).numpy().tobytes())
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------- public API
def export_policy(model: Any, path: str | os.PathLike, include_critic: bool = False) -> str:
    """
    Write the actor (and optionally the critic) of ``model`` to a ``.safetensors`` file that
    :func:`load_exported_policy` loads without executing anything. The file is written atomically.

    :param model: a trained :class:`~sb3_ddpg_paper.PaperDDPG` or its :class:`~sb3_ddpg_paper.PaperDDPGPolicy`
    :param path: the file to write (conventionally ``*.safetensors``)
    :param include_critic: also export the critic (for ``ExportedPolicy.q_value``)
    :return: the SHA-256 of the file, to publish with it and pass as ``expected_sha256`` when loading
    """
    policy = getattr(model, "policy", model)
    if not isinstance(policy, PaperDDPGPolicy):
        raise ExportError(f"export_policy takes a PaperDDPG model or a PaperDDPGPolicy, got {type(model).__name__}.")
    description: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "observation_space": _space_to_json(policy.observation_space),
        "action_space": _space_to_json(policy.action_space),
        "actor": _network_to_json(policy.actor, policy),
        "critic": _network_to_json(policy.critic, policy) if include_critic else None,
    }
    architecture = json.dumps(description, sort_keys=True, allow_nan=True)
    tensors = {f"actor.{k}": v.detach().cpu().clone().contiguous() for k, v in policy.actor.state_dict().items()}
    if include_critic:
        tensors.update({f"critic.{k}": v.detach().cpu().clone().contiguous() for k, v in policy.critic.state_dict().items()})
    metadata = {"format": FORMAT, "architecture": architecture, "sha256": _digest(architecture, tensors)}
    content = safetensors_save(tensors, metadata=metadata)
    atomic_write(path, lambda file: file.write(content))
    return hashlib.sha256(content).hexdigest()


class ExportedPolicy:
    """
    A policy rebuilt from an exported file: ``predict`` as SB3's (deterministic; batched or single observations,
    actions rescaled to the action space) and, when the critic was exported, ``q_value``.

    :param actor: the actor network (evaluation mode)
    :param critic: the critic network, or None
    :param metadata: the file's architecture description
    """

    def __init__(self, actor: Actor, critic: Critic | None, metadata: dict[str, Any]):
        self.actor = actor
        self.critic = critic
        self.metadata = metadata
        self.observation_space = actor.observation_space
        self.action_space = actor.action_space
        actor.set_training_mode(False)  # batch norm uses the exported running statistics, as PaperDDPG.predict does
        if critic is not None:
            critic.set_training_mode(False)

    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """The action for ``observation`` (DDPG's policy is deterministic; the arguments mirror SB3's ``predict``)."""
        return self.actor.predict(observation, state, episode_start, deterministic)

    def q_value(self, observation: np.ndarray | dict[str, np.ndarray], action: np.ndarray) -> np.ndarray:
        """Q(s, a) of the exported critic for a batch of observations and actions (actions in the env's bounds)."""
        if self.critic is None:
            raise ExportError("This file was exported without the critic: export_policy(..., include_critic=True).")
        obs_tensor, _ = self.actor.obs_to_tensor(observation)
        scaled = self.actor.scale_action(np.asarray(action, dtype=np.float32).reshape(-1, get_action_dim(self.action_space)))
        with th.no_grad():
            actions = th.as_tensor(scaled, device=self.actor.device)
            return self.critic.q1_forward(obs_tensor, actions).cpu().numpy()  # type: ignore[arg-type]


def load_exported_policy(
    path: str | os.PathLike, expected_sha256: str | None = None, device: th.device | str = "cpu"
) -> ExportedPolicy:
    """
    Rebuild a policy from a file written by :func:`export_policy`, without unpickling or executing anything from it.

    :param path: the exported file
    :param expected_sha256: the SHA-256 published with the file (``export_policy``'s return value); checked first
    :param device: device of the rebuilt networks
    :return: the policy
    :raises ExportError: naming what is wrong (tampered, truncated, unknown keys, wrong shapes, bad description...)
    """
    path = Path(path)
    content = path.read_bytes()
    if expected_sha256 is not None and hashlib.sha256(content).hexdigest() != expected_sha256.lower():
        raise ExportError(f"{path} does not have the expected SHA-256: it is not the file that was published.")
    try:
        tensors = safetensors_load(content)
        header_length = int.from_bytes(content[:8], "little")
        header = json.loads(content[8 : 8 + header_length])
    except (SafetensorError, ValueError, OSError) as error:
        raise ExportError(f"{path} is not a valid safetensors file ({error}).") from error
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not (isinstance(metadata, dict) and metadata.get("format") == FORMAT):
        raise ExportError(f"{path} is not a file written by export_policy (no {FORMAT!r} metadata).")
    _check_keys(metadata, "the header metadata", {"format", "architecture", "sha256"})
    try:
        description = json.loads(metadata["architecture"])
    except ValueError as error:
        raise ExportError(f"Invalid exported policy: the architecture is not JSON ({error}).") from error
    _check_keys(description, "the architecture", {"format", "version", "observation_space", "action_space", "actor", "critic"})
    _require(
        description["format"] == FORMAT and description["version"] == VERSION,
        f"unsupported format version {description['version']!r}",
    )
    if _digest(metadata["architecture"], tensors) != metadata["sha256"]:
        raise ExportError(f"{path} was modified after export: its content does not match the SHA-256 recorded in it.")

    observation_space = _space_from_json(description["observation_space"], "observation_space")
    action_space = _space_from_json(description["action_space"], "action_space")
    _require(
        isinstance(action_space, spaces.Box)
        and bool(np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))),
        "action_space must be a Box with finite bounds",
    )
    assert isinstance(action_space, spaces.Box)

    networks: dict[str, nn.Module] = {}
    expected_names: set[str] = set()
    for kind in ("actor", "critic"):
        if kind == "critic" and description["critic"] is None:
            continue
        # Built on the meta device first: checks the description against the file without allocating anything
        meta = _build_network(description[kind], kind, observation_space, action_space, "meta")
        for name, expected in meta.state_dict().items():
            key = f"{kind}.{name}"
            expected_names.add(key)
            _require(key in tensors, f"tensor {key} is missing")
            tensor = tensors[key]
            _require(
                tensor.shape == expected.shape and tensor.dtype == expected.dtype,
                f"tensor {key} has shape {tuple(tensor.shape)} and dtype {tensor.dtype}; "
                f"the architecture needs {tuple(expected.shape)} and {expected.dtype}",
            )
            _require(not tensor.is_floating_point() or bool(th.isfinite(tensor).all()), f"tensor {key} holds NaN or inf")
        network = _build_network(description[kind], kind, observation_space, action_space, device)
        network.load_state_dict({name: tensors[f"{kind}.{name}"] for name in network.state_dict()}, strict=True)
        networks[kind] = network
    # Batch norm's step counters, written by version 0.1.0 and no longer part of the networks' state
    unknown = {name for name in set(tensors) - expected_names if not name.endswith(".num_batches_tracked")}
    _require(not unknown, f"unknown tensors {sorted(unknown)}")
    actor, critic = networks["actor"], networks.get("critic")
    assert isinstance(actor, Actor) and (critic is None or isinstance(critic, Critic))
    return ExportedPolicy(actor, critic, description)
