"""benchmarks/turn_compare.py and its doc renderer: the audited schemes, the generated verdict,
the rendered block."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import turn_compare as tc
from benchmarks import turn_compare_doc as doc


def test_every_agent_but_vineppo_is_audited_with_its_own_estimator() -> None:
    schemes = tc.audit_schemes(4)
    assert set(schemes) == {"ppo", *tc.AGENTS} - {"vineppo-turns"}
    spec, config, by_turn = schemes["ma-ppo@turn"]
    assert spec == "gae" and by_turn and config.credit.group_size == 4
    assert schemes["ppo"][0] == "gae" and not schemes["ppo"][2]
    assert "kind=mean_prob" in schemes["igpo"][0]
    assert "source=reference" in schemes["trace"][0]
    assert "gamma_turn=0.99" in schemes["verlog"][0]


def test_best_overlapping_names_the_agents_whose_interval_reaches_the_best() -> None:
    rows = [("a", 0.5, 0.1), ("b", 0.45, 0.02), ("c", 0.2, 0.1), ("d", 0.36, 0.05)]
    assert doc.best_overlapping(rows) == ("a", ["b", "d"])
    assert doc.best_overlapping([("a", 1.0, 0.0), ("b", 0.0, 0.5)]) == ("a", [])


def _scheme(corr: float | None) -> dict[str, Any]:
    turn = {"corr": corr, "sign_agreement": 1.0, "n": 8}
    return {"per_turn": [turn], "overall": {"corr": corr}}


def _data() -> dict[str, Any]:
    summary = [
        {
            "agent": agent,
            "seeds": 2,
            "final_score": score,
            "final_score_ci95": 0.05,
            "mean_score": score / 2,
            "mean_score_ci95": 0.01,
            "tokens_to_ppo_final": 100.0 if agent == "ppo" else None,
            "seeds_reaching_ppo_final": 1,
        }
        for agent, score in (("ppo", 0.5), ("gigpo", 0.8), ("rebn", 0.78))
    ]
    snap = {
        "tokens": 0,
        "episodes": 64,
        "score_mean": 0.1,
        "turns_mean": 2.0,
        "schemes": {"ppo": _scheme(0.9), "gigpo": _scheme(0.2), "rebn": _scheme(None)},
    }
    load = {"loadavg_before": [1.0, 2.0, 3.0], "loadavg_after": [2.0, 2.0, 2.0]}
    return {
        "mode": "quick",
        "machine": {"commit": "abc", "cores": 2},
        "tasks": {
            "guess": {
                "env_id": "marlhf/GuessTheNumber-v0",
                "kwargs": {"high": 4},
                "learning": {"seeds": [0, 1], "budget": 1024, "wall_s": 60.0, "summary": summary}
                | load,
                "audit": {"agent": "turn-gae", "seed": 0, "wall_s": 60, "snapshots": [snap]} | load,
                "cost": {
                    "rounds": 2,
                    "agents": {
                        "ppo": {"s_per_iteration": 1.0, "iteration_vs_ppo": 1.0, "token_vs_ppo": 1},
                        "igpo": {
                            "s_per_iteration": 2.5,
                            "iteration_vs_ppo": 2.5,
                            "token_vs_ppo": 2,
                        },
                    },
                }
                | load,
            }
        },
    }


def test_block_renders_tables_verdict_and_loads() -> None:
    block = doc.render_block(_data())
    assert block.startswith(doc.BEGIN) and block.endswith(doc.END)
    assert "### marlhf/GuessTheNumber-v0 (high=4)" in block
    assert (
        "- closest to the truth (correlation over all turns, mean over snapshots): ppo (0.900)"
        in block
    )
    assert "- highest final: gigpo; not separable from it at 95% (1 of 2): rebn." in block
    assert (
        "- highest mean score over the run: gigpo; not separable from it at 95% (1 of 2): rebn."
        in block
    )
    assert "| ppo | 0.500 ± 0.050 | 0.250 ± 0.010 | 100 | 1/2 |" in block
    assert "| igpo | 2.50 | 2.50x | 2.00x |" in block
    assert "load average 1.0, 2.0, 3.0 before, 2.0, 2.0, 2.0 after" in block
    assert "| rebn | n/a / 1.000 | n/a |" in block  # an undefined correlation stays visible
    assert "- closest per turn index: turn 0: ppo (0.900)." in block


def test_a_part_measured_apart_names_its_own_commit_and_date() -> None:
    data = _data()
    cost = data["tasks"]["guess"]["cost"]
    cost["machine"] = {"commit": "0" * 40, "date_utc": "2026-12-07 11:30:00 UTC"}
    block = doc.render_block(data)
    header = next(line for line in block.splitlines() if line.startswith("**Cost**"))
    assert "measured apart at commit" in header and "2026-12-07 11:30:00 UTC" in header
    learning = next(line for line in block.splitlines() if line.startswith("**Learning**"))
    assert "measured apart" not in learning


def test_audit_overall_skips_undefined_correlations() -> None:
    audit = _data()["tasks"]["guess"]["audit"]
    audit["snapshots"].append({**audit["snapshots"][0], "schemes": {"ppo": _scheme(0.5)}})
    assert doc.audit_overall(audit) == pytest.approx({"ppo": 0.7, "gigpo": 0.2})
    assert doc.audit_per_turn(audit) == [pytest.approx({"ppo": 0.7, "gigpo": 0.2})]


def test_the_doc_holds_the_block_markers() -> None:
    text = (doc.DOCS_DIR / "credit_multiturn.md").read_text(encoding="utf-8")
    assert text.count(doc.BEGIN) == 1 and text.count(doc.END) == 1


@pytest.mark.slow
def test_audit_and_cost_run_on_the_multi_token_task(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(tc.MODES, "quick", {**tc.MODES["quick"], "audit_at": [0.0]})
    monkeypatch.setattr(tc, "AUDIT_ROLLOUTS", 1)
    monkeypatch.setattr(tc, "AGENTS", ["ma-ppo@turn", "igpo", "vineppo-turns"])
    audit = tc.run_audit("guess", "quick")
    schemes = audit["snapshots"][0]["schemes"]
    assert set(schemes) == {"ppo", "ma-ppo@turn", "igpo"}
    assert all(len(s["per_turn"]) >= 1 for s in schemes.values())
    monkeypatch.setitem(tc.MODES, "quick", {**tc.MODES["quick"], "cost_rounds": 1})
    cost = tc.run_costs("guess", "quick")
    assert cost["agents"]["ppo"]["iteration_vs_ppo"] == 1.0
    assert set(cost["agents"]) == {"ppo", "ma-ppo@turn", "igpo", "vineppo-turns"}
