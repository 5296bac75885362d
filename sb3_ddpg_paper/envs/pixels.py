"""
The paper's pixel observations (Lillicrap et al. 2016, sec. 7): "each timestep of the agent is 3 timesteps of the
simulation (action repeat 3), rendering each time; the observation is the 3 RGB renders, downsampled to 64x64 pixels,
i.e. 9 input channels" (paraphrased). Works with any Gymnasium environment made with ``render_mode="rgb_array"``.
"""

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

# Lillicrap et al. 2016, sec. 7: action repeat 3, 64x64 RGB renders
PAPER_ACTION_REPEAT = 3
PAPER_IMAGE_SIZE = 64


class PixelObservation(gym.Wrapper[np.ndarray, np.ndarray, Any, Any], gym.utils.RecordConstructorArgs):
    """
    Replace the observation by stacked renders, with action repeat (Lillicrap et al. 2016, sec. 7).

    Every agent step repeats the action ``action_repeat`` times, renders after each repeat, resizes each render to
    ``image_size`` x ``image_size`` RGB and stacks them channels first: a ``(3 * action_repeat, size, size)`` uint8
    observation (9x64x64 with the paper's values), oldest render first. The reward is the sum over the repeats.
    When an episode terminates or is truncated during the repeats, the remaining repeats are skipped and the last
    render fills their channels; ``info["action_repeats"]`` says how many were done. At reset the one render of the
    initial state fills every slot.

    :param env: an environment made with ``render_mode="rgb_array"``
    :param action_repeat: simulation steps (and renders) per agent step (paper: 3)
    :param image_size: side of the square observation images in pixels (paper: 64)
    :param cache_images: while rendering, ``pygame.image.load`` returns the image it loaded before from the same file
        instead of reading it again (Gymnasium's Pendulum-v1 reads its arrow image from disk at every render: 2.5 of
        its 3 ms per agent step, ``benchmarks/results/pixels_breakdown.txt``). For environments that do not modify
        the images they load; the renders are the same
    """

    def __init__(
        self,
        env: gym.Env,
        action_repeat: int = PAPER_ACTION_REPEAT,
        image_size: int = PAPER_IMAGE_SIZE,
        cache_images: bool = False,
    ):
        gym.utils.RecordConstructorArgs.__init__(
            self, action_repeat=action_repeat, image_size=image_size, cache_images=cache_images
        )
        super().__init__(env)
        if env.render_mode != "rgb_array":
            raise ValueError(
                f"PixelObservation renders the environment, so it needs render_mode='rgb_array'; got "
                f"render_mode={env.render_mode!r}. Make it with gym.make(env_id, render_mode='rgb_array')."
            )
        for name, value in (("action_repeat", action_repeat), ("image_size", image_size)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        self.action_repeat = int(action_repeat)
        self.image_size = int(image_size)
        self.cache_images = cache_images
        self.observation_space = spaces.Box(
            low=0, high=255, shape=(3 * self.action_repeat, self.image_size, self.image_size), dtype=np.uint8
        )

    def render_frame(self) -> np.ndarray:
        """One render of the environment as a ``(3, size, size)`` uint8 array."""
        with _images_loaded_once() if self.cache_images else contextlib.nullcontext():
            frame = self.env.render()
        if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] < 3:
            raise ValueError(
                f"render() of {self.env} returned {type(frame).__name__} "
                f"{getattr(frame, 'shape', '')}: expected an RGB image of shape (height, width, 3)."
            )
        frame = frame[:, :, :3]
        if frame.shape[:2] != (self.image_size, self.image_size):
            # Bilinear with PIL's area-aware filter support (downscaling averages, it does not just pick pixels).
            # Imported here: registering the pixel ids (on `import sb3_ddpg_paper`) must not import PIL.
            from PIL import Image

            size = (self.image_size, self.image_size)
            frame = np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BILINEAR))
        return np.ascontiguousarray(frame.transpose(2, 0, 1), dtype=np.uint8)

    def _stack(self, frames: list[np.ndarray]) -> np.ndarray:
        frames = frames + [frames[-1]] * (self.action_repeat - len(frames))
        return np.concatenate(frames, axis=0)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        _, info = self.env.reset(seed=seed, options=options)
        return self._stack([self.render_frame()]), info

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        total_reward = 0.0
        frames: list[np.ndarray] = []
        terminated = truncated = False
        info: dict[str, Any] = {}
        for _ in range(self.action_repeat):
            _, reward, terminated, truncated, info = self.env.step(action)
            total_reward += float(reward)
            frames.append(self.render_frame())
            if terminated or truncated:
                break
        info = {**info, "action_repeats": len(frames)}
        return self._stack(frames), total_reward, terminated, truncated, info


_LOADED_IMAGES: dict[Any, Any] = {}  # file name -> pygame Surface, for _images_loaded_once


@contextlib.contextmanager
def _images_loaded_once() -> Iterator[None]:
    """Within the context, ``pygame.image.load(file)`` of a file name returns the surface loaded the first time."""
    pygame = sys.modules.get("pygame")
    if pygame is None:  # the environment imports pygame at its first render
        yield
        return
    load = pygame.image.load

    def load_once(file: Any, *args: Any) -> Any:
        if not isinstance(file, str | os.PathLike) or args:
            return load(file, *args)
        key = os.fspath(file)
        if key not in _LOADED_IMAGES:
            _LOADED_IMAGES[key] = load(file)
        return _LOADED_IMAGES[key]

    pygame.image.load = load_once
    try:
        yield
    finally:
        pygame.image.load = load


def _is_mujoco(env_id: str) -> bool:
    spec = gym.spec(env_id)
    return isinstance(spec.entry_point, str) and spec.entry_point.startswith("gymnasium.envs.mujoco")


def make_pixel_env(
    env_id: str,
    action_repeat: int = PAPER_ACTION_REPEAT,
    image_size: int = PAPER_IMAGE_SIZE,
    render_mode: str | None = "rgb_array",
    fast_render: bool = True,
    **kwargs: Any,
) -> PixelObservation:
    """
    Make ``env_id`` with ``render_mode="rgb_array"`` and wrap it in :class:`PixelObservation` (the paper's 9x64x64
    observations with action repeat 3). The environment's own time limit still counts simulation steps, so an
    episode lasts as much simulated time as with low-dimensional observations (Pendulum-v1: 200 simulation steps,
    67 agent steps).

    MuJoCo environments render directly at ``image_size`` (no resize). With ``fast_render``, MuJoCo renders have no
    shadows, reflections or skybox (the costly parts of software rendering on a CPU), environments that draw on a
    square ``screen_dim`` canvas (Pendulum-v1) draw at ``image_size`` instead of 500x500 and resizing, and Pendulum-v1
    reads its arrow image once instead of at every render (``cache_images``). Other
    environments are rendered at their size and resized (bilinear).

    :param env_id: a Gymnasium id (e.g. ``"Pendulum-v1"``, ``"HalfCheetah-v5"``)
    :param action_repeat: simulation steps per agent step (paper: 3)
    :param image_size: side of the square observation images (paper: 64)
    :param render_mode: accepted for ``gym.make`` compatibility; the pixel env always renders ``"rgb_array"``
    :param fast_render: render MuJoCo without shadows, reflections and skybox; draw Pendulum at ``image_size`` and
        read its arrow image once
    :param kwargs: passed to ``gym.make`` (e.g. ``max_episode_steps``)
    :return: the wrapped environment
    """
    if render_mode not in (None, "rgb_array"):
        raise ValueError(f"Pixel environments render to arrays: render_mode must be 'rgb_array' or None, got {render_mode!r}.")
    mujoco = _is_mujoco(env_id)
    if mujoco:
        _default_mujoco_gl()
        kwargs = {"width": image_size, "height": image_size, **kwargs}
    env = gym.make(env_id, render_mode="rgb_array", **kwargs)
    if fast_render and mujoco:
        _disable_mujoco_effects(env)
    elif fast_render and isinstance(getattr(env.unwrapped, "screen_dim", None), int):
        env.unwrapped.screen_dim = image_size  # type: ignore[attr-defined]  # read at the first render
    # Pendulum-v1 reads its arrow image at every render and never modifies it
    cache_images = fast_render and type(env.unwrapped).__module__ == "gymnasium.envs.classic_control.pendulum"
    return PixelObservation(env, action_repeat=action_repeat, image_size=image_size, cache_images=cache_images)


def _default_mujoco_gl() -> None:
    """
    Headless MuJoCo rendering: default ``MUJOCO_GL=egl`` on Linux (works on a CPU-only machine with Mesa's EGL, i.e.
    llvmpipe, and on GPUs). MuJoCo reads the variable when it is first imported, so it is set just before the first
    MuJoCo environment is made; a value chosen by the user always wins. See docs/pixels.md.
    """
    if "MUJOCO_GL" in os.environ or not sys.platform.startswith("linux"):
        return
    if "mujoco" in sys.modules:
        warnings.warn(
            "MuJoCo was imported before MUJOCO_GL was set, so it may not render without a display. Set "
            "MUJOCO_GL=egl (or osmesa) in the environment before importing MuJoCo for headless rendering."
        )
        return
    os.environ["MUJOCO_GL"] = "egl"


def _disable_mujoco_effects(env: gym.Env) -> None:
    import mujoco

    renderer = env.unwrapped.mujoco_renderer  # type: ignore[attr-defined]
    viewer = renderer._get_viewer("rgb_array")
    for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION, mujoco.mjtRndFlag.mjRND_SKYBOX):
        viewer.scn.flags[flag] = 0
