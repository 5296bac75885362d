"""
The RL Zoo launcher: ``python -m sb3_ddpg_paper.zoo {train,enjoy,record_video,plot,...} [rl_zoo3 arguments]``.

rl_zoo3 has no plugin entry point (``rl_zoo3.ALGOS`` is a plain dict), so this launcher registers ``paper_ddpg`` and
then runs rl_zoo3's own script with the remaining arguments, unchanged. On the way it installs the package's
:class:`~sb3_ddpg_paper.zoo.experiment.PaperExperimentManager` and routes every ``eval()`` of rl_zoo3 through the safe
parser of :mod:`sb3_ddpg_paper.zoo.safe_config`.
"""

import argparse
import importlib
import runpy
import sys
from collections.abc import Callable, Sequence
from typing import Any

import rl_zoo3
import rl_zoo3.exp_manager
import rl_zoo3.train
import rl_zoo3.utils
from rl_zoo3.hyperparams_opt import HYPERPARAMS_CONVERTER, HYPERPARAMS_SAMPLER

from sb3_ddpg_paper.ddpg import PaperDDPG
from sb3_ddpg_paper.zoo.experiment import ALGO_NAME, HyperparameterError, PaperExperimentManager
from sb3_ddpg_paper.zoo.safe_config import UnsafeConfigError, safe_eval
from sb3_ddpg_paper.zoo.tuning import convert_paper_ddpg_params, sample_paper_ddpg_params

PROG = "python -m sb3_ddpg_paper.zoo"


def register(name: str = ALGO_NAME, algorithm: type[PaperDDPG] = PaperDDPG) -> None:
    """
    Register PaperDDPG with rl_zoo3 under ``name``: the algorithm (``rl_zoo3.ALGOS``), its Optuna sampler
    (``HYPERPARAMS_SAMPLER``) and the converter of stored trial parameters (``HYPERPARAMS_CONVERTER``).
    Idempotent. For a launcher script of one's own: ``register()`` then ``rl_zoo3.train.train()``.

    :param name: the ``--algo`` key
    :param algorithm: PaperDDPG or a subclass
    """
    rl_zoo3.ALGOS[name] = algorithm
    HYPERPARAMS_SAMPLER[name] = sample_paper_ddpg_params
    HYPERPARAMS_CONVERTER[name] = convert_paper_ddpg_params


class PaperDDPGForPrediction(PaperDDPG):
    """
    What ``enjoy`` and ``record_video`` load ``paper_ddpg`` models with: rl_zoo3 passes ``buffer_size=1`` only to the
    off-policy algorithms it knows by name, so without this a full replay buffer (1e6 transitions) would be allocated
    just to run the policy. Returns a plain :class:`PaperDDPG`.
    """

    @classmethod
    def load(cls, path: Any, env: Any = None, device: Any = "auto", custom_objects: Any = None, **kwargs: Any):  # type: ignore[override]
        kwargs.update(buffer_size=1, optimize_memory_usage=False)
        if custom_objects and "learning_rate" in custom_objects:
            # Mirror the zoo's replacement of the actor's learning-rate schedule for the critic's
            custom_objects = {**custom_objects, "qf_learning_rate": 0.0, "qf_lr_schedule": custom_objects["lr_schedule"]}
        return PaperDDPG.load(path, env=env, device=device, custom_objects=custom_objects, **kwargs)


def _guarded_eval(expression: Any, *args: Any) -> Any:
    # Stands in for the builtin eval() inside rl_zoo3's modules: the zoo only evaluates hyperparameter strings there
    if not isinstance(expression, str) or args:
        raise UnsafeConfigError("<rl_zoo3>", repr(expression), "rl_zoo3 tried to evaluate a non-string or with a namespace")
    return safe_eval(expression, "a value rl_zoo3 evaluates")


def _safe_store_dict_call(
    self: argparse.Action, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option_string=None
) -> None:
    # rl_zoo3's StoreDict (-params key:value, --env-kwargs key:value) evaluates each value; same rule, naming the key
    arg_dict = {}
    for argument in values:
        key, _, value = argument.partition(":")
        arg_dict[key] = safe_eval(value, f"{option_string} {key}")
    setattr(namespace, self.dest, arg_dict)


def install_safe_config() -> None:
    """
    Route every ``eval()`` of rl_zoo3's configuration code through :func:`~sb3_ddpg_paper.zoo.safe_config.safe_eval`
    and make ``train`` use :class:`PaperExperimentManager` (which checks a run's hyperparameters before anything is
    built). A module-level ``eval`` shadows the builtin for the functions of that module only.
    """
    rl_zoo3.train.ExperimentManager = PaperExperimentManager  # type: ignore[misc]
    rl_zoo3.exp_manager.eval = _guarded_eval  # type: ignore[attr-defined]
    rl_zoo3.utils.eval = _guarded_eval  # type: ignore[attr-defined]
    rl_zoo3.utils.StoreDict.__call__ = _safe_store_dict_call  # type: ignore[method-assign]


def import_env_packages() -> None:
    """Register the package's own environments (pixel tasks) when its ``envs`` module exists."""
    try:
        importlib.import_module("sb3_ddpg_paper.envs")
    except ModuleNotFoundError as error:
        if error.name != "sb3_ddpg_paper.envs":
            raise


def _run_function(module: str, function: str) -> Callable[[], None]:
    # Imported when the command runs: rl_zoo3.enjoy, for one, needs packages that train does not (requests)
    def run() -> None:
        getattr(importlib.import_module(module), function)()

    return run


def _run_script(module: str) -> Callable[[], None]:
    # rl_zoo3's record_video.py is a script (all its code sits under `if __name__ == "__main__"`)
    def run() -> None:
        runpy.run_module(module, run_name="__main__", alter_sys=True)

    return run


COMMANDS: dict[str, tuple[Callable[[], None], str]] = {
    "train": (_run_function("rl_zoo3.train", "train"), "train (or tune with -optimize) an agent: rl_zoo3's train.py"),
    "enjoy": (_run_function("rl_zoo3.enjoy", "enjoy"), "run a trained agent: rl_zoo3's enjoy.py"),
    "record_video": (_run_script("rl_zoo3.record_video"), "record a video of a trained agent: rl_zoo3's record_video.py"),
    "plot": (_run_function("rl_zoo3.plots.plot_train", "plot_train"), "plot training curves: rl_zoo3's plot_train"),
    "plot_train": (_run_function("rl_zoo3.plots.plot_train", "plot_train"), "same as plot"),
    "plot_from_file": (_run_function("rl_zoo3.plots.plot_from_file", "plot_from_file"), "rl_zoo3's plot_from_file"),
    "all_plots": (_run_function("rl_zoo3.plots.all_plots", "all_plots"), "rl_zoo3's all_plots"),
}


def _usage() -> str:
    lines = [f"usage: {PROG} COMMAND [rl_zoo3 arguments]", "", "PaperDDPG is registered as --algo paper_ddpg.", ""]
    lines += [f"  {name:<15} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", f"e.g. {PROG} train --algo paper_ddpg --env Pendulum-v1", f"     {PROG} train --help"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """
    Entry point of ``python -m sb3_ddpg_paper.zoo`` and of the ``sb3-ddpg-paper-zoo`` console script.

    :param argv: ``[COMMAND, *rl_zoo3 arguments]`` (default: ``sys.argv[1:]``)
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        sys.exit(f"{PROG}: unknown command {command!r}\n\n{_usage()}")
    import_env_packages()
    register()
    install_safe_config()
    sys.argv = [f"{PROG} {command}", *rest]
    original = rl_zoo3.ALGOS[ALGO_NAME]
    if command in ("enjoy", "record_video"):
        rl_zoo3.ALGOS[ALGO_NAME] = PaperDDPGForPrediction
    try:
        COMMANDS[command][0]()
    except (UnsafeConfigError, HyperparameterError) as error:
        sys.exit(f"{PROG} {command}: error: {error}")
    finally:
        rl_zoo3.ALGOS[ALGO_NAME] = original
