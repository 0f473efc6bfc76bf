"""`marlhf train` and `marlhf compare` name a multi-turn task by its env id, like any task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from marlhf.cli.main import main
from tests.training.conftest import sets

TINY_GUESS = [
    "task.id=marlhf/GuessTheNumber-v0",
    "task.num_envs=8",
    "agent.batch_size=8",
    "agent.mask_actions=true",
    "model.n_layer=1",
    "model.n_embd=16",
    "model.n_head=2",
]


@pytest.mark.slow
def test_train_runs_a_multiturn_task(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    argv = sets(*TINY_GUESS, "algo=ppo", "num_threads=1", "total_timesteps=64", f"output_dir={run}")
    assert main(["train", "-q", *argv]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tokens"] >= 64 and -1.0 <= result["final_score"] <= 1.0


def test_a_multiturn_task_builds_with_its_returns_for_the_report() -> None:
    from marlhf.commands.compare import _task_returns
    from marlhf.config.commands import TaskConfig
    from marlhf.envs.multiturn.tasks.guess_number import GuessTheNumberTask
    from marlhf.runs.builders import make_any_task

    built = make_any_task("marlhf/GuessTheNumber-v0", high=6)
    assert isinstance(built, GuessTheNumberTask) and built.make_env().high == 6
    expected = f"{built.random_return:.3f} / {built.optimal_return:.3f}"
    config = TaskConfig(id="marlhf/GuessTheNumber-v0", kwargs={"high": 6})
    assert _task_returns(config) == {"random / optimal return": expected}


@pytest.mark.slow
def test_compare_runs_a_multiturn_task(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp"
    argv = sets(*TINY_GUESS, "seeds=[0]", "terminations=[turn]", "agents=[]", "workers=1")
    assert main(["compare", "-q", *argv, *sets("total_timesteps=64", f"output_dir={out}")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert sorted(result["trained"]) == ["mappo-turn-seed0", "ppo-token-seed0"]
    assert "random / optimal return" in (out / "report.md").read_text()
