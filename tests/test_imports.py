"""What ``import sb3_ddpg_paper`` loads: the pixel ids are registered, and nothing heavy or patching is imported."""

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_registers_pixel_ids_without_heavy_modules():
    # A fresh interpreter: this test process has imported much more by now. Registration only records string entry
    # points (docs/pixels.md): PIL is imported when a render is resized, MuJoCo when a MuJoCo env is made, and rl_zoo3
    # (which patches gymnasium's TimeLimit on import) only by sb3_ddpg_paper.zoo's launcher.
    code = textwrap.dedent(
        """
        import sys
        import gymnasium as gym
        import sb3_ddpg_paper
        assert "sb3_ddpg_paper/PixelPendulum-v1" in gym.registry
        print(sorted(name for name in ("PIL", "mujoco", "rl_zoo3", "matplotlib", "pygame") if name in sys.modules))
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_pil_is_imported_when_a_render_is_resized():
    code = textwrap.dedent(
        """
        import sys
        import numpy as np
        import gymnasium as gym
        from sb3_ddpg_paper.envs import PixelObservation

        class Canvas(gym.Env):
            observation_space = gym.spaces.Box(-1, 1, (1,))
            action_space = gym.spaces.Box(-1, 1, (1,))
            render_mode = "rgb_array"

            def reset(self, *, seed=None, options=None):
                return np.zeros(1, np.float32), {}

            def render(self):
                return np.full((100, 100, 3), 200, np.uint8)

        env = PixelObservation(Canvas())
        assert "PIL" not in sys.modules
        obs, _ = env.reset()
        assert obs.shape == (9, 64, 64) and (obs == 200).all()
        print("PIL" in sys.modules)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "True"


def _package_imports() -> dict[str, set[str]]:
    """Module -> the package modules it imports (statically, lazy imports inside functions included)."""
    package = REPO / "sb3_ddpg_paper"
    imports: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        module = ".".join(("sb3_ddpg_paper", *path.relative_to(package).with_suffix("").parts)).removesuffix(".__init__")
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            found.update(name for name in names if name.startswith("sb3_ddpg_paper.") or name == "sb3_ddpg_paper")
        imports[module] = found - {module}
    return imports


def test_no_import_cycles_between_the_package_modules():
    imports = _package_imports()
    assert "sb3_ddpg_paper.ddpg" in imports and "sb3_ddpg_paper.checkpoints" in imports

    def reachable(start: str) -> set[str]:
        seen: set[str] = set()
        stack = [start]
        while stack:
            for module in imports.get(stack.pop(), set()) - {"sb3_ddpg_paper"}:  # the package's __init__ re-exports
                if module not in seen:
                    seen.add(module)
                    stack.append(module)
        return seen

    cycles = sorted(module for module in imports if module != "sb3_ddpg_paper" and module in reachable(module))
    assert not cycles, f"modules that import themselves through others: {cycles}"
