"""The tables and figures of ``docs/performance.md``, from ``decode.json`` (the decode paths)
and ``memory_smollm2.json`` (a SmolLM2-135M iteration's memory): ``<!-- render:NAME -->``
blocks (:data:`BLOCKS`, joined into ``benchmarks/pages.py``'s) and quoted figures
(:data:`FACTS`; see ``benchmarks/facts.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, markdown_table
from benchmarks.facts import Facts, registrar, span

FACTS: Facts = {}
fact = registrar(FACTS)

DECODE = RESULTS_DIR / "decode.json"
MEMORY = RESULTS_DIR / "memory_smollm2.json"

#: Issue 28's goal for the compiled decode path: this speed-up of the rollout over eager.
COMPILED_GOAL = 1.5
#: Issue 28's goal for the update stage's peak at the default settings, MB.
MEMORY_GOAL_MB = 4096


# --------------------------------------------------------------------------- decode.json
def decode_table(data: dict[str, Any]) -> str:
    """Speed-ups of the rollout over the eager one per model (median per round, the compiled
    path's range beside it) and the compilation's wall time."""
    rows = []
    for r in data["results"]:
        static = r["speedup_over_eager"]["static"]
        compiled = r["speedup_over_eager"]["compiled"]
        rows.append(
            [
                r["model"],
                f"{r['batch']}, {r['new_tokens']}",
                f"{static['median']:.2f}x",
                f"{compiled['median']:.2f}x ({compiled['min']:.2f}-{compiled['max']:.2f})",
                f"{r['agent_over_bare']['compiled']['median']:.2f}",
                f"{r['compile_s']:.0f} s",
            ]
        )
    header = [
        "model",
        "batch, tokens",
        "static",
        "compiled (range over rounds)",
        "compiled agent / bare loop",
        "compilation",
    ]
    return markdown_table(header, rows)


@fact("decode-rounds", DECODE)
def decode_rounds(data: dict[str, Any]) -> str:
    """Interleaved rounds per model."""
    return span((float(r["rounds"]) for r in data["results"]), 0)


@fact("decode-load", DECODE)
def decode_load(data: dict[str, Any]) -> str:
    """The 1-minute load average before and after each model's rounds, lowest to highest."""
    loads = [x for r in data["results"] for x in (r["load_before"][0], r["load_after"][0])]
    return "load " + span(loads, 1)


@fact("decode-goal", DECODE)
def decode_goal(data: dict[str, Any]) -> str:
    """Whether the SmolLM2 architecture's compiled rollout meets the speed-up goal."""
    r = next(r for r in data["results"] if r["model"].startswith("SmolLM2"))
    met = r["speedup_over_eager"]["compiled"]["median"] >= COMPILED_GOAL
    return "meets" if met else "does not meet"


# --------------------------------------------------------------------------- memory_smollm2.json
#: Row label in the results file -> what the code measured was.
MEMORY_ROWS = {
    "before": "before issue 28 (`before`)",
    "after": "sliced log-probs (`after`)",
    "fused": "scores from the hidden state (`fused`)",
    "after-micro8": "`micro_batch_size=8` (`after-micro8`)",
    "after-lora": "LoRA r=8, sliced log-probs (`after-lora`)",
    "fused-lora-lora": "LoRA r=8, scores from the hidden state (`fused-lora`)",
}


def _runs(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The measured rows (every entry with stages), in the table's order, then any other."""
    runs = {k: v for k, v in data.items() if isinstance(v, dict) and "stages" in v}
    order = [k for k in MEMORY_ROWS if k in runs] + [k for k in runs if k not in MEMORY_ROWS]
    return {k: runs[k] for k in order}


def _peak(run: dict[str, Any], stage: str) -> float:
    return float(run["stages"][stage]["peak_rss_mb"])


def memory_table(data: dict[str, Any]) -> str:
    """Peak RSS of the score and update stages per measured code."""
    runs = _runs(data)
    full = runs.get("fused")
    rows = []
    for label, run in runs.items():
        update = f"{_peak(run, 'update'):.0f} MB"
        if run.get("lora") and full is not None and label.startswith("fused"):
            update += f" ({_peak(run, 'update') / _peak(full, 'update'):.2f}x of `fused`)"
        rows.append([MEMORY_ROWS.get(label, f"`{label}`"), f"{_peak(run, 'score'):.0f} MB", update])
    return markdown_table(["code", "score stage", "update stage (the peak)"], rows)


@fact("memory-fused-update", MEMORY)
def memory_fused_update(data: dict[str, Any]) -> str:
    """The full fine-tune's update peak with scores from the hidden state, and the goal."""
    peak = _peak(_runs(data)["fused"], "update")
    side = "still above" if peak > MEMORY_GOAL_MB else "under"
    return f"{peak:.0f} MB is {side}"


@fact("memory-lora-over-full", MEMORY)
def memory_lora_over_full(data: dict[str, Any]) -> str:
    """LoRA's update peak over the full fine-tune's (both scoring from the hidden state)."""
    runs = _runs(data)
    return f"{_peak(runs['fused-lora-lora'], 'update') / _peak(runs['fused'], 'update'):.2f}x"


#: ``<!-- render:NAME -->`` block name -> (results file, renderer of its JSON).
BLOCKS: dict[str, tuple[Path, Callable[[Any], str]]] = {
    "decode-speedups": (DECODE, decode_table),
    "memory-stages": (MEMORY, memory_table),
}
