"""
RL Zoo integration: the launcher run as a subprocess (rl_zoo3 patches gymnasium on import, so this test process never
imports it), the safe configuration parser, and distributed tuning through a real PostgreSQL server on loopback.
"""

import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch as th
import yaml
from stable_baselines3.common.noise import NormalActionNoise, OrnsteinUhlenbeckActionNoise
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize
from torch import nn

from sb3_ddpg_paper import OrnsteinUhlenbeckNoise, PaperDDPG
from sb3_ddpg_paper.zoo.safe_config import UnsafeConfigError, safe_eval, sanitize_hyperparams

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "sb3_ddpg_paper" / "zoo" / "hyperparams" / "paper_ddpg.yml"
TINY = "dict(net_arch=[32, 32])"
# Skip deserialising rl_zoo3 schedules (SimpleLinearSchedule) when loading: that would import rl_zoo3 here
NO_SCHEDULES = {"learning_rate": 0.0, "lr_schedule": lambda _: 0.0, "qf_learning_rate": 0.0, "qf_lr_schedule": lambda _: 0.0}


def run_zoo(*args: str, cwd: Path, check: bool = True, prelude: str = "", timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m sb3_ddpg_paper.zoo ARGS`` (with ``prelude`` Python code run first in the same process)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "SDL_VIDEODRIVER": "dummy"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    code = prelude + "\nimport sys\nfrom sb3_ddpg_paper.zoo.launcher import main\nmain(sys.argv[1:])\n"
    result = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"launcher {args} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
    return result


def train_args(*extra: str) -> list[str]:
    return ["train", "--algo", "paper_ddpg", "--num-threads", "1", "--seed", "3", "--eval-freq", "-1", *extra]


def saved_data(path: Path) -> dict:
    """The JSON part of an SB3 zip (readable without unpickling anything)."""
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("data"))


# ---------------------------------------------------------------------------------------------- safe configuration
@pytest.mark.parametrize(
    "expression, expected",
    [
        ("dict(net_arch=[400, 300], activation_fn=nn.ReLU)", dict(net_arch=[400, 300], activation_fn=nn.ReLU)),
        (
            "dict(net_arch=dict(pi=[64], qf=[64, 64]), batch_norm=False)",
            dict(net_arch=dict(pi=[64], qf=[64, 64]), batch_norm=False),
        ),
        (
            "dict(optimizer_class=th.optim.Adam, optimizer_kwargs=dict(eps=1e-5, betas=(0.9, 0.999)))",
            dict(optimizer_class=th.optim.Adam, optimizer_kwargs=dict(eps=1e-5, betas=(0.9, 0.999))),
        ),
        ("{'norm_obs': True, 'norm_reward': False, 'clip_obs': 10.0}", dict(norm_obs=True, norm_reward=False, clip_obs=10.0)),
        (
            "dict(activation_fn=th.nn.Tanh, weight_init=nn.init.orthogonal_, log_std_init=-2)",
            dict(activation_fn=th.nn.Tanh, weight_init=nn.init.orthogonal_, log_std_init=-2),
        ),
        ("HerReplayBuffer", "HerReplayBuffer"),
        ("dict(info_keywords=('is_success',))", dict(info_keywords=("is_success",))),
    ],
)
def test_safe_eval_accepts_zoo_expressions(expression, expected):
    value = safe_eval(expression, "policy_kwargs")
    if expected == "HerReplayBuffer":
        from stable_baselines3 import HerReplayBuffer

        assert value is HerReplayBuffer
    else:
        assert value == expected


@pytest.mark.parametrize(
    "expression, fragment",
    [
        ("__import__('os').system('echo pwned')", "__import__"),
        ("dict(net_arch=[64], activation_fn=eval('nn.ReLU'))", "eval"),
        ("dict(activation_fn=nn.ReLU.__subclasses__)", "__subclasses__"),
        ("dict(f=th.load)", "th.load"),
        ("dict(f=th.nn.modules.module.sys)", "th.nn.modules"),
        ("dict(x=[c for c in ()])", "ListComp"),
        ("dict(x=(lambda: 0))", "Lambda"),
        ("dict(clip_obs=10.0 if True else 5.0)", "IfExp"),
        ("dict(n=9 ** 9 ** 9)", "BinOp"),
        ("dict(**{'a': 1})", "unpacking"),
        ("open('/etc/passwd').read()", "open"),
        ("dict(net_arch=[64]", "not a valid Python expression"),
        # every other refusal rule of the interpreter (docs/zoo.md, "Safe configuration")
        ("dict(a=-'x')", "unary +/- is only allowed on numbers"),
        ("dict(a=~1)", "UnaryOp"),
        ("dict(a=os)", "name 'os' is not on the whitelist"),
        ("dict(a=os.path)", "only allowed below nn, th and torch"),
        ("dict(a=nn._reduction)", "private attribute '_reduction'"),
        ("dict(a=nn.functional.relu)", "attribute paths may only walk through"),
        ("dict(a=th.optim.Adam.step)", "attribute paths may only walk through"),
        ("dict(a=nn.NoSuchLayer)", "nn.NoSuchLayer does not exist"),
        ("dict(a=nn.init)", "only torch module classes, optimizer classes and torch.nn.init functions"),
        ("dict(a=th.zeros)", "only torch module classes, optimizer classes and torch.nn.init functions"),
        ("dict(a=[1][0])", "Subscript"),
        ("dict(a=1 < 2)", "Compare"),
        ("dict(a=f'{1}')", "JoinedStr"),
        ("dict(a=(b := 1))", "NamedExpr"),
        ("dict(a=...)", "constant of type ellipsis"),
        ("[*[1, 2]]", "'*' unpacking"),
        ("{**{'a': 1}}", "'**' unpacking"),
        ("dict(*[('a', 1)])", "unpacking"),
        ("dict(1, 2)", "dict expected at most 1 argument"),
        ("[1, 2][0]", "Subscript"),
    ],
)
def test_safe_eval_refuses_code(expression, fragment):
    with pytest.raises(UnsafeConfigError) as info:
        safe_eval(expression, "policy_kwargs")
    message = str(info.value)
    assert "'policy_kwargs'" in message and repr(expression) in message and fragment in message


def test_sanitize_parses_strings_and_checks_imported_names():
    hyperparams = {
        "policy_kwargs": "dict(net_arch=[32], activation_fn=nn.Tanh)",
        "normalize": "dict(norm_obs=True, norm_reward=False)",
        "action_noise_kwargs": "dict(sigma=0.3, dt=1.0)",
        "env_wrapper": [{"sb3_contrib.common.wrappers.TimeFeatureWrapper": {"max_steps": 200}}],
        "callback": "stable_baselines3.common.callbacks.CheckpointCallback",
        "policy": "MlpPolicy",
    }
    result = sanitize_hyperparams(hyperparams)
    assert result["policy_kwargs"] == dict(net_arch=[32], activation_fn=nn.Tanh)
    assert result["normalize"] == dict(norm_obs=True, norm_reward=False)
    assert result["action_noise_kwargs"] == dict(sigma=0.3, dt=1.0)
    assert hyperparams["policy_kwargs"] == "dict(net_arch=[32], activation_fn=nn.Tanh)"  # the input is not modified
    for key, value, fragment in [
        ("callback", [{"os.system": {"command": "echo pwned"}}], "os.system"),
        ("env_wrapper", "subprocess.Popen", "subprocess.Popen"),
        ("policy", "builtins.exec", "builtins.exec"),
        ("vec_env_wrapper", "stable_baselines3.common.callbacks.CheckpointCallback", "VecEnvWrapper"),
        ("replay_buffer_class", "dict()", "not a replay buffer class"),
        ("replay_buffer_class", "nn.ReLU", "not a replay buffer class"),
        ("policy_kwargs", "[1, 2]", "expected a dict"),
        ("replay_buffer_kwargs", "(1,)", "expected a dict"),
        ("monitor_kwargs", "'x'", "expected a dict"),
        ("action_noise_kwargs", "[0.2]", "expected a dict"),
        ("normalize", "[1]", "expected True/False or a dict"),
        ("env_wrapper", "TimeFeatureWrapper", "expected a dotted path"),
        ("env_wrapper", "os._exit", "expected a dotted path"),
        ("env_wrapper", "no_such_package.Wrapper", "cannot import module 'no_such_package'"),
        ("env_wrapper", "gymnasium.wrappers.NoSuchWrapper", "resolves to None"),
        ("env_wrapper", [{"gymnasium.wrappers.TimeLimit": {}, "gymnasium.wrappers.ClipAction": {}}], "exactly one name"),
        ("env_wrapper", [{"gymnasium.wrappers.TimeLimit": [200]}], "must be a mapping"),
        ("callback", [5], "expected a dotted class name"),
        ("policy", "sb3_ddpg_paper.noise.OrnsteinUhlenbeckNoise", "BasePolicy"),
    ]:
        with pytest.raises(UnsafeConfigError, match=key) as info:
            sanitize_hyperparams({key: value})
        assert fragment in str(info.value)


# ---------------------------------------------------------------------------------------------- the launcher
def test_train_shipped_file_then_record_video_and_continue(tmp_path):
    # Train with the shipped file (only the warm-up shortened so that 300 gradient steps happen in 400 env steps)
    noise = "action_noise_kwargs:dict(min_epsilon=0.1, epsilon_decay_steps=4000)"
    result = run_zoo(*train_args("--env", "Pendulum-v1", "-n", "400", "-params", "learning_starts:100", noise), cwd=tmp_path)
    assert f"Loading hyperparameters from: {SHIPPED}" in result.stdout
    run_dir = tmp_path / "logs" / "paper_ddpg" / "Pendulum-v1_1"
    model = PaperDDPG.load(run_dir / "Pendulum-v1.zip")
    # The paper's values from the shipped file (Lillicrap et al. 2016, sec. 7)
    assert model.actor.optimizer.param_groups[0]["lr"] == 1e-4 and model.critic.optimizer.param_groups[0]["lr"] == 1e-3
    assert (model.tau, model.batch_size, model.gamma) == (1e-3, 64, 0.99)
    assert model.buffer_size == 1_000_000 and model.policy_kwargs["critic_weight_decay"] == 1e-2
    assert model.policy.actor.mu[1].in_features == 3 and model.policy.actor.mu[1].out_features == 400
    assert any(isinstance(m, nn.BatchNorm1d) for m in model.policy.critic.modules())
    assert model.num_timesteps == 400 and model._n_updates == 300
    assert isinstance(model.action_noise, OrnsteinUhlenbeckNoise) and model.action_noise.num_steps == 400
    assert model.action_noise.dt == 1.0 and model.action_noise.theta == 0.15

    # record_video, headless
    run_zoo("record_video", "--algo", "paper_ddpg", "--env", "Pendulum-v1", "-f", "logs", "-n", "50", cwd=tmp_path)
    videos = glob.glob(str(run_dir / "videos" / "*.mp4"))
    assert len(videos) == 1 and os.path.getsize(videos[0]) > 1000

    # Continue with -i and a changed sigma: the new sigma is used and epsilon continues from 400 steps (not from 0)
    noise = "action_noise_kwargs:dict(sigma=0.3, min_epsilon=0.1, epsilon_decay_steps=4000)"
    run_zoo(
        *train_args(
            "--env",
            "Pendulum-v1",
            "-n",
            "200",
            "-i",
            str(run_dir / "Pendulum-v1.zip"),
            "-params",
            "learning_starts:100",
            noise,
        ),
        cwd=tmp_path,
    )
    continued = PaperDDPG.load(tmp_path / "logs" / "paper_ddpg" / "Pendulum-v1_2" / "Pendulum-v1.zip")
    assert continued.num_timesteps == 200  # the zoo restarts the step counter...
    assert continued.action_noise.num_steps == 600  # ...the epsilon schedule does not
    assert continued.action_noise.epsilon == pytest.approx(1.0 - 0.9 * 600 / 4000)
    assert continued.action_noise.sigma[0] == pytest.approx(0.3)
    # rl_zoo3 restarts num_timesteps, so SB3 warms up again for learning_starts=100 steps: 100 more updates
    assert continued._n_updates == 300 + 100


def test_custom_file_with_every_key_kind(tmp_path):
    config = {
        "Pendulum-v1": {
            "n_timesteps": 300,
            "n_envs": 2,
            "policy": "MlpPolicy",
            "learning_rate": "lin_1e-3",
            "qf_learning_rate": "lin_2e-3",
            "learning_starts": 100,
            "batch_size": 32,
            "gamma": 0.98,
            "policy_kwargs": "dict(net_arch=[32, 32], activation_fn=nn.Tanh, batch_norm=False, optimizer_class=th.optim.Adam)",
            "replay_buffer_kwargs": "dict(handle_timeout_termination=True)",
            "normalize": "dict(norm_obs=True, norm_reward=False)",
            "monitor_kwargs": "dict(info_keywords=())",
            "env_wrapper": [{"sb3_contrib.common.wrappers.TimeFeatureWrapper": {"max_steps": 200}}],
            "callback": [
                {
                    "stable_baselines3.common.callbacks.CheckpointCallback": {
                        "save_freq": 50,
                        "save_path": str(tmp_path / "ckpt"),
                    }
                }
            ],
            "action_noise_kwargs": "dict(theta=0.3, sigma=0.4, dt=0.5, min_epsilon=0.2, epsilon_decay_steps=1000)",
        }
    }
    (tmp_path / "custom.yml").write_text(yaml.safe_dump(config))
    run_zoo(*train_args("--env", "Pendulum-v1", "-conf", "custom.yml"), cwd=tmp_path)
    run_dir = tmp_path / "logs" / "paper_ddpg" / "Pendulum-v1_1"
    model = PaperDDPG.load(run_dir / "Pendulum-v1.zip", custom_objects=NO_SCHEDULES)
    assert model.num_timesteps == 300 and model.n_envs == 2 and model.gamma == 0.98 and model.batch_size == 32
    # env_wrapper: time feature, 3 + 1
    assert model.observation_space.shape == (4,)
    # policy_kwargs
    assert not any(isinstance(m, nn.BatchNorm1d) for m in model.policy.modules())
    assert any(isinstance(m, nn.Tanh) for m in model.policy.actor.mu[:-1])
    assert model.policy.actor.mu[0].out_features == 32
    # lin_ schedules for both learning rates (read from the saved data: rl_zoo3's schedule class)
    data = saved_data(run_dir / "Pendulum-v1.zip")
    for key, initial in (("learning_rate", 1e-3), ("qf_learning_rate", 2e-3)):
        assert "SimpleLinearSchedule" in data[key][":type:"] and data[key]["initial_value"] == initial
    # normalize: VecNormalize statistics saved, observation normalisation on, reward normalisation off
    vec_normalize = VecNormalize.load(str(run_dir / "Pendulum-v1" / "vecnormalize.pkl"), DummyVecEnv([lambda: _dummy_env()]))
    assert vec_normalize.norm_obs and not vec_normalize.norm_reward and vec_normalize.obs_rms.count > 300
    # callback: a checkpoint every 50 calls of 2 envs
    assert sorted(os.listdir(tmp_path / "ckpt")) == [f"rl_model_{n}_steps.zip" for n in (100, 200, 300)]
    # the package's noise from action_noise_kwargs, one process per env
    noise = model.action_noise
    assert isinstance(noise, OrnsteinUhlenbeckNoise) and noise.n_envs == 2 and noise.num_steps == 300
    assert (noise.theta, noise.sigma[0], noise.dt, noise.min_epsilon, noise.epsilon_decay_steps) == (0.3, 0.4, 0.5, 0.2, 1000)
    # The saved config keeps the strings as written (for reproduction)
    saved_config = (run_dir / "Pendulum-v1" / "config.yml").read_text()
    assert "dict(net_arch=[32, 32], activation_fn=nn.Tanh" in saved_config

    # enjoy: runs the saved policy with the saved VecNormalize statistics (its normalize string goes through the safe
    # parser), and never allocates more than a one-transition replay buffer
    probe = textwrap.dedent(
        """
        from stable_baselines3.common.buffers import ReplayBuffer
        sizes = []
        _init = ReplayBuffer.__init__
        def _recording_init(self, buffer_size, *args, **kwargs):
            sizes.append(buffer_size)
            _init(self, buffer_size, *args, **kwargs)
        ReplayBuffer.__init__ = _recording_init
        import atexit
        atexit.register(lambda: print("REPLAY BUFFER SIZES", sizes))
        """
    )
    result = run_zoo(
        "enjoy",
        "--algo",
        "paper_ddpg",
        "--env",
        "Pendulum-v1",
        "-f",
        "logs",
        "--no-render",
        "-n",
        "400",
        "--num-threads",
        "1",
        cwd=tmp_path,
        prelude=probe,
    )
    assert "2 Episodes" in result.stdout and "Mean reward:" in result.stdout
    assert "REPLAY BUFFER SIZES [1]" in result.stdout

    # frame_stack (not together with normalize: the zoo stacks after VecNormalize, whose unstacked original
    # observations SB3's off-policy algorithms store, a limitation of rl_zoo3 + SB3 for every off-policy algorithm)
    run_zoo(
        *train_args("--env", "Pendulum-v1", "-conf", "custom.yml", "-n", "200", "-params", "frame_stack:2", "normalize:False"),
        cwd=tmp_path,
    )
    stacked = PaperDDPG.load(
        tmp_path / "logs" / "paper_ddpg" / "Pendulum-v1_2" / "Pendulum-v1.zip", custom_objects=NO_SCHEDULES
    )
    assert stacked.observation_space.shape == (8,)  # env_wrapper (time feature: 3 + 1), then 2 frames


def _dummy_env():
    import gymnasium as gym
    from sb3_contrib.common.wrappers import TimeFeatureWrapper

    return TimeFeatureWrapper(gym.make("Pendulum-v1"), max_steps=200)


@pytest.mark.parametrize(
    "env_id, noise_class, sigma",
    [("Pendulum-v1", NormalActionNoise, 0.1), ("MountainCarContinuous-v0", OrnsteinUhlenbeckActionNoise, 0.5)],
)
def test_rl_zoo_own_ddpg_file_runs_unchanged(tmp_path, env_id, noise_class, sigma):
    import importlib.util

    ddpg_yml = Path(importlib.util.find_spec("rl_zoo3").origin).parent / "hyperparams" / "ddpg.yml"  # type: ignore[arg-type]
    run_zoo(*train_args("--env", env_id, "-conf", str(ddpg_yml), "-n", "300"), cwd=tmp_path)
    model = PaperDDPG.load(tmp_path / "logs" / "paper_ddpg" / f"{env_id}_1" / f"{env_id}.zip", custom_objects=NO_SCHEDULES)
    entry = yaml.safe_load(ddpg_yml.read_text())[env_id]
    # The zoo's noise_type/noise_std: SB3's own noise classes, as with --algo ddpg
    assert isinstance(model.action_noise, noise_class)
    assert np.allclose(model.action_noise._sigma, sigma)
    assert model.batch_size == entry.get("batch_size", 64) and model.gamma == entry.get("gamma", 0.99)
    assert [layer.out_features for layer in model.policy.actor.mu if isinstance(layer, nn.Linear)] == [400, 300, 1]


# Two short trials on tiny.yml (written by each tuning test), one evaluation each, no pruning
TINY_OPTIMIZE_ARGS = (
    "--env", "Pendulum-v1", "-conf", "tiny.yml", "-optimize", "--n-trials", "2", "--n-evaluations", "1",
    "--eval-episodes", "1", "--no-optim-plots", "--pruner", "none",
)  # fmt: skip


def test_optimize_two_trials_default_embedded_storage(tmp_path):
    (tmp_path / "tiny.yml").write_text(
        yaml.safe_dump(
            {"Pendulum-v1": {"n_timesteps": 300, "policy": "MlpPolicy", "learning_starts": 100, "policy_kwargs": TINY}}
        )
    )
    result = run_zoo(
        *train_args(
            *TINY_OPTIMIZE_ARGS,
        ),
        cwd=tmp_path,
    )
    storage_path = tmp_path / "logs" / "paper_ddpg" / "optuna" / "Pendulum-v1.log"
    assert "in logs/paper_ddpg/optuna/Pendulum-v1.log" in result.stdout
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(storage_path)))
    study = optuna.load_study(study_name="paper_ddpg_Pendulum-v1", storage=storage)
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 2 and all(np.isfinite(t.value) and t.value < 0 for t in trials)
    expected = {
        "learning_rate",
        "qf_learning_rate",
        "tau",
        "batch_size",
        "critic_weight_decay",
        "batch_norm",
        "ou_sigma",
        "ou_theta",
        "epsilon_decay_steps",
        "min_epsilon",
    }
    assert all(set(t.params) == expected for t in trials)
    assert glob.glob(str(tmp_path / "logs" / "paper_ddpg" / "report_Pendulum-v1_2-trials-300-tpe-none_*.csv"))


@pytest.mark.parametrize(
    "where, key, value, fragment",
    [
        ("file", "policy_kwargs", "dict(net_arch=[32], activation_fn=__import__('os').system('touch PWNED'))", "__import__"),
        ("file", "callback", [{"os.system": {"command": "touch PWNED"}}], "os.system"),
        ("command line", "normalize", "__import__('os').system('touch PWNED')", "__import__"),
    ],
)
def test_malicious_config_is_refused_before_anything_runs(tmp_path, where, key, value, fragment):
    entry = {"n_timesteps": 300, "policy": "MlpPolicy", "policy_kwargs": TINY}
    extra: list[str] = []
    if where == "file":
        entry[key] = value
    else:
        extra = ["-params", f"{key}:{value}"]
    (tmp_path / "bad.yml").write_text(yaml.safe_dump({"Pendulum-v1": entry}))
    result = run_zoo(*train_args("--env", "Pendulum-v1", "-conf", "bad.yml", *extra), cwd=tmp_path, check=False)
    assert result.returncode == 1
    assert "Refused hyperparameter" in result.stderr and key in result.stderr and fragment in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "PWNED").exists()
    assert not (tmp_path / "logs").exists()  # nothing was created: no log folder, no environment, no model


@pytest.mark.parametrize(
    "entry, extra, fragments",
    [
        ({"action_noise_kwargs": {"sigmaa": 0.3}}, [], ["Unknown action_noise_kwargs ['sigmaa']", "'epsilon_decay_steps'"]),
        ({"action_noise_kwargs": [0.2]}, [], ["action_noise_kwargs must be a mapping", "'sigma'"]),
        (
            {"action_noise_kwargs": {"sigma": 0.3}, "noise_type": "normal", "noise_std": 0.1},
            [],
            ["Both noise_type", "action_noise_kwargs"],
        ),
        ({"qf_learning_rate": "exp_1e-3"}, [], ["Invalid value for qf_learning_rate: 'exp_1e-3'", "lin_<initial value>"]),
        ({}, ["--env-kwargs", "g:__import__('os').system('touch PWNED')"], ["Refused hyperparameter '--env-kwargs g'"]),
    ],
)
def test_bad_paper_ddpg_config_is_refused_before_anything_runs(tmp_path, entry, extra, fragments):
    # The refusals docs/zoo.md promises for the package's own keys: exit status 1, a message naming the key and what
    # is accepted, no traceback, and nothing created
    (tmp_path / "bad.yml").write_text(yaml.safe_dump({"Pendulum-v1": {"n_timesteps": 300, "policy": "MlpPolicy", **entry}}))
    result = run_zoo(*train_args("--env", "Pendulum-v1", "-conf", "bad.yml", *extra), cwd=tmp_path, check=False)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "error:" in result.stderr and "Traceback" not in result.stderr
    assert all(fragment in result.stderr for fragment in fragments), result.stderr[-3000:]
    assert not (tmp_path / "logs").exists() and not (tmp_path / "PWNED").exists()


# ---------------------------------------------------------------------------------------------- the shipped file
# Run in the launcher's process for every entry of the shipped file: rl_zoo3's ExperimentManager (as the launcher
# installs it) reads the entry, builds the environment and the model; learn() is replaced by a few gradient steps
# (warm-up shortened to one batch) and a report of what was built. Nothing else is overridden: buffers, batch sizes,
# policies and networks are the entry's as shipped.
BUILD_EVERY_ENTRY = textwrap.dedent(
    """
    import gc, json, traceback
    import numpy as np
    import torch as th
    from sb3_ddpg_paper import PaperDDPG
    from sb3_ddpg_paper.zoo.experiment import PaperExperimentManager

    def short_learn(self, model):
        shipped_learning_starts = model.learning_starts
        final = [m for m in model.policy.actor.mu if isinstance(m, th.nn.Linear)][-1]
        final_layer_bound = max(final.weight.abs().max().item(), final.bias.abs().max().item())  # as initialised
        model.learning_starts = model.batch_size  # a few gradient steps instead of the 1000-step warm-up
        model.learn(model.batch_size + 4)
        # The package's own defaults for this observation space, on the same environment
        policy = self._hyperparams["policy"]
        reference = PaperDDPG(policy, model.get_env(), buffer_size=1)
        shapes = lambda policy: {k: list(v.shape) for k, v in policy.state_dict().items()}
        print("ENTRY " + json.dumps({
            "env": self.env_name.gym_id,
            "policy": policy,
            "policy_class": type(model.policy).__name__,
            "features_extractor": type(model.policy.actor.features_extractor).__name__,
            "observation_shape": list(model.observation_space.shape),
            "batch_size": model.batch_size,
            "buffer_size": model.buffer_size,
            "replay_buffer_size": model.replay_buffer.buffer_size,
            "learning_starts": shipped_learning_starts,
            "n_updates": model._n_updates,
            "finite": all(bool(th.isfinite(p).all()) for p in model.policy.parameters()),
            "final_layer_bound": final_layer_bound,
            "same_networks_as_package_defaults": shapes(model.policy) == shapes(reference.policy),
            "noise": type(model.action_noise).__name__,
            "noise_dt": getattr(model.action_noise, "dt", None),
            "lr": [model.actor.optimizer.param_groups[0]["lr"], model.critic.optimizer.param_groups[0]["lr"]],
            "tau_gamma": [model.tau, model.gamma],
        }), flush=True)
        model.get_env().close()

    PaperExperimentManager.learn = short_learn
    PaperExperimentManager.save_trained_model = lambda self, model: None
    import sys
    from sb3_ddpg_paper.zoo.launcher import main
    for env_id in sys.argv[1:]:
        try:
            main(["train", "--algo", "paper_ddpg", "--env", env_id, "--num-threads", "1", "--seed", "0",
                  "--eval-freq", "-1", "-f", "logs"])
        except BaseException:
            print("ENTRY-FAILED " + env_id + "\\n" + traceback.format_exc(), flush=True)
        gc.collect()
    """
)


def test_every_shipped_entry_builds_and_trains_through_the_zoo(tmp_path):
    from sb3_ddpg_paper.envs import PIXEL_ENV_IDS

    entries = yaml.safe_load(SHIPPED.read_text())
    assert set(PIXEL_ENV_IDS.values()) <= set(entries), "every registered pixel id has its own entry"
    # Pusher-v5 has no entry: the zoo falls back to `default`
    env_ids = [*(key for key in entries if key != "default"), "Pusher-v5"]
    assert "Pusher-v5" not in entries
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SDL_VIDEODRIVER": "dummy"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    result = subprocess.run(
        [sys.executable, "-c", BUILD_EVERY_ENTRY, *env_ids], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    output = result.stdout
    assert result.returncode == 0 and "ENTRY-FAILED" not in output, f"{output[-8000:]}\n{result.stderr[-3000:]}"
    reports = {r["env"]: r for r in (json.loads(line[6:]) for line in output.splitlines() if line.startswith("ENTRY "))}
    assert sorted(reports) == sorted(env_ids)
    assert output.count("Using 'default' hyperparameters") == 1  # only Pusher-v5
    pixel_ids = set(PIXEL_ENV_IDS.values())
    for env_id, report in reports.items():
        pixels = env_id in pixel_ids
        # The paper's values (Lillicrap et al. 2016, sec. 7), the pixel ones for the pixel ids
        expected = PaperDDPG.pixel_defaults if pixels else PaperDDPG.low_dim_defaults
        assert report["batch_size"] == expected["batch_size"] == (16 if pixels else 64), env_id
        assert report["buffer_size"] == report["replay_buffer_size"] == expected["buffer_size"], env_id
        assert report["policy"] == ("CnnPolicy" if pixels else "MlpPolicy"), env_id
        assert report["policy_class"] == ("CnnPolicy" if pixels else "PaperDDPGPolicy"), env_id
        assert report["features_extractor"] == ("PaperCNN" if pixels else "FlattenExtractor"), env_id
        if pixels:
            assert report["observation_shape"] == [9, 64, 64], env_id
        # The entry's networks are exactly the package's defaults for the observation space (400-300 with the
        # action at Q's 2nd layer; pixels: 3 conv layers, 200-200, action at the first fully connected layer)
        assert report["same_networks_as_package_defaults"], env_id
        assert 0 < report["final_layer_bound"] <= (3e-4 if pixels else 3e-3), env_id
        assert report["lr"] == [1e-4, 1e-3] and report["tau_gamma"][0] == 1e-3, env_id
        assert report["tau_gamma"][1] == (0.9999 if env_id == "Swimmer-v5" else 0.99), env_id
        assert (report["noise"], report["noise_dt"], report["learning_starts"]) == ("OrnsteinUhlenbeckNoise", 1.0, 1000)
        assert report["n_updates"] >= 1 and report["finite"], env_id


# ---------------------------------------------------------------------------------------------- PostgreSQL
def _postgres_binary(name: str) -> str:
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    found = candidates[-1] if candidates else shutil.which(name)
    if found is None:
        pytest.fail(
            f"PostgreSQL server binary {name!r} not found: install it with .ci/setup-postgres.sh (as root; .ci/run does)."
        )
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL cluster on a free loopback port; yields its URL, then stops and deletes it."""
    initdb, pg_ctl = _postgres_binary("initdb"), _postgres_binary("pg_ctl")
    as_postgres: list[str] = []
    # /tmp: every parent directory must be traversable by the postgres user (TMPDIR or pytest tmp dirs may not be)
    directory = tempfile.mkdtemp(prefix="zoo-postgres-", dir="/tmp" if os.path.isdir("/tmp") else None)
    if os.geteuid() == 0:  # the server refuses to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("No 'postgres' user to run the server as: run .ci/setup-postgres.sh (as root; .ci/run does).")
        os.chown(directory, user.pw_uid, user.pw_gid)
        as_postgres = ["runuser", "-u", "postgres", "--"]
    data, port = os.path.join(directory, "data"), _free_port()
    subprocess.run(
        [*as_postgres, initdb, "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"], check=True, capture_output=True
    )
    options = f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [*as_postgres, pg_ctl, "-D", data, "-o", options, "-l", os.path.join(directory, "server.log"), "-w", "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_postgres, pg_ctl, "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(directory, ignore_errors=True)


def test_two_workers_share_one_study_on_postgresql(tmp_path, postgres_url):
    (tmp_path / "tiny.yml").write_text(
        yaml.safe_dump(
            {"Pendulum-v1": {"n_timesteps": 250, "policy": "MlpPolicy", "learning_starts": 100, "policy_kwargs": TINY}}
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    workers = []
    for worker in range(2):
        args = train_args(
            *TINY_OPTIMIZE_ARGS,
            "--sampler",
            "random",
            "--storage",
            postgres_url,
            "--study-name",
            "shared",
            "-f",
            f"logs{worker}",
        )
        args[args.index("--seed") + 1] = str(10 + worker)  # each worker its own sampler seed, as the docs advise
        workers.append(
            subprocess.Popen(
                [sys.executable, "-m", "sb3_ddpg_paper.zoo", *args],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    try:
        outputs = [worker.communicate(timeout=1200)[0] for worker in workers]
    finally:
        for worker in workers:  # never leave a worker behind, whatever happened
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    for worker, output in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, output[-5000:]
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(study.trials) == 4 and len(trials) == 4
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(f"Optuna study 'shared' in {postgres_url}" in output for output in outputs)
