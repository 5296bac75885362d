"""sb3-ddpg-paper: the DDPG of Lillicrap et al. (2016) as published, as a Stable-Baselines3 plugin."""

from sb3_ddpg_paper.ddpg import PaperDDPG
from sb3_ddpg_paper.envs import registration as _registration  # noqa: F401  (registers sb3_ddpg_paper/Pixel* ids)
from sb3_ddpg_paper.noise import OrnsteinUhlenbeckNoise
from sb3_ddpg_paper.policies import CnnPolicy, MlpPolicy, MultiInputPolicy, PaperDDPGPolicy
from sb3_ddpg_paper.torch_layers import (
    PaperCNN,
    ddpg_conv2d_block,
    init_fan_in_uniform,
    init_kaiming_normal,
    init_uniform,
    init_xavier_uniform,
)
from sb3_ddpg_paper.validation import SpaceError

__version__ = "0.1.0"

__all__ = [
    "CnnPolicy",
    "MlpPolicy",
    "MultiInputPolicy",
    "OrnsteinUhlenbeckNoise",
    "PaperCNN",
    "PaperDDPG",
    "PaperDDPGPolicy",
    "SpaceError",
    "ddpg_conv2d_block",
    "init_fan_in_uniform",
    "init_kaiming_normal",
    "init_uniform",
    "init_xavier_uniform",
]
