"""The compare report: one definition of tokens-to-reach (shared with benchmarks/), the config's
order, escaped table cells, and a baseline that did not learn."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest

from benchmarks import common
from marlhf.runs import report
from marlhf.runs.report import reach, render_markdown, summarize, table_rows

METRIC = "rollout/score_mean"


def rows_of(curves: dict[tuple[str, str], list[Sequence[float]]]) -> list[dict]:
    """Tidy metric rows: one curve per seed, logged every 100 tokens, in the dict's order."""
    out = []
    for (agent, term), seeds in curves.items():
        for seed, values in enumerate(seeds):
            for i, v in enumerate(values):
                out.append(
                    {"run": f"{agent}-{term}-{seed}", "agent": agent, "termination": term,
                     "seed": seed, "tokens": 100 * (i + 1), "wall_time": float(i),
                     "metric": METRIC, "value": float(v)}
                )  # fmt: skip
    return out


def test_benchmarks_use_the_report_definition() -> None:
    assert common.tokens_to_reach is report.tokens_to_reach
    assert common.trailing_mean is report.trailing_mean
    assert common.final_value is report.final_score
    t = np.arange(1.0, 9.0)
    ppo = [(t, np.linspace(0, 0.5, 8)), (t, np.linspace(0, 0.7, 8))]
    fast = [(t, np.full(8, 1.0)), (t, np.linspace(0, 1, 8))]
    parity = common.parity_summary(ppo, fast, window=2)
    hit = reach(ppo, fast, window=2)
    assert parity["per_seed"] == [x / 8.0 for x in hit["per_seed"]]
    assert parity["target_score"] == hit["target"] == pytest.approx(0.6 * 13 / 14)  # last 2 of each


def test_order_escaping_and_speedup() -> None:
    slow, fast = [0, 0, 0, 0.5, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1, 1, 1]
    rows = rows_of({
        ("ppo", "token"): [slow, slow],
        ("mappo", "ngram:5"): [fast, fast],
        ("mappo", "union:ngram:2|ngram:3"): [slow, fast],
        ("mappo", "ngram:10"): [[0] * 8, [0] * 8],
    })  # fmt: skip
    summary = summarize(rows, METRIC)
    assert [s["agent"] for s in summary] == [
        "ppo",
        "mappo ngram:5",
        "mappo union:ngram:2|ngram:3",
        "mappo ngram:10",
    ]  # the config's order, not sorted
    by = {s["agent"]: s for s in summary}
    # smoothed (window 5) PPO curve first reaches its own final score (1.0) at 800 tokens
    assert by["ppo"]["tokens_to_ppo_final"] == 800 and by["ppo"]["speedup_vs_ppo"] == 1.0
    assert by["mappo ngram:5"]["tokens_to_ppo_final"] == 600
    assert by["mappo ngram:5"]["speedup_vs_ppo"] == pytest.approx(800 / 600)
    assert by["mappo ngram:10"]["tokens_to_ppo_final"] is None
    assert by["mappo ngram:10"]["seeds_reaching_ppo_final"] == 0
    md = render_markdown(summary, METRIC, {"task": "x"})
    line = next(x for x in md.splitlines() if "union" in x)
    assert "union:ngram:2\\|ngram:3" in line
    cells = [c for c in line.replace("\\|", "").split("|") if c.strip()]
    assert len(cells) == len(report.HEADER)  # the pipe did not add a column
    assert "did not learn" not in md


def test_ppo_reaches_its_own_final_score_when_seeds_agree() -> None:
    up = list(np.linspace(0, 1, 12))
    summary = summarize(rows_of({("ppo", "token"): [up, up, up]}), METRIC)
    assert summary[0]["tokens_to_ppo_final"] == 1200
    assert summary[0]["seeds_reaching_ppo_final"] == 3


def test_ppo_median_seed_short_of_the_mean_gives_a_bound() -> None:
    """Bimodal seeds (one solves, two do not): PPO's median seed never reaches the seed mean."""
    solved, stuck = [0.25, 0.5, 1, 1, 1, 1, 1, 1], [0.25] * 8
    rows = rows_of({("ppo", "token"): [solved, stuck, stuck], ("mappo", "ngram:5"): [solved] * 3})
    by = {s["agent"]: s for s in summarize(rows, METRIC)}
    assert by["ppo"]["tokens_to_ppo_final"] is None and by["ppo"]["seeds_reaching_ppo_final"] == 1
    assert by["mappo ngram:5"]["tokens_to_ppo_final"] == 300
    assert by["mappo ngram:5"]["speedup_vs_ppo"] is None
    assert by["mappo ngram:5"]["speedup_at_least"] == pytest.approx(800 / 300)
    assert table_rows(list(by.values()))[1][3] == "> 2.67x"


def test_a_baseline_that_did_not_learn_is_flagged() -> None:
    flat, up = [0.3, 0.2, 0.3, 0.2, 0.3, 0.2, 0.3, 0.2], list(np.linspace(0, 1, 8))
    rows = rows_of({("ppo", "token"): [flat, flat], ("mappo", "ngram:5"): [up, up]})
    summary = summarize(rows, METRIC)
    assert all(s["speedup_vs_ppo"] is None and s["ppo_learned"] is False for s in summary)
    assert {r[3] for r in table_rows(summary)} == {"-"}
    assert report.NOT_LEARNED in render_markdown(summary, METRIC, {})
    assert not math.isnan(summary[1]["final_score"])
