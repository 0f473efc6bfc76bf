"""ToolLookup: its documented optimal and random returns, its state keys and clone."""

from __future__ import annotations

import pytest
import torch

from marlhf.envs.multiturn.env import MultiTurnTokenEnv
from marlhf.envs.multiturn.tool import ToolLookupEnv, ToolLookupTask, tool_random_return


def test_random_return_by_hand_and_by_rollouts() -> None:
    # p = 1/4 call, else answer (right with 1/3): V3 = -0.025 + 0.25; V2, V1 by hand.
    v3 = 0.25 * -0.1 + 0.75 / 3
    v2 = 0.25 * (-0.1 + v3) + 0.75 / 3
    v1 = 0.25 * (-0.1 + v2) + 0.75 / 3
    task = ToolLookupTask()
    assert task.random_return == pytest.approx(v1) == pytest.approx(0.2953125)
    env = MultiTurnTokenEnv(task, num_envs=4000, seed=0)
    env.reset()
    gen = torch.Generator().manual_seed(0)
    while not env.all_done:
        env.step(torch.multinomial(env.action_masks().float(), 1, generator=gen)[:, 0])
    returns = env.episode_return
    stderr = float(returns.std()) / len(returns) ** 0.5
    assert abs(float(returns.mean()) - task.random_return) < 4 * stderr


def test_optimal_return_is_reached_by_calling_once_then_answering() -> None:
    task = ToolLookupTask(n_answers=4, tool_cost=0.25)
    env = MultiTurnTokenEnv(task, num_envs=16, seed=1)
    env.reset()
    *_, info = env.step(torch.full((16,), 2))  # call
    digits = info["forced_ids"][:, 1] - (5 + task.n_answers)  # ids: pad eot call a* q r 0..
    *_, info = env.step(3 + digits)
    assert env.all_done
    assert info["episode_return"].tolist() == [task.optimal_return] * 16 == [0.75] * 16
    assert tool_random_return(4, 0.25, 3) == task.random_return


def test_state_key_and_clone() -> None:
    env = ToolLookupEnv(3, 0.1)
    env.reset(seed=4)
    copy = env.clone()
    assert copy.state_key() == env.state_key()
    assert env.step("call") == copy.step("call")
    assert env.state_key() == copy.state_key() == (env.x, True, 1)
    copy.step("a0")
    assert env.state_key() != copy.state_key()


@pytest.mark.parametrize("kwargs", [{"n_answers": 1}, {"tool_cost": -1.0}, {"max_turns": 0}])
def test_bad_arguments_are_named(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ToolLookupTask(**kwargs)
