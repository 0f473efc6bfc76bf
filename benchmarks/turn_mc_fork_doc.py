"""The ``<!-- render:turn-mc-fork -->`` block of ``docs/credit_multiturn.md`` from
``benchmarks/results/turn_mc_fork.json`` (:mod:`benchmarks.turn_mc_fork`); no torch, so
``benchmarks/pages.py`` imports it."""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks.common import RESULTS_DIR, markdown_table
from benchmarks.provenance import describe

RESULTS = RESULTS_DIR / "turn_mc_fork.json"


def _paired(part: dict[str, Any]) -> str:
    """The per-round ratio of the prefill side's iteration time over the fork side's: median
    and range (each round runs both sides under the same load)."""
    ratios = [
        b["s"] / a["s"]
        for a, b in zip(part["per_round"]["fork"], part["per_round"]["prefill"], strict=True)
    ]
    return f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"


def render_table(data: dict[str, Any]) -> str:
    """The markdown table of ``turn_mc_fork.json`` and the line under it (the
    ``<!-- render:turn-mc-fork -->`` block of ``docs/credit_multiturn.md``)."""
    rows = []
    loads: list[float] = []
    for part in data["tasks"].values():
        fork, prefill = part["sides"]["fork"], part["sides"]["prefill"]
        args = ", ".join(f"{k}={v}" for k, v in part["kwargs"].items())
        rows.append(
            [
                part["env_id"].removeprefix("marlhf/") + (f" ({args})" if args else ""),
                f"{int(fork['mc_fed']):,} / {int(prefill['mc_fed']):,}",
                f"{part['prefill_over_fork_mc_fed']:.2f}x",
                f"{fork['s']:.2f} / {prefill['s']:.2f}",
                _paired(part),
                f"{int(fork['mc_tokens']):,}",
                "yes" if part["same_counted_tokens"] else "no",
            ]
        )
        loads += [*part["loadavg_before"][:1], *part["loadavg_per_round"]]
    header = [
        "task",
        "tokens fed in the continuations (fork / prefill)",
        "prefill / fork",
        "s / iteration (fork / prefill)",
        "prefill / fork s (paired: median, range)",
        "continuation tokens counted",
        "same counted tokens",
    ]
    stamp = data["machine"]
    rounds = {part["rounds"] for part in data["tasks"].values()}
    note = (
        f"Medians over {', '.join(map(str, sorted(rounds)))} rounds of one iteration per side "
        f"after a warm-up, the order alternating; load average {min(loads):.1f}-"
        f"{max(loads):.1f} on {stamp.get('cores', '?')} shared cores, torch threads "
        f"{stamp.get('torch_threads', '?')}; `benchmarks/results/turn_mc_fork.json`, commit "
        f"{describe(stamp, RESULTS)}, {stamp.get('date_utc', '?')}; "
        "`python benchmarks/turn_mc_fork.py`."
    )
    return markdown_table(header, rows) + "\n\n" + note + "\n"
