"""benchmarks/evidence.py: presets mapped to audit schemes, the snapshot audit, the rank
correlation and the rendered block (names, missing tasks)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.evidence import PRESETS, SKIPPED, TaskSpec, compare_config
from benchmarks.evidence_audit import audit_snapshot, preset_scheme
from benchmarks.evidence_doc import render_block, spearman, summarize_task
from marlhf.algorithms.config import PRESETS as ALL_PRESETS


def test_every_estimator_preset_is_run_or_skipped_with_a_reason() -> None:
    names = {p.partition("@")[0] for p in PRESETS} | {"ppo"} | set(SKIPPED)
    assert names == set(ALL_PRESETS)
    assert "ma-ppo@ngram:5" in PRESETS
    assert any(p.startswith("ma-ppo@lowprob") for p in PRESETS)


def test_presets_map_to_the_scheme_their_runs_train_with(tmp_path: Path) -> None:
    spec = TaskSpec("t", "marlhf/DelayedChoice-v0", {"horizon": 8}, 1024)
    config = compare_config(spec, "quick", tmp_path)
    schemes = {
        text: preset_scheme(config.agent, text)[1].name
        for text in ["ppo", "ma-ppo@ngram:5", "dr-grpo", "spo-chain", "vineppo", "remax", "rloo"]
    }
    assert schemes == {
        "ppo": "gae",
        "ma-ppo@ngram:5": "gae@ngram:5",
        "dr-grpo": "grpo group_std=false",
        "spo-chain": "mc@lowprob:p=0.9 prob_mask_threshold=0.9",
        "vineppo": "mc",
        "remax": "remax",
        "rloo": "rloo",
    }
    label, _, cfg = preset_scheme(config.agent, "spo-chain")
    assert (
        label == "spo-chain lowprob:p=0.9"
        and cfg.credit.mc.mc_rollouts == 4
        and cfg.credit.group_size == 4
    )


def test_snapshot_audit_scores_every_scheme_on_the_same_rollouts(tmp_path: Path) -> None:
    spec = TaskSpec("t", "marlhf/DelayedChoice-v0", {"horizon": 8, "num_choices": 2}, 1024)
    config = compare_config(spec, "quick", tmp_path, scale=1.0)
    config.task.num_envs = 16
    schemes = {}
    for text in ["ppo", "ma-ppo@ngram:5", "grpo", "remax", "vineppo"]:
        name, scheme, cfg = preset_scheme(config.agent, text)
        schemes[name] = (scheme, cfg)
    out = audit_snapshot(spec, config, 0, 128, schemes, tmp_path / "audit", rows=[])
    assert out["tokens"] >= 128 and out["episodes"] == 16
    assert out["replay_check"]["score_in_metrics_csv"] is None  # no compare run to check against
    assert out["truth"]["method"] == "exact" and out["truth"]["decision_tokens"] == 16
    assert set(out["schemes"]) == set(schemes)
    assert out["schemes"]["vineppo"]["baseline_tokens"] > 0  # its continuations, counted
    assert out["schemes"]["remax"]["baseline_tokens"] == 16 * 8  # one greedy episode per row
    assert out["schemes"]["ppo"]["baseline_tokens"] == 0
    for s in out["schemes"].values():
        assert s["decisions"]["rmse"] is not None and math.isfinite(s["decisions"]["rmse"])
    assert (tmp_path / "audit" / "seed0-128.safetensors").exists()
    again = audit_snapshot(spec, config, 0, 128, schemes, tmp_path / "audit", rows=[])
    assert again == out  # read back, not recomputed (its timings would differ)


def test_spearman_ranks_with_ties_and_inf_and_says_when_n_is_too_small() -> None:
    r = spearman([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [1.0, 2.0, 3.0, 4.0, math.inf, math.inf])
    assert r["rho"] == pytest.approx(0.9856, abs=1e-3)  # the two inf tie for the last rank
    lo, hi = r["ci95"]
    assert lo < r["rho"] < hi <= 1.0
    assert spearman([1, 2, 3, 4, 5], [5, 4, 3, 2, 1])["rho"] == pytest.approx(-1.0)
    small = spearman([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert small["rho"] is None and "n too small" in small["why"]
    tied = spearman([1.0, 2.0, 3.0, 4.0, 5.0], [math.inf] * 5)
    assert tied["rho"] is None and "tied" in tied["why"]


def _section(key: str) -> dict:
    methods = ["ppo", "grpo", "rloo", "remax", "vineppo"]
    summary = [
        {
            "agent": m,
            "seeds": 2,
            "final_score": 0.5 + 0.1 * i,
            "final_score_ci95": 0.01,
            "tokens_to_ppo_final": 1000.0 * (5 - i),
            "seeds_reaching_ppo_final": 2,
            "wall_time": 3.0,
        }
        for i, m in enumerate(methods)
    ]

    def snap(tokens: int) -> dict:
        return {
            "seed": 0,
            "tokens": tokens,
            "episodes": 8,
            "truth": {"method": "exact"},
            "schemes": {
                m: {
                    "decisions": {"rmse": 1.0 - 0.1 * i, "corr": 0.1 * i, "sign": 0.5},
                    "baseline_tokens": 0,
                }
                for i, m in enumerate(methods)
            },
            **({"replay_check": {"equal": True}} if tokens else {}),
        }

    return {
        "task": {"key": key, "env_id": "marlhf/X-v0", "kwargs": {}, "note": "n", "truth": "exact"},
        "budget": 2048,
        "num_envs": 8,
        "seeds": [0, 1],
        "summary": summary,
        "compare_wall_s": 1.0,
        "audit": {
            "schemes": {m: m for m in methods},
            "snapshots": {"init": [snap(0)], "half": [snap(1024)]},
        },
        "command": f"python benchmarks/evidence.py --mode full --tasks {key}",
    }


def test_analysis_and_block_come_from_the_json() -> None:
    section = _section("a")
    analysis = summarize_task(section)
    assert analysis["closest_by_corr"] == {"init": "vineppo", "half": "vineppo"}
    assert analysis["fastest"] == "vineppo" and analysis["best_final"] == "vineppo"
    assert analysis["replay"] == {"equal": 1, "checked": 1}
    # lower RMSE goes with fewer tokens to PPO's final score
    assert analysis["spearman"]["init/rmse"]["vs_tokens_to_ppo_final"]["rho"] > 0.8
    assert analysis["spearman"]["init/sign"]["vs_final_score"]["rho"] is None  # all tied
    section["analysis"] = analysis
    data = {
        "machine": {"commit": "abc", "cpu": "cpu", "cores": 2, "date_utc": "now"},
        "mode": "full",
        "presets": ["ppo", "grpo"],
        "agent_section": {"preset": ["toy"]},
        "planned_tasks": ["a", "b"],
        "tasks": {"a": section},
        "reasoning_missing": "not landed",
    }
    block = render_block(data)
    assert "Not finished (no numbers below): b" in block
    assert "reasoning task is not in this run: not landed" in block
    assert "python benchmarks/evidence.py --mode full --tasks a" in block
    assert "0.900 ± 0.010" in block  # vineppo's final score, from the JSON
    assert "did not learn" not in block
    section["summary"][0]["ppo_learned"] = False  # the compare report's flag
    section["analysis"] = summarize_task(section)
    assert "**Token PPO did not learn here**" in render_block(data)


def test_the_reasoning_task_joins_when_benchmarks_reasoning_provides_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import types

    import benchmarks
    from benchmarks.evidence import tasks_of

    module = types.ModuleType("benchmarks.reasoning")
    module.sft_start = lambda seed, out: Path(out) / f"sft-{seed}"  # type: ignore[attr-defined]
    module.rl_task_config = lambda: {  # type: ignore[attr-defined]
        "id": "marlhf/ReasoningGym-v0",
        "kwargs": {"dataset": "chain_sum"},
        "num_envs": 64,
    }
    module.RL = {"agent": {"learning_rate": 3e-4}, "total_timesteps": 1000}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "benchmarks.reasoning", module)
    monkeypatch.setattr(benchmarks, "reasoning", module, raising=False)
    task = tasks_of("full")[-1]
    assert (task.key, task.truth, task.budget, task.num_envs) == ("reasoning", "mc", 1000, 64)
    config = compare_config(task, "full", tmp_path)
    assert config.model.path == str(tmp_path / "sft" / "sft-0")
    assert config.agent.optim.learning_rate == 3e-4 and config.agent.credit.group_size == 4
    assert config.task.num_envs == 64
    monkeypatch.setitem(sys.modules, "benchmarks.reasoning", None)  # as if the file were absent
    assert "reasoning" not in [t.key for t in tasks_of("full")]
