"""The CLI trains, evaluates and compares on a multi-turn task (ToolLookup), as on any task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from marlhf.cli.main import main
from tests.training.conftest import sets

TOOL = [
    "task.id=marlhf/ToolLookup-v0",
    "task.num_envs=8",
    "model.n_layer=1",
    "model.n_embd=16",
    "model.n_head=2",
    "agent.mask_actions=true",
    "agent.batch_size=8",
]


@pytest.mark.slow
def test_train_eval_and_compare_on_a_multiturn_task(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "train"
    assert main(["train", *sets(*TOOL, "total_timesteps=64", f"output_dir={out}")]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] >= 64
    samples = tmp_path / "samples.jsonl"
    argv = ["eval", *sets(f"model.path={out / 'final'}", "episodes=4", f"output={samples}")]
    assert main(argv) == 0
    lines = [json.loads(x) for x in samples.read_text().splitlines()]
    assert len(lines) == 4 and all(r["prompt"] == "q" for r in lines)
    capsys.readouterr()
    cmp = tmp_path / "compare"
    argv = [
        "compare",
        *sets(*TOOL, "terminations=[turn]", "agents=[grpo]", "seeds=[0]"),
        *sets("total_timesteps=64", "workers=1", f"output_dir={cmp}"),
    ]
    assert main(argv) == 0
    report = (cmp / "report.md").read_text()
    assert "grpo" in report and "turn" in report and "0.295 / 0.900" in report
