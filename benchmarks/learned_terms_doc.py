"""Render ``docs/credit_learned.md`` and its picture from ``benchmarks/results/learned_terms.json``.

Nothing here runs a model: every number comes from the results file that
``benchmarks/learned_terms.py`` wrote.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from benchmarks.provenance import describe

#: two-sided 95% t quantiles by degrees of freedom
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
GOAL_RMSE = 0.25
GOAL_TOKENS = 0.10


def mean_ci(xs: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t interval (NaN with fewer than two values)."""
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return math.nan, math.nan
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, math.nan
    return m, _T95.get(len(xs) - 1, 1.96) * statistics.stdev(xs) / math.sqrt(len(xs))


def _fmt(m: float, h: float, digits: int = 3) -> str:
    if not math.isfinite(m):
        return "–"
    return f"{m:.{digits}f}" if not math.isfinite(h) else f"{m:.{digits}f} ± {h:.{digits}f}"


def _truth_cell(runs: list[dict[str, Any]]) -> str:
    """The truth's method, and for Monte Carlo the rms standard error of its advantages."""
    method = runs[0]["truth"]
    if method == "exact":
        return "exact"
    se = [r["truth_rms_se"] for r in runs if "truth_rms_se" in r]
    return f"mc, rms SE {statistics.fmean(se):.3f}" if se else "mc (SE not recorded)"


def _pct(m: float, h: float) -> str:
    """A fraction as a percentage, with its interval's half-width when there is one."""
    return f"{100 * m:.1f}%" + (f" ± {100 * h:.1f}" if math.isfinite(h) else "")


def audit_table(data: dict[str, Any], key: str = "rmse") -> tuple[list[str], list[dict[str, Any]]]:
    """Markdown rows of the equal-cut audit and a per-task summary (for the goal check).

    :param key: ``"rmse"`` (against the truth as computed) or ``"rmse_net"`` (its Monte-Carlo
        noise subtracted; only the tasks whose rows recorded it).
    """
    rows = [
        r
        for r in data.get("audit", [])
        if key in r["learned"] and (key == "rmse" or r["truth"] == "mc")  # (exact: no noise)
    ]
    heur = data["setups"][0]["heuristics"] if data.get("setups") else []
    rules = ["learned", *heur, "oracle"]
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    lines = [
        "| task | truth | seeds | " + " | ".join(f"`{r}`" for r in rules) + " | learned vs best "
        "heuristic (paired) |",
        "|---" * (len(rules) + 4) + "|",
    ]
    summary = []
    for task in tasks:
        runs = [r for r in rows if r["task"] == task]
        means = {rule: mean_ci([r[rule][key] for r in runs]) for rule in rules}
        best = min(heur, key=lambda h: means[h][0])
        rel = [1 - r["learned"][key] / r[best][key] for r in runs if r[best][key] > 0]
        rel_m, rel_h = mean_ci(rel)
        summary.append({"task": task, "best": best, "reduction": rel_m, "half": rel_h})
        cells = [_fmt(*means[rule]) for rule in rules]
        lines.append(
            f"| {task} | {_truth_cell(runs)} | {len(runs)} | "
            + " | ".join(cells)
            + f" | {100 * rel_m:+.1f}% ± {100 * rel_h:.1f} (vs `{best}`) |"
        )
    return lines, summary


def goal_summary(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Per task, the learned termination's paired reduction over the best heuristic: net of
    the truth's Monte-Carlo noise where the rows recorded it, else against the truth as is."""
    _, raw = audit_table(data)
    _, net = audit_table(data, "rmse_net")
    by_task = {s["task"]: s for s in raw}
    by_task.update({s["task"]: s for s in net})
    return list(by_task.values())


def corr_table(data: dict[str, Any]) -> list[str]:
    rows = data.get("audit", [])
    heur = data["setups"][0]["heuristics"] if data.get("setups") else []
    rules = ["learned", *heur, "oracle"]
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    lines = [
        "| task | " + " | ".join(f"`{r}`" for r in rules) + " |",
        "|---" * (len(rules) + 1) + "|",
    ]
    for task in tasks:
        runs = [r for r in rows if r["task"] == task]
        cells = [_fmt(*mean_ci([r[rule]["corr"] for r in runs])) for rule in rules]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return lines


def cut_position(runs: list[dict[str, Any]], rule: str) -> float:
    """Where ``rule``'s cuts sit on average over ``runs``, as a fraction of the response (0:
    start, 1: end; first and last tokens excluded); NaN when it never cuts inside."""
    pos = []
    for r in runs:
        freq = r[rule]["cut_freq_per_position"]
        width = len(freq)
        inner = [(j, f) for j, f in enumerate(freq) if 0 < j < width - 1]
        mass = sum(f for _, f in inner)
        if mass > 0:
            pos.append(sum(j * f for j, f in inner) / mass / max(width - 1, 1))
    return statistics.fmean(pos) if pos else math.nan


def headroom(data: dict[str, Any], task: str) -> dict[str, Any]:
    """One task's headroom: the best heuristic (lowest mean RMSE), the oracle's and the learned
    rule's paired reductions over it (mean, 95% half-width) and the learned share of the
    oracle's."""
    runs = [r for r in data.get("audit", []) if r["task"] == task]
    heur = data["setups"][0]["heuristics"] if data.get("setups") else []
    means = {h: statistics.fmean(r[h]["rmse"] for r in runs) for h in [*heur, "oracle"]}
    best = min(heur, key=lambda h: means[h])
    head = mean_ci([1 - r["oracle"]["rmse"] / r[best]["rmse"] for r in runs])
    got = mean_ci([1 - r["learned"]["rmse"] / r[best]["rmse"] for r in runs])
    share = got[0] / head[0] if head[0] > 0 else math.nan
    return {"best": best, "oracle": head, "learned": got, "share": share, "runs": runs}


def headroom_table(data: dict[str, Any]) -> list[str]:
    """How much any termination could gain here (the oracle) and how much the learned one got,
    and where each rule's cuts sit (mean position of a cut over the response length)."""
    rows = data.get("audit", [])
    show = [r for r in ("learned", "oracle", "entropy", "value_change", "even") if r in rows[0]]
    lines = [
        "| task | best heuristic | oracle headroom (max reduction) | learned reduction | share "
        "of headroom | " + " | ".join(f"mean cut position `{r}`" for r in show) + " |",
        "|---" * (5 + len(show)) + "|",
    ]
    for task in dict.fromkeys(r["task"] for r in rows):
        h = headroom(data, task)
        head, got = h["oracle"], h["learned"]
        cells = []
        for rule in show:
            pos = cut_position(h["runs"], rule)
            cells.append(f"{pos:.2f}" if math.isfinite(pos) else "–")
        lines.append(
            f"| {task} | `{h['best']}` | {100 * head[0]:.1f}% ± {100 * head[1]:.1f} | "
            f"{100 * got[0]:+.1f}% ± {100 * got[1]:.1f} | {h['share']:.2f} | "
            + " | ".join(cells) + " |"
        )  # fmt: skip
    return lines


def alloc_summary(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per task (rows that recorded a batch budget): the per-episode figures, the per-batch
    figures (mean, 95% half-width), the best per-episode heuristic and the oracle's headroom
    over it per episode and per batch."""
    rows = [r for r in data.get("audit", []) if r.get("alloc")]
    heur = data["setups"][0]["heuristics"] if data.get("setups") else []
    out = {}
    for task in dict.fromkeys(r["task"] for r in rows):
        runs = [r for r in rows if r["task"] == task]
        per_row = {
            k: mean_ci([r["alloc"]["per_row"][k] for r in runs])
            for k in runs[0]["alloc"]["per_row"]
        }
        best = min((h for h in heur if h in per_row), key=lambda h: per_row[h][0])
        batch = {
            k: mean_ci([r["alloc"]["per_batch"][k] for r in runs])
            for k in runs[0]["alloc"]["per_batch"]
        }
        head_row = mean_ci(
            [1 - r["alloc"]["per_row"]["oracle"] / r["alloc"]["per_row"][best] for r in runs]
        )
        head_batch = mean_ci(
            [1 - r["alloc"]["per_batch"]["oracle"] / r["alloc"]["per_row"][best] for r in runs]
        )
        out[task] = {
            "seeds": len(runs),
            "best": best,
            "per_row": per_row,
            "per_batch": batch,
            "head_row": head_row,
            "head_batch": head_batch,
        }
    return out


def alloc_table(data: dict[str, Any]) -> list[str]:
    """The same mean number of cuts as a batch budget (rows that recorded it): each rule's RMSE
    with its cuts placed anywhere in the batch, against the per-episode budget."""
    summary = alloc_summary(data)
    if not summary:
        return []
    batch_rules = list(next(iter(summary.values()))["per_batch"])
    lines = [
        "| task | seeds | best heuristic, per episode | `learned` (its own budget) | `oracle` "
        "per episode | " + " | ".join(f"`{r}` per batch" for r in batch_rules)
        + " | oracle headroom per episode | per batch |",
        "|---" * (len(batch_rules) + 7) + "|",
    ]  # fmt: skip
    for task, a in summary.items():
        per_row, best = a["per_row"], a["best"]
        lines.append(
            f"| {task} | {a['seeds']} | `{best}` {_fmt(*per_row[best])} | "
            f"{_fmt(*per_row['learned'])} | {_fmt(*per_row['oracle'])} | "
            + " | ".join(_fmt(*a["per_batch"][k]) for k in batch_rules)
            + f" | {_pct(*a['head_row'])} | {_pct(*a['head_batch'])} |"
        )  # fmt: skip
    return lines


def budget_summary(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Per task and other audited budget: each rule's RMSE (mean, 95% half-width), the best
    heuristic and the learned rule's paired reduction over it."""
    rows = [r for r in data.get("audit", []) if r.get("by_budget")]
    heur = data["setups"][0]["heuristics"] if data.get("setups") else []
    rules = ["learned", *heur, "oracle"]
    out = []
    for task in dict.fromkeys(r["task"] for r in rows):
        runs = [r for r in rows if r["task"] == task]
        for budget in sorted(runs[0]["by_budget"], key=int):
            means = {rule: mean_ci([r["by_budget"][budget][rule] for r in runs]) for rule in rules}
            best = min(heur, key=lambda h: means[h][0])
            rel = mean_ci(
                [1 - r["by_budget"][budget]["learned"] / r["by_budget"][budget][best] for r in runs]
            )
            out.append(
                {"task": task, "budget": budget, "means": means, "best": best, "reduction": rel}
            )
    return out


def budget_table(data: dict[str, Any]) -> list[str]:
    """RMSE at the other audited budgets (the learned scores trained at the main budget)."""
    summary = budget_summary(data)
    if not summary:
        return []
    rules = list(summary[0]["means"])
    lines = [
        "| task | budget | " + " | ".join(f"`{r}`" for r in rules) + " | learned vs best |",
        "|---" * (len(rules) + 3) + "|",
    ]
    for s in summary:
        cells = [_fmt(*s["means"][rule]) for rule in rules]
        rel = s["reduction"]
        lines.append(
            f"| {s['task']} | {s['budget']} | " + " | ".join(cells)
            + f" | {100 * rel[0]:+.1f}% ± {100 * rel[1]:.1f} (`{s['best']}`) |"
        )  # fmt: skip
    return lines


def t2t_table(data: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """Per task two rows (compute-matched, env tokens only): each rule's tokens per seed."""
    rows = data.get("t2t", [])
    rules = list(dict.fromkeys(r["rule"] for r in rows))
    # only seeds every rule finished (an interrupted run leaves a partial last seed)
    done = {
        (task, seed)
        for task, seed in {(r["task"], r["seed"]) for r in rows}
        if {r["rule"] for r in rows if (r["task"], r["seed"]) == (task, seed)} == set(rules)
    }
    rows = [r for r in rows if (r["task"], r["seed"]) in done]
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    lines = [
        "| task | threshold | tokens | " + " | ".join(f"`{r}`" for r in rules) + " |",
        "|---" * (len(rules) + 3) + "|",
    ]
    summary = []
    for task in tasks:
        threshold = next(r["threshold"] for r in rows if r["task"] == task)
        for key, label, col in (
            ("tokens_to_threshold", "compute-matched", 0),
            ("env_tokens_to_threshold", "env only", 1),
        ):
            cells = []
            per_rule: dict[str, list[float]] = {}
            for rule in rules:
                runs = [r for r in rows if r["task"] == task and r["rule"] == rule]
                vals = [_num(r.get(key)) for r in runs]
                per_rule[rule] = vals
                trained = max((r["curve"][-1][col] for r in runs if r["curve"]), default=0)
                shown = ", ".join(
                    f"{v:,.0f}" if math.isfinite(v) else f">{trained:,}" for v in vals
                )
                med = statistics.median(vals) if vals else math.nan
                med_text = f"{med:,.0f}" if math.isfinite(med) else "not reached"
                cells.append(f"median {med_text} ({shown})")
            lines.append(f"| {task} | {threshold} | {label} | " + " | ".join(cells) + " |")
            medians = {k: statistics.median(v) for k, v in per_rule.items() if v}
            if col == 0:
                seeds = len({r["seed"] for r in rows if r["task"] == task})
                summary.append({"task": task, "median": medians, "seeds": seeds})
            else:
                summary[-1]["env_median"] = medians
    return lines, summary


def _num(value: Any) -> float:
    return math.inf if value is None else float(value)


def plot(data: dict[str, Any], path: Path) -> None:
    """Per task: the mean |true advantage| per position (bars) and how often each rule cuts
    there (lines), averaged over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data.get("audit", [])
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    show = ["learned", "oracle", "entropy", "value_change", "even"]
    fig, axes = plt.subplots(len(tasks), 1, figsize=(10, 2.6 * len(tasks)), squeeze=False)
    for ax, task in zip(axes[:, 0], tasks, strict=True):
        runs = [r for r in rows if r["task"] == task]
        width = min(len(r["abs_true_per_position"]) for r in runs)
        xs = list(range(width))
        mag = [statistics.fmean(r["abs_true_per_position"][j] for r in runs) for j in xs]
        ax.bar(xs, mag, color="0.8", label="mean |true A| (left axis)")
        ax.set_ylabel("|true A|")
        ax.set_title(f"{task}: where each rule cuts", fontsize=9)
        twin = ax.twinx()
        for rule in [r for r in show if r in runs[0]]:
            freq = [statistics.fmean(r[rule]["cut_freq_per_position"][j] for r in runs) for j in xs]
            twin.plot(xs, freq, marker=".", ms=3, label=rule, lw=1)
        twin.set_ylabel("cut frequency")
        twin.set_ylim(0, 1.05)
        if ax is axes[0, 0]:
            bars, bar_labels = ax.get_legend_handles_labels()
            lines, line_labels = twin.get_legend_handles_labels()
            twin.legend(bars + lines, bar_labels + line_labels, loc="upper center", fontsize=7,
                        ncol=6)  # fmt: skip
    axes[-1, 0].set_xlabel("response position")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def render(
    data: dict[str, Any] | None, doc: Path, png: Path, results_file: Path | None = None
) -> None:
    """Write ``doc`` (markdown) and ``png`` from the merged results (``results_file``: where
    they came from, to resolve their commit stamps)."""
    if not data or not data.get("audit"):
        raise SystemExit("no audit rows in the results; run benchmarks/learned_terms.py first")
    audit_lines, _ = audit_table(data)
    net_lines, _ = audit_table(data, "rmse_net")
    audit_summary = goal_summary(data)
    t2t_lines, t2t_summary = t2t_table(data)
    plot(data, png)
    base = {r["task"]: r.get("base_task", r["task"]) for r in data["audit"]}
    met_rmse = list(
        dict.fromkeys(base[s["task"]] for s in audit_summary if s["reduction"] >= GOAL_RMSE)
    )
    met_tokens = []
    for s in t2t_summary:
        med = s["median"]
        if "learned" in med and len(med) > 1:
            best = min(v for k, v in med.items() if k != "learned")
            if math.isfinite(med["learned"]) and med["learned"] <= (1 - GOAL_TOKENS) * best:
                met_tokens.append(s["task"])
    setups = data.get("setups", [])
    seeds = sorted({r["seed"] for r in data["audit"]})
    loads = "; ".join(f"{s['file']}: {' '.join(s.get('loadavg', []))}" for s in setups)
    commits = "; ".join(
        f"{s['file']}: {describe(s['machine'], results_file)}" for s in setups if "machine" in s
    )
    t2t_tasks = list(dict.fromkeys(r["task"] for r in data.get("t2t", [])))
    quick = any(s.get("quick") for s in setups)
    budget = setups[0]["budget"] if setups else "?"
    out = [
        "# Learned terminations at equal cuts (results)",
        "",
        "<!-- rendered by `python benchmarks/learned_terms.py --render` from "
        "benchmarks/results/learned_terms.json; do not edit by hand -->",
        "",
        f"Every rule cuts each response at most **{budget}** times (the same budget for all; "
        "the first token and the isolated last token are shared by every rule). The agent is "
        "MA-PPO with `termination=learned:budget=4` on a tiny GPT-2 (2 layers, width 64); its "
        "learned termination trains between policy updates. On a held-out rollout of the "
        "trained policy every rule segments the same 16 episodes and the agent's own estimator "
        "(segment GAE, gamma 1, lambda 0.95, on its critic) is scored against the truth "
        "(exact enumeration where the task has a decisive depth, Monte Carlo with 8 "
        "continuations per prefix on Reverse and the reasoning task). `oracle` is the greedy "
        "cut set chosen with the "
        "truth: about the lowest error any termination could reach at this budget with this critic "
        "(greedy forward selection, so not always the best set). "
        "See [learned_terminations.md](learned_terminations.md) for the method.",
        "",
        "Training before the audit: "
        + (
            "12 iterations of 32 episodes (6 for DelayedChoice h128, 4 for the reasoning task); "
            "tokens to threshold: at most 24 iterations (12 for DelayedChoice h128), "
            if quick
            else "40 iterations of 32 episodes (20 for DelayedChoice h128, 12 for the "
            "reasoning task); tokens to threshold: at most 80 iterations, "
        )
        + f"on {', '.join(t2t_tasks) or 'no task'}. "
        "The reasoning task (`Reasoning h16`) is reasoning-gym's `chain_sum` (two one-digit "
        "terms) in the tag answer format, `<answer>N</answer>` scored by the dataset's verifier: "
        "about 15 tokens of a 1024-token BPE vocabulary, with the decisive digits in the middle. "
        "Its policy is the same tiny GPT-2, first fine-tuned for 300 steps on the task's "
        "reference solutions (once, seed 0; the seeds differ in the RL after it). Its truth "
        "is Monte Carlo, so its RMSE is shown twice: against the truth as computed (which adds "
        "the truth's own noise to every rule alike) and net of that noise.",
        "",
        f"Scale: {'reduced (`--quick`)' if quick else 'full'}; seeds {seeds}. Intervals are 95% "
        "t intervals over seeds. Load average at the end of each part (2 shared cores): "
        f"{loads}. Measured code: {commits}.",
        "",
        "## Advantage RMSE per token (lower is better)",
        "",
        *audit_lines,
        "",
        "### Net of the Monte-Carlo truth's noise",
        "",
        "The Monte-Carlo truth's error is independent of the estimate, so it adds its mean "
        "squared standard error to every rule's mean squared error; subtracted here "
        "(`sqrt(max(MSE - mean SE^2, 0))`). This is the table the goal uses for these tasks "
        "(rows of Reverse predate the recorded standard error and are not in it).",
        "",
        *(net_lines if len(net_lines) > 2 else ["(no Monte-Carlo rows recorded a standard error)"]),
        "",
        "## Why: the headroom, and where the cuts sit",
        "",
        "The oracle is the greedy best cut set for each episode, chosen with the truth; its "
        "reduction over the best heuristic is about the most any termination could gain at "
        "this budget with this critic (greedy: approximately). `mean cut position`: where a "
        "rule's cuts sit on average, as a fraction of the response (0: start, 1: end; the "
        "first and last tokens excluded), on the padded width (episodes of tasks with EOS "
        "are shorter).",
        "",
        *headroom_table(data),
        "",
        "## The same at other budgets",
        "",
        "The learned termination's scores (trained at the main budget) and every heuristic, "
        "keeping 2 or 8 cuts instead, on the same held-out episodes.",
        "",
        *budget_table(data),
        "",
        "## A batch budget: the same cuts, placed across episodes",
        "",
        "Does it matter which episodes get the cuts? Here the batch of 16 held-out episodes "
        f"gets {budget} x 16 cuts to place anywhere (the same mean number of cuts): "
        "`oracle` adds them greedily where the batch's summed squared error drops most, and a "
        "scored rule keeps its best-scoring candidates of the whole batch (the learned "
        f"termination's scores are the ones trained for {budget} per episode). Headroom: the "
        "oracle's reduction over the best heuristic at the per-episode budget. Only the runs "
        "that recorded it (a later run than the main table's first seeds). In the `, per "
        "batch` rows the learned termination was trained and run with `per=batch` (its own "
        "budget is the batch's), and in every table above their `oracle` is still the "
        "per-episode oracle: the batch oracle is the one here.",
        "",
        *(alloc_table(data) or ["(no run recorded it)"]),
        "",
        "## Correlation with the true advantage (higher is better)",
        "",
        *corr_table(data),
        "",
        "## Tokens to the threshold score",
        "",
        "Per seed, the tokens (env tokens, plus the learned termination's truth tokens: "
        "compute-matched) until the rollout score, averaged over 3 iterations, reaches the "
        "threshold; `>N`: not reached within the N tokens trained.",
        "",
        *t2t_lines,
        "",
        "## The goal",
        "",
        f"- >= {GOAL_RMSE:.0%} lower RMSE than the best heuristic on >= 3 tasks: "
        f"{'met' if len(met_rmse) >= 3 else 'NOT met'} (met on: {met_rmse or 'none'}). Judged "
        "net of the Monte-Carlo noise where it was recorded.",
        f"- >= {GOAL_TOKENS:.0%} fewer tokens to threshold (median over seeds) than the best "
        f"heuristic on >= 2 tasks: {'met' if len(met_tokens) >= 2 else 'NOT met'} "
        f"(met on: {met_tokens or 'none'}).",
        "",
        "## Where the cuts go",
        "",
        f"![cut positions against the true advantage's magnitude](img/{png.name})",
        "",
        "Grey bars: the mean |true advantage| at each response position (held-out episodes); "
        "lines: how often each rule cuts before that position.",
        "",
    ]
    doc.write_text("\n".join(out), encoding="utf-8")
