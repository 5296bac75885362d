"""
Training throughput of PaperDDPG against SB3's DDPG and a bare PyTorch loop (issue 5).

In ONE process, with one torch thread, the contenders of a round train side by side and take turns every ``--slice``
(100) steps, A B C D A B C D ..., so that machine noise (other processes, a shared VM's drifting CPU speed) hits every
contender alike; the ratios are computed per round ("pair") and the medians over the rounds are reported:

- A: ``PaperDDPG`` configured to SB3 DDPG's math: no batch norm, the action at the critic's input layer, one learning
  rate for both networks (1e-3), no weight decay, SB3's tau (0.005) and gamma, no action noise (SB3's default);
- B: ``stable_baselines3.DDPG`` with the same 400-300 networks, batch 64, ``learning_starts=1000``, ``train_freq=1``,
  ``gradient_steps=1``;
- C: a bare PyTorch loop with the same networks and the same update (fused Adam, ``torch._foreach_lerp_`` soft updates,
  numpy replay arrays, no framework): the floor;
- D: ``PaperDDPG`` with the paper's defaults (batch norm, action at the 2nd hidden layer, critic weight decay 1e-2,
  learning rates 1e-4 / 1e-3, tau 1e-3, Ornstein-Uhlenbeck noise).

``--pixels`` (issue 15) runs two other contenders instead, on ``sb3_ddpg_paper/PixelPendulum-v1`` with the paper's
pixel defaults (``CnnPolicy``: 3 conv layers of 32 filters and 2 fully connected layers of 200, batch norm, batch 16):

- E: the autograd step (``cnn_update=False``, the code before issue 15);
- F: the hand-written step (``cnn_update=True``, the default; ``sb3_ddpg_paper.cnn_update``).

Their replay buffer holds 20,000 transitions instead of the default 100,000 (both contenders live in one process; a
run never stores more than ``learning_starts + train_steps`` transitions, so the capacity does not change the work).

Each run collects ``learning_starts`` random transitions, then trains for ``train_steps`` environment steps with one
gradient update per step. Reported per run: env steps/s of the training phase (act + env step + store + one update:
the figure that decides how long a million-step run takes), updates/s (gradient updates per second spent inside the
update itself) and the same per CPU second. A long paper-defaults run (``--long-steps``) reports steps/s per chunk: it
must not slow down over time (denormal floats, see docs/speed.md).

Usage::

    python benchmarks/throughput.py                              # default: 3 pairs x 2000 training steps, both envs
    python benchmarks/throughput.py --pairs 5 --train-steps 5000 --long-steps 50000 --out results.json
    python benchmarks/throughput.py --pixels --train-steps 500 --slice 50    # E vs F: 3 pairs, no long run
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3 import DDPG
from stable_baselines3.common.callbacks import BaseCallback
from torch import nn
from torch.nn import functional as F

import sb3_ddpg_paper
from sb3_ddpg_paper import PaperDDPG

NET_ARCH = [400, 300]
BATCH_SIZE = 64
GAMMA = 0.99
SB3_TAU = 0.005  # SB3 DDPG's default
SB3_LR = 1e-3  # SB3 DDPG's default, for both networks
LABELS = {
    "A": "PaperDDPG, SB3 DDPG's math",
    "B": "SB3 DDPG",
    "C": "bare PyTorch loop",
    "D": "PaperDDPG, paper defaults",
    "E": "PaperDDPG pixels, autograd",
    "F": "PaperDDPG pixels, hand-written",
}
PIXEL_PENDULUM = "sb3_ddpg_paper/PixelPendulum-v1"
PIXEL_BUFFER_SIZE = 20_000


# ----------------------------------------------------------------------------- timing helpers
class _Clock:
    """Wall-clock and CPU-time stopwatch."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = time.process_time()

    def lap(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


class _PhaseTimer(BaseCallback):
    """Starts the training-phase clock when the warm-up ends; optionally records steps/s per chunk."""

    def __init__(self, learning_starts: int, chunk: int = 0):
        super().__init__()
        self.learning_starts = learning_starts
        self.chunk = chunk
        self.start: _Clock | None = None
        self.chunk_clock: _Clock | None = None
        self.chunks: list[float] = []

    def _on_step(self) -> bool:
        if self.num_timesteps == self.learning_starts:
            self.start = self.chunk_clock = _Clock()
        elif self.chunk and self.chunk_clock is not None and (self.num_timesteps - self.learning_starts) % self.chunk == 0:
            wall, _ = self.chunk_clock.lap()
            self.chunks.append(self.chunk / wall)
            self.chunk_clock = _Clock()
        return True


def _timed_train(model: Any) -> list[float]:
    """Wrap ``model.train`` (on the instance) to accumulate the time spent inside the updates."""
    spent = [0.0]
    train = model.train

    def timed(*args: Any, **kwargs: Any) -> None:
        start = time.perf_counter()
        train(*args, **kwargs)
        spent[0] += time.perf_counter() - start

    model.train = timed
    return spent


def _sb3_run(model: Any, learning_starts: int, train_steps: int, chunk: int = 0) -> dict[str, Any]:
    timer = _PhaseTimer(learning_starts, chunk)
    update_time = _timed_train(model)
    model.learn(learning_starts + train_steps, callback=timer)
    assert timer.start is not None
    wall, cpu = timer.start.lap()
    n_updates = model._n_updates
    assert n_updates == train_steps, (n_updates, train_steps)
    result = dict(
        steps_per_s=train_steps / wall,
        cpu_steps_per_s=train_steps / cpu,
        updates_per_s=n_updates / update_time[0],
        ms_per_step=1e3 * wall / train_steps,
    )
    if chunk:
        result["chunk_steps_per_s"] = timer.chunks
    return result


# ----------------------------------------------------------------------------- A, B, D
def make_a(env_id: str, seed: int, device: str) -> PaperDDPG:
    """PaperDDPG with SB3 DDPG's math."""
    return PaperDDPG(
        "MlpPolicy",
        env_id,
        learning_rate=SB3_LR,
        qf_learning_rate=SB3_LR,
        critic_weight_decay=0.0,
        tau=SB3_TAU,
        gamma=GAMMA,
        batch_size=BATCH_SIZE,
        action_noise=None,
        policy_kwargs=dict(net_arch=NET_ARCH, batch_norm=False, action_layer=0),
        seed=seed,
        device=device,
    )


def make_b(env_id: str, seed: int, device: str) -> DDPG:
    """SB3's DDPG, default hyperparameters but the paper's network size and batch."""
    return DDPG(
        "MlpPolicy",
        env_id,
        learning_rate=SB3_LR,
        tau=SB3_TAU,
        gamma=GAMMA,
        batch_size=BATCH_SIZE,
        learning_starts=1000,
        train_freq=1,
        gradient_steps=1,
        policy_kwargs=dict(net_arch=NET_ARCH),
        seed=seed,
        device=device,
    )


def make_d(env_id: str, seed: int, device: str) -> PaperDDPG:
    """PaperDDPG with the paper's defaults."""
    return PaperDDPG(env_id, seed=seed, device=device)


def make_e(env_id: str, seed: int, device: str) -> PaperDDPG:
    """PaperDDPG with the paper's pixel defaults, autograd step (the code before issue 15)."""
    return PaperDDPG(env_id, buffer_size=PIXEL_BUFFER_SIZE, seed=seed, device=device, cnn_update=False)


def make_f(env_id: str, seed: int, device: str) -> PaperDDPG:
    """PaperDDPG with the paper's pixel defaults, hand-written step (the default)."""
    return PaperDDPG(env_id, buffer_size=PIXEL_BUFFER_SIZE, seed=seed, device=device, cnn_update=True)


# ----------------------------------------------------------------------------- C: the floor
class BareDDPG:
    """
    DDPG with SB3 DDPG's math in plain PyTorch: the same networks and update as A and B, no framework.

    :param env_id: Gymnasium environment id
    :param seed: seed of the env, the networks and the replay sampling
    :param device: torch device
    :param buffer_size: replay capacity
    """

    def __init__(self, env_id: str, seed: int, device: str = "cpu", buffer_size: int = 1_000_000):
        th.manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.env = gym.make(env_id)
        self.env.action_space.seed(seed)
        self.seed = seed
        self.device = th.device(device)
        space = self.env.action_space
        assert isinstance(space, gym.spaces.Box)
        self.low, self.high = space.low, space.high
        obs_dim = int(np.prod(self.env.observation_space.shape))  # type: ignore[arg-type]
        act_dim = int(np.prod(space.shape))

        def mlp(in_dim: int, out_dim: int, tanh: bool) -> nn.Sequential:
            layers: list[nn.Module] = [nn.Linear(in_dim, NET_ARCH[0]), nn.ReLU(), nn.Linear(NET_ARCH[0], NET_ARCH[1])]
            layers += [nn.ReLU(), nn.Linear(NET_ARCH[1], out_dim)]
            return nn.Sequential(*layers, *([nn.Tanh()] if tanh else [])).to(self.device)

        self.actor = mlp(obs_dim, act_dim, tanh=True)
        self.critic = mlp(obs_dim + act_dim, 1, tanh=False)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_params = list(self.actor.parameters())
        self.critic_params = list(self.critic.parameters())
        self.actor_target_params = list(self.actor_target.parameters())
        self.critic_target_params = list(self.critic_target.parameters())
        self.actor_opt = th.optim.Adam(self.actor_params, lr=SB3_LR, fused=True)
        self.critic_opt = th.optim.Adam(self.critic_params, lr=SB3_LR, fused=True)

        self.size = 0
        self.obs = np.zeros((buffer_size, obs_dim), np.float32)
        self.next_obs = np.zeros((buffer_size, obs_dim), np.float32)
        self.actions = np.zeros((buffer_size, act_dim), np.float32)
        self.rewards = np.zeros((buffer_size, 1), np.float32)
        self.dones = np.zeros((buffer_size, 1), np.float32)
        self.n_updates = 0
        self.update_time = 0.0

    def update(self) -> None:
        start = time.perf_counter()
        idx = self.rng.integers(0, self.size, BATCH_SIZE)
        dev = self.device
        obs, actions = th.as_tensor(self.obs[idx], device=dev), th.as_tensor(self.actions[idx], device=dev)
        next_obs, rewards = th.as_tensor(self.next_obs[idx], device=dev), th.as_tensor(self.rewards[idx], device=dev)
        dones = th.as_tensor(self.dones[idx], device=dev)
        with th.no_grad():
            next_q = self.critic_target(th.cat([next_obs, self.actor_target(next_obs)], dim=1))
            target_q = rewards + (1 - dones) * GAMMA * next_q
        critic_loss = F.mse_loss(self.critic(th.cat([obs, actions], dim=1)), target_q)
        self.critic_opt.zero_grad()
        critic_loss.backward()
        self.critic_opt.step()
        actor_loss = -self.critic(th.cat([obs, self.actor(obs)], dim=1)).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward(inputs=self.actor_params)
        self.actor_opt.step()
        with th.no_grad():
            th._foreach_lerp_(self.critic_target_params, self.critic_params, SB3_TAU)
            th._foreach_lerp_(self.actor_target_params, self.actor_params, SB3_TAU)
        self.n_updates += 1
        self.update_time += time.perf_counter() - start

    def act(self, obs: np.ndarray) -> np.ndarray:
        with th.no_grad():
            action = self.actor(th.as_tensor(obs, dtype=th.float32, device=self.device)).cpu().numpy()
        return action

    def _step(self, scaled: np.ndarray) -> None:
        env_action = self.low + 0.5 * (scaled + 1.0) * (self.high - self.low)
        next_obs, reward, terminated, truncated, _ = self.env.step(env_action)
        i = self.size
        self.obs[i], self.next_obs[i], self.actions[i] = self.last_obs, next_obs, scaled
        self.rewards[i], self.dones[i] = reward, float(terminated)  # time-limit truncations bootstrap
        self.size += 1
        self.last_obs = self.env.reset()[0] if terminated or truncated else next_obs

    def warm_up(self, learning_starts: int) -> None:
        """``learning_starts`` uniformly random actions, no update."""
        self.last_obs, _ = self.env.reset(seed=self.seed)
        for _ in range(learning_starts):
            self._step(2.0 * (self.env.action_space.sample() - self.low) / (self.high - self.low) - 1.0)

    def train(self, steps: int) -> None:
        """``steps`` environment steps with the actor's action, each followed by one update."""
        for _ in range(steps):
            self._step(self.act(self.last_obs))
            self.update()


# ----------------------------------------------------------------------------- driver
class Contender:
    """
    One contender of a round, trained chunk by chunk so that the contenders of a round can take turns every ``slice``
    steps: machine noise (a shared VM's CPU speed drifts by 20-30% over tens of seconds) then hits all of them alike.

    The warm-up (``learning_starts`` random steps, no update) is not timed; each chunk is timed whole (wall and CPU),
    including for the SB3 algorithms the ``learn()`` call that runs it (set-up overhead of well under a millisecond).
    """

    def __init__(self, kind: str, env_id: str, seed: int, args: argparse.Namespace):
        self.kind = kind
        self.learning_starts = args.learning_starts
        self.wall = self.cpu = 0.0
        self.steps = 0
        if kind == "C":
            self.bare: BareDDPG | None = BareDDPG(env_id, seed, args.device)
            self.model: Any = None
        else:
            self.bare = None
            factories = {"A": make_a, "B": make_b, "D": make_d, "E": make_e, "F": make_f}
            factory: Callable[[str, int, str], Any] = factories[kind]
            self.model = factory(env_id, seed, args.device)
            self.model.learning_starts = args.learning_starts
            self.update_time = _timed_train(self.model)

    def warm_up(self) -> None:
        if self.bare is not None:
            self.bare.warm_up(self.learning_starts)
        else:
            self.model.learn(self.learning_starts)
            assert self.model._n_updates == 0

    def train(self, steps: int) -> None:
        clock = _Clock()
        if self.bare is not None:
            self.bare.train(steps)
        else:
            self.model.learn(steps, reset_num_timesteps=False)
        wall, cpu = clock.lap()
        self.wall += wall
        self.cpu += cpu
        self.steps += steps

    def result(self) -> dict[str, Any]:
        n_updates, update_time = (
            (self.bare.n_updates, self.bare.update_time)
            if self.bare is not None
            else (self.model._n_updates, self.update_time[0])
        )
        assert n_updates == self.steps, (n_updates, self.steps)
        return dict(
            steps_per_s=self.steps / self.wall,
            cpu_steps_per_s=self.steps / self.cpu,
            updates_per_s=n_updates / update_time,
            ms_per_step=1e3 * self.wall / self.steps,
        )


def run_round(kinds: str, env_id: str, seed: int, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Train every contender ``train_steps`` steps, taking turns every ``slice`` steps (rotating who goes first)."""
    contenders = [Contender(kind, env_id, seed, args) for kind in kinds]
    for contender in contenders:
        contender.warm_up()
    done, turn = 0, 0
    while done < args.train_steps:
        steps = min(args.slice, args.train_steps - done)
        for i in range(len(contenders)):
            contenders[(i + turn) % len(contenders)].train(steps)
        done += steps
        turn += 1
    return {c.kind: c.result() for c in contenders}


def _fmt(result: dict[str, Any]) -> str:
    return (
        f"{result['steps_per_s']:7.1f} env steps/s  {result['updates_per_s']:7.1f} updates/s  "
        f"{result['cpu_steps_per_s']:7.1f} steps/CPU-s  {result['ms_per_step']:6.2f} ms/step"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--envs", nargs="+", default=None, help="default: Pendulum-v1 HalfCheetah-v5 (--pixels: PixelPendulum)"
    )
    parser.add_argument("--pairs", type=int, default=3, help="rounds (each trains every contender once)")
    parser.add_argument("--slice", type=int, default=100, help="within a round, contenders take turns every SLICE steps")
    parser.add_argument("--learning-starts", type=int, default=1000)
    parser.add_argument("--train-steps", type=int, default=2000, help="training-phase env steps per run")
    parser.add_argument("--contenders", default=None, help="subset of ABCDEF (default ABCD; --pixels: EF)")
    parser.add_argument("--pixels", action="store_true", help="pixel contenders E and F on PixelPendulum, no long run")
    parser.add_argument("--long-steps", type=int, default=None, help="long paper-defaults run (0: skip; default 20,000)")
    parser.add_argument("--long-env", default="Pendulum-v1")
    parser.add_argument("--chunk", type=int, default=2000, help="chunk size of the long run's steps/s")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="throughput.json", help="JSON file for the results")
    args = parser.parse_args(argv)
    if args.envs is None:
        args.envs = [PIXEL_PENDULUM] if args.pixels else ["Pendulum-v1", "HalfCheetah-v5"]
    if args.contenders is None:
        args.contenders = "EF" if args.pixels else "ABCD"
    if args.long_steps is None:
        args.long_steps = 0 if args.pixels else 20_000
    if set(args.contenders) - set("ABCDEF"):
        parser.error(f"--contenders must be a subset of ABCDEF, got {args.contenders!r}")
    th.set_num_threads(args.threads)

    header = dict(
        python=sys.version.split()[0],
        torch=th.__version__,
        sb3_ddpg_paper=getattr(sb3_ddpg_paper, "__version__", "?"),
        platform=platform.platform(),
        processor=platform.processor(),
        cpu_count=os.cpu_count(),
        threads=th.get_num_threads(),
        device=args.device,
        gpu=th.cuda.get_device_name(args.device) if th.device(args.device).type == "cuda" else None,
        argv=sys.argv if argv is None else ["throughput.py", *argv],
    )
    print(json.dumps(header))
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {env: {k: [] for k in args.contenders} for env in args.envs}
    for pair in range(args.pairs):
        for env_id in args.envs:
            for kind, result in run_round(args.contenders, env_id, args.seed + pair, args).items():
                runs[env_id][kind].append(result)
                print(f"pair {pair} {env_id:15s} {kind} {LABELS[kind]:28s} {_fmt(result)}", flush=True)

    summary: dict[str, Any] = {}
    print("\nMedians over pairs (training phase; ratios of env steps/s, per pair then median)")
    for env_id in args.envs:
        env_runs = runs[env_id]
        env_summary: dict[str, Any] = {}
        for kind, results in env_runs.items():
            env_summary[kind] = {key: statistics.median(r[key] for r in results) for key in results[0]}
            print(f"{env_id:15s} {kind} {LABELS[kind]:28s} {_fmt(env_summary[kind])}")
        for num, den in (("A", "B"), ("A", "C"), ("D", "B"), ("C", "B"), ("F", "E")):
            if num in env_runs and den in env_runs:
                ratios = [a["steps_per_s"] / b["steps_per_s"] for a, b in zip(env_runs[num], env_runs[den], strict=True)]
                cpu_ratios = [
                    a["cpu_steps_per_s"] / b["cpu_steps_per_s"] for a, b in zip(env_runs[num], env_runs[den], strict=True)
                ]
                env_summary[f"{num}/{den}"] = statistics.median(ratios)
                env_summary[f"{num}/{den} per CPU-s"] = statistics.median(cpu_ratios)
                env_summary[f"{num}/{den} per pair"] = ratios
                print(
                    f"{env_id:15s} {num}/{den} = {statistics.median(ratios):.2f} "
                    f"(pairs: {', '.join(f'{r:.2f}' for r in ratios)}; per CPU second {statistics.median(cpu_ratios):.2f})"
                )
        summary[env_id] = env_summary

    long_run: dict[str, Any] = {}
    _write(args.out, dict(header=header, runs=runs, summary=summary, long_run=long_run))  # in case the long run is cut
    if args.long_steps:
        print(f"\nLong run: PaperDDPG paper defaults on {args.long_env}, {args.long_steps} training steps")
        model = make_d(args.long_env, args.seed, args.device)
        model.learning_starts = args.learning_starts
        long_run = _sb3_run(model, args.learning_starts, args.long_steps, chunk=args.chunk)
        chunks = long_run["chunk_steps_per_s"]
        print("steps/s per chunk of", args.chunk, ":", " ".join(f"{c:.0f}" for c in chunks))
        half = len(chunks) // 2
        if half:
            long_run["last_half_over_first_half"] = statistics.median(chunks[half:]) / statistics.median(chunks[:half])
            print(f"median of the last half / first half: {long_run['last_half_over_first_half']:.2f}")

    output = dict(header=header, runs=runs, summary=summary, long_run=long_run)
    _write(args.out, output)
    print(f"\nwrote {args.out}")
    return output


def _write(path: str, output: dict[str, Any]) -> None:
    with open(path, "w") as file:
        json.dump(output, file, indent=2)


if __name__ == "__main__":
    main()
