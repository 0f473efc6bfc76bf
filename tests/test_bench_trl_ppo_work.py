"""The work counter of ``benchmarks/trl_ppo_work.py``: tokens, LM-head rows and FLOPs by model and
gradient state, and the table the page renders from its results file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from trl_ppo_work import SIDES, WorkCounter, profile_table, profiled, work_table

from marlhf.models import tiny_gpt2


def _model(seed: int) -> torch.nn.Module:
    return tiny_gpt2(50, n_layer=1, n_embd=16, n_head=2, n_positions=32, seed=seed)


def test_the_counter_splits_tokens_head_rows_and_flops_by_model_and_gradient_state() -> None:
    policy, critic = _model(0), _model(1)
    counter = WorkCounter(vocab=50)
    counter.watch("policy", policy)
    counter.watch("critic", critic)
    ids = torch.randint(0, 50, (3, 7))
    with counter.counting_flops():
        with counter.generation(), torch.no_grad():
            policy(input_ids=ids[:, :4])
        with torch.no_grad():
            critic(input_ids=ids)
        loss = policy(input_ids=ids).logits.sum()
        torch.matmul(torch.ones(2, 3), torch.ones(3, 4))  # outside every model
        loss.backward()
    rows = counter.summary()
    generation = rows["policy/generation"]
    assert generation["tokens"] == 12 and generation["head_rows"] == 12
    assert rows["critic/no_grad"]["tokens"] == 21 and rows["policy/grad"]["tokens"] == 21
    assert rows["backward"]["tokens"] == 0 and rows["backward"]["gflops"] > 0
    assert rows["other"]["gflops"] == 2 * 3 * 4 * 2 / 1e9
    # The same forwards under torch's own counter give the same FLOPs.
    with FlopCounterMode(display=False) as reference, torch.no_grad():
        critic(input_ids=ids)
    assert rows["critic/no_grad"]["gflops"] == reference.get_total_flops() / 1e9
    total = rows["total"]
    assert total["tokens"] == 12 + 21 + 21
    assert total["gflops"] == sum(r["gflops"] for k, r in rows.items() if k != "total")
    # Nothing is counted outside counting_flops.
    with torch.no_grad():
        policy(input_ids=ids)
    assert counter.summary() == rows


def test_the_profile_counts_the_optimizers_ops_apart() -> None:
    p = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.Adam([p])
    store: dict[str, Any] = {}
    with profiled(store):
        (p * 2).sum().backward()
        optimizer.step()
    assert store["optimizer_steps"] == 1
    assert 0 < store["optimizer_aten_calls"] < store["aten_calls"]
    assert 0 < store["optimizer_self_cpu_s"] <= store["self_cpu_s"]
    assert store["top"][0]["share"] >= store["top"][-1]["share"]


def _side(gflops: float) -> dict[str, Any]:
    work = {
        "policy/grad": {"tokens": 10, "head_rows": 4, "gflops": gflops},
        "total": {"tokens": 10, "head_rows": 4, "gflops": gflops},
    }
    return {
        "work": work,
        "profile": {
            "aten_calls": 1234,
            "self_cpu_s": 2.0,
            "optimizer_steps": 8,
            "optimizer_aten_calls": 100,
            "optimizer_self_cpu_s": 0.5,
            "top": [
                {"op": "aten::mm", "calls": 30, "self_cpu_s": 1.0, "share": 0.5},
                {"op": f"aten::op{gflops:.0f}", "calls": 3, "self_cpu_s": 0.2, "share": 0.1},
            ],
        },
        "loadavg": [2.0, 1.0, 1.0],
        "s_per_iter": gflops / 10,
        "gflops_per_s": 10.0,
    }


def test_the_table_gives_each_side_its_counts_and_the_ratios_to_trl() -> None:
    data = {
        "machine": {"commit": "0123456789abcdef+dirty"},
        "setting": {
            "batch": 32,
            "prompt_len": 16,
            "response_length": 32,
            "n_epochs": 4,
            "minibatch": 16,
            "n_layer": 2,
            "n_embd": 128,
            "vocab": 4096,
        },
        "rounds": 3,
        "trl_version": "1.12.0",
        "sides": {"trl": _side(10.0), "marlhf": _side(8.0), "marlhf_shared": _side(5.0)},
        "timing": {
            "ratios": {
                "marlhf": {"median": 0.8, "min": 0.7, "max": 0.9},
                "marlhf_shared": {"median": 0.5, "min": 0.4, "max": 0.6},
            },
            "loadavg": [3.0, 2.0, 1.0],
        },
    }
    table = work_table(data)
    assert all(SIDES[k] in table for k in SIDES)
    assert "| policy, update forwards | 10 / 4 / 10.00 | 10 / 4 / 8.00 | 10 / 4 / 5.00 |" in table
    assert "| FLOPs over TRL's | 1 | 0.80 | 0.50 |" in table
    assert "| seconds over TRL's (per round) | 1 | 0.80 (0.70-0.90) | 0.50 (0.40-0.60) |" in table
    assert "| aten op calls (profile) | 1,234 | 1,234 | 1,234 |" in table
    assert "commit 0123456+dirty" in table and "3.0 after the rounds" in table
    assert "reference (no grad)" not in table  # rows no side has are left out
    assert work_table({"error": "no trl"}) == "Not measured: no trl."


def test_the_profile_table_joins_each_sides_largest_ops() -> None:
    data = {"sides": {"trl": _side(10.0), "marlhf": _side(8.0)}}
    table = profile_table(data)
    assert "| `mm` | 50% (30) | 50% (30) |" in table
    assert "| `op10` | 10% (3) | not in the top |" in table
    assert "| `op8` | not in the top | 10% (3) |" in table
    assert "| aten ops inside the optimizer's steps | 25% (100 in 8 steps) |" in table
    assert "| all aten ops | 100% (1,234) | 100% (1,234) |" in table
