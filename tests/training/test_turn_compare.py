"""`marlhf compare` on a multi-turn task with the turn-level presets (the issue's command)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from marlhf.config.commands import AgentConfig, CompareConfig, ModelConfig, TaskConfig
from marlhf.runs.builders import check_task_builds


def _config(tmp_path: Path, **kw: object) -> CompareConfig:
    values: dict[str, object] = {
        "model": ModelConfig(n_layer=1, n_embd=32, n_head=2),
        "task": TaskConfig(id="marlhf/ToolLookup-v0", kwargs={}, num_envs=8),
        "agent": AgentConfig.from_mapping({"group_size": 4, "mask_actions": True, "batch_size": 8}),
        "terminations": [],
        "agents": ["gigpo", "mt-grpo", "turn-gae", "grpo"],
        "seeds": [0],
        "total_timesteps": 48,
        "output_dir": str(tmp_path / "cmp"),
        "workers": 1,
    }
    values.update(kw)
    return CompareConfig(**values)  # type: ignore[arg-type]


def test_multiturn_tasks_pass_the_build_check() -> None:
    task = check_task_builds(TaskConfig(id="marlhf/ToolLookup-v0", kwargs={}), ModelConfig())
    assert task is not None and task.max_turns == 3
    with pytest.raises(ValueError, match=r"task.kwargs=\{'n_answers': 1\} do not fit"):
        check_task_builds(
            TaskConfig(id="marlhf/ToolLookup-v0", kwargs={"n_answers": 1}), ModelConfig()
        )


def test_a_turn_preset_on_a_one_turn_task_fails_before_training(tmp_path: Path) -> None:
    from marlhf.commands.compare import run_compare

    config = _config(tmp_path, task=TaskConfig(id="marlhf/DelayedChoice-v0", num_envs=8))
    config.agents = ["gigpo"]
    with pytest.raises(
        ValueError,
        match=r"agents: 'gigpo': estimator 'gigpo:omega=1.0;gamma=0.95;std=true' is turn-level "
        r"but task marlhf/DelayedChoice-v0 has one turn",
    ):
        run_compare(config)
    assert not (tmp_path / "cmp").exists()  # nothing was trained


@pytest.mark.slow
def test_compare_runs_the_turn_presets_on_tool_lookup(tmp_path: Path) -> None:
    from marlhf.commands.compare import run_compare

    out = run_compare(_config(tmp_path))
    agents = [row["agent"] for row in out["summary"]]
    assert agents == ["ppo", "gigpo", "mt-grpo", "turn-gae", "grpo"]
    summary = json.loads((tmp_path / "cmp" / "summary.json").read_text())
    assert all(row["final_score"] is not None for row in summary["summary"])
