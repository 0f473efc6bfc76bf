"""benchmarks/turn_mc_fork.py: its two sides do the same counted work, and the prefill side
really prefills (it feeds the model more tokens for the same continuations)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import turn_mc_fork as bench


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
