"""benchmarks/facts_perf.py's memory blocks: memory-stages (every entry of memory_smollm2.json,
the second iteration where it was measured, and the goals judged on the lean entries) and
lean-check (benchmarks/lean.py's saved bytes, times and gradient check)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks import facts_perf  # noqa: E402


def _entry(update: float, second: float | None = None, lora: bool = False) -> dict[str, Any]:
    def stages(up: float) -> dict[str, Any]:
        return {
            "score": {"peak_rss_mb": 1800.0},
            "update": {"peak_rss_mb": up},
        }

    out: dict[str, Any] = {
        "stages": stages(update),
        "lora": lora,
        "loadavg_start": [3.25, 2.0, 1.0],
        "machine": {"commit": "0123456789abcdef"},
        "peak_rss_mb": max(update, second or 0.0),
    }
    if second is not None:
        out["stages_2"] = stages(second)
    return out


def test_memory_block_rows_and_goals() -> None:
    data = {
        "fused": _entry(4105.0),
        "lean": _entry(3300.0, 4000.0),
        "lean-lora": _entry(2300.0, 2500.0, lora=True),
        "note": "how these were run",
    }
    text = facts_perf.memory_table(data)
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 4  # the header and three entries: the note is no row
    assert rows[1].split(" | ")[4] == "not measured"  # `fused`: one iteration only
    lean_row = (
        "| lean MLP and RMSNorm, glibc's allocator (`lean`) | none | 1800 | 3300 | 4000 | 4000 |"
    )
    assert lean_row + " 3.2 | 0123456 |" in text
    assert (
        "- `lean` (glibc's defaults): peak 4000 MB over both iterations, goal under 4096 MB "
        "**met**; LoRA (`lean-lora`) over it 0.62x, goal 0.6x **not met**." in text
    )
    assert text.rstrip().endswith("how these were run")


def test_memory_block_goal_not_met_and_no_pair() -> None:
    text = facts_perf.memory_table({"lean-mmap128k": _entry(3300.0, 4200.0)})
    assert "(MALLOC_MMAP_THRESHOLD_=131072): peak 4200 MB" in text
    assert "goal under 4096 MB **not met**." in text  # and no LoRA twin
    assert "goal" not in facts_perf.memory_table({"plain": _entry(3300.0)})


def test_lean_check_block() -> None:
    spread = {"median": 1.5, "min": 1.0, "max": 2.25}
    data = {
        "batch": 8,
        "tokens_per_row": 48,
        "rounds": 6,
        "saved_mb": {"plain": 480.0, "lean": 300.0},
        "saved_lean_over_plain": 0.625,
        "seconds": {"plain": spread, "lean": spread},
        "lean_over_plain": {"median": 1.01, "min": 0.9, "max": 1.2},
        "gradients_bitwise_equal": True,
        "load_before": [2.04, 1.0, 1.0],
        "load_after": [3.0, 1.0, 1.0],
        "machine": {"commit": "0123456789abcdef"},
    }
    text = facts_perf.lean_table(data)
    row = "| 8 x 48 | 480 | 300 (0.62x) | 1.5 (1.0-2.2) | 1.5 (1.0-2.2) | 1.01 (0.90-1.20) | yes |"
    assert row + " 2.0-3.0 | 0123456 |" in text
    assert "6 interleaved rounds" in text
    data["gradients_bitwise_equal"] = False
    assert "| **no** |" in facts_perf.lean_table(data)


def test_allocator_cost_block() -> None:
    spread = {"median": 1.5, "min": 1.25, "max": 2.0}
    data = {
        "layers": 8,
        "batch": 32,
        "tokens_per_row": 48,
        "updates_per_process": 2,
        "rounds": 3,
        "seconds": {"policy": spread, "glibc": {"median": 1.4, "min": 1.0, "max": 3.0}},
        "peak_rss_mb": {"policy": {"median": 900.0, "min": 890.0, "max": 910.0}, "glibc": spread},
        "applied_threshold": {"policy": 131072, "glibc": None},
        "policy_over_glibc": {"median": 1.07, "min": 0.95, "max": 1.1},
        "load_before": [2.5, 1.0, 1.0],
        "load_after": [3.0, 1.0, 1.0],
        "machine": {"commit": "0123456789abcdef"},
    }
    text = facts_perf.allocator_table(data)
    assert "| `policy` | 128 KiB | 1.50 (1.25-2.00) | 900 (890-910) |" in text
    assert "| `glibc` | glibc's dynamic | 1.40 (1.00-3.00) | 2 (1-2) |" in text
    assert "policy / glibc per round: 1.07 (0.95-1.10); 3 interleaved rounds" in text
    assert "load 2.5 before, 3.0 after; commit 0123456." in text
