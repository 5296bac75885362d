"""
Safe parsing of the RL Zoo's Python-expression hyperparameters.

rl_zoo3 passes the strings of ``policy_kwargs``, ``replay_buffer_class``, ``replay_buffer_kwargs``, ``normalize`` and
``monitor_kwargs`` to ``eval()``, and imports whatever dotted name ``policy``, ``env_wrapper``, ``vec_env_wrapper``
and ``callback`` give, then calls it with the YAML's keyword arguments. A hyperparameter file is data that travels
(shared configs, tuned files downloaded with a paper); this module makes it data again:

- expression strings are parsed with :mod:`ast` and evaluated by a small interpreter that knows literals,
  ``dict``/``list``/``tuple``/``set`` displays and calls, unary +/- on numbers, and a whitelist of names
  (:data:`ALLOWED_NAMES`, plus attribute paths below ``nn``/``th``/``torch`` that end in a module class, an optimizer
  class or a ``torch.nn.init`` function);
- dotted names are imported (importing installed code is how the zoo finds them) and must resolve to a class of the
  expected kind: a gymnasium ``Wrapper`` for ``env_wrapper``, a ``VecEnvWrapper`` for ``vec_env_wrapper``, an SB3
  ``BaseCallback`` for ``callback``, an SB3 ``BasePolicy`` for ``policy``.

Anything else raises :class:`UnsafeConfigError`, naming the key and the offending expression. This module does not
import rl_zoo3 (which patches gymnasium on import).
"""

import ast
import importlib
import types
from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym
import torch as th
from stable_baselines3 import HerReplayBuffer
from stable_baselines3.common.buffers import DictReplayBuffer, NStepReplayBuffer, ReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.torch_layers import (
    BaseFeaturesExtractor,
    CombinedExtractor,
    FlattenExtractor,
    NatureCNN,
)
from stable_baselines3.common.vec_env import VecEnvWrapper
from torch import nn

import sb3_ddpg_paper
from sb3_ddpg_paper.noise import OrnsteinUhlenbeckNoise
from sb3_ddpg_paper.policies import CnnPolicy, MlpPolicy, MultiInputPolicy, PaperDDPGPolicy

#: Keys whose string values rl_zoo3 passes to ``eval()``.
EXPRESSION_KEYS = ("policy_kwargs", "replay_buffer_class", "replay_buffer_kwargs", "normalize", "monitor_kwargs")
#: Keys whose string values this package parses as expressions too (rl_zoo3 would pass the raw string on).
PACKAGE_EXPRESSION_KEYS = ("action_noise_kwargs",)
#: Keys whose values rl_zoo3 imports by dotted name, and the base class the imported object must derive from.
IMPORTED_NAME_KEYS: dict[str, type] = {
    "policy": BasePolicy,
    "env_wrapper": gym.Wrapper,
    "vec_env_wrapper": VecEnvWrapper,
    "callback": BaseCallback,
}

#: Names an expression may use directly.
ALLOWED_NAMES: dict[str, Any] = {
    # torch, as the zoo's own namespace spells it (``nn.ReLU``, ``th.optim.Adam``); attribute paths below are checked
    "nn": nn,
    "th": th,
    "torch": th,
    # SB3 replay buffers and feature extractors
    "ReplayBuffer": ReplayBuffer,
    "DictReplayBuffer": DictReplayBuffer,
    "NStepReplayBuffer": NStepReplayBuffer,
    "HerReplayBuffer": HerReplayBuffer,
    "FlattenExtractor": FlattenExtractor,
    "CombinedExtractor": CombinedExtractor,
    "NatureCNN": NatureCNN,
    # this package
    "PaperDDPGPolicy": PaperDDPGPolicy,
    "MlpPolicy": MlpPolicy,
    "CnnPolicy": CnnPolicy,
    "MultiInputPolicy": MultiInputPolicy,
    "OrnsteinUhlenbeckNoise": OrnsteinUhlenbeckNoise,
    **{name: getattr(sb3_ddpg_paper, name) for name in sb3_ddpg_paper.__all__ if name.startswith("init_")},
}
_CONTAINER_CALLS: dict[str, Callable[..., Any]] = {"dict": dict, "list": list, "tuple": tuple, "set": set}
_CONSTANTS = (int, float, complex, str, bytes, bool, type(None))
# Modules an attribute path may walk through, and what it may end on
_WALKABLE_MODULES = (th, th.nn, th.optim, th.nn.init)
_ALLOWED_CLASSES = (nn.Module, th.optim.Optimizer, BaseFeaturesExtractor, ReplayBuffer)

ACCEPTED = (
    "accepted: literals (numbers, strings, True/False/None), dict/list/tuple/set displays, dict(...)/list(...)/"
    "tuple(...)/set(...) calls, unary +/- on numbers, and the names nn.<Module class> (e.g. nn.ReLU), "
    "th.optim.<Optimizer> (e.g. th.optim.Adam), nn.init.<function>, SB3 replay buffers (HerReplayBuffer, ...) and "
    "feature extractors (NatureCNN, ...), and this package's policies, noise and init functions (PaperDDPGPolicy, ...)"
)


class UnsafeConfigError(ValueError):
    """A hyperparameter value would run code that is not on the whitelist; nothing has been executed."""

    def __init__(self, key: str, expression: str, reason: str, accepted: str = ACCEPTED) -> None:
        self.key = key
        self.expression = expression
        self.reason = reason
        super().__init__(f"Refused hyperparameter {key!r}: {expression!r}: {reason}. The value is not evaluated; {accepted}.")


class _Refused(Exception):
    """Internal: the part of the expression that is not allowed, and why."""

    def __init__(self, node: ast.AST, reason: str) -> None:
        self.node = node
        self.reason = reason
        super().__init__(reason)


def _resolve_attribute(node: ast.Attribute) -> Any:
    parts: list[str] = []
    current: ast.expr = node
    while isinstance(current, ast.Attribute):
        parts.append(current.attr)
        current = current.value
    if not isinstance(current, ast.Name):
        raise _Refused(node, "attribute access is only allowed on names such as nn.ReLU")
    parts.reverse()
    if current.id not in ("nn", "th", "torch"):
        raise _Refused(node, f"attribute access is only allowed below nn, th and torch, not {current.id!r}")
    obj: Any = ALLOWED_NAMES[current.id]
    for i, part in enumerate(parts):
        if part.startswith("_"):
            raise _Refused(node, f"private attribute {part!r}")
        if not (isinstance(obj, types.ModuleType) and obj in _WALKABLE_MODULES):
            raise _Refused(node, "attribute paths may only walk through torch, torch.nn, torch.optim and torch.nn.init")
        if not hasattr(obj, part):
            raise _Refused(node, f"{'.'.join([current.id, *parts[: i + 1]])} does not exist")
        obj = getattr(obj, part)
    if isinstance(obj, type) and issubclass(obj, _ALLOWED_CLASSES):
        return obj
    if isinstance(obj, types.FunctionType) and getattr(obj, "__module__", None) == "torch.nn.init":
        return obj
    raise _Refused(node, "only torch module classes, optimizer classes and torch.nn.init functions may be named")


def _evaluate(node: ast.AST) -> Any:  # noqa: C901
    if isinstance(node, ast.Constant):
        if not isinstance(node.value, _CONSTANTS):
            raise _Refused(node, f"constant of type {type(node.value).__name__}")
        return node.value
    if isinstance(node, ast.Dict):
        if any(key is None for key in node.keys):
            raise _Refused(node, "'**' unpacking")
        return {_evaluate(key): _evaluate(value) for key, value in zip(node.keys, node.values, strict=True)}  # type: ignore[arg-type]
    if isinstance(node, ast.List | ast.Tuple | ast.Set):
        if any(isinstance(element, ast.Starred) for element in node.elts):
            raise _Refused(node, "'*' unpacking")
        elements = [_evaluate(element) for element in node.elts]
        return {ast.List: list, ast.Tuple: tuple, ast.Set: set}[type(node)](elements)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd | ast.USub):
        operand = _evaluate(node.operand)
        if isinstance(operand, bool) or not isinstance(operand, int | float):
            raise _Refused(node, "unary +/- is only allowed on numbers")
        return +operand if isinstance(node.op, ast.UAdd) else -operand
    if isinstance(node, ast.Name):
        if node.id in ALLOWED_NAMES:
            return ALLOWED_NAMES[node.id]
        raise _Refused(node, f"name {node.id!r} is not on the whitelist")
    if isinstance(node, ast.Attribute):
        return _resolve_attribute(node)
    if isinstance(node, ast.Call):
        if not (isinstance(node.func, ast.Name) and node.func.id in _CONTAINER_CALLS):
            raise _Refused(node, "the only calls allowed are dict(...), list(...), tuple(...) and set(...)")
        if any(keyword.arg is None for keyword in node.keywords) or any(isinstance(a, ast.Starred) for a in node.args):
            raise _Refused(node, "'*'/'**' unpacking")
        args = [_evaluate(arg) for arg in node.args]
        kwargs = {str(keyword.arg): _evaluate(keyword.value) for keyword in node.keywords}
        try:
            return _CONTAINER_CALLS[node.func.id](*args, **kwargs)
        except TypeError as error:
            raise _Refused(node, str(error)) from error
    raise _Refused(node, f"{type(node).__name__} expressions are not allowed")


def safe_eval(expression: str, key: str = "<expression>") -> Any:
    """
    Evaluate a hyperparameter expression such as ``"dict(net_arch=[400, 300], activation_fn=nn.ReLU)"`` without
    executing arbitrary code.

    :param expression: the Python expression, as written in the YAML file
    :param key: the hyperparameter it belongs to (for the error message)
    :return: the value
    :raises UnsafeConfigError: if the expression uses anything outside the whitelist, or is not valid Python
    """
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as error:
        raise UnsafeConfigError(key, expression, f"not a valid Python expression ({error.msg})") from None
    try:
        return _evaluate(tree.body)
    except _Refused as refused:
        segment = ast.get_source_segment(expression.strip(), refused.node) or ast.unparse(refused.node)
        reason = refused.reason if segment == expression.strip() else f"{refused.reason}, in {segment!r}"
        raise UnsafeConfigError(key, expression, reason) from None


def _import_by_name(key: str, name: str, base: type) -> type:
    module_name, _, attribute = name.rpartition(".")
    if not module_name or any(not part.isidentifier() or part.startswith("_") for part in name.split(".")):
        raise UnsafeConfigError(key, name, "expected a dotted path to a public class, e.g. package.module.Class", "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UnsafeConfigError(key, name, f"cannot import module {module_name!r} ({error})", "") from None
    obj = getattr(module, attribute, None)
    if not (isinstance(obj, type) and issubclass(obj, base)):
        raise UnsafeConfigError(
            key,
            name,
            f"resolves to {obj!r}",
            f"accepted: a class deriving from {base.__module__}.{base.__qualname__}",
        )
    return obj


def check_imported_names(key: str, value: Any) -> None:
    """
    Check a ``policy``, ``env_wrapper``, ``vec_env_wrapper`` or ``callback`` value: every dotted name it gives (alone,
    in a list, or as the single key of a ``{name: kwargs}`` mapping) must be a class of the kind the key expects.
    The zoo then imports the same names itself.

    :raises UnsafeConfigError: naming the key and the offending name
    """
    base = IMPORTED_NAME_KEYS[key]
    if value is None or (key == "policy" and isinstance(value, str) and "." not in value):
        return  # no import: a policy alias such as "MlpPolicy"
    entries = value if isinstance(value, list) else [value]
    for entry in entries:
        if isinstance(entry, Mapping):
            if len(entry) != 1:
                raise UnsafeConfigError(key, repr(entry), "a {name: kwargs} entry must have exactly one name", "")
            name, kwargs = next(iter(entry.items()))
            if not (kwargs is None or isinstance(kwargs, Mapping)):
                raise UnsafeConfigError(key, repr(entry), "the keyword arguments must be a mapping", "")
        else:
            name = entry
        if isinstance(name, type) and issubclass(name, base):
            continue  # already a class (set from Python, e.g. by a launcher script)
        if not isinstance(name, str):
            raise UnsafeConfigError(key, repr(name), "expected a dotted class name", "")
        _import_by_name(key, name, base)


def sanitize_hyperparams(hyperparams: Mapping[str, Any]) -> dict[str, Any]:
    """
    Return a copy of one environment's hyperparameters in which every string the zoo would ``eval()`` is replaced by
    its safely evaluated value (so rl_zoo3 never evaluates it), and every imported name is checked.

    ``normalize`` strings become dicts (rl_zoo3 accepts both), ``action_noise_kwargs`` strings become dicts too.

    :raises UnsafeConfigError: for the first value that is refused, before anything has been built or run
    """
    result = dict(hyperparams)
    for key in (*EXPRESSION_KEYS, *PACKAGE_EXPRESSION_KEYS):
        if isinstance(result.get(key), str):
            value = safe_eval(result[key], key)
            if key == "replay_buffer_class" and not (isinstance(value, type) and issubclass(value, ReplayBuffer)):
                raise UnsafeConfigError(key, result[key], "is not a replay buffer class")
            if key in ("policy_kwargs", "replay_buffer_kwargs", "monitor_kwargs", "action_noise_kwargs") and not isinstance(
                value, dict
            ):
                raise UnsafeConfigError(key, result[key], f"evaluates to a {type(value).__name__}, expected a dict")
            if key == "normalize" and not isinstance(value, bool | dict):
                raise UnsafeConfigError(key, result[key], "expected True/False or a dict of VecNormalize arguments")
            result[key] = value
    for key in IMPORTED_NAME_KEYS:
        if key in result:
            check_imported_names(key, result[key])
    return result
