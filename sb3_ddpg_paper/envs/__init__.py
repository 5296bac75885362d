"""Pixel environments of the paper (Lillicrap et al. 2016, sec. 7): 9x64x64 observations with action repeat 3."""

from sb3_ddpg_paper.envs.pixels import (
    PAPER_ACTION_REPEAT,
    PAPER_IMAGE_SIZE,
    PixelObservation,
    make_pixel_env,
)
from sb3_ddpg_paper.envs.registration import NAMESPACE, PIXEL_ENV_IDS, register_pixel_envs

__all__ = [
    "NAMESPACE",
    "PAPER_ACTION_REPEAT",
    "PAPER_IMAGE_SIZE",
    "PIXEL_ENV_IDS",
    "PixelObservation",
    "make_pixel_env",
    "register_pixel_envs",
]
