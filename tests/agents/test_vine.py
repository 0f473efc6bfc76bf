"""Continuations from segment starts (forked KV caches), greedy baselines, and the estimators
built on them (ReMax, VinePPO-style Monte-Carlo values)."""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import pytest
import torch

from marlhf.algorithms import PPO, CausalLMActorCritic, PPOConfig
from marlhf.credit.vine import choose_branch_points, fork_state
from marlhf.models import tiny_gpt2
from marlhf.options import make_termination


def _left_pad(rows: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    return ids, mask


def test_forked_cache_matches_a_fresh_prefill() -> None:
    torch.manual_seed(0)
    policy = CausalLMActorCritic(tiny_gpt2(40, n_layer=2, n_embd=32, n_head=2), reference=None)
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    window, window_mask = _left_pad(prompts)
    # The env's window starts with columns that are padding in every row (start() drops them).
    window = torch.cat([torch.zeros(3, 2, dtype=torch.long), window], dim=1)
    window_mask = torch.cat([torch.zeros(3, 2, dtype=torch.long), window_mask], dim=1)
    gen = torch.Generator().manual_seed(1)
    response = torch.randint(1, 40, (3, 6), generator=gen)
    state = policy.start(window, window_mask)
    for t in range(5):  # the last sampled token stays pending, as in a rollout
        state = policy.advance(state, response[:, t])
    rows = torch.tensor([0, 0, 1, 2, 2, 1])
    starts = torch.tensor([0, 3, 5, 1, 4, 2])
    forked = fork_state(policy, state, window, window_mask, response, rows, starts)
    for i, (r, t) in enumerate(zip(rows.tolist(), starts.tolist(), strict=True)):
        ids, mask = _left_pad([prompts[r] + response[r, :t].tolist()])
        fresh = policy.start(ids, mask).next_logits[0]
        assert torch.allclose(forked.next_logits[i], fresh, atol=1e-5), (r, t)
    # The rollout's own cache is untouched: continuing it still matches a prefill.
    state = policy.advance(state, response[:, 5])
    ids, mask = _left_pad([prompts[1] + response[1].tolist()])
    assert torch.allclose(state.next_logits[1], policy.start(ids, mask).next_logits[0], atol=1e-5)


def test_a_fork_that_keeps_no_column_matches_a_fresh_prefill() -> None:
    # One-token prompts branched at their start: the fork keeps no cache column at all and
    # feeds the prompt token alone (it once got an empty attention mask there).
    torch.manual_seed(0)
    policy = CausalLMActorCritic(tiny_gpt2(40, n_layer=2, n_embd=32, n_head=2), reference=None)
    window, window_mask = _left_pad([[5], [9]])
    response = torch.tensor([[3, 4, 6], [7, 8, 2]])
    state = policy.start(window, window_mask)
    for t in range(2):
        state = policy.advance(state, response[:, t])
    rows, starts = torch.tensor([0, 1, 1]), torch.tensor([0, 0, 0])
    forked = fork_state(policy, state, window, window_mask, response, rows, starts)
    assert forked.attention_mask.shape == (3, 1)
    for i, r in enumerate(rows.tolist()):
        ids, mask = _left_pad([window[r, -1:].tolist()])
        fresh = policy.start(ids, mask).next_logits[0]
        assert torch.allclose(forked.next_logits[i], fresh, atol=1e-5), r


def test_branch_points_respect_the_budget() -> None:
    mask = torch.arange(10)[None, :] < torch.tensor([[10], [3]])
    starts = mask.clone()
    branch = choose_branch_points(starts, mask, budget=4)
    assert branch.sum(dim=1).tolist() == [4, 3]
    assert bool(branch[:, 0].all()) and int(branch[0].nonzero()[-1]) == 9


def _delayed(num_envs: int = 8, horizon: int = 4) -> Any:
    return gym.make_vec(
        "marlhf/DelayedChoice-v0",
        num_envs=num_envs,
        horizon=horizon,
        num_choices=2,
        vectorization_mode="vector_entry_point",
    )


def test_mc_values_after_the_decision_equal_the_outcome() -> None:
    # DelayedChoice's score depends on the first token only: from any later branch point every
    # continuation scores the row's own outcome, so the Monte-Carlo value must equal it exactly.
    env = _delayed()
    algo = PPO(
        tiny_gpt2(env.codec, n_layer=1, n_embd=32, n_head=2),
        env,
        preset=["toy", "vineppo"],
        batch_size=4,
        mc_rollouts=2,
        mc_max_starts=4,
        mask_actions=True,
        seed=0,
        device="cpu",
    )
    algo.learn(8 * 4)
    buf = algo.rollout_buffer
    assert buf is not None
    values = buf.mc_values
    assert values is not None
    outcome = buf.task_rewards.sum(dim=1)
    later = torch.isfinite(values) & (torch.arange(4)[None, :] >= 1)
    assert int(later.sum()) > 0
    assert torch.equal(values[later], outcome[:, None].expand_as(values)[later])
    first = values[:, 0]
    assert bool(((first >= 0) & (first <= 1)).all())  # a mean of 0/1 scores
    # Compute accounting: 8 rows x 4 branch points x 2 continuations, each up to 4 tokens.
    assert algo.mc_tokens == algo.rollout_stats["rollout/mc_tokens"] > 0
    assert algo.num_timesteps == 8 * 4 + algo.mc_tokens


@pytest.mark.parametrize("preset", ["remax", "vineppo", "spo-chain"])
def test_baseline_presets_train(preset: str) -> None:
    env = _delayed(num_envs=8, horizon=4)
    extra: dict[str, Any] = {"mc_rollouts": 2} if preset != "remax" else {}
    algo = PPO(
        tiny_gpt2(env.codec, n_layer=1, n_embd=32, n_head=2),
        env,
        preset=["toy", preset],
        batch_size=4,
        mask_actions=True,
        seed=0,
        device="cpu",
        **extra,
    )
    algo.learn(8 * 4 * 3)
    assert math.isfinite(algo.rollout_stats["rollout/score_mean"])
    assert algo.mc_tokens > 0 and algo.rollout_buffer is not None
    assert not algo.rollout_buffer.has_values  # no critic anywhere


def test_mc_bad_input() -> None:
    with pytest.raises(ValueError, match=r"mc_max_starts=0 must be an int >= 1"):
        PPOConfig(estimator="mc", kl_coef=0.0, mc_max_starts=0)
    with pytest.raises(ValueError, match=r"use kl_in='loss' or kl_coef=0"):
        PPOConfig(estimator="mc")
    with pytest.raises(ValueError, match=r"lowprob: p=0 must be a probability"):
        make_termination("lowprob:p=0")
