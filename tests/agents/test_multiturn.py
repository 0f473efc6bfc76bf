"""Agents on multi-turn envs: forced tokens in the KV cache, the buffer's two layouts, losses
that never read env tokens, every estimator, and the one-turn case of single-turn rollouts."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from marlhf import MAPPO, PPO
from marlhf.credit import estimators
from marlhf.credit.estimators import (
    Estimate,
    EstimatorBatch,
    available_estimators,
    get_estimator,
    register_estimator,
)
from marlhf.envs.core.batched import BatchedTokenEnv
from marlhf.envs.core.tasks import Prompt, RewardBatch, RewardFunction, Task
from marlhf.envs.multiturn import MultiTurnTask
from marlhf.envs.multiturn.env import MultiTurnTokenEnv
from marlhf.envs.multiturn.tool import ToolLookupTask
from marlhf.policy.actor_critic import CausalLMActorCritic
from marlhf.tokenization import SymbolCodec
from tests.agents.conftest import CueEnv, tiny_llama_for, tiny_model


def _algo(cls: Any = PPO, num_envs: int = 8, **kw: Any) -> Any:
    task = ToolLookupTask()
    env = MultiTurnTokenEnv(task, num_envs=num_envs, seed=0)
    kw = {"batch_size": num_envs, "n_epochs": 1, "mask_actions": True, **kw}
    return cls(tiny_model(task.codec), env, seed=0, **kw)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_forced_tokens_enter_the_cache_in_one_forward_as_a_full_forward_sees_them(
    arch: str,
) -> None:
    codec = ToolLookupTask().codec
    model = tiny_model(codec) if arch == "gpt2" else tiny_llama_for(codec)
    policy = CausalLMActorCritic(model, reference=None)
    prompt = torch.tensor([[0, 6], [6, 6], [0, 6]])
    state = policy.start(prompt, (prompt != 0).long())
    actions = torch.tensor([2, 3, 2])
    forced = torch.tensor([[7, 9, 0], [0, 0, 0], [7, 8, 8]])
    lengths = torch.tensor([2, 0, 3])
    calls = 0
    inner = policy.model.forward

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return inner(*args, **kwargs)

    policy.model.forward = counting
    state = policy.advance(state, actions, forced, lengths)
    state = policy.advance(state, torch.tensor([4, 4, 4]))  # and on, one token at a time
    assert calls == 2
    policy.model.forward = inner
    for row in range(3):
        seq = [t for t in prompt[row].tolist() if t] + [int(actions[row])]
        seq += [*forced[row, : lengths[row]].tolist(), 4]
        with torch.no_grad():
            full = policy.model(input_ids=torch.tensor([seq])).logits[0, -1, : policy.vocab_size]
        torch.testing.assert_close(state.next_logits[row], full.float(), atol=1e-5, rtol=1e-5)
        assert int(state.next_position[row]) == len(seq)


def test_collect_keeps_the_episode_and_builds_the_action_layout() -> None:
    algo = _algo(num_envs=8)
    algo.learn(8)  # one rollout
    buf, env = algo.rollout_buffer, algo.env
    record = env.turn_record()
    # Token in, token out: the buffer holds the env's episode exactly (agent and env tokens).
    assert torch.equal(buf.response_ids * buf.response_mask, env.response_ids * env.response_mask)
    assert torch.equal(buf.response_mask, env.response_mask)
    assert torch.equal(buf.is_action, record.is_action)
    turns = buf.turns
    for row in range(8):
        cols = record.is_action[row].nonzero().flatten()
        n = len(cols)
        assert buf.credit_mask[row].tolist() == [True] * n + [False] * (7 - n)
        assert buf.action_index[row, :n].tolist() == cols.tolist()
        assert buf.action_ids[row, :n].tolist() == env.response_ids[row, cols].tolist()
        # Each turn is one token here: a turn start per action, the turn's reward on it.
        k = int(record.num_turns[row])
        assert n == k and turns.turn_starts[row, :n].all()
        assert turns.turn_ids[row, :n].tolist() == list(range(k))
        assert buf.task_rewards[row, :n].tolist() == record.turn_rewards[row, :k].tolist()
    assert torch.equal(turns.terminated, record.terminated)
    assert torch.equal(turns.truncated, record.truncated)


def test_the_loss_never_reads_env_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    algo = _algo(num_envs=8, estimator="gae")
    evaluate = algo.policy.evaluate_actions

    def poisoned(input_ids: torch.Tensor, attention_mask: torch.Tensor, *a: Any, **k: Any) -> Any:
        logp, entropy, values = evaluate(input_ids, attention_mask, *a, **k)
        forced = (attention_mask[:, -logp.shape[1] :] > 0) & ~_action_positions(input_ids)
        nan = torch.full_like(logp, float("nan"))
        values = None if values is None else torch.where(forced, nan, values)
        entropy = None if entropy is None else torch.where(forced, nan, entropy)
        return torch.where(forced, nan, logp), entropy, values

    def _action_positions(ids: torch.Tensor) -> torch.Tensor:
        return ids[:, -7:] <= 5  # ToolLookup: call/a* are actions, q/r/digits never are

    monkeypatch.setattr(algo.policy, "evaluate_actions", poisoned)
    algo.learn(16)
    assert algo.rollout_buffer.is_action.sum() < algo.rollout_buffer.response_mask.sum()
    for key in ("train/policy_loss", "train/value_loss", "train/entropy", "train/approx_kl"):
        assert torch.isfinite(torch.tensor(algo.train_stats[key])), key


@pytest.mark.parametrize("estimator", available_estimators())
def test_every_estimator_trains_on_a_multiturn_task(estimator: str) -> None:
    spec = get_estimator(estimator)
    kw: dict[str, Any] = {"estimator": estimator}
    if spec.needs_groups:
        kw["group_size"] = 4
    if "mc_values" in spec.requires:
        kw.update(mc_rollouts=2, kl_coef=0.0)
    algo = _algo(**kw)  # potentials score ToolLookup's gold() answer
    before = [p.detach().clone() for p in algo.policy.parameters()]
    algo.learn(16)
    buf = algo.rollout_buffer
    assert torch.isfinite(buf.advantages).all()
    assert (buf.advantages[~buf.credit_mask] == 0).all()
    moved = any(
        not torch.equal(a, b) for a, b in zip(before, algo.policy.parameters(), strict=True)
    )
    assert moved, estimator


def test_mappo_macros_never_cross_a_turn() -> None:
    algo = _algo(MAPPO, termination="turn > ngram:3")
    algo.learn(8)
    buf = algo.rollout_buffer
    assert torch.equal(buf.starts, buf.turns.turn_starts)  # one-token turns: one macro each


def test_an_estimator_declaring_turns_receives_them(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[EstimatorBatch] = []
    monkeypatch.setattr(estimators, "_REGISTRY", dict(estimators._REGISTRY))  # (undone after)

    @register_estimator("_test_turns", requires=("turns", "turn_state_keys"))
    def reads_turns(batch: EstimatorBatch, config: Any) -> Estimate:
        """Records its batch."""
        seen.append(batch)
        return Estimate(advantages=torch.zeros_like(batch.rewards))

    algo = _algo(estimator="_test_turns")
    algo.learn(8)
    batch, buf = seen[-1], algo.rollout_buffer
    assert batch.num_turns is not None and batch.terminated is not None
    assert batch.action_mask is batch.mask and torch.equal(batch.mask, buf.credit_mask)
    assert batch.turn_starts is not None and batch.turn_rewards is not None
    assert torch.equal(batch.turn_starts, buf.turns.turn_starts)
    assert torch.equal(batch.turn_rewards, buf.turns.turn_rewards)
    assert batch.turn_state_keys == buf.turns.turn_state_keys
    assert batch.num_turns.tolist() == buf.turns.num_turns.tolist()


def test_a_single_turn_rollout_is_one_turn() -> None:
    algo = PPO(tiny_model(CueEnv().codec), CueEnv(), seed=0)
    algo.learn(16)
    buf = algo.rollout_buffer
    assert buf is not None
    one = buf.turn_data(algo.env.codec.eos_token_id)
    lengths = buf.response_mask.sum(1)
    assert buf.turns is None and buf.credit_mask is buf.response_mask
    assert one.num_turns.tolist() == (lengths > 0).long().tolist()
    assert torch.equal(one.turn_ids, torch.where(buf.response_mask, 0, -1))
    assert one.turn_starts.sum(1).tolist() == (lengths > 0).long().tolist()
    assert torch.equal(one.turn_rewards[:, 0], buf.task_rewards.sum(1))
    ended_on_eos = buf.response_ids.gather(1, (lengths - 1)[:, None])[:, 0] == 1
    assert torch.equal(one.terminated, ended_on_eos)
    assert torch.equal(one.truncated, ~ended_on_eos)


@pytest.mark.slow
def test_ppo_learns_to_call_the_tool_then_answer() -> None:
    algo = _algo(num_envs=16, n_epochs=2, learning_rate=3e-3, estimator="gae")
    algo.learn(16 * 7 * 30)  # about 100 rollouts (about 2 agent tokens per episode)
    returns = algo.rollout_buffer.turns.turn_rewards.sum(1)
    task = algo.env.task
    assert float(returns.mean()) > task.random_return + 0.35  # optimum 0.9, random 0.295


class _CountB:
    """One turn: the prompt "a", the reward the number of "b" tokens in the answer."""

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        return "a", {}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        return "", float(action.count("b")), True, False, {}


class _OneTurnTask(MultiTurnTask):
    def __init__(self) -> None:
        self.name, self.codec = "CountBTurn", SymbolCodec(["a", "b"], eos="<eos>")
        self.end_of_turn_id, self.max_turns, self.max_turn_tokens = 1, 1, 5
        self.max_prompt_len, self.max_obs_tokens = 1, 1
        self.optimal_return, self.random_return = 5.0, 0.0

    def make_env(self) -> _CountB:
        return _CountB()


class _CountBReward(RewardFunction):
    mode = "terminal"

    def __call__(self, batch: RewardBatch) -> torch.Tensor:
        return torch.tensor([float(t.count("b")) for t in batch.response_texts()])


class _SingleTurnTask(Task):
    def __init__(self) -> None:
        self.name, self.codec = "CountB", SymbolCodec(["a", "b"], eos="<eos>")
        self.max_prompt_len, self.max_new_tokens = 1, 5
        self.reward_fn = _CountBReward()
        self.optimal_return, self.random_return = 5.0, 0.0

    def sample_prompts(self, rng: Any, n: int) -> list[Prompt]:
        return [Prompt(ids=[2], text="a") for _ in range(n)]


@pytest.mark.parametrize(("cls", "kw"), [(PPO, {}), (MAPPO, {"termination": "turn > ngram:2"})])
def test_a_one_turn_multiturn_task_trains_bitwise_as_its_single_turn_twin(
    cls: Any, kw: dict[str, Any]
) -> None:
    """The multi-turn path (forced-token bookkeeping, action layout, turn data) reduces exactly
    to the single-turn one when an episode is one turn."""
    results = []
    for env in (
        BatchedTokenEnv(_SingleTurnTask(), num_envs=8, seed=0),
        MultiTurnTokenEnv(_OneTurnTask(), num_envs=8, seed=0),
    ):
        algo = cls(tiny_model(env.codec), env, seed=0, batch_size=4, n_epochs=2, **kw)
        algo.learn(8 * 5 * 3)
        buf = algo.rollout_buffer
        results.append((list(algo.policy.parameters()), buf.advantages, buf.logprobs, buf.starts))
    (p_single, *single), (p_multi, *multi) = results
    assert all(torch.equal(a, b) for a, b in zip(single, multi, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(p_single, p_multi, strict=True))
