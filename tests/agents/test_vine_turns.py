"""Monte-Carlo continuations from the turn starts of a multi-turn rollout fork its KV cache
(per-row gaps and all) instead of re-prefilling the prefix: same logits at the branch points as
a prefill, same continuation tokens and values as the replay-and-prefill path, and every
continuation token counted."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from marlhf.algorithms import PPO
from marlhf.credit.vine import choose_branch_points, fork_turn_state, monte_carlo_values
from marlhf.envs.multiturn.env import MultiTurnTokenEnv
from marlhf.envs.multiturn.tasks.guess_number import GuessTheNumberTask
from marlhf.envs.multiturn.tool import ToolLookupTask
from marlhf.policy import static_decode
from tests.agents.conftest import tiny_llama_for, tiny_model

MC_ROLLOUTS = 2


def _task(name: str) -> Any:
    # GuessTheNumber: agent turns of 1 to 3 tokens, one forced token that only some rows get at
    # a step; ToolLookup: forced answers of 2 tokens, some rows none (gaps in the cache).
    if name == "guess":
        return GuessTheNumberTask(max_turn_tokens=3)
    return ToolLookupTask()


def _agent(task_name: str, decode: str = "eager", llama: bool = False) -> PPO:
    task = _task(task_name)
    env = MultiTurnTokenEnv(task, num_envs=8, seed=0)
    model = tiny_llama_for(task.codec) if llama else tiny_model(task.codec)
    return PPO(
        model,
        env,
        preset=["toy", "vineppo-turns"],
        group_size=2,
        mc_rollouts=MC_ROLLOUTS,
        mc_max_starts=8,
        batch_size=8,
        mask_actions=True,
        seed=0,
        device="cpu",
        policy_kwargs={"decode": decode},
    )


def _rollout(algo: PPO) -> tuple[Any, Any, list[int]]:
    """One collected, segmented rollout (turn starts in ``buf.starts``): its buffer, the KV
    cache at its end and the forced widths of its steps."""
    assert algo.collector.collect()
    algo.segment()
    buf = algo.rollout_buffer
    assert buf is not None and buf.action_index is not None and algo.collector.cache is not None
    return buf, algo.collector.cache, list(algo.collector.step_widths)


def _ragged(buf: Any, widths: list[int], state: Any) -> None:
    """The rollout must exercise what makes the multi-turn cache hard to fork: turns of several
    lengths or forced tokens of several, and gaps (steps where some rows got forced tokens and
    others fewer, the rest of their block masked)."""
    ids = buf.turns.turn_ids
    lengths = {
        int((ids[b] == k).sum()) for b in range(ids.shape[0]) for k in ids[b][ids[b] >= 0].unique()
    }
    assert len(lengths) > 1 or max(widths) > 1
    prompt = state.attention_mask.shape[1] - sum(1 + w for w in widths[:-1])
    assert bool((state.attention_mask[:, prompt:] == 0).any())
    assert int(buf.turns.turn_starts.sum()) > buf.num_envs  # turn starts past the first


@pytest.mark.parametrize(
    ("task_name", "decode", "llama"),
    [("guess", "eager", False), ("tool", "eager", False), ("guess", "static", True)],
)
def test_forked_turn_state_matches_a_fresh_prefill(
    task_name: str, decode: str, llama: bool
) -> None:
    algo = _agent(task_name, decode, llama)
    buf, state, widths = _rollout(algo)
    assert static_decode.is_static(state.cache) == (decode == "static")  # the cache forked
    _ragged(buf, widths, state)
    # Every action, not only the turn starts: a branch inside a turn follows an action whose
    # step's block is wider than the row's tokens there (others got forced tokens), which is
    # where a fork that took the block's end for the prefix's end would go wrong.
    rows, cols = torch.nonzero(buf.credit_mask, as_tuple=True)
    later = cols > 0
    real = buf.action_index[rows, cols] - buf.action_index[rows, (cols - 1).clamp(min=0)]
    block = 1 + torch.tensor(widths)[(cols - 1).clamp(min=0)]
    if task_name == "guess":  # (ToolLookup's turns are one token: every action a turn start)
        assert bool((later & (real < block)).any())
    window, window_mask = buf.prompt_ids, buf.prompt_mask
    forked = fork_turn_state(
        algo.policy,
        state,
        window,
        window_mask,
        buf.response_ids,
        buf.action_index,
        widths,
        rows,
        cols,
    )
    prefix = buf.action_index[rows, cols]
    for i, (r, n) in enumerate(zip(rows.tolist(), prefix.tolist(), strict=True)):
        prompt = window[r][window_mask[r].bool()].tolist()
        ids = torch.tensor([prompt + buf.response_ids[r, :n].tolist()])
        fresh = algo.policy.start(ids, torch.ones_like(ids)).next_logits[0]
        assert torch.allclose(forked.next_logits[i], fresh, atol=1e-5), (r, n)


def test_a_layout_from_another_rollout_is_refused() -> None:
    algo = _agent("tool")
    buf, state, _ = _rollout(algo)
    rows, cols = torch.nonzero(buf.turns.turn_starts, as_tuple=True)
    args = (state, buf.prompt_ids, buf.prompt_mask, buf.response_ids)
    with pytest.raises(ValueError, match=r"the cache holds \d+ columns.*step_widths"):
        fork_turn_state(algo.policy, *args, buf.action_index, [0, 0], rows, cols)


@pytest.mark.parametrize("task_name", ["guess", "tool"])
def test_forked_and_replayed_continuations_agree(task_name: str) -> None:
    algo = _agent(task_name)
    buf, state, widths = _rollout(algo)
    # Training branches at the turn starts (and the turn ends' last tokens); every action here,
    # so that branches inside turns, after gaps in the cache, are continued too.
    turn_branches = choose_branch_points(
        buf.starts, buf.credit_mask, algo.config.credit.mc.mc_max_starts
    )
    assert bool(turn_branches[buf.turns.turn_starts].all())
    branch = buf.credit_mask
    feeds: list[int] = []  # the columns of every forward the policy's model runs

    def record(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        feeds.append(int(kwargs["input_ids"].shape[1]))

    hook = algo.policy.model.register_forward_pre_hook(record, with_kwargs=True)
    results: dict[str, tuple[torch.Tensor, int, list[int]]] = {}
    try:
        for path, step_widths in (("forked", widths), ("replayed", None)):
            feeds.clear()
            values, tokens = monte_carlo_values(
                algo.policy,
                algo.env,
                state,
                algo.collector.prompts or [],
                buf.prompt_ids,
                buf.prompt_mask,
                buf.response_ids,
                branch,
                MC_ROLLOUTS,
                sampling=algo.collector.sampling(),
                generator=torch.Generator().manual_seed(7),
                action_mask=buf.action_mask,
                device=torch.device("cpu"),
                prefix_lengths=buf.action_index,
                step_widths=step_widths,
            )
            results[path] = (values, tokens, list(feeds))
    finally:
        hook.remove()
    (fork_values, fork_tokens, fork_feeds) = results["forked"]
    (replay_values, replay_tokens, replay_feeds) = results["replayed"]
    assert fork_tokens == replay_tokens > 0
    assert torch.equal(torch.isnan(fork_values), ~branch)
    assert torch.allclose(fork_values[branch], replay_values[branch], atol=1e-6)
    # The forked path never prefills: a forward feeds one token, or one with the env's forced
    # tokens; the replayed path prefills the prompt window and the prefix for every chunk.
    assert max(fork_feeds) <= 1 + max(widths) < max(replay_feeds)
    assert sum(fork_feeds) < sum(replay_feeds)


def test_every_continuation_token_is_counted() -> None:
    algo = _agent("guess")
    algo.learn(8)  # one iteration
    buf = algo.rollout_buffer
    assert buf is not None and buf.credit_mask is not None
    mc = algo.rollout_stats["rollout/mc_tokens"]
    assert mc > 0 and algo.mc_tokens == mc
    assert algo.num_timesteps == int(buf.credit_mask.sum()) + mc
    assert algo.collector.cache is None  # released after the continuations
