"""Summaries of a compare run folder: the tidy metrics file, learning curves and report.md.

Definitions (the report states them too, and its numbers are recomputed from ``metrics.csv``).
The benchmarks (``benchmarks/common.py``) use these same functions:

- a run's *final score* is the mean of its last ``SMOOTH`` logged values of the metric (the end
  of its smoothed curve, :func:`final_score`); an agent's final score is the mean over seeds,
  with a 95% Student-t interval;
- *tokens to reach the baseline's final score* (:func:`tokens_to_reach`, :func:`reach`): the
  target is the baseline's final score (mean over its seeds); for each seed, the first logged
  token count at which the trailing mean over ``SMOOTH`` logged values reaches the target
  (never: ``inf``); an agent's value is the median over its seeds (``inf`` when the median seed
  never reaches it), with the number of seeds that reach it;
- the *speed-up* is the baseline's own tokens to reach its final score divided by the agent's
  (a lower bound, the baseline's budget divided by the agent's tokens, when the baseline's
  median seed never reaches it); it is not given when the baseline did not learn (its final
  score is not above its start, the mean of its first ``SMOOTH`` logged values: any curve
  "reaches" it at once);
- *wall time* is the mean over seeds of each run's wall time at its last logged point.

Agents keep the order of the config (PPO, the baseline, first); the curves are each seed's
trailing mean interpolated on a common token grid and averaged over seeds.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from marlhf.runs.io import atomic_write_text

FIELDS = ("run", "agent", "termination", "seed", "tokens", "wall_time", "metric", "value")
SMOOTH = 5
GRID_POINTS = 200
# two-sided 97.5% Student-t quantiles for 1..10 degrees of freedom (normal beyond)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def label(agent: str, termination: str) -> str:
    """The agent's name in tables and plots: ``ppo``, ``grpo`` or ``mappo ngram:5``."""
    return agent if termination == "token" else f"{agent} {termination}"


def write_metrics_csv(path: str | Path, results: Iterable[dict[str, Any]]) -> None:
    """Write every run's rows as one tidy CSV (columns :data:`FIELDS`), atomically."""
    lines = [",".join(FIELDS)]
    for res in results:
        for row in res["rows"]:
            values = (
                res["run"],
                res["agent"],
                res["termination"],
                res["seed"],
                row["tokens"],
                row["wall_time"],
                row["metric"],
                repr(float(row["value"])),
            )
            lines.append(",".join(_csv_cell(v) for v in values))
    atomic_write_text(path, "\n".join(lines) + "\n")


def _csv_cell(value: Any) -> str:
    text = str(value)
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


def read_metrics_csv(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a metrics file, numbers parsed."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["seed"] = int(r["seed"])
        r["tokens"] = int(r["tokens"])
        r["wall_time"] = float(r["wall_time"])
        r["value"] = float(r["value"])
    return rows


def mean_ci95(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """``(mean, half width of the 95% Student-t interval)``; the half width is 0 for one value."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return float(x.mean()), 0.0
    t = _T975[len(x) - 2] if len(x) - 1 <= len(_T975) else 1.96
    return float(x.mean()), float(t * x.std(ddof=1) / math.sqrt(len(x)))


def _series(rows: list[dict[str, Any]], metric: str) -> dict[tuple[str, str], dict[int, Any]]:
    """``{(agent, termination): {seed: (tokens[], values[], wall_time)}}`` for ``metric``."""
    out: dict[tuple[str, str], dict[int, Any]] = defaultdict(dict)
    grouped: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    wall: dict[tuple[str, str, int], float] = defaultdict(float)
    for r in rows:
        key = (r["agent"], r["termination"], r["seed"])
        wall[key] = max(wall[key], r["wall_time"])
        if r["metric"] == metric:
            grouped[key].append(r)
    for (agent, term, seed), rs in grouped.items():
        rs.sort(key=lambda r: r["tokens"])
        tokens = np.array([r["tokens"] for r in rs], dtype=float)
        values = np.array([r["value"] for r in rs], dtype=float)
        out[(agent, term)][seed] = (tokens, values, wall[(agent, term, seed)])
    return out


def trailing_mean(values: Sequence[float] | np.ndarray, window: int = SMOOTH) -> np.ndarray:
    """Trailing mean over ``window`` points (shorter at the start).

    :raises ValueError: when ``window`` < 1.
    """
    if window < 1:
        raise ValueError(f"trailing_mean: window={window} must be >= 1")
    v = np.asarray(values, dtype=float)
    c = np.cumsum(np.insert(v, 0, 0.0))
    idx = np.arange(1, len(v) + 1)
    lo = np.maximum(idx - window, 0)
    return np.asarray((c[idx] - c[lo]) / (idx - lo))


def final_score(values: Sequence[float] | np.ndarray, window: int = SMOOTH) -> float:
    """Mean of the last ``window`` values (fewer when the run logged fewer): the end of the
    smoothed curve."""
    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        raise ValueError("final_value: no values")
    return float(v[-window:].mean())


def tokens_to_reach(
    tokens: Sequence[float] | np.ndarray,
    values: Sequence[float] | np.ndarray,
    target: float,
    window: int = SMOOTH,
) -> float:
    """First logged token count at which the smoothed curve reaches ``target``; ``inf`` if never.

    :param tokens: tokens generated at each logged point (non-decreasing).
    :param values: the metric at each point.
    :param target: the score to reach (``>=``).
    :param window: trailing-mean window over logged points.
    :raises ValueError: on mismatched lengths, no points, or decreasing ``tokens``.
    """
    t = np.asarray(tokens, dtype=float)
    v = np.asarray(values, dtype=float)
    if t.shape != v.shape or t.ndim != 1 or len(t) == 0:
        raise ValueError(
            f"tokens_to_reach: tokens {t.shape} and values {v.shape} must be equal, non-empty 1-D"
        )
    if np.any(np.diff(t) < 0):
        raise ValueError("tokens_to_reach: tokens must be non-decreasing")
    # a tolerance for rounding: a run's own final score (a plain mean) must count as reached by
    # its trailing mean (a cumulative-sum difference) at its last point
    hit = np.nonzero(trailing_mean(v, window) >= target - 1e-9 * max(1.0, abs(target)))[0]
    return float(t[hit[0]]) if len(hit) else math.inf


Run = tuple[np.ndarray, np.ndarray]


def reach(
    baseline_runs: Sequence[Run], agent_runs: Sequence[Run], window: int = SMOOTH
) -> dict[str, Any]:
    """Tokens an agent needs to reach the baseline's final score (the module's definition).

    :param baseline_runs: ``(tokens, values)`` per baseline seed.
    :param agent_runs: ``(tokens, values)`` per seed of the agent.
    :returns: ``{"target", "per_seed", "median", "reached", "seeds"}``; ``inf`` for a seed
        that never reaches the target (``median`` too when the median seed does not).
    """
    if not baseline_runs or not agent_runs:
        raise ValueError(
            f"reach: need runs of both (baseline: {len(baseline_runs)}, agent: {len(agent_runs)})"
        )
    target = float(np.mean([final_score(v, window) for _, v in baseline_runs]))
    per_seed = [tokens_to_reach(t, v, target, window) for t, v in agent_runs]
    return {
        "target": target,
        "per_seed": per_seed,
        "median": float(np.median(per_seed)),
        "reached": int(sum(math.isfinite(x) for x in per_seed)),
        "seeds": len(per_seed),
    }


def learned(runs: Sequence[Run], window: int = SMOOTH) -> bool:
    """Whether the seed-mean final score is above the seed-mean start (first ``window`` values)."""
    start = np.mean([np.asarray(v, dtype=float)[:window].mean() for _, v in runs])
    return bool(np.mean([final_score(v, window) for _, v in runs]) > start)


def curves(
    rows: list[dict[str, Any]], metric: str
) -> tuple[np.ndarray, dict[tuple[str, str], np.ndarray]]:
    """``(grid, {agent: seeds x grid smoothed curves})`` on a common token grid."""
    series = _series(rows, metric)
    if not series:
        raise ValueError(f"metric {metric!r} was never logged; check the `metric` config key")
    end = min(s[0][-1] for per_seed in series.values() for s in per_seed.values())
    start = max(s[0][0] for per_seed in series.values() for s in per_seed.values())
    grid = np.linspace(start, end, GRID_POINTS) if end > start else np.array([end])
    out = {
        key: np.stack([np.interp(grid, t, trailing_mean(v)) for t, v, _ in per_seed.values()])
        for key, per_seed in series.items()
    }
    return grid, out


def _ordered(series: dict[tuple[str, str], Any], rows: list[dict[str, Any]]) -> list[Any]:
    """Agents in the order they first appear in the rows (the config's order), PPO first."""
    seen = list(dict.fromkeys((r["agent"], r["termination"]) for r in rows))
    keys = [k for k in seen if k in series]
    return sorted(keys, key=lambda k: k[0] != "ppo")  # stable: the rest keep their order


def summarize(rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """One summary dict per agent (PPO first, then the config's order): final score, tokens to
    reach PPO's final score (median over seeds), speed-up, wall time."""
    series = _series(rows, metric)
    if not series:
        raise ValueError(f"metric {metric!r} was never logged; check the `metric` config key")
    keys = _ordered(series, rows)
    ppo_key = next((k for k in keys if k[0] == "ppo"), None)
    runs = {k: [(t, v) for t, v, _ in series[k].values()] for k in keys}
    baseline_ok = ppo_key is not None and learned(runs[ppo_key])
    ppo_reach = None if ppo_key is None else reach(runs[ppo_key], runs[ppo_key])
    summary = []
    for key in keys:
        score, ci = mean_ci95([final_score(v) for _, v in runs[key]])
        hit = None if ppo_key is None else reach(runs[ppo_key], runs[key])
        tokens = None if hit is None or not math.isfinite(hit["median"]) else hit["median"]
        speedup = above = None
        if baseline_ok and tokens and ppo_reach:
            if math.isfinite(ppo_reach["median"]):
                speedup = ppo_reach["median"] / tokens
            else:  # PPO's median seed never reached it: at least PPO's budget / the agent's
                above = float(np.mean([t[-1] for t, _ in runs[ppo_key]])) / tokens
        summary.append(
            {
                "agent": label(*key),
                "seeds": len(runs[key]),
                "final_score": score,
                "final_score_ci95": ci,
                "tokens_to_ppo_final": tokens,
                "seeds_reaching_ppo_final": None if hit is None else hit["reached"],
                "speedup_vs_ppo": speedup,
                "speedup_at_least": above,
                "ppo_learned": None if ppo_key is None else baseline_ok,
                "wall_time": float(np.mean([w for _, _, w in series[key].values()])),
            }
        )
    return summary


def _fmt_tokens(s: dict[str, Any]) -> str:
    if s["seeds_reaching_ppo_final"] is None:
        return "-"
    reached = f" ({s['seeds_reaching_ppo_final']}/{s['seeds']} seeds)"
    tokens = s["tokens_to_ppo_final"]
    return ("not reached" if tokens is None else f"{tokens:,.0f}") + reached


def _fmt_speedup(s: dict[str, Any]) -> str:
    if s["ppo_learned"] is False:  # flagged under the table (NOT_LEARNED)
        return "-"
    if s["speedup_at_least"] is not None:
        return f"> {s['speedup_at_least']:.2f}x"
    return "-" if s["speedup_vs_ppo"] is None else f"{s['speedup_vs_ppo']:.2f}x"


def table_rows(summary: list[dict[str, Any]]) -> list[list[str]]:
    """The report table as strings (same cells in report.md and on the terminal)."""
    return [
        [
            s["agent"],
            f"{s['final_score']:.3f} ± {s['final_score_ci95']:.3f}",
            _fmt_tokens(s),
            _fmt_speedup(s),
            f"{s['wall_time']:.1f}",
        ]
        for s in summary
    ]


HEADER = [
    "agent",
    "final score (95% CI)",
    "tokens to reach PPO final (median)",
    "speed-up vs PPO",
    "wall time (s)",
]


NOT_LEARNED = (
    f"PPO did not learn: its final score is not above its start (the mean of its first {SMOOTH} "
    "logged values), so any curve reaches it at once; no speed-ups are given. Train longer or "
    "tune the agent before comparing."
)


def md_cell(text: str) -> str:
    """A markdown table cell: ``|`` escaped (a termination spec may hold one), no newlines."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def plot_curves(rows: list[dict[str, Any]], metric: str, path: str | Path) -> None:
    """PNG of each agent's mean curve with its 95% interval across seeds vs tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid, curve = curves(rows, metric)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for key in _ordered(curve, rows):
        c = curve[key]
        mean = c.mean(axis=0)
        half = np.array([mean_ci95(c[:, i])[1] for i in range(c.shape[1])])
        ax.plot(grid, mean, label=f"{label(*key)} (n={c.shape[0]})")
        ax.fill_between(grid, mean - half, mean + half, alpha=0.2)
    ppo = [k for k in curve if k[0] == "ppo"]
    if ppo:  # the level the "tokens to reach PPO final" column measures
        target = np.mean([final_score(v) for _, v, _ in _series(rows, metric)[ppo[0]].values()])
        ax.axhline(float(target), color="grey", lw=0.8, ls="--", label="PPO final")
    ax.set_xlabel("tokens generated")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric}: mean and 95% interval across seeds")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def render_markdown(summary: list[dict[str, Any]], metric: str, context: dict[str, Any]) -> str:
    """report.md: the settings, the table and how its numbers are computed."""
    lines = ["# marlhf compare", ""]
    for k, v in context.items():
        lines.append(f"- **{k}**: {v}")
    lines += ["", f"Metric: `{metric}`.", ""]
    lines.append("| " + " | ".join(HEADER) + " |")
    lines.append("|" + "---|" * len(HEADER))
    for cells in table_rows(summary):
        lines.append("| " + " | ".join(md_cell(c) for c in cells) + " |")
    if any(s["ppo_learned"] is False for s in summary):
        lines += ["", f"**{NOT_LEARNED}**"]
    lines += [
        "",
        f"Final score: mean of each run's last {SMOOTH} logged values, averaged over seeds "
        "(95% Student-t interval). Tokens to reach PPO final: per seed, the first logged token "
        f"count where the trailing mean over {SMOOTH} logged values reaches PPO's final score; "
        "the median over seeds, with the seeds that reach it (`benchmarks/` uses the same "
        "definition). Speed-up = PPO's own median / the agent's; when PPO's median seed never "
        "reaches its final score, `> x` gives the bound PPO's budget / the agent's tokens. "
        "Wall time: mean over seeds. "
        "All numbers are recomputed from `metrics.csv`; curves in `curves.png`.",
        "",
    ]
    return "\n".join(lines)


def print_table(summary: list[dict[str, Any]], metric: str) -> None:
    """Print the report table with rich, on stderr (stdout carries the command's result)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"marlhf compare: {metric}")
    for h in HEADER:
        table.add_column(h, justify="left" if h == "agent" else "right")
    for cells in table_rows(summary):
        table.add_row(*cells)
    if any(s["ppo_learned"] is False for s in summary):
        table.caption = NOT_LEARNED
    Console(stderr=True).print(table)
