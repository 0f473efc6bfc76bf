"""The learned-termination benchmark's own pieces: its task, its threshold count, its page."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from benchmarks.learned_terms import tokens_to_threshold
from benchmarks.learned_terms_doc import render, sweep_lines
from benchmarks.learned_terms_keypos import KeyPositionTask
from benchmarks.learned_terms_rsn_sweep import window_means
from benchmarks.learned_terms_tables import mean_ci
from marlhf.credit.truth import Sampling, exact_advantages
from marlhf.models import tiny_gpt2


@pytest.mark.slow
def test_key_position_credit_sits_at_the_prompted_position() -> None:
    task = KeyPositionTask(horizon=8, positions=4)
    prompts = task.sample_prompts(np.random.default_rng(0), 6)
    assert len({p.metadata["pos"] for p in prompts}) > 1  # the decisive position varies
    model = tiny_gpt2(task.codec, n_layer=1, n_embd=16, n_head=2, seed=0)
    gen = torch.Generator().manual_seed(0)
    allowed = torch.as_tensor(task.action_mask()).nonzero().flatten()
    ids = allowed[torch.randint(0, len(allowed), (6, 8), generator=gen)]
    mask = torch.ones(6, 8, dtype=torch.bool)
    sampling = Sampling(action_mask=torch.as_tensor(task.action_mask()))
    truth = exact_advantages(model, task, prompts, ids, mask, sampling=sampling)
    for row, prompt in enumerate(prompts):
        pos = prompt.metadata["pos"]
        # after the decisive token nothing matters (before it, earlier tokens may still move
        # the policy's odds at the decisive one)
        assert bool((truth.advantages[row, pos + 1 :].abs() < 1e-9).all())
        right = int(ids[row, pos]) == prompt.metadata["target_id"]
        assert (truth.advantages[row, pos] > 0) == right


def test_tokens_to_threshold_needs_three_iterations_at_the_threshold() -> None:
    points = [(100, 90, 0.1), (200, 180, 0.9), (300, 270, 0.9), (400, 360, 0.9)]
    assert tokens_to_threshold(points, 0.6) == 300  # (0.1 + 0.9 + 0.9) / 3 >= 0.6
    assert tokens_to_threshold(points, 0.6, column=1) == 270
    assert tokens_to_threshold(points, 0.95) == math.inf


def test_sweep_windows_are_the_first_best_and_last_means() -> None:
    got = window_means([0.0, 1.0, 2.0, 6.0, 1.0], width=2)
    assert got == {"first": 0.5, "best": 4.0, "last": 3.5}
    with pytest.raises(ValueError, match="width=3"):
        window_means([1.0, 2.0], width=3)


def test_the_sweep_table_has_a_row_per_run_and_nothing_without_a_sweep() -> None:
    run = {"sft_steps": 300, "learning_rate": 3e-4, "rollouts": 12, "first": 0.184,
           "best": 0.222, "last": 0.212, "seconds": 78.2, "loadavg": [1.04, 1.0, 1.0]}  # fmt: skip
    lines = sweep_lines({"calls": 6, "window": 10, "runs": [run, {**run, "sft_steps": 1000}]})
    rows = [line for line in lines if line.startswith("| 300") or line.startswith("| 1000")]
    assert rows[0] == "| 300 | 0.0003 | 12 | 0.18 | 0.22 | 0.21 | 78 | 1.0 |"
    assert len(rows) == 2 and any("6 learn calls" in line for line in lines)
    assert sweep_lines(None) == [] and sweep_lines({}) == []


def test_mean_ci() -> None:
    m, h = mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and math.isclose(h, 4.303 * 1.0 / math.sqrt(3))
    assert math.isnan(mean_ci([1.0])[1])


def _audit_row(task: str, seed: int, learned: float, heuristic: float) -> dict[str, Any]:
    rules = {"learned": learned, "even": heuristic, "entropy": heuristic * 1.1, "oracle": 0.1}
    row: dict[str, Any] = {"task": task, "seed": seed, "truth": "exact"}
    row["abs_true_per_position"] = [0.5, 0.0, 0.0, 0.0]
    for rule, rmse in rules.items():
        row[rule] = {"rmse": rmse, "corr": 0.5, "cut_freq_per_position": [1.0, 0.5, 0.5, 1.0]}
    row["by_budget"] = {"2": dict(rules)}
    return row


@pytest.mark.slow
def test_page_states_whether_the_goal_is_met(tmp_path: Path) -> None:
    setups = [{"part": "audit", "file": "x.json", "heuristics": ["even", "entropy"], "budget": 4,
               "quick": True, "loadavg": ["1", "2", "3"]}]  # fmt: skip
    t2t = [
        {"task": "A", "seed": 0, "rule": rule, "threshold": 0.5, "tokens_to_threshold": tok,
         "env_tokens_to_threshold": tok, "curve": [(tok, tok, 0.6)]}
        for rule, tok in (("learned", 50.0), ("even", 100.0))
    ]  # fmt: skip
    good = {
        "setups": setups,
        "audit": [_audit_row(t, s, 0.5, 1.0) for t in "ABC" for s in (0, 1)],
        "t2t": t2t,
    }
    doc, png = tmp_path / "page.md", tmp_path / "cuts.png"
    render(good, doc, png)
    text = doc.read_text()
    assert "lower RMSE than the best heuristic on >= 3 tasks: met" in text
    assert "+50.0% ± 0.0 (vs `even`)" in text
    assert png.stat().st_size > 0
    bad = dict(good, audit=[_audit_row(t, s, 0.95, 1.0) for t in "ABC" for s in (0, 1)])
    render(bad, doc, png)
    assert "on >= 3 tasks: NOT met (met on: none)" in doc.read_text()


@pytest.mark.slow
def test_goal_uses_the_rmse_net_of_monte_carlo_noise(tmp_path: Path) -> None:
    """Monte-Carlo rows that recorded the truth's standard error are judged net of it."""
    setups = [{"part": "audit", "file": "x.json", "heuristics": ["even", "entropy"], "budget": 4,
               "quick": True, "loadavg": ["1", "2", "3"]}]  # fmt: skip
    rows = []
    for task in "ABC":
        for seed in (0, 1):
            row = _audit_row(task, seed, 0.8, 1.0)  # 20% lower against the noisy truth
            row["truth"], row["truth_rms_se"] = "mc", 0.6
            for rule in ("learned", "even", "entropy", "oracle"):
                row[rule]["rmse_net"] = max(row[rule]["rmse"] ** 2 - 0.36, 0.0) ** 0.5
            rows.append(row)
    rows[0]["alloc"] = {
        "per_row": {"learned": 0.9, "even": 1.0, "entropy": 1.2, "oracle": 0.8},
        "per_batch": {"learned": 0.85, "entropy": 1.1, "oracle": 0.6},
    }
    exact = _audit_row("D", 0, 0.9, 1.0)  # exact truth: no noise, judged as measured
    for rule in ("learned", "even", "entropy", "oracle"):
        exact[rule]["rmse_net"] = 0.0
    data = {"setups": setups, "audit": [*rows, exact], "t2t": []}
    doc, png = tmp_path / "page.md", tmp_path / "cuts.png"
    render(data, doc, png)
    text = doc.read_text()
    assert "| A | mc, rms SE 0.600 | 2 |" in text
    assert text.count("| D | exact | 1 |") == 1  # in the main table only
    # the batch-budget table: only the run that recorded it; headroom 20% per episode, 40% per batch
    assert (
        "| A | 1 | `even` 1.000 | 0.900 | 0.800 | 0.850 | 1.100 | 0.600 | 20.0% | 40.0% |" in text
    )
    assert "+20.0% ± 0.0 (vs `even`)" in text  # against the truth as computed
    assert "+33.9% ± 0.0 (vs `even`)" in text  # net: 1 - sqrt(0.64 - 0.36) / sqrt(1 - 0.36)
    assert "on >= 3 tasks: met (met on: ['A', 'B', 'C']). Judged net of the Monte-Carlo" in text


def test_unknown_task_names_the_valid_ones() -> None:
    from benchmarks.learned_terms import REASONING, _names

    assert _names(f"DelayedChoice h32, {REASONING}", []) == ["DelayedChoice h32", REASONING]
    with pytest.raises(SystemExit, match=r"unknown task\(s\) \['Nope'\]; valid: \[.*Reasoning"):
        _names("Nope", [])


def test_global_top_keeps_the_batch_best_candidates() -> None:
    """Never a row's first or last token; the best scores of the whole batch."""
    from benchmarks.learned_terms_alloc import global_top

    mask = torch.arange(8)[None] < torch.tensor([8, 6, 8, 5])[:, None]
    scores = torch.arange(32, dtype=torch.float64).reshape(4, 8)
    assert global_top(scores, mask, 3).nonzero().tolist() == [[3, 1], [3, 2], [3, 3]]
    assert global_top(scores, mask, 5).nonzero().tolist() == [
        [2, 5],
        [2, 6],
        [3, 1],
        [3, 2],
        [3, 3],
    ]
    assert int(global_top(scores, mask, 100).sum()) == 6 + 4 + 6 + 3  # every candidate


def _pilot_rows(scores: dict[str, list[float]]) -> list[dict[str, Any]]:
    return [
        {"rule": rule, "curve": [(100 * (i + 1), 100 * (i + 1), s) for i, s in enumerate(xs)]}
        for rule, xs in scores.items()
    ]


def test_pilot_threshold_is_halfway_from_start_to_end_pooled_over_rules() -> None:
    from benchmarks.learned_terms_tables import pilot_threshold

    rows = _pilot_rows(
        {
            "even": [0.1, 0.1, 0.1, 0.5, 0.3, 0.3, 0.3],  # starts 0.1, ends 0.3
            "learned": [0.2, 0.2, 0.2, 0.0, 0.5, 0.5, 0.5],  # starts 0.2, ends 0.5
        }
    )
    # start (0.1 + 0.2) / 2 = 0.15, end (0.3 + 0.5) / 2 = 0.4: halfway 0.275, down to 0.27
    assert pilot_threshold(rows) == 0.27
    # the middle iterations do not count, and neither does the order of the rules
    rows[0]["curve"][3] = (400, 400, 0.9)
    assert pilot_threshold(rows[::-1]) == 0.27


def test_pilot_threshold_refuses_runs_too_short_to_have_a_start_and_an_end() -> None:
    from benchmarks.learned_terms_tables import pilot_threshold

    rows = _pilot_rows({"even": [0.1] * 6, "entropy": [0.1] * 5})
    with pytest.raises(ValueError, match=r"rows of \['entropy'\] have fewer than 6 iterations"):
        pilot_threshold(rows)
    with pytest.raises(ValueError, match="no rows"):
        pilot_threshold([])


@pytest.mark.parametrize(
    "task,pattern",
    [
        ("Reverse", "learned_terms_pilot_rev.json"),
        ("Reasoning h16", "learned_terms_pilot_rsn*.json"),
    ],
)
def test_a_pilot_set_threshold_is_the_pilot_rule_on_its_pilot_files(
    task: str, pattern: str
) -> None:
    """The threshold typed in ``TASKS`` is what the documented rule gives on the pilot's runs
    (a seed outside the measured ones, every rule; the reasoning task's rules ran as two
    processes, one file each), not a value tuned by hand."""
    from benchmarks.common import RESULTS_DIR, read_json
    from benchmarks.learned_terms import PILOT_SEED, TASKS
    from benchmarks.learned_terms_tables import pilot_threshold

    rows = [r for path in sorted(RESULTS_DIR.glob(pattern)) for r in read_json(path)["t2t"]]
    assert {r["task"] for r in rows} == {task} and {r["seed"] for r in rows} == {PILOT_SEED}
    assert sorted(r["rule"] for r in rows) == ["entropy", "even", "learned", "value_change"]
    assert TASKS[task][4] == pilot_threshold(rows)


def test_pilot_table_says_which_threshold_the_page_uses() -> None:
    """A pilot whose task has measured rows sets the table's threshold; one whose score does
    not rise gives no threshold (every rule would reach the halfway point at once)."""
    from benchmarks.learned_terms_tables import pilot_table

    rising = _pilot_rows({"learned": [0.1] * 3 + [0.3] * 3, "even": [0.1] * 3 + [0.5] * 3})
    falling = _pilot_rows({"learned": [0.2] * 3 + [0.1] * 3, "even": [0.2] * 3 + [0.2] * 3})
    pilots = [{**r, "task": "Up", "seed": 9, "seconds": 12.0} for r in rising]
    pilots += [{**r, "task": "Down", "seed": 9, "seconds": 3.0} for r in falling]
    lines = pilot_table({"pilots": pilots, "t2t": [{"task": "Up"}]})
    assert lines[2] == (
        "| Up | 9 | 0.10 -> 0.30 | 0.10 -> 0.50 | 0.10 -> 0.40 | 0.25 | 12 | 12 "
        "| the table's threshold |"
    )
    assert lines[3].startswith("| Down | 9 | 0.20 -> 0.10 | 0.20 -> 0.20 | 0.20 -> 0.15 | 0.17 |")
    assert lines[3].endswith("| none: the score does not rise, so every rule reaches the halfway "
                             "point in its first three iterations (no row) |")  # fmt: skip
    assert pilot_table({"t2t": []}) == []


def test_pilot_flag_names_the_part_and_seeds_it_needs() -> None:
    from benchmarks.learned_terms import main

    with pytest.raises(SystemExit, match=r"needs --part t2t and no --seeds \(got --part all, "):
        main(["--pilot"])
    with pytest.raises(SystemExit, match=r"\(got --part t2t, --seeds 1\)"):
        main(["--pilot", "--part", "t2t", "--seeds", "1"])
