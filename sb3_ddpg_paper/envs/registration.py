"""
Gymnasium ids of the pixel environments, registered on ``import sb3_ddpg_paper`` (no rl_zoo3 needed).

``gym.make("sb3_ddpg_paper/PixelPendulum-v1")`` after ``import sb3_ddpg_paper``, or without any import through
Gymnasium's module prefix: ``gym.make("sb3_ddpg_paper:sb3_ddpg_paper/PixelPendulum-v1")``. Registration only records
string entry points: nothing heavy (MuJoCo, PIL) is imported until an environment is made.
"""

import gymnasium as gym

NAMESPACE = "sb3_ddpg_paper"

# Low-dimensional id -> pixel id: Pendulum-v1 -> sb3_ddpg_paper/PixelPendulum-v1 (same version as the wrapped env)
PIXEL_ENV_IDS: dict[str, str] = {
    env_id: f"{NAMESPACE}/Pixel{env_id}"
    for env_id in (
        "Pendulum-v1",
        "MountainCarContinuous-v0",
        "InvertedPendulum-v5",
        "InvertedDoublePendulum-v5",
        "Reacher-v5",
        "Hopper-v5",
        "HalfCheetah-v5",
        "Walker2d-v5",
    )
}


def register_pixel_envs() -> None:
    """Register every id of ``PIXEL_ENV_IDS`` (idempotent)."""
    for env_id, pixel_id in PIXEL_ENV_IDS.items():
        if pixel_id not in gym.registry:
            gym.register(
                id=pixel_id,
                entry_point="sb3_ddpg_paper.envs.pixels:make_pixel_env",
                kwargs={"env_id": env_id},
                # The wrapped env keeps its own time limit, counted in simulation steps
                max_episode_steps=None,
            )


register_pixel_envs()
