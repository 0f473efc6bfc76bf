"""The analysis and the ``docs/credit.md`` block of ``benchmarks/evidence.py``, from its JSON.

Per task and method: the final score (mean over seeds, 95% Student-t interval), the tokens to
reach token PPO's final score (:func:`marlhf.runs.report.reach`: the median over seeds),
the wall time, and the audit's figures at the decision tokens (RMSE, correlation, sign
agreement; means over the audit seeds) on the initial and the half-budget snapshot. Then, per
task, Spearman's rank correlation across methods between each audit error (RMSE, 1 - corr,
1 - sign agreement: higher is worse) and the learning speed (tokens to reach PPO's final score,
``inf`` when the median seed never does; and minus the final score): a positive rho means the
methods with the better advantages learned faster. Its 95% interval is Fisher's z with the
variance ``1.06 / (n - 3)`` (Fieller, Hartley and Pearson 1957); below 5 methods it says "n too
small".
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, markdown_table, replace_marked
from benchmarks.provenance import describe
from marlhf.runs.report import mean_ci95

DOC = ROOT / "docs" / "credit.md"
#: The full run's results, the only ones rendered into the doc.
RESULTS = ROOT / "benchmarks" / "results" / "evidence.json"
BEGIN, END = "<!-- evidence.json:begin -->", "<!-- evidence.json:end -->"
FIGURES = ("rmse", "corr", "sign")
SNAPSHOTS = ("init", "half")
MIN_N = 5


def _finite(x: Any) -> bool:
    return x is not None and isinstance(x, int | float) and math.isfinite(float(x))


def _mean(values: list[Any]) -> float | None:
    xs = [float(v) for v in values if _finite(v)]
    return sum(xs) / len(xs) if xs else None


def spearman(x: list[float], y: list[float]) -> dict[str, Any]:
    """Spearman's rho of paired values (``inf`` allowed, ties get average ranks), with the
    Fisher-z 95% interval; ``{"rho": None, "why": ...}`` when it is not defined."""
    from scipy.stats import rankdata

    n = len(x)
    if n < MIN_N:
        return {"rho": None, "n": n, "why": f"n too small ({n} methods; need {MIN_N})"}
    rx, ry = rankdata(x), rankdata(y)
    if len(set(rx)) == 1 or len(set(ry)) == 1:
        return {"rho": None, "n": n, "why": "one side has a single value (all tied)"}
    mx, my = sum(rx) / n, sum(ry) / n
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    var = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    rho = cov / var
    z = math.atanh(max(min(rho, 0.999999), -0.999999))
    half = 1.96 * math.sqrt(1.06 / (n - 3))
    return {"rho": rho, "n": n, "ci95": [math.tanh(z - half), math.tanh(z + half)]}


def summarize_task(section: dict[str, Any]) -> dict[str, Any]:
    """``{"methods": [...], "spearman": {...}, "closest", "fastest", "replay"}`` of one task."""
    summary = {s["agent"]: s for s in section["summary"]}
    audit = section["audit"]
    methods = []
    for name, scheme in audit["schemes"].items():
        s = summary.get(name)
        row: dict[str, Any] = {"method": name, "scheme": scheme}
        if s is not None:
            row.update(
                {
                    "final_score": s["final_score"],
                    "final_score_ci95": s["final_score_ci95"],
                    "tokens_to_ppo_final": s["tokens_to_ppo_final"],
                    "seeds_reaching": s["seeds_reaching_ppo_final"],
                    "seeds": s["seeds"],
                    "wall_time": s["wall_time"],
                }
            )
        for snap in SNAPSHOTS:
            records = [r["schemes"][name] for r in audit["snapshots"][snap] if name in r["schemes"]]
            row[snap] = {f: _mean([r["decisions"][f] for r in records]) for f in FIGURES}
            row[snap]["baseline_tokens"] = _mean([r["baseline_tokens"] for r in records])
            corr = [r["decisions"]["corr"] for r in records if _finite(r["decisions"]["corr"])]
            row[snap]["corr_ci95"] = mean_ci95(corr)[1] if corr else None
        methods.append(row)
    ranks: dict[str, Any] = {}
    for snap in SNAPSHOTS:
        for fig in FIGURES:
            pairs = [
                (m[snap][fig], m) for m in methods if _finite(m[snap][fig]) and "final_score" in m
            ]
            err = [v if fig == "rmse" else 1.0 - v for v, _ in pairs]
            tokens = [
                math.inf if m["tokens_to_ppo_final"] is None else m["tokens_to_ppo_final"]
                for _, m in pairs
            ]
            score = [-m["final_score"] for _, m in pairs]
            ranks[f"{snap}/{fig}"] = {
                "vs_tokens_to_ppo_final": spearman(err, tokens),
                "vs_final_score": spearman(err, score),
            }
    trained = [m for m in methods if "final_score" in m]
    closest = {
        snap: max(
            (m for m in methods if _finite(m[snap]["corr"])),
            key=lambda m: m[snap]["corr"],
            default=None,
        )
        for snap in SNAPSHOTS
    }
    fastest = min(
        trained,
        key=lambda m: (
            math.inf if m["tokens_to_ppo_final"] is None else m["tokens_to_ppo_final"],
            -m["final_score"],
        ),
        default=None,
    )
    # the methods whose correlation interval (over the audit seeds) overlaps the closest one's
    tied: dict[str, list[str]] = {}
    for snap, best in closest.items():
        if best is None:
            tied[snap] = []
            continue
        low = best[snap]["corr"] - (best[snap]["corr_ci95"] or 0.0)
        tied[snap] = [
            m["method"]
            for m in methods
            if m is not best
            and _finite(m[snap]["corr"])
            and m[snap]["corr"] + (m[snap]["corr_ci95"] or 0.0) >= low
        ]
    checks = [r["replay_check"] for r in audit["snapshots"]["half"] if "replay_check" in r]
    ppo = summary.get("ppo")
    return {
        "methods": methods,
        "spearman": ranks,
        "closest_by_corr": {k: (v["method"] if v else None) for k, v in closest.items()},
        "tied_with_closest": tied,
        "fastest": fastest["method"] if fastest else None,
        "best_final": max(trained, key=lambda m: m["final_score"])["method"] if trained else None,
        "replay": {"equal": sum(bool(c["equal"]) for c in checks), "checked": len(checks)},
        "ppo_learned": None if ppo is None else ppo.get("ppo_learned"),
    }


def _f(x: Any, digits: int = 3) -> str:
    return f"{float(x):.{digits}f}" if _finite(x) else "n/a"


def _tokens(m: dict[str, Any]) -> str:
    if "final_score" not in m:
        return "-"
    t = m["tokens_to_ppo_final"]
    shown = "not reached" if t is None else f"{t:,.0f}"
    return f"{shown} ({m['seeds_reaching']}/{m['seeds']})"


def _rho(r: dict[str, Any]) -> str:
    if r["rho"] is None:
        return r["why"]
    lo, hi = r["ci95"]
    return f"{r['rho']:+.2f} [{lo:+.2f}, {hi:+.2f}] (n={r['n']})"


HEADER = [
    "method",
    "scheme audited",
    "final score (95% CI)",
    "tokens to PPO final (seeds)",
    "wall s",
    "RMSE init",
    "corr init",
    "sign init",
    "RMSE half",
    "corr half",
    "sign half",
    "baseline tokens",
]


def task_block(section: dict[str, Any]) -> list[str]:
    """The markdown of one task (table, truth, ranks), from its JSON section."""
    t, a = section["task"], section["analysis"]
    lines = [
        f"### {t['key']}: `{t['env_id']}` {t['kwargs'] or '(defaults)'}",
        "",
        f"{t['note']}. Budget {section['budget']:,} generated tokens per run, "
        f"{section['num_envs']} episodes per iteration, seeds {section['seeds']}; "
        f"compare wall time {section['compare_wall_s']:.0f} s (this invocation)"
        + (
            f"; agent keys over the shared section: `{section['agent_overrides']}`"
            if section.get("agent_overrides")
            else ""
        )
        + (
            f"; measured at commit {describe(section['machine'], RESULTS)}, "
            f"{section['machine']['date_utc']}"
            if section.get("machine")
            else ""
        )
        + f". Reproduce: `{section['command']}`.",
        "",
    ]
    rows = []
    for m in a["methods"]:
        score = (
            f"{m['final_score']:.3f} ± {m['final_score_ci95']:.3f}" if "final_score" in m else "-"
        )
        rows.append(
            [
                m["method"],
                f"`{m['scheme']}`",
                score,
                _tokens(m),
                _f(m.get("wall_time"), 0),
                *(_f(m[snap][f]) for snap in SNAPSHOTS for f in FIGURES),
                _f(m["half"]["baseline_tokens"], 0),
            ]
        )
    lines.append(markdown_table(HEADER, rows))
    snaps = section["audit"]["snapshots"]
    truth = [r["truth"] for r in snaps["init"] + snaps["half"]]
    tokens = [r["tokens"] for r in snaps["half"]]
    method = truth[0]["method"] if truth else "?"
    episodes = snaps["init"][0]["episodes"] if snaps["init"] else 0
    text = (
        f"Audit: {len(snaps['init'])} seed(s) x 2 snapshots (0 and {min(tokens, default=0):,}-"
        f"{max(tokens, default=0):,} tokens of token PPO), {episodes} episodes each; truth "
        f"`{method}`"
    )
    if method == "mc":
        se = _mean([x.get("stderr_mean_at_decisions") for x in truth])
        floor = _mean([x.get("rmse_floor_at_decisions") for x in truth])
        text += (
            f" with {truth[0].get('samples')} continuations per prefix: mean standard error "
            f"{_f(se)} at the decision tokens, so an RMSE below about {_f(floor)} cannot be "
            "told from a perfect estimator"
        )
    rep = a["replay"]
    text += (
        f". Replay of PPO's half-budget snapshot equal to its compare run: {rep['equal']}/"
        f"{rep['checked']} seeds."
    )
    lines += ["", text, ""]
    rank_rows = [
        [
            key.replace("/", " "),
            _rho(r["vs_tokens_to_ppo_final"]),
            _rho(r["vs_final_score"]),
        ]
        for key, r in a["spearman"].items()
    ]
    lines.append(
        markdown_table(
            [
                "snapshot, audit figure",
                "rho(error, tokens to PPO final) [95% CI]",
                "rho(error, -final score) [95% CI]",
            ],
            rank_rows,
        )
    )
    closest = []
    for snap, when in (("init", "at 0 tokens"), ("half", "at half the budget")):
        best = next((m for m in a["methods"] if m["method"] == a["closest_by_corr"][snap]), None)
        if best is None:
            continue
        tied = a.get("tied_with_closest", {}).get(snap, [])
        closest.append(
            f"{when} **{best['method']}** ({_f(best[snap]['corr'])} ± "
            f"{_f(best[snap].get('corr_ci95'))}"
            + (
                f"; intervals overlapping it: {', '.join(tied)})"
                if tied
                else "; no other overlaps)"
            )
        )
    lines += [
        "",
        "Closest to the truth (correlation at the decision tokens, mean ± 95% half-width over "
        f"the audit seeds): {'; '.join(closest)}. Fastest to PPO's final score (median tokens): "
        f"**{a['fastest']}**; best final score: **{a['best_final']}**.",
        "",
    ]
    if a.get("ppo_learned") is False:
        lines += [
            "**Token PPO did not learn here** (its final score is not above its start), so every "
            "method reaches its final score at once: read the final scores, not the tokens.",
            "",
        ]
    return lines


def render_block(data: dict[str, Any]) -> str:
    m = data["machine"]
    planned = data.get("planned_tasks", [])
    done = [k for k in planned if k in data["tasks"]]
    missing = [k for k in planned if k not in data["tasks"]]
    lines = [
        BEGIN,
        "",
        f"Measured on {m.get('cpu')} ({m.get('cores')} cores shared with other jobs), torch "
        f"{m.get('torch')}, mode `{data['mode']}`; each task gives the commit and date it was "
        "measured at. Methods: "
        f"{', '.join(data['presets'])}. Every run shares the agent section "
        f"`{data['agent_section']}`.",
        "",
    ]
    if missing:
        lines += [f"**Not finished (no numbers below): {', '.join(missing)}.**", ""]
    if data.get("reasoning_missing"):
        lines += [f"**The reasoning task is not in this run: {data['reasoning_missing']}.**", ""]
    for key in done:
        lines += task_block(data["tasks"][key])
    lines.append(END)
    return "\n".join(lines)


def render_doc(data: dict[str, Any], doc: Path = DOC) -> None:
    """Replace the block between the markers of ``docs/credit.md``."""
    replace_marked(doc, BEGIN, END, render_block(data))
    print(f"rendered {doc}")
