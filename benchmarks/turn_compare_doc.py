"""The block of ``docs/credit_multiturn.md`` that ``benchmarks/results/turn_compare.json``
gives (:mod:`benchmarks.turn_compare`): per task a generated summary, the learning, cost and
audit tables."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from benchmarks.common import DOCS_DIR, RESULTS_DIR, fmt, markdown_table, replace_marked
from benchmarks.provenance import describe
from benchmarks.turn_credit import turn_cells

BEGIN, END = "<!-- turn_compare.json:begin -->", "<!-- turn_compare.json:end -->"


def _load(part: dict[str, Any]) -> str:
    """The part's load average, and its own commit and date when it was measured apart from the
    rest of the file (``turn_compare.py --parts ...``)."""
    before = ", ".join(f"{x:.1f}" for x in part.get("loadavg_before", []))
    after = ", ".join(f"{x:.1f}" for x in part.get("loadavg_after", []))
    text = f"load average {before} before, {after} after"
    stamp = part.get("machine")
    if stamp:
        where = describe(stamp, RESULTS_DIR / "turn_compare.json")
        text += f"; measured apart at commit {where} on {stamp.get('date_utc', '?')}"
    return text


def _ci(mean: float | None, half: float | None) -> str:
    return "-" if mean is None else f"{fmt(mean)} ± {fmt(half)}"


def best_overlapping(rows: list[tuple[str, float, float]]) -> tuple[str, list[str]]:
    """The row with the highest mean, and the others whose 95% interval reaches its interval
    (not separable from it at these seeds)."""
    name, mean, half = max(rows, key=lambda r: r[1])
    tied = [n for n, m, h in rows if n != name and m + h >= mean - half]
    return name, tied


def render_learning(key: str, part: dict[str, Any]) -> list[str]:
    lines = [
        f"**Learning** ({len(part['seeds'])} seed(s), {part['budget']:,} tokens per run, "
        f"continuations counted; {part['wall_s'] / 60:.0f} min wall, {_load(part)})",
        "",
    ]
    rows = [
        [
            s["agent"],
            _ci(s["final_score"], s["final_score_ci95"]),
            _ci(s.get("mean_score"), s.get("mean_score_ci95")),
            fmt(s["tokens_to_ppo_final"], 0) if s["tokens_to_ppo_final"] else "-",
            f"{s.get('seeds_reaching_ppo_final', '-')}/{s['seeds']}",
        ]
        for s in part["summary"]
    ]
    header = [
        "agent",
        "final score (95% CI)",
        "mean score over the run (95% CI)",
        "tokens to PPO's final (median)",
        "seeds reaching it",
    ]
    return [*lines, markdown_table(header, rows), ""]


def _mean_defined(values: list[float | None]) -> float | None:
    ok = [v for v in values if v is not None and math.isfinite(v)]
    return sum(ok) / len(ok) if ok else None


def audit_overall(audit: dict[str, Any]) -> dict[str, float]:
    """Each scheme's correlation with the truth over all audited turns, averaged over the
    snapshots where it is defined."""
    out: dict[str, list[float | None]] = {}
    for snap in audit["snapshots"]:
        for name, res in snap["schemes"].items():
            out.setdefault(name, []).append(res["overall"]["corr"])
    means = {name: _mean_defined(v) for name, v in out.items()}
    return {name: m for name, m in means.items() if m is not None}


def audit_per_turn(audit: dict[str, Any]) -> list[dict[str, float]]:
    """Per turn index: each scheme's correlation with the truth, averaged over the snapshots
    where it is defined."""
    out: list[dict[str, list[float | None]]] = []
    for snap in audit["snapshots"]:
        for name, res in snap["schemes"].items():
            for k, turn in enumerate(res["per_turn"]):
                while len(out) <= k:
                    out.append({})
                out[k].setdefault(name, []).append(turn["corr"])
    result = []
    for per_scheme in out:
        means = {name: _mean_defined(v) for name, v in per_scheme.items()}
        result.append({name: m for name, m in means.items() if m is not None})
    return result


def render_audit(part: dict[str, Any]) -> list[str]:
    lines = [
        f"**Audit beside learning** (the `{part['agent']}` agent's rollouts, seed "
        f"{part['seed']}; every agent's estimator re-estimates the same episodes and is compared "
        f"with the exact advantage turn by turn; {part['wall_s']:.0f} s wall, "
        f"{_load(part)}). Cells: correlation / sign agreement per turn index; `n/a`: undefined "
        "(the estimate or the truth is constant there).",
        "",
    ]
    for snap in part["snapshots"]:
        schemes = snap["schemes"]
        k_max = max(len(v["per_turn"]) for v in schemes.values())
        header = ["agent's estimator"] + [f"turn {k}" for k in range(k_max)] + ["all turns"]
        rows = [[name, *turn_cells(res, k_max)] for name, res in schemes.items()]
        first = schemes[next(iter(schemes))]
        ns = [first["per_turn"][k]["n"] for k in range(k_max)]
        lines += [
            f"after {snap['tokens']:,} tokens ({snap['episodes']} episodes, score "
            f"{fmt(snap['score_mean'])}, {fmt(snap['turns_mean'])} turns per episode, n per "
            f"turn {ns}):",
            "",
            markdown_table(header, rows),
            "",
        ]
    return lines


def render_cost(part: dict[str, Any]) -> list[str]:
    rows = [
        [
            name,
            f"{c['s_per_iteration']:.2f}",
            f"{c['iteration_vs_ppo']:.2f}x",
            f"{c['token_vs_ppo']:.2f}x",
        ]
        for name, c in part["agents"].items()
    ]
    header = ["agent", "s / iteration", "iteration vs PPO", "token vs PPO"]
    return [
        f"**Cost** (one process, each agent one iteration per round in a rotated order, "
        f"medians over {part['rounds']} rounds; {_load(part)})",
        "",
        markdown_table(header, rows),
        "",
    ]


def render_verdict(key: str, task: dict[str, Any]) -> list[str]:
    """Which scheme tracks the truth best and which learns fastest, from the numbers above."""
    lines = []
    if "audit" in task:
        overall = audit_overall(task["audit"])
        ranked = sorted(overall.items(), key=lambda kv: -kv[1])
        if ranked:
            top = ", ".join(f"{n} ({fmt(c)})" for n, c in ranked[:3])
            low = ", ".join(f"{n} ({fmt(c)})" for n, c in ranked[-3:])
            lines.append(
                f"- closest to the truth (correlation over all turns, mean over snapshots): "
                f"{top}; furthest: {low}."
            )
        cells = []
        for k, per_scheme in enumerate(audit_per_turn(task["audit"])):
            if per_scheme:
                name, corr = max(per_scheme.items(), key=lambda kv: kv[1])
                cells.append(f"turn {k}: {name} ({fmt(corr)})")
        if cells:
            lines.append(f"- closest per turn index: {'; '.join(cells)}.")
    if "learning" in task:
        summary = task["learning"]["summary"]
        for metric, what in (("mean_score", "mean score over the run"), ("final_score", "final")):
            rows = [
                (s["agent"], s[metric], s[f"{metric}_ci95"])
                for s in summary
                if s.get(metric) is not None
            ]
            if rows:
                best, tied = best_overlapping(rows)
                lines.append(
                    f"- highest {what}: {best}; not separable from it at 95% "
                    f"({len(tied)} of {len(rows) - 1}): {', '.join(tied) or 'none'}."
                )
    return lines


def render_block(data: dict[str, Any]) -> str:
    stamp = data.get("machine", {})
    lines = [
        BEGIN,
        "",
        f"Rendered from `benchmarks/results/turn_compare.json` (mode `{data.get('mode')}`, "
        f"measured at commit {describe(stamp, RESULTS_DIR / 'turn_compare.json')} on "
        f"{stamp.get('date_utc', '?')}, {stamp.get('cpu', '?')}, {stamp.get('cores', '?')} "
        f"cores shared with other jobs, torch threads {stamp.get('torch_threads', '?')}; "
        f"`python benchmarks/turn_compare.py --mode {data.get('mode')}`).",
        "",
    ]
    for key, task in data.get("tasks", {}).items():
        env_id, kwargs = task.get("env_id", key), task.get("kwargs", {})
        args = ", ".join(f"{k}={v}" for k, v in kwargs.items())
        lines += [f"### {env_id}" + (f" ({args})" if args else ""), ""]
        verdict = render_verdict(key, task)
        if verdict:
            lines += ["Summary (generated from the tables below):", "", *verdict, ""]
        if "learning" in task:
            lines += render_learning(key, task["learning"])
        if "cost" in task:
            lines += render_cost(task["cost"])
        if "audit" in task:
            lines += render_audit(task["audit"])
    lines.append(END)
    return "\n".join(lines)


def replace_block(doc: Path, block: str) -> None:
    """Put ``block`` (from :func:`render_block`) between the markers of ``doc``."""
    replace_marked(doc, BEGIN, END, block)


def render_docs(data: dict[str, Any]) -> None:
    replace_block(DOCS_DIR / "credit_multiturn.md", render_block(data))
