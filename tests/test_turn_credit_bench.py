"""benchmarks/turn_credit.py: the exact part's numbers, the rendered block, the doc markers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.turn_credit import (
    BEGIN,
    END,
    EXACT_SPECS,
    render_block,
    replace_block,
    run_exact,
)


def test_exact_part_reproduces_the_published_bias_and_its_fix() -> None:
    exact = run_exact()
    costly = exact["two-turn, costly tool"]["table"]
    assert set(costly) == set(EXACT_SPECS)
    assert costly["mt_grpo:std=false"]["sign_agreement"] == 0.0  # the update flips
    assert costly["mt_grpo_fixed:std=false"]["relative_error"] == pytest.approx(0.0, abs=1e-6)
    for part in exact.values():  # trajectory-level baselines are unbiased (a positive scale)
        assert part["table"]["rloo"]["cosine"] == pytest.approx(1.0, abs=1e-6)


def test_block_renders_every_spec_and_missing_tasks(tmp_path: Path) -> None:
    data = {
        "mode": "quick",
        "machine": {"commit": "abc"},
        "exact": run_exact(),
        "tasks": {"guess": {"env_id": "marlhf/Guess-v0", "missing": "not registered"}},
    }
    block = render_block(data)
    assert block.startswith(BEGIN) and block.endswith(END)
    for spec in EXACT_SPECS:
        assert f"`{spec}`" in block
    assert "**guess**: not run: not registered." in block
    doc = tmp_path / "d.md"
    doc.write_text(f"head\n{BEGIN}\nold\n{END}\ntail\n", encoding="utf-8")
    replace_block(doc, block)
    text = doc.read_text(encoding="utf-8")
    assert text.startswith("head\n") and text.endswith("\ntail\n") and "old" not in text
    doc.write_text("no markers", encoding="utf-8")
    with pytest.raises(ValueError, match="markers"):
        replace_block(doc, block)


def test_learning_table_reports_cost_relative_to_ppo() -> None:
    from benchmarks.turn_credit import render_tasks

    def row(agent: str, wall: float) -> dict[str, object]:
        return {
            "agent": agent,
            "final_score": 0.5,
            "final_score_ci95": 0.1,
            "tokens_to_ppo_final": None,
            "wall_time": wall,
        }

    part = {
        "env_id": "marlhf/ToolLookup-v0",
        "budget": 100,
        "seeds": [0, 1],
        "summary": [row("ppo", 10.0), row("gigpo", 15.0)],
        "loadavg": [1.0, 1.0, 1.0],
        "command": "python benchmarks/turn_credit.py",
    }
    text = "\n".join(render_tasks({"toollookup": part}))
    assert "| gigpo | 0.500 ± 0.100 | - | 15 | 1.50x |" in text
    assert "| ppo | 0.500 ± 0.100 | - | 10 | 1.00x |" in text
