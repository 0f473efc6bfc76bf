"""benchmarks/turn_mc_fork.py: its two sides do the same counted work, and the prefill side
really prefills (it feeds the model more tokens for the same continuations)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import turn_mc_fork as bench
from benchmarks import turn_mc_fork_doc as doc


@pytest.mark.slow
def test_one_round_on_tool_lookup() -> None:
    part = bench.run_task("toollookup", rounds=1)
    fork, prefill = part["sides"]["fork"], part["sides"]["prefill"]
    assert part["same_counted_tokens"]
    assert fork["mc_tokens"] == prefill["mc_tokens"] > 0
    assert fork["timesteps"] == prefill["timesteps"] > fork["mc_tokens"]
    assert 0 < fork["mc_fed"] < prefill["mc_fed"]
    assert fork["mc_s"] > 0 and part["prefill_over_fork_mc_fed"] > 1
    assert len(part["loadavg_per_round"]) == 1


def _side(s: float, mc_fed: float) -> dict[str, float]:
    fed = 2 * mc_fed
    return {"s": s, "mc_s": s / 2, "fed": fed, "mc_fed": mc_fed, "timesteps": 9, "mc_tokens": 5}


def test_the_table_shows_tokens_fed_and_paired_time_ratios() -> None:
    part: dict[str, Any] = {
        "env_id": "marlhf/GuessTheNumber-v0",
        "kwargs": {"high": 4},
        "rounds": 2,
        "sides": {"fork": _side(1.0, 100), "prefill": _side(1.5, 250)},
        "per_round": {
            "fork": [_side(1.0, 100), _side(2.0, 100)],
            "prefill": [_side(1.5, 250), _side(1.0, 250)],
        },
        "same_counted_tokens": True,
        "prefill_over_fork_mc_fed": 2.5,
        "loadavg_before": [3.0, 2.0, 1.0],
        "loadavg_per_round": [3.5, 4.0],
    }
    data = {"machine": {"commit": "0" * 40, "cores": 2, "torch_threads": 1}, "tasks": {"g": part}}
    table = doc.render_table(data)
    # paired ratios 1.5 and 0.5: median 1.0, range 0.5-1.5 (the medians of the sides say 1.5)
    assert (
        "| GuessTheNumber-v0 (high=4) | 100 / 250 | 2.50x | 1.00 / 1.50 | 1.00x (0.50-1.50) |"
        in table
    )
    assert "| 5 | yes |" in table and "load average 3.0-4.0 on 2 shared cores" in table


def test_the_page_holds_the_block() -> None:
    text = (doc.RESULTS.parent.parent.parent / "docs" / "credit_multiturn.md").read_text()
    assert text.count("<!-- render:turn-mc-fork -->") == 1
