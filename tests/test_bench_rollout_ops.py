"""benchmarks/rollout_ops.py: back-to-back pair ratios of the agent rollout and the bare loop."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import rollout_ops


def test_pair_ratios_are_bare_over_agent_per_pair(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pairs (bare, agent) of 1/2, 2/2, 3/2, 4/2 and 1/4 seconds: ratios 0.5, 1, 1.5, 2, 0.25.
    times = iter([1.0, 2.0, 2.0, 2.0, 3.0, 2.0, 4.0, 2.0, 1.0, 4.0])
    calls: list[str] = []

    def timed(fn: Any, device: Any) -> float:
        calls.append(fn)
        return next(times)

    monkeypatch.setattr(rollout_ops, "_timed", timed)
    r = rollout_ops.pair_ratios("bare", "agent", 5, rollout_ops.torch.device("cpu"))
    assert calls == ["bare", "agent"] * 5  # back to back, bare first
    assert (r["median"], r["min"], r["max"], r["pairs"]) == (1.0, 0.25, 2.0, 5)
    assert r["q1"] <= r["median"] <= r["q3"]
    with pytest.raises(ValueError, match=r"pairs=1 must be at least 2 \(--pairs\)"):
        rollout_ops.pair_ratios("bare", "agent", 1, rollout_ops.torch.device("cpu"))
