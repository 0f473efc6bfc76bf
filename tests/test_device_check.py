"""benchmarks/device_check.py: the bound formula, the budget guard, a failing part, and the whole
script in its CPU check mode (every part tiny)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import device_check
import device_parts
from device_parts import (
    Budget,
    LongCueChoice,
    Plan,
    bandwidth_bound_tok_s,
    kv_bytes_per_token,
    param_bytes,
    parse_pytest_counts,
)


def test_bandwidth_bound_formula() -> None:
    # a step reads 1000 parameter bytes + 4 rows x 5 tokens x 10 bytes = 1200 bytes; at 2000
    # bytes/s a step takes 0.6 s and yields 4 tokens
    assert bandwidth_bound_tok_s(4, 1000, 10, 5.0, 2000.0) == pytest.approx(4 / 0.6)
    # twice the bandwidth, twice the bound; a longer context lowers it
    assert bandwidth_bound_tok_s(4, 1000, 10, 5.0, 4000.0) == pytest.approx(8 / 0.6)
    assert bandwidth_bound_tok_s(4, 1000, 10, 50.0, 2000.0) < 4 / 0.6


def test_kv_and_param_bytes() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=32, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
        )
    )  # fmt: skip
    # keys and values x 2 layers x 2 KV heads x 16 dims x 4 bytes (float32)
    assert kv_bytes_per_token(llama) == 2 * 2 * 2 * 16 * 4
    assert kv_bytes_per_token(torch.nn.Module.to(llama, torch.bfloat16)) == 2 * 2 * 2 * 16 * 2
    n = sum(p.numel() for p in llama.parameters())
    assert param_bytes(llama) == 2 * n  # bf16 now; the tied head is counted once
    gpt2 = device_parts._tiny(2)
    assert kv_bytes_per_token(gpt2) == 2 * 2 * 4 * 32 * 4  # n_layer, n_head, 128 / 4, float32


def test_one_rank_all_reduce_in_process_on_gloo() -> None:
    import torch.distributed as dist

    result = device_parts.nccl_all_reduce(torch.device("cpu"))
    assert result["backend"] == "gloo" and result["correct"] is True
    assert result["all_reduce_s"] > 0 and "gloo, not NCCL" in result["note"]
    assert not dist.is_initialized()  # destroyed again


def test_parse_pytest_counts() -> None:
    out = "....s\nFAILED x\n3 passed, 1 failed, 2 skipped, 1 error in 4.20s\n"
    assert parse_pytest_counts(out) == {"passed": 3, "failed": 1, "skipped": 2, "errors": 1}
    assert parse_pytest_counts("50 skipped in 1.0s") == {
        "passed": 0, "failed": 0, "skipped": 50, "errors": 0,
    }  # fmt: skip


def test_budget_refuses_what_does_not_fit() -> None:
    budget = Budget(100.0)
    assert budget.refuse(1.0) is None
    reason = budget.refuse(500.0)
    assert reason is not None and "estimated 500 s" in reason and "--budget-s" in reason
    with pytest.raises(ValueError, match="--budget-s=0"):
        Budget(0)


def test_tiny_budget_skips_every_part_with_its_reason(tmp_path: Path) -> None:
    out = tmp_path / "device.json"
    device_check.main(["--device", "cpu", "--quick", "--budget-s", "0.001", "--out", str(out)])
    data = json.loads(out.read_text())
    assert set(data["parts"]) == set(device_parts.PARTS)
    for entry in data["parts"].values():
        assert entry["status"] == "skipped"
        assert "--budget-s" in entry["reason"] and "budget" in entry["reason"]


def test_a_failing_part_records_its_error_and_the_others_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(plan: Plan, budget: Budget) -> dict[str, Any]:
        raise RuntimeError("boom on purpose")

    def fine(plan: Plan, budget: Budget) -> dict[str, Any]:
        return {"value": 1}

    monkeypatch.setitem(device_check.PARTS, "decode", (broken, lambda plan: 0.0))
    monkeypatch.setitem(device_check.PARTS, "agent_vs_bare", (fine, lambda plan: 0.0))
    parts = device_check.run_parts(
        Plan(torch.device("cpu"), quick=True), Budget(60.0), ["decode", "agent_vs_bare"]
    )
    assert parts["decode"]["status"] == "error"
    assert parts["decode"]["error"] == "RuntimeError: boom on purpose"
    assert "boom on purpose" in parts["decode"]["traceback"]
    assert parts["agent_vs_bare"] == {**parts["agent_vs_bare"], "status": "ok",
                                      "result": {"value": 1}}  # fmt: skip


def test_out_defaults_to_the_device_tools_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUT", str(tmp_path))
    assert device_check.default_out() == tmp_path / "device.json"
    device_check.main(["--device", "cpu", "--quick", "--budget-s", "0.001"])
    assert set(json.loads((tmp_path / "device.json").read_text())["parts"]) == set(
        device_parts.PARTS
    )
    monkeypatch.setenv("OUT", str(tmp_path / "missing"))
    assert device_check.default_out() == device_check.RESULTS


def test_each_part_is_saved_as_it_ends() -> None:
    seen: list[list[str]] = []
    device_check.run_parts(
        Plan(torch.device("cpu"), quick=True),
        Budget(0.001),
        ["decode", "cuda_tests"],
        save=lambda parts: seen.append(list(parts)),
    )
    assert seen == [["decode"], ["decode", "cuda_tests"]]


def test_long_cue_prompts_end_with_the_cue_the_reward_reads() -> None:
    import numpy as np

    from marlhf.envs import DelayedChoiceTask

    task = LongCueChoice(horizon=8, prompt_len=32)
    plain = DelayedChoiceTask(horizon=8)
    long, short = (
        task.sample_prompts(np.random.default_rng(3), 6),
        plain.sample_prompts(np.random.default_rng(3), 6),
    )
    assert task.max_prompt_len == 32 and all(len(p.ids) == 32 for p in long)
    assert [p.ids[-1] for p in long] == [p.ids[0] for p in short]  # the same cues, last
    assert [p.metadata for p in long] == [p.metadata for p in short]
    assert task.codec.pad_token_id not in {i for p in long for i in p.ids}
    env = device_parts._env(4, 8, torch.device("cpu"), prompt_len=32)
    obs, _ = env.reset(seed=0)
    assert obs["input_ids"].shape[1] >= 32
    with pytest.raises(ValueError, match="prompt_len=0"):
        LongCueChoice(horizon=8, prompt_len=0)


@pytest.mark.parametrize(
    "argv",
    [
        ["--parts", "decode,nosuch"],
        ["--decode-batches", "0"],
        ["--decode-batches", "a,b"],
        ["--iter-size", "4"],
        ["--rounds", "0"],
        ["--budget-s", "0"],
    ],
)
def test_bad_arguments_are_refused(argv: list[str], tmp_path: Path) -> None:
    with pytest.raises((SystemExit, ValueError)):
        device_check.main(["--device", "cpu", "--quick", "--out", str(tmp_path / "x"), *argv])
    assert not (tmp_path / "x").exists()


def test_a_failing_decode_side_is_dropped_with_its_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real_pair = device_parts.rollout_pair

    def pair(*args: Any, **kwargs: Any) -> Any:
        if kwargs["policy_kwargs"]["decode"] == "compiled":
            raise RuntimeError("no graph today")
        return real_pair(*args, **kwargs)

    def no_generate(*args: Any) -> None:
        raise ValueError("generate broke")

    monkeypatch.setattr(device_parts, "rollout_pair", pair)
    monkeypatch.setattr(device_parts, "hf_generate", no_generate)
    plan = Plan(torch.device("cpu"), quick=True)
    case = device_parts.decode_case(device_parts._tiny(2), 2, 4, 1, plan)
    assert case["errors"] == {
        "compiled": "RuntimeError: no graph today",
        "hf_generate": "ValueError: generate broke",
    }
    assert set(case["tok_s"]) == {"eager", "static", "bare"}
    assert set(case["agent_over_bare"]) == {"eager", "static"} and case["compile_s"] is None


def test_a_failing_decode_batch_size_is_recorded_and_the_next_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def fake_case(model: Any, batch: int, n_new: int, rounds: int, plan: Plan) -> dict[str, Any]:
        if batch == 3:
            raise MemoryError("out of memory at B=3")
        return {"tok_s": {"eager": 10.0}, "kv_bytes_per_token": 8, "mean_context": 4.0}

    monkeypatch.setattr(device_parts, "decode_case", fake_case)
    plan = Plan(torch.device("cpu"), quick=True, decode_batches=[3, 2])
    result = device_parts.decode(plan, Budget(60.0))
    failed, ok = result["cases"]
    assert failed == {"batch": 3, "status": "error", "error": "MemoryError: out of memory at B=3"}
    assert ok["status"] == "ok"
    bound = bandwidth_bound_tok_s(
        2, result["param_bytes"], 8, 4.0, result["copy_bandwidth_gb_s"] * 1e9
    )
    assert ok["bound_tok_s"] == pytest.approx(bound)
    assert ok["fraction_of_bound"]["eager"] == pytest.approx(10.0 / bound)


def test_each_keeps_the_others_when_one_fails() -> None:
    def broken() -> dict[str, Any]:
        raise KeyError("x")

    assert device_parts._each({"a": broken, "b": lambda: {"v": 1}}) == {
        "a": {"error": "KeyError: 'x'"},
        "b": {"v": 1},
    }
    with pytest.raises(RuntimeError, match="every case failed"):
        device_parts._each({"a": broken})


def test_size_overrides_replace_the_defaults() -> None:
    cpu = torch.device("cpu")
    assert device_parts._decode_sizes(Plan(cpu, quick=True)) == ([4], 8, 2)
    assert device_parts._decode_sizes(Plan(cpu)) == ([64, 256], 128, 3)
    plan = Plan(cpu, quick=False, decode_batches=[2], decode_tokens=3, rounds=1)
    assert device_parts._decode_sizes(plan) == ([2], 3, 1)


def test_cuda_tests_part_counts_and_keeps_the_python_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import subprocess

    calls: list[dict[str, Any]] = []

    def fake_run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append({"cmd": cmd, **kwargs})
        return subprocess.CompletedProcess(cmd, returncode, stdout=stdout, stderr="")

    monkeypatch.setattr(device_parts.subprocess, "run", fake_run)
    monkeypatch.setenv("PYTHONPATH", "/tmp/site")
    plan, budget = Plan(torch.device("cpu"), quick=True), Budget(60.0)
    returncode, stdout = 1, "..F\n2 passed, 1 failed in 3.0s\n"
    result = device_parts.cuda_tests(plan, budget)
    assert (result["passed"], result["failed"], result["returncode"]) == (2, 1, 1)
    env_path = calls[0]["env"]["PYTHONPATH"].split(":")
    assert env_path == [str(device_parts.ROOT), "/tmp/site"]  # the carried wheels stay found
    assert calls[0]["cmd"][-1] == "tests/agents/test_cuda.py" and calls[0]["timeout"] <= 60
    returncode, stdout = 4, "ERROR: usage"
    with pytest.raises(RuntimeError, match="pytest exited 4"):
        device_parts.cuda_tests(plan, budget)

    def too_long(cmd: list[str], **kwargs: Any) -> None:
        raise subprocess.TimeoutExpired(cmd, kwargs["timeout"])

    monkeypatch.setattr(device_parts.subprocess, "run", too_long)
    with pytest.raises(TimeoutError, match="left of the budget"):
        device_parts.cuda_tests(plan, budget)


@pytest.mark.slow
def test_cpu_check_mode_runs_every_part(tmp_path: Path) -> None:
    out = tmp_path / "device.json"
    device_check.main(["--device", "cpu", "--quick", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["device"] == "cpu" and data["quick"] is True and data["gpu"] is None
    assert "commit" in data["machine"] and data["torch"] == torch.__version__
    assert set(data["parts"]) == set(device_parts.PARTS)
    for name, entry in data["parts"].items():
        assert entry["status"] == "ok", (name, entry.get("error") or entry.get("reason"))
        assert entry["seconds"] >= 0
    assert data["total_s"] >= sum(e["seconds"] for e in data["parts"].values())

    nccl = data["parts"]["nccl_one_rank"]["result"]
    assert nccl["backend"] == "gloo" and nccl["correct"] is True and "gloo" in nccl["note"]

    dec = data["parts"]["decode"]["result"]
    bandwidth = dec["copy_bandwidth_gb_s"] * 1e9
    assert bandwidth > 0 and dec["param_bytes"] > 0
    (case,) = dec["cases"]
    assert case["status"] == "ok" and case["context"] == device_parts.PROMPT_LEN + 8 <= 512
    assert set(case["tok_s"]) == {"eager", "static", "compiled", "bare", "hf_generate"}
    assert case["errors"] == {} and case["compile_s"] is not None
    bound = bandwidth_bound_tok_s(
        case["batch"], dec["param_bytes"], case["kv_bytes_per_token"], case["mean_context"],
        bandwidth,
    )  # fmt: skip
    assert case["bound_tok_s"] == pytest.approx(bound)
    for side, tok_s in case["tok_s"].items():
        assert tok_s > 0
        assert case["fraction_of_bound"][side] == pytest.approx(tok_s / bound)

    (pair,) = data["parts"]["agent_vs_bare"]["result"]["cases"]
    assert pair["agent_over_bare"]["median"] > 0

    split = data["parts"]["iteration_split"]["result"]["algorithms"]
    assert set(split) == {"PPO", "GRPO"}
    for algo in split.values():
        assert set(algo["seconds"]) == {"collect", "finish_rollout", "train"}
        assert algo["total_s"] == pytest.approx(sum(algo["seconds"].values()))

    tests = data["parts"]["cuda_tests"]["result"]
    if not torch.cuda.is_available():  # every CUDA test skips here, none fails
        assert tests["skipped"] > 0 and tests["failed"] == 0 and tests["passed"] == 0
