import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args: str, cwd: Path) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_drop_in_sb3_script(tmp_path):
    out = run_example("drop_in_sb3.py", "--steps", "300", cwd=tmp_path)
    assert "Return of one episode with the loaded model" in out
    assert (tmp_path / "ddpg_pendulum.zip").exists()


def test_pendulum_example_prints_the_evaluation_return(tmp_path):
    out = run_example("pendulum.py", "--steps", "1200", "--eval-episodes", "2", cwd=tmp_path)
    assert "Evaluation return over 2 episodes without noise:" in out
