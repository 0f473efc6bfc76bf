"""FSDP (``fsdp=True``) on 2 gloo ranks against one unsharded process with every row.

The rollouts are replayed as in ``test_data_parallel.py`` (whose helpers these are): the
question here is whether sharding the update changes it. It must not: the ranks' gradients are
summed shard by shard, the norm is clipped over the shards, and each rank steps its shards.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

from marlhf.algorithms import MAPPO, PPO, CausalLMActorCritic
from tests.agents.conftest import CueEnv, tiny_llama_for, tiny_model
from tests.agents.ranks import run_ranks
from tests.agents.test_data_parallel import (
    B,
    N,
    _algo,
    _configs,
    _failures,
    _params,
    _rollout,
    _update,
    check_failures,
)


def _llama(codec: Any) -> Any:
    """A 2-block Llama with tied embeddings (as SmolLM2's)."""
    return tiny_llama_for(codec, tie_word_embeddings=True, pad_token_id=codec.pad_token_id)


def _gpt2(codec: Any) -> Any:
    return tiny_model(codec, n_layer=2, seed=0)


#: Every estimator, then the memory savers, micro-batches, a separate critic and a copied
#: reference on a 2-block Llama under FSDP: ``(kind, settings)``, settings built per process
#: (a model is not sent between processes).
CASES: dict[str, tuple[str, Callable[[], dict[str, Any]]]] = {
    **{kind: (kind, dict) for kind in _configs()},
    # Whole minibatches: two rows a rank, so two chunks each (minibatches of 2 put one row on
    # each rank, and a micro-batch of 1 would split nothing).
    "ppo+micro-batch 1": (
        "ppo",
        lambda: {"micro_batch_size": 1, "batch_size": None, "lm": _gpt2},
    ),
    # Minibatches of one episode over two ranks: the rank without it has fewer chunks and
    # makes an idle forward and backward (weight 0), so that the sharded collectives match.
    "ppo+micro-batch 1, uneven minibatches": (
        "ppo",
        lambda: {"micro_batch_size": 1, "batch_size": 1, "lm": _gpt2},
    ),
    "ppo+checkpointing": (
        "ppo",
        lambda: {"lm": _gpt2, "policy_kwargs": {"gradient_checkpointing": True}},
    ),
    "ppo+lora": ("ppo", lambda: {"lm": _gpt2, "policy_kwargs": {"lora": {"r": 4}}}),
    "ppo+llama": ("ppo", lambda: {"lm": _llama}),
    "ppo+fused optimizer": ("ppo", lambda: {"lm": _gpt2, "fused_optimizer": True}),
    "ppo+separate critic": (
        "ppo",
        lambda: {"lm": _gpt2, "policy_kwargs": {"critic": _gpt2(CueEnv().codec)}},
    ),
}


def _sharded_updates(rank: int, world_size: int, rollouts: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for case, (kind, settings) in CASES.items():
        torch.manual_seed(0)  # LoRA draws its A matrices from the global stream
        algo = _update(kind, rollouts[kind], rank, world_size, train=False, fsdp=True, **settings())
        idle, idle_chunk = [0], algo.updater._idle_chunk

        def counted(buf: Any, _idle_chunk: Any = idle_chunk, _idle: list[int] = idle) -> None:
            _idle[0] += 1
            _idle_chunk(buf)

        algo.updater._idle_chunk = counted
        algo.train()
        moments = [
            v for slot in algo.optimizer.state.values() for k, v in slot.items() if k == "exp_avg"
        ]
        out[case] = {
            "params": _params(algo),
            "stats": dict(algo.train_stats),
            # How much of the Adam moments this rank holds, and of how much in all.
            "held": sum(v.to_local().numel() for v in moments),
            "whole": sum(v.numel() for v in moments),
            "idle_chunks": idle[0],
        }
    return out


@pytest.mark.slow  # two processes (gloo ranks), each building and training a model
def test_fsdp_on_two_ranks_updates_like_one_unsharded_process() -> None:
    rollouts = {kind: _rollout(kind) for kind in _configs()}
    results = run_ranks(_sharded_updates, 2, rollouts)
    for case, (kind, settings) in CASES.items():
        torch.manual_seed(0)
        one = _update(kind, rollouts[kind], 0, 1, **settings())
        want = _params(one)
        torch.manual_seed(0)
        start = _params(_algo(kind, B, **settings()))
        moved = max(float((want[n] - start[n]).abs().max()) for n in want)
        assert moved > 1e-3, case  # the update did something to compare
        for rank, got in enumerate(results):
            assert set(got[case]["params"]) == set(want), case
            for name, value in want.items():
                torch.testing.assert_close(
                    got[case]["params"][name], value, atol=1e-6, rtol=0, msg=f"{case} {name}"
                )
            for key in ("train/policy_loss", "train/approx_kl", "train/clip_fraction"):
                assert got[case]["stats"][key] == pytest.approx(one.train_stats[key], abs=1e-5), (
                    case,
                    rank,
                    key,
                )
        idle = sum(got[case]["idle_chunks"] for got in results)
        assert (idle > 0) == case.endswith("uneven minibatches"), (case, idle)
        # Each rank held about half of the optimizer state (the shards of odd-sized rows
        # differ by a row): the training state was sharded, not replicated.
        held = [got[case]["held"] for got in results]
        whole = results[0][case]["whole"]
        assert sum(held) == whole, case
        assert max(held) <= 0.55 * whole, (case, held, whole)


@pytest.mark.slow  # two processes (gloo ranks), each building and training a model
def test_fsdp_stops_every_rank_together_on_a_nan_or_target_kl() -> None:
    data = _rollout("ppo")
    check_failures(run_ranks(_failures, 2, data, {"fsdp": True}), data)


def _resume(rank: int, world_size: int, folder: str) -> dict[str, Any]:
    path = Path(folder) / "ckpt"
    algo = _algo("mappo", 2, fsdp=True)
    algo.learn(2 * B * N)
    algo.save(path)
    saved = _params(algo)
    algo.learn(2 * B * N, reset_num_timesteps=False)
    straight = _params(algo)
    again = MAPPO.load(path, env=CueEnv(num_envs=2, max_new_tokens=N), device="cpu")
    assert again.policy.fsdp is not None
    again.learn(2 * B * N, reset_num_timesteps=False)
    return {"saved": saved, "straight": straight, "resumed": _params(again)}


@pytest.mark.slow  # two processes (gloo ranks), each building and training a model
def test_fsdp_checkpoint_holds_whole_weights_and_resumes_exactly(tmp_path: Path) -> None:
    results = run_ranks(_resume, 2, str(tmp_path))
    for got in results:
        for name, value in got["straight"].items():
            torch.testing.assert_close(got["resumed"][name], value, atol=1e-6, rtol=0, msg=name)
    for name, value in results[0]["straight"].items():
        torch.testing.assert_close(results[1]["straight"][name], value, atol=0, rtol=0)
    # The weights on disk are whole: one process loads them, and plain transformers loads the
    # policy's LM, equal to what the ranks held at the save.
    weights = tmp_path / "ckpt_weights"
    policy = CausalLMActorCritic.from_pretrained(weights)
    loaded = {n: p for n, p in policy.named_parameters() if p.requires_grad}
    assert set(loaded) == set(results[0]["saved"])
    for name, value in results[0]["saved"].items():
        torch.testing.assert_close(loaded[name], value, atol=0, rtol=0, msg=name)
    plain = transformers.AutoModelForCausalLM.from_pretrained(str(weights / "policy"))
    for name, value in plain.named_parameters():
        torch.testing.assert_close(value, loaded[f"model.{name}"], atol=0, rtol=0, msg=name)


def test_fsdp_without_a_process_group_is_a_clear_error() -> None:
    env = CueEnv(num_envs=2, max_new_tokens=N)
    with pytest.raises(ValueError, match=r"fsdp=True needs torch.distributed: launch with torch"):
        PPO(_algo("ppo", 2).policy.model, env, fsdp=True)


def _saving(rank: int, world_size: int, folder: str) -> dict[str, Any]:
    from torch.distributed.tensor import DTensor

    out: dict[str, Any] = {}
    # LoRA: rank 0 alone writes the merged model (no collective: the weights are gathered).
    torch.manual_seed(0)
    lora = _algo(
        "ppo", 2, lm=_gpt2, fsdp=True, policy_kwargs={"lora": {"r": 4}}, learning_rate=0.05
    )
    lora.learn(2 * B * N)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        out["logits"] = lora.policy.model(input_ids=ids).logits
    if rank == 0:
        lora.policy.save_merged(Path(folder) / "merged")
    # A copied reference stays sharded between updates, and saving it alone is refused.
    algo = _algo("ppo", 2, lm=_gpt2, fsdp=True)
    algo.learn(2 * B * N)
    out["reference sharded"] = all(
        isinstance(p, DTensor) for p in algo.policy.ref_model.parameters()
    )
    out["policy whole"] = not any(isinstance(p, DTensor) for p in algo.policy.model.parameters())
    try:
        algo.policy.save_pretrained(Path(folder) / f"alone{rank}")
    except RuntimeError as exc:
        out["refused"] = str(exc)
    try:  # one policy, two sharded algorithms
        PPO(algo.policy, algo.env, fsdp=True)
    except ValueError as exc:
        out["twice"] = str(exc)
    return out


@pytest.mark.slow  # two processes (gloo ranks), each building and training a model
def test_fsdp_merged_export_and_a_sharded_reference(tmp_path: Path) -> None:
    results = run_ranks(_saving, 2, str(tmp_path))
    merged = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))
    with torch.no_grad():
        logits = merged(input_ids=torch.tensor([[1, 2, 3, 4]])).logits
    torch.testing.assert_close(logits, results[0]["logits"], atol=1e-5, rtol=0)
    for got in results:
        assert got["reference sharded"] and got["policy whole"]
        assert "the reference model is sharded; save with the algorithm's save()" in got["refused"]
        assert "this policy is already sharded by another algorithm" in got["twice"]


def _ragged_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """4 rows, prompts left-padded to 8 columns, 4 response columns. Rows 0-1 (rank 0's) are
    of very different lengths (two length groups), rows 2-3 (rank 1's) alike (one)."""
    codec = CueEnv().codec
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, codec.vocab_size, (4, 12), generator=g)
    prompt_lengths = [8, 2, 7, 7]
    mask = torch.ones(4, 12, dtype=torch.long)
    for row, length in enumerate(prompt_lengths):
        mask[row, : 8 - length] = 0
        ids[row, : 8 - length] = codec.pad_token_id
    return ids, mask, torch.ones(4, 4, dtype=torch.bool)


def _ragged_policy() -> CausalLMActorCritic:
    torch.manual_seed(0)
    policy = CausalLMActorCritic(_gpt2(CueEnv().codec), reference="copy")
    torch.nn.init.normal_(policy.value_head.weight, std=0.1)
    return policy


def _ragged_grads(policy: CausalLMActorCritic, rows: slice) -> dict[str, Any]:
    ids, mask, response = (t[rows] for t in _ragged_batch())
    logp, _, values = policy.evaluate_actions(ids, mask, response)
    (logp.sum() + values.sum()).backward()
    ref = policy.reference_logprobs(ids, mask, response)
    return {"logp": logp.detach(), "values": values.detach(), "ref": ref}


def _ragged_on_ranks(rank: int, world_size: int) -> dict[str, Any]:
    from marlhf.parallel.fsdp import shard_policy, whole
    from marlhf.policy.lm_utils import length_groups

    policy = _ragged_policy()
    state = shard_policy(policy, torch.device("cpu"))  # sharded, as in an update
    rows = slice(2 * rank, 2 * rank + 2)
    out = _ragged_grads(policy, rows)
    out["groups"] = len(length_groups(_ragged_batch()[1][rows]))
    out["grads"] = {n: whole(p.grad) for n, p in policy.named_parameters() if p.grad is not None}
    assert not state.gathered
    return out


@pytest.mark.slow  # two processes (gloo ranks), each building and training a model
def test_fsdp_pads_length_groups_so_ranks_with_different_counts_agree() -> None:
    """Rank 0's rows form two length groups and rank 1's one: rank 1 runs a padding group, and
    the ranks' outputs and summed gradients are one process's on all four rows."""
    results = run_ranks(_ragged_on_ranks, 2)
    assert [got["groups"] for got in results] == [2, 1]
    policy = _ragged_policy()
    want = _ragged_grads(policy, slice(0, 4))
    for key in ("logp", "values", "ref"):
        got = torch.cat([r[key] for r in results])
        torch.testing.assert_close(got, want[key], atol=1e-6, rtol=0, msg=key)
    grads = {n: p.grad for n, p in policy.named_parameters() if p.grad is not None}
    assert set(results[0]["grads"]) == set(grads)
    for name, value in grads.items():
        torch.testing.assert_close(results[0]["grads"][name], value, atol=1e-5, rtol=1e-5, msg=name)
