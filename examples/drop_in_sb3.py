"""
A typical Stable-Baselines3 DDPG script (the example from SB3's documentation) with one change: the import.

    -from stable_baselines3 import DDPG
    +from sb3_ddpg_paper import PaperDDPG as DDPG

Every argument, the action noise, save/load and get_env() work as before; what changes is the algorithm: the paper's
networks (batch norm, action at the critic's 2nd layer), learning rates, critic weight decay and tau.

    python examples/drop_in_sb3.py [--steps 10000]
"""

import argparse

import gymnasium as gym
import numpy as np
from stable_baselines3.common.noise import NormalActionNoise

from sb3_ddpg_paper import PaperDDPG as DDPG

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=10_000)
parser.add_argument("--save-path", default="ddpg_pendulum")
args = parser.parse_args()

env = gym.make("Pendulum-v1", render_mode="rgb_array")

# The noise objects for DDPG
n_actions = env.action_space.shape[-1]
action_noise = NormalActionNoise(mean=np.zeros(n_actions), sigma=0.1 * np.ones(n_actions))

model = DDPG("MlpPolicy", env, action_noise=action_noise, verbose=1)
model.learn(total_timesteps=args.steps, log_interval=10)
model.save(args.save_path)
vec_env = model.get_env()

del model  # remove to demonstrate saving and loading

model = DDPG.load(args.save_path)

obs = vec_env.reset()
episode_return = 0.0
for _ in range(200):
    action, _states = model.predict(obs)
    obs, rewards, dones, info = vec_env.step(action)
    episode_return += float(rewards[0])
print(f"Return of one episode with the loaded model: {episode_return:.1f}")
