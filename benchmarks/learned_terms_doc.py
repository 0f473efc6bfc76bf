"""Render ``docs/credit_learned.md`` and its picture from ``benchmarks/results/learned_terms.json``.

Nothing here runs a model: every number comes from the results file that
``benchmarks/learned_terms.py`` wrote.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from benchmarks.learned_terms_tables import (
    alloc_table,
    audit_table,
    budget_table,
    corr_table,
    goal_summary,
    headroom_table,
    pilot_table,
    t2t_table,
)
from benchmarks.provenance import describe

GOAL_RMSE = 0.25
GOAL_TOKENS = 0.10


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


def sweep_lines(sweep: dict[str, Any] | None) -> list[str]:
    """Why the reasoning task has no tokens-to-threshold row: the learning-rate and
    fine-tuning sweep of ``learned_terms_rsn_sweep.py`` (nothing when it was not run)."""
    if not sweep:
        return []
    rows = [
        f"| {r['sft_steps']} | {r['learning_rate']:g} | {r['rollouts']} | {r['first']:.2f} | "
        f"{r['best']:.2f} | {r['last']:.2f} | {r['seconds']:.0f} | {r['loadavg'][0]:.1f} |"
        for r in sweep["runs"]
    ]
    w = sweep["window"]
    return [
        "The reasoning task's setting for tokens to threshold: a threshold separates the rules "
        "only if the score rises from where the runs start, and in the audit's setting it does "
        "not. The sweep below (`benchmarks/learned_terms_rsn_sweep.py`, the `even` rule, seed 9, "
        f"{sweep['calls']} learn calls of about one rollout each; a score is the mean of 32 "
        f"episodes, standard error {math.sqrt(0.25 / 32):.2f} at a score of 0.5) trains from the "
        "audit's fine-tuned start and from a longer fine-tuning, at three learning rates. "
        f"Scores are means over {w} consecutive rollouts: the first {w}, the best {w} anywhere, "
        f"the last {w}.",
        "",
        "| fine-tuning steps | learning rate | rollouts | first | best | last | seconds | load |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "At 1e-3 (the audit's rate, and the other tasks') the score falls from either start. "
        "From the audit's 300-step fine-tuning, 3e-4 stays where it starts and 1e-4 rises "
        "slowly; from 1000 steps at 3e-4 it rises steadily, the most of any run. The "
        "tokens-to-threshold rows use that setting (`T2T_SETUP`), with the threshold its pilot "
        "gives by Reverse's rule. Even there the rise over a quick run is a few standard errors "
        "of a 3-iteration mean, so the reasoning task's tokens to threshold are the noisiest "
        "of the table.",
        "",
    ]


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
            "tokens to threshold: at most 24 x 32 x horizon env tokens (12 x 32 x horizon "
            "for DelayedChoice h128, 40 x 32 x horizon for the reasoning task), "
            if quick
            else "40 iterations of 32 episodes (20 for DelayedChoice h128, 12 for the "
            "reasoning task); tokens to threshold: at most 80 x 32 x horizon env tokens "
            "(120 x 32 x horizon for the reasoning task), "
        )
        + f"on {', '.join(t2t_tasks) or 'no task'}. "
        "The reasoning task (`Reasoning h16`) is reasoning-gym's `chain_sum` (two one-digit "
        "terms) in the tag answer format, `<answer>N</answer>` scored by the dataset's verifier: "
        "about 15 tokens of a 1024-token BPE vocabulary, with the decisive digits in the middle. "
        "Its policy is the same tiny GPT-2, first fine-tuned for 300 steps on the task's "
        "reference solutions (once, seed 0; the seeds differ in the RL after it); its tokens "
        "to threshold start from 1000 steps of fine-tuning and learn at 3e-4 instead of 1e-3, "
        "where its score rises (`T2T_SETUP`; the sweep below says why). Its truth "
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
        "Per seed, the tokens until the rollout score, averaged over 3 iterations, reaches the "
        "threshold; `>N`: not reached within the N tokens trained. `compute-matched`: the env "
        "tokens plus, for `learned`, every token its truth cost while it trained (forward tokens "
        "of the exact enumeration, or the Monte-Carlo continuations generated), which no "
        "heuristic needs; `env only`: the env tokens alone. Thresholds: about halfway from the "
        "uniform policy's return to the optimum (CreditSum's 0.83 rounded down to 0.80); on "
        "Reverse, whose quick runs end far below the optimum, halfway from where a pilot "
        "seed's runs start to where they end, pooled over the four rules (seed 9, not one of "
        "the measured seeds; `learned_terms_pilot_rev.json`), and the same on the reasoning "
        "task (`learned_terms_pilot_rsn.json`). An iteration is one rollout of "
        "32 episodes; on Reverse, whose responses end before the horizon, 32 x horizon env "
        "tokens are about two.",
        "",
        *t2t_lines,
        "",
        *(
            [
                "Pilot runs (`--pilot`: a seed outside the measured ones, every rule trained to "
                "the end; not in the table above). Halfway: from the pooled first three "
                "iterations to the pooled last three, rounded down (`pilot_threshold`).",
                "",
                *pilot_table(data),
                "",
            ]
            if data.get("pilots")
            else []
        ),
        *sweep_lines(data.get("rsn_sweep")),
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
