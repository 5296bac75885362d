"""The throughput benchmark (benchmarks/throughput.py) on a tiny size: every contender runs, takes turns, reports."""

import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import throughput  # noqa: E402


def test_tiny_throughput_run_writes_every_ratio(tmp_path, capsys):
    out = tmp_path / "throughput.json"
    args = ["--envs", "Pendulum-v1", "--pairs", "2", "--learning-starts", "64", "--train-steps", "30", "--slice", "10"]
    result = throughput.main([*args, "--long-steps", "40", "--chunk", "20", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    runs = result["runs"]["Pendulum-v1"]
    assert set(runs) == set("ABCD") and all(len(results) == 2 for results in runs.values())
    for results in runs.values():
        for run in results:
            assert run["steps_per_s"] > 0 and run["updates_per_s"] > 0 and run["cpu_steps_per_s"] > 0
    summary = result["summary"]["Pendulum-v1"]
    for ratio in ("A/B", "A/C", "D/B", "C/B"):
        assert summary[ratio] > 0
    assert len(result["long_run"]["chunk_steps_per_s"]) == 2
    assert "A/B = " in capsys.readouterr().out


def test_contenders_take_turns(monkeypatch):
    """A round trains every contender slice by slice, rotating who goes first, each exactly --train-steps steps."""
    calls: list[tuple[str, int]] = []

    class Recorder(throughput.Contender):
        def __init__(self, kind, env_id, seed, args):
            self.kind, self.steps = kind, 0

        def warm_up(self):
            calls.append((self.kind, 0))

        def train(self, steps):
            calls.append((self.kind, steps))
            self.steps += steps

        def result(self):
            return {"steps": self.steps}

    monkeypatch.setattr(throughput, "Contender", Recorder)
    args = type("Args", (), {"train_steps": 25, "slice": 10})()
    results = throughput.run_round("ABC", "Pendulum-v1", 0, args)
    assert results == {kind: {"steps": 25} for kind in "ABC"}
    assert calls == [
        ("A", 0), ("B", 0), ("C", 0),
        ("A", 10), ("B", 10), ("C", 10),
        ("B", 10), ("C", 10), ("A", 10),
        ("C", 5), ("A", 5), ("B", 5),
    ]  # fmt: skip
