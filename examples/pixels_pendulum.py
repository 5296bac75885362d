"""Train PaperDDPG from pixels on Pendulum (the paper's 9x64x64 renders, action repeat 3) and write a GIF of the
learned policy (Lillicrap et al. 2016, sec. 7: same algorithm as from low-dimensional states, the pixel network).

python examples/pixels_pendulum.py [--steps 20000] [--seed 0] [--gif pixels_pendulum.gif]

Learning from pixels is slow on a CPU (a few agent steps per second per core, see docs/pixels.md): expect hours for
a policy that swings up.
"""

import argparse
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch as th
from PIL import Image

from sb3_ddpg_paper import PaperDDPG

ENV_ID = "sb3_ddpg_paper/PixelPendulum-v1"  # registered by `import sb3_ddpg_paper`


def record_gif(model: PaperDDPG, path: Path, n_steps: int, seed: int) -> float:
    """Run the policy without noise for ``n_steps`` agent steps; save what it saw (the latest render of each
    observation, enlarged 4x) as a GIF. Returns the summed reward."""
    env = gym.make(ENV_ID)
    obs, _ = env.reset(seed=seed)
    frames, total_reward = [], 0.0
    for _ in range(n_steps):
        action, _ = model.predict(obs, deterministic=True)
        obs, reward, terminated, truncated, _ = env.step(action)
        total_reward += float(reward)
        latest = obs[-3:].transpose(1, 2, 0)  # the last of the 3 renders, channels last
        frames.append(Image.fromarray(np.kron(latest, np.ones((4, 4, 1), dtype=np.uint8))))
        if terminated or truncated:
            break
    env.close()
    # 3 simulation steps of 0.05 s per frame: 150 ms per frame plays in real time
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=150, loop=0)
    return total_reward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20_000, help="agent steps to train for")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--buffer-size", type=int, default=None, help="default: PaperDDPG.pixel_defaults (1e5)")
    parser.add_argument("--learning-starts", type=int, default=1000)
    parser.add_argument("--gif", type=Path, default=Path("pixels_pendulum.gif"))
    parser.add_argument("--gif-steps", type=int, default=67, help="agent steps in the GIF (67: one full episode)")
    args = parser.parse_args()

    th.set_num_threads(1)
    kwargs = {} if args.buffer_size is None else {"buffer_size": args.buffer_size}
    # An env id alone: CnnPolicy with the paper's pixel network, batch 16, final layers U(+-3e-4)
    model = PaperDDPG(ENV_ID, seed=args.seed, learning_starts=args.learning_starts, **kwargs)
    print(f"Training PaperDDPG from pixels on {ENV_ID} for {args.steps} agent steps, seed {args.seed}...")
    print(f"Observation space {model.observation_space}, policy {type(model.policy).__name__}, batch {model.batch_size}")
    model.learn(args.steps)
    model.save("paper_ddpg_pixels_pendulum")
    episode_return = record_gif(model, args.gif, args.gif_steps, seed=10_000 + args.seed)
    print(f"Return of the recorded episode without noise: {episode_return:.1f}")
    print(f"GIF of the learned policy written to {args.gif}")


if __name__ == "__main__":
    main()
