"""MultiTurnTokenEnv: forced observations, the turn record, replay and bad input."""

from __future__ import annotations

import math
from typing import Any

import gymnasium
import pytest
import torch

from marlhf.envs.multiturn import TextEnvError
from marlhf.envs.multiturn.env import MultiTurnTokenEnv
from marlhf.envs.multiturn.tool import ToolLookupTask
from tests.envs.multiturn.test_task import EchoTask

CALL, A0, A1, A2 = 2, 3, 4, 5  # ToolLookup's codec: call, a0, a1, a2
R = 7  # the tool's answer "r<x>" is [R, digit]


def _tool_env(num_envs: int = 4, seed: int = 0) -> MultiTurnTokenEnv:
    return MultiTurnTokenEnv(ToolLookupTask(), num_envs=num_envs, seed=seed)


def _hidden(env: MultiTurnTokenEnv) -> list[int]:
    return [e.env.x for e in env.envs]


def test_make_vec_builds_the_multiturn_env() -> None:
    env = gymnasium.make_vec(
        "marlhf/ToolLookup-v0", num_envs=2, vectorization_mode="vector_entry_point", seed=1
    )
    assert isinstance(env, MultiTurnTokenEnv) and env.max_new_tokens == 3 + 2 * 2


def test_forced_tokens_follow_the_action_in_the_same_step() -> None:
    env = _tool_env()
    obs, info = env.reset(seed=3)
    assert obs["input_ids"][:, -1].tolist() == [6] * 4  # "q", right-aligned
    x = _hidden(env)
    # Row 0 calls then answers right; row 1 answers at once; rows 2, 3 call three times.
    _, r, term, trunc, info = env.step(torch.tensor([CALL, A0 + x[1], CALL, CALL]))
    assert info["forced_lengths"].tolist() == [2, 0, 2, 2]
    assert info["forced_ids"][0].tolist() == [R, 8 + x[0]]
    assert r.tolist() == pytest.approx([-0.1, 1.0, -0.1, -0.1])
    assert term.tolist() == [False, True, False, False] and not trunc.any()
    # The window shows call, r, x after the prompt: three new columns for one step.
    assert obs_tail(env, 0, 4) == [6, CALL, R, 8 + x[0]]
    _, r, term, trunc, info = env.step(torch.tensor([A0 + x[0], 0, CALL, CALL]))
    assert r.tolist() == pytest.approx([1.0, 0.0, -0.1, -0.1])
    assert term.tolist() == [True, False, False, False]
    _, r, term, trunc, info = env.step(torch.tensor([0, 0, CALL, A0]))
    assert trunc.tolist() == [False, False, True, False]  # max_turns: truncated, not terminated
    assert term.tolist() == [False, False, False, True]
    assert env.all_done and "episode_return" in info
    record = env.turn_record()
    assert record.num_turns.tolist() == [2, 1, 3, 3]
    assert record.terminated.tolist() == [True, True, False, True]
    assert record.truncated.tolist() == [False, False, True, False]
    assert record.is_action[0].tolist() == [True, False, False, True, False, False, False]
    assert record.turn_ids[0].tolist() == [0, 0, 0, 1, -1, -1, -1]
    assert record.turn_rewards[0].tolist() == pytest.approx([-0.1, 1.0, 0.0])
    assert record.turn_state_keys is not None
    assert record.turn_state_keys[0] == [(x[0], False, 0), (x[0], True, 1)]
    assert env.episode_return.tolist() == pytest.approx(record.turn_rewards.sum(1).tolist())


def obs_tail(env: MultiTurnTokenEnv, row: int, n: int) -> list[int]:
    return env._obs()["input_ids"][row, -n:].tolist()


def test_turns_end_at_the_end_of_turn_token_or_the_turn_limit() -> None:
    env = MultiTurnTokenEnv(EchoTask(max_turn_tokens=3), num_envs=2, seed=0)
    env.reset()
    a, b, eot = 2, 3, 1
    env.step(torch.tensor([a, a]))
    _, r, *_, info = env.step(torch.tensor([eot, b]))
    # Row 0 ended its turn with EOT: the env echoes "a" (its text, EOT removed).
    assert r.tolist() == [1.0, 0.0] and info["forced_lengths"].tolist() == [1, 0]
    _, r, *_, info = env.step(torch.tensor([b, a]))
    assert r.tolist() == [0.0, 3.0]  # row 1 hit max_turn_tokens=3 with "aba"
    assert info["forced_ids"][1].tolist() == [a, b, a]


def test_seeded_resets_and_replayed_prompts_agree() -> None:
    env = _tool_env(num_envs=4)
    _, info = env.reset(seed=5, options={"group_size": 2})
    assert info["group_ids"].tolist() == [0, 0, 1, 1]
    x = _hidden(env)
    assert x[0] == x[1] and x[2] == x[3]
    _, again = env.reset(options={"prompts": info["prompts"][::2], "group_size": 2})
    assert _hidden(env) == x and again["prompts"] == info["prompts"]


def test_prefix_reset_replays_the_episode_and_checks_the_env_tokens() -> None:
    env = _tool_env(num_envs=2)
    _, info = env.reset(seed=2)
    x = _hidden(env)
    env.step(torch.tensor([CALL, CALL]))
    prefix = env.response_ids[:, :3].clone()  # call, r, x
    env2 = _tool_env(num_envs=2)
    env2.reset(options={"prompts": info["prompts"], "prefixes": prefix})
    assert env2.lengths.tolist() == [3, 3] and env2.turn_index.tolist() == [1, 1]
    _, r, term, *_ = env2.step(torch.tensor([A0 + x[0], A0 + (x[1] + 1) % 3]))
    assert r.tolist() == [1.0, 0.0] and term.all()
    assert env2.episode_return.tolist() == [1.0, 0.0]  # paid from the restart on
    bad = prefix.clone()
    bad[0, 2] = 8 + (x[0] + 1) % 3  # an env token the env would not say
    with pytest.raises(TextEnvError, match="not deterministic"):
        env2.reset(options={"prompts": info["prompts"], "prefixes": bad})
    with pytest.raises(ValueError, match="inside an observation"):
        env2.reset(options={"prompts": info["prompts"], "prefixes": prefix[:, :2]})


class Broken:
    """An env whose ``step`` returns ``self.result``."""

    name = "BrokenEnv"

    def __init__(self, result: Any, first: str = "a") -> None:
        self.result, self.first = result, first

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        return self.first, {}

    def step(self, action: str) -> Any:
        return self.result


class BrokenTask(EchoTask):
    def __init__(self, result: Any, first: str = "a", **kw: Any) -> None:
        super().__init__(**kw)
        self.result, self.first = result, first

    def make_env(self) -> Any:
        return Broken(self.result, self.first)


@pytest.mark.parametrize(
    ("result", "match"),
    [
        ((7, 0.0, False, False, {}), "BrokenEnv.step.*observation of type int"),
        (("a", math.nan, False, False, {}), "BrokenEnv.step returned reward nan"),
        (("a", math.inf, True, False, {}), "BrokenEnv.step returned reward inf"),
        (("aaaaaaaa", 0.0, False, False, {}), "BrokenEnv.step.*8 tokens.*max_obs_tokens=5"),
    ],
)
def test_bad_env_output_is_named(result: Any, match: str) -> None:
    env = MultiTurnTokenEnv(BrokenTask(result), num_envs=2)
    env.reset(seed=0)
    with pytest.raises(TextEnvError, match=match):
        env.step(torch.tensor([1, 1]))
    with pytest.raises(RuntimeError, match="reset"):  # a failed step forces a reset
        env.step(torch.tensor([1, 1]))


def test_first_observation_longer_than_the_prompt_is_named() -> None:
    env = MultiTurnTokenEnv(BrokenTask(None, first="aaa"), num_envs=1)
    with pytest.raises(TextEnvError, match=r"BrokenEnv.reset.*3 tokens.*max_prompt_len=2"):
        env.reset(seed=0)


def test_an_env_that_never_ends_is_cut_by_the_token_limit() -> None:
    task = BrokenTask(("a", 0.0, False, False, {}), max_turns=None, max_episode_tokens=5)
    env = MultiTurnTokenEnv(task, num_envs=1)
    env.reset(seed=0)
    steps = 0
    while not env.all_done:
        env.step(torch.tensor([1]))
        steps += 1
    assert env.truncated.tolist() == [True] and not env.terminated.any()
    assert int(env.lengths[0]) <= 5 and steps == 3  # (eot, "a") twice, then no room: eot


def test_registry_builds_multiturn_tasks_but_the_single_turn_env_refuses_them() -> None:
    from marlhf.envs.core.batched import BatchedTokenEnv
    from marlhf.envs.core.registration import make_task
    from marlhf.runs.builders import make_any_task

    assert isinstance(make_any_task("marlhf/ToolLookup-v0", tool_cost=0.2), ToolLookupTask)
    with pytest.raises(TypeError, match=r"multi-turn task.*MultiTurnTokenEnv"):
        make_task("ToolLookup")
    with pytest.raises(TypeError, match="multi-turn task"):
        BatchedTokenEnv("ToolLookup")
    with pytest.raises(TypeError, match="not a multi-turn task"):
        MultiTurnTokenEnv("DelayedChoice")
