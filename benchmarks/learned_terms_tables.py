"""The tables of ``docs/credit_learned.md`` (and the summaries its prose and the facts quote),
from the merged results of ``benchmarks/learned_terms.py``; :mod:`benchmarks.learned_terms_doc`
puts them on the page.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

#: two-sided 95% t quantiles by degrees of freedom
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


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
        "| task | seeds | threshold | tokens | " + " | ".join(f"`{r}`" for r in rules) + " |",
        "|---" * (len(rules) + 4) + "|",
    ]
    summary = []
    for task in tasks:
        threshold = next(r["threshold"] for r in rows if r["task"] == task)
        seeds = len({r["seed"] for r in rows if r["task"] == task})
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
            lines.append(
                f"| {task} | {seeds} | {threshold} | {label} | " + " | ".join(cells) + " |"
            )
            medians = {k: statistics.median(v) for k, v in per_rule.items() if v}
            if col == 0:
                summary.append({"task": task, "median": medians, "seeds": seeds})
            else:
                summary[-1]["env_median"] = medians
    return lines, summary


def _num(value: Any) -> float:
    return math.inf if value is None else float(value)


def pilot_threshold(rows: list[dict[str, Any]]) -> float:
    """A threshold halfway from where a task's runs start to where they end: the mean score of
    the first three iterations and of the last three, each averaged over the rules of
    ``rows`` (one pilot seed's tokens-to-threshold runs, trained to the end), rounded down to
    0.01.

    :param rows: tokens-to-threshold rows of one task (``curve``: ``(tokens, env tokens,
        score)`` per iteration), every one with at least 6 iterations.
    """
    if not rows:
        raise ValueError("pilot_threshold: no rows")
    short = [r["rule"] for r in rows if len(r["curve"]) < 6]
    if short:
        raise ValueError(f"pilot_threshold: rows of {short} have fewer than 6 iterations")
    start = statistics.fmean(statistics.fmean(p[2] for p in r["curve"][:3]) for r in rows)
    end = statistics.fmean(statistics.fmean(p[2] for p in r["curve"][-3:]) for r in rows)
    return math.floor(100 * (start + end) / 2 + 1e-9) / 100


def pilot_table(data: dict[str, Any]) -> list[str]:
    """The pilot runs (``pilots``, not among the measured seeds): per task, each rule's score
    over the first and the last three iterations, the same pooled over the rules, the threshold
    :func:`pilot_threshold` gives, each rule's seconds, and whether the table uses it."""
    rows = data.get("pilots", [])
    if not rows:
        return []
    rules = list(dict.fromkeys(r["rule"] for r in rows))
    measured = {r["task"] for r in data.get("t2t", [])}
    lines = [
        "| task | seed | score, first 3 -> last 3 iterations: "
        + " | ".join(f"`{r}`" for r in rules)
        + " | pooled | halfway | seconds: "
        + " | ".join(f"`{r}`" for r in rules)
        + " | used |",
        "|---" * (2 * len(rules) + 5) + "|",
    ]
    for task in dict.fromkeys(r["task"] for r in rows):
        runs = [r for r in rows if r["task"] == task]
        by_rule = {r["rule"]: r for r in runs}
        first = {r["rule"]: statistics.fmean(p[2] for p in r["curve"][:3]) for r in runs}
        last = {r["rule"]: statistics.fmean(p[2] for p in r["curve"][-3:]) for r in runs}
        cells = [f"{first[r]:.2f} -> {last[r]:.2f}" if r in by_rule else "–" for r in rules]
        seconds = [f"{by_rule[r]['seconds']:.0f}" if r in by_rule else "–" for r in rules]
        start, end = statistics.fmean(first.values()), statistics.fmean(last.values())
        halfway = pilot_threshold(runs)
        if task in measured:
            used = "the table's threshold"
        elif halfway <= start:
            used = (
                "none: the score does not rise, so every rule reaches the halfway point in its "
                "first three iterations (no row)"
            )
        else:
            used = "not measured"
        lines.append(
            f"| {task} | {runs[0]['seed']} | " + " | ".join(cells)
            + f" | {start:.2f} -> {end:.2f} | {halfway:.2f} | " + " | ".join(seconds)
            + f" | {used} |"
        )  # fmt: skip
    return lines
