"""benchmarks/rollout.py: deterministic episodes of a saved model, with their length, ending and reward terms."""

import sys
from pathlib import Path

import gymnasium as gym
import pytest

from sb3_ddpg_paper import PaperDDPG
from sb3_ddpg_paper.checkpoints import save_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import rollout


def test_rollout_of_a_model_and_of_a_checkpoint(tmp_path, capsys):
    model = PaperDDPG("MlpPolicy", gym.make("Hopper-v5"), seed=0, buffer_size=1_000)
    model.save(tmp_path / "model.zip")
    save_checkpoint(model, tmp_path / "checkpoints")

    assert rollout.main([str(tmp_path / "model.zip"), "--env", "Hopper-v5", "--episodes", "2"]) == 0
    table = capsys.readouterr().out.splitlines()
    header = "| episode | length | fell | x_velocity | upside_down | return | reward_forward | reward_ctrl | reward_survive |"
    assert header in table
    rows = [line.split("|")[2:-1] for line in table if line.startswith(("| 0 |", "| 1 |", "| mean |"))]
    assert len(rows) == 3
    for cells in rows:
        values = dict(zip(header.split("|")[2:-1], map(float, cells), strict=True))
        # The return is the sum of Hopper's reward terms; an untrained hopper falls, upright
        terms = sum(values[f" reward_{term} "] for term in ("forward", "ctrl", "survive"))
        assert values[" return "] == pytest.approx(terms, abs=0.02)
        assert values[" fell "] == 1.0 and values[" upside_down "] == 0.0 and 0 < values[" length "] < 1000

    # A checkpoint directory: its model.zip; the same start states, the same policy, the same episodes
    assert rollout.main([str(tmp_path / "checkpoints"), "--env", "Hopper-v5", "--episodes", "2"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == table[1:]

    with pytest.raises(FileNotFoundError, match=r"neither a saved model nor a directory holding a model\.zip"):
        rollout.main([str(tmp_path / "nothing"), "--env", "Hopper-v5"])
