"""The pure helpers of the benchmarks (benchmarks/common.py): statistics, tables, JSON."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from common import (
    bootstrap_ci,
    final_value,
    fmt,
    markdown_table,
    parity_summary,
    tokens_to_reach,
    trailing_mean,
    write_json,
)


def test_bootstrap_ci_constant_values_give_a_point() -> None:
    assert bootstrap_ci([0.5, 0.5, 0.5]) == (0.5, 0.5)


def test_bootstrap_ci_brackets_the_median_and_is_seeded() -> None:
    x = np.random.default_rng(1).normal(size=20)
    low, high = bootstrap_ci(x, n_boot=500, seed=3)
    assert low < float(np.median(x)) < high
    assert (low, high) == bootstrap_ci(x, n_boot=500, seed=3)
    # The seed is used: the mean's interval (a continuous statistic, unlike the median of 20
    # values, whose percentiles often coincide between seeds) moves with it.
    assert bootstrap_ci(x, np.mean, n_boot=500, seed=3) != bootstrap_ci(x, np.mean, 500, seed=4)
    assert low >= x.min() and high <= x.max()


def test_bootstrap_ci_keeps_infinity_for_runs_that_never_reached() -> None:
    # a resample's median is 0.4 only with >= 3 of 5 draws on it: P = 0.058 > 2.5%
    assert bootstrap_ci([0.4, math.inf, math.inf, math.inf, math.inf]) == (0.4, math.inf)


@pytest.mark.parametrize(
    ("values", "kwargs", "match"),
    [([], {}, "non-empty"), ([1.0, math.nan], {}, "NaN"), ([1.0], {"level": 1.0}, "level")],
)
def test_bootstrap_ci_rejects_bad_input(values: list[float], kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        bootstrap_ci(values, **kwargs)


def test_trailing_mean_by_hand() -> None:
    np.testing.assert_allclose(trailing_mean([0, 0, 1, 1], 2), [0, 0, 0.5, 1])
    with pytest.raises(ValueError, match="window"):
        trailing_mean([1.0], 0)


def test_tokens_to_reach_by_hand() -> None:
    tokens, values = [10, 20, 30, 40], [0.0, 0.0, 1.0, 1.0]
    assert tokens_to_reach(tokens, values, 1.0, window=1) == 30
    assert tokens_to_reach(tokens, values, 1.0, window=2) == 40  # smoothed: 0, 0, 0.5, 1
    assert tokens_to_reach(tokens, values, 2.0, window=1) == math.inf
    with pytest.raises(ValueError, match="non-decreasing"):
        tokens_to_reach([2, 1], [0, 0], 1.0)
    with pytest.raises(ValueError, match="equal"):
        tokens_to_reach([1, 2], [0.0], 1.0)


def test_parity_summary_by_hand() -> None:
    tokens = np.array([100.0, 200.0, 300.0, 400.0])
    ppo = [(tokens, np.array([0.0, 0.2, 0.6, 1.0])), (tokens, np.array([0.0, 0.4, 0.8, 1.0]))]
    fast = [(tokens, np.array([0.0, 1.0, 1.0, 1.0])), (tokens, np.array([1.0, 1.0, 1.0, 1.0]))]
    never = [(tokens, np.zeros(4))]
    out = parity_summary(ppo, fast, window=1)
    assert out["target_score"] == 1.0 and out["ppo_tokens"] == 400.0
    assert out["per_seed"] == [0.5, 0.25]
    assert out["median"] == pytest.approx(0.375)
    assert out["reached"] == 2 and out["seeds"] == 2
    assert 0.25 <= out["ci95"][0] <= out["ci95"][1] <= 0.5
    slow = parity_summary(ppo, never, window=1)
    assert slow["median"] == math.inf and slow["reached"] == 0
    assert parity_summary(ppo, ppo, window=1)["per_seed"] == [1.0, 1.0]
    with pytest.raises(ValueError, match="need runs"):
        parity_summary([], fast)


def test_final_value_is_the_mean_of_the_last_window() -> None:
    assert final_value([0, 0, 2, 4], window=2) == 3.0
    assert final_value([5.0], window=5) == 5.0


def test_table_and_json_helpers(tmp_path: Path) -> None:
    text = markdown_table(["a", "b"], [[1.23456, None], ["x", math.inf]])
    assert text.splitlines()[2] == "| 1.235 | n/a |"
    assert "not reached" in text
    assert fmt(0.5, 1) == "0.5"
    with pytest.raises(ValueError, match="row 0 has 1 cells"):
        markdown_table(["a", "b"], [[1]])
    write_json(tmp_path / "x.json", {"r": [math.inf, np.float64(0.5), np.int64(2)]})
    assert json.loads((tmp_path / "x.json").read_text()) == {"r": [None, 0.5, 2]}


def _gpu_run(
    tmp_path: Path, name: str, weights: str | None, models: list[str], device: str = "cuda (X)"
) -> Path:
    rows = [
        {"model": m, "batch": 16, "new_tokens": 64, "bf16": m != "tiny-gpt2-2L",
         "agent_over_bare": 0.9, "mappo_over_ppo_by_termination": {"ngram:5": 1.0},
         "mappo_over_ppo_peak_mb": {"ngram:5": 1.01}}
        for m in models
    ]  # fmt: skip
    run = {"machine": {"device": device, "commit": "abc", "date_utc": "d", "torch": "t"},
           "smollm2_weights": weights, "wall_s": 10.0, "results": rows}  # fmt: skip
    path = tmp_path / name
    path.write_text(json.dumps(run))
    return path


def test_gpu_runs_merge_with_their_weights_and_summarize(tmp_path: Path) -> None:
    from bench import gpu_summary
    from gpu import merge

    a = _gpu_run(tmp_path, "a.json", "random (arch)", ["tiny-gpt2-2L", "SmolLM2-135M"])
    b = _gpu_run(tmp_path, "b.json", "pretrained (x.gguf)", ["SmolLM2-135M"])
    merged = merge([a, b])
    assert [r["weights"] for r in merged["results"]] == [
        "random",
        "random (arch)",
        "pretrained (x.gguf)",
    ]
    assert merged["wall_s"] == 20.0 and [m["file"] for m in merged["merged_from"]] == [
        "a.json",
        "b.json",
    ]
    summary = gpu_summary(merged)
    assert set(summary["rollout_vs_bare"]) == {
        "tiny-gpt2-2L_B16_N64_fp32_random",
        "SmolLM2-135M_B16_N64_bf16_random",
        "SmolLM2-135M_B16_N64_bf16_pretrained",
    }
    assert summary["device"] == "cuda (X)"
    # peaks measured with the other agents resident (no iteration_peak_mb) are left out
    assert summary["mappo_vs_ppo_peak_mb"] == {}
    merged["results"][0]["iteration_peak_mb"] = {"ngram:5": {"PPO": 100.0, "MAPPO": 101.0}}
    assert gpu_summary(merged)["mappo_vs_ppo_peak_mb"] == {
        "tiny-gpt2-2L_B16_N64_fp32_random": {"ngram:5": 1.01}
    }
    c = _gpu_run(tmp_path, "c.json", None, ["tiny-gpt2-2L"], device="cuda (Y)")
    with pytest.raises(ValueError, match=r"different devices \['cuda \(X\)', 'cuda \(Y\)'\]"):
        merge([a, c])


def test_alternate_runs_more_pairs_until_the_first_reached_min_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import rollout

    clock = iter(range(10_000))  # each perf_counter call advances one "second"
    monkeypatch.setattr(rollout.time, "perf_counter", lambda: float(next(clock)))
    calls: list[str] = []
    first, second = (lambda: calls.append("a")), (lambda: calls.append("b"))
    cpu = rollout.torch.device("cpu")
    # each timed call reads the clock twice: 1 s per run; 2 repeats, then up to 5 s of `first`
    assert rollout._alternate(first, second, 2, cpu, min_seconds=5.0) == (1.0, 1.0, 5)
    assert calls == ["a", "b"] * 5  # alternated, first first
    calls.clear()
    assert rollout._alternate(first, second, 3, cpu)[2] == 3  # no minimum: exactly the repeats
    monkeypatch.setattr(rollout, "MAX_REPEATS", 4)
    assert rollout._alternate(first, second, 1, cpu, min_seconds=1e9)[2] == 4  # capped
    with pytest.raises(ValueError, match=r"repeats=0 must be at least 1 \(--repeats\)"):
        rollout._alternate(first, second, 0, cpu)


def test_a_skipped_step_is_named_as_skipped_in_the_pages_header() -> None:
    from bench_doc import _step_cell

    assert _step_cell("rollout", {"rc": 0, "wall_s": 41.6}) == "rollout 42 s (rc 0)"
    assert _step_cell("trl", {"rc": 1, "wall_s": 0.0}) == "trl 0 s (rc 1)"
    assert (
        _step_cell("parity", {"rc": 0, "wall_s": 0.0, "skipped": True})
        == "parity skipped (its earlier results reused)"
    )
