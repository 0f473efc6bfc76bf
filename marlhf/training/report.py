"""Summaries of a compare run folder: the tidy metrics file, learning curves and report.md.

Definitions (the report states them too, and its numbers are recomputed from ``metrics.csv``):

- a run's *final score* is the mean of its last ``SMOOTH`` logged values of the metric (the end
  of its smoothed curve); an agent's final score is the mean over seeds, with a 95% Student-t
  interval;
- an agent's *curve* is each seed's series smoothed by a trailing mean over ``SMOOTH`` logged
  points, interpolated on a common token grid and averaged over seeds;
- *tokens to reach PPO* is the first grid point where the agent's curve reaches PPO's final
  score; the *speed-up* is PPO's own tokens to reach it divided by the agent's;
- *wall time* is the mean over seeds of each run's wall time at its last logged point.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from marlhf.training.io import atomic_write_text

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


def final_score(values: np.ndarray) -> float:
    """Mean of the last :data:`SMOOTH` values (fewer when the run logged fewer)."""
    return float(values[-SMOOTH:].mean())


def smooth(values: np.ndarray, window: int = SMOOTH) -> np.ndarray:
    """Trailing mean over ``window`` points (shorter at the start)."""
    c = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


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
        key: np.stack([np.interp(grid, t, smooth(v)) for t, v, _ in per_seed.values()])
        for key, per_seed in series.items()
    }
    return grid, out


def summarize(rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """One summary dict per agent (PPO first): final score, tokens to reach PPO, wall time."""
    series = _series(rows, metric)
    grid, curve = curves(rows, metric)
    keys = sorted(series, key=lambda k: (k[0] != "ppo", k))
    ppo_key = next((k for k in keys if k[0] == "ppo"), None)
    finals = {k: [final_score(v) for _, v, _ in series[k].values()] for k in keys}
    target = None if ppo_key is None else float(np.mean(finals[ppo_key]))

    def reach(key: tuple[str, str]) -> float | None:
        if target is None:
            return None
        hit = np.nonzero(curve[key].mean(axis=0) >= target - 1e-12)[0]
        return float(grid[hit[0]]) if len(hit) else None

    ppo_reach = None if ppo_key is None else reach(ppo_key)
    summary = []
    for key in keys:
        score, ci = mean_ci95(finals[key])
        tokens = reach(key)
        speedup = None
        if tokens is not None and ppo_reach is not None and tokens > 0:
            speedup = ppo_reach / tokens
        walls = [w for _, _, w in series[key].values()]
        summary.append(
            {
                "agent": label(*key),
                "seeds": len(finals[key]),
                "final_score": score,
                "final_score_ci95": ci,
                "tokens_to_ppo_final": tokens,
                "speedup_vs_ppo": speedup,
                "wall_time": float(np.mean(walls)),
            }
        )
    return summary


def _fmt_tokens(x: float | None) -> str:
    return "not reached" if x is None else f"{x:,.0f}"


def table_rows(summary: list[dict[str, Any]]) -> list[list[str]]:
    """The report table as strings (same cells in report.md and on the terminal)."""
    return [
        [
            s["agent"],
            f"{s['final_score']:.3f} ± {s['final_score_ci95']:.3f}",
            _fmt_tokens(s["tokens_to_ppo_final"]),
            "-" if s["speedup_vs_ppo"] is None else f"{s['speedup_vs_ppo']:.2f}x",
            f"{s['wall_time']:.1f}",
        ]
        for s in summary
    ]


HEADER = [
    "agent",
    "final score (95% CI)",
    "tokens to reach PPO final",
    "speed-up vs PPO",
    "wall time (s)",
]


def plot_curves(rows: list[dict[str, Any]], metric: str, path: str | Path) -> None:
    """PNG of each agent's mean curve with its 95% interval across seeds vs tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid, curve = curves(rows, metric)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for key in sorted(curve, key=lambda k: (k[0] != "ppo", k)):
        c = curve[key]
        mean = c.mean(axis=0)
        half = np.array([mean_ci95(c[:, i])[1] for i in range(c.shape[1])])
        ax.plot(grid, mean, label=f"{label(*key)} (n={c.shape[0]})")
        ax.fill_between(grid, mean - half, mean + half, alpha=0.2)
    ppo = [k for k in curve if k[0] == "ppo"]
    if ppo:  # the level the "tokens to reach PPO final" column measures
        ax.axhline(curve[ppo[0]][:, -1].mean(), color="grey", lw=0.8, ls="--", label="PPO final")
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
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Final score: mean of each run's last {SMOOTH} logged values, averaged "
        "over seeds (95% Student-t interval). Tokens to reach PPO final: first point where the "
        f"agent's seed-averaged curve (trailing mean over {SMOOTH} logged points) reaches PPO's "
        "final score; speed-up = PPO's own tokens to reach it / the agent's. Wall time: mean "
        "over seeds. All numbers are recomputed from `metrics.csv`; curves in `curves.png`.",
        "",
    ]
    return "\n".join(lines)


def print_table(summary: list[dict[str, Any]], metric: str) -> None:
    """Print the report table with rich."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"marlhf compare: {metric}")
    for h in HEADER:
        table.add_column(h, justify="left" if h == "agent" else "right")
    for cells in table_rows(summary):
        table.add_row(*cells)
    Console().print(table)
