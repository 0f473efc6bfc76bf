"""CreditSum: documented optimum and random return (checked independently), reward, bad input."""

from __future__ import annotations

import itertools

import gymnasium as gym
import numpy as np
import pytest
import torch

from marlhf.envs import BatchedTokenEnv, Prompt, random_returns, scripted_returns
from marlhf.envs.builtin.credit import CreditSumTask

pytestmark = pytest.mark.usefixtures("one_thread")

CASES = [
    {},
    {"horizon": 8, "num_symbols": 2, "num_decisions": 1},
    {"horizon": 5, "num_symbols": 4, "num_decisions": 4},
]


def _brute_force_random_return(k: int, m: int) -> float:
    span = m * (k - 1)
    scores = [
        1 - abs(sum(ds) - target) / span
        for target in range(span + 1)
        for ds in itertools.product(range(k), repeat=m)
    ]
    return float(np.mean(scores))


@pytest.mark.parametrize("kwargs", CASES)
def test_documented_returns(kwargs) -> None:
    task = CreditSumTask(**kwargs)
    assert task.random_return == pytest.approx(
        _brute_force_random_return(task.num_symbols, task.num_decisions), abs=1e-12
    )
    returns = random_returns(task, episodes=4096, seed=3)
    stderr = returns.std() / np.sqrt(len(returns))
    assert abs(returns.mean() - task.random_return) < 4 * stderr + 1e-3
    optimal = scripted_returns(task, task.optimal_response, episodes=256, seed=1)
    assert optimal.min() == pytest.approx(1.0)
    assert task.random_return < task.optimal_return


def test_defaults_are_documented() -> None:
    task = CreditSumTask()
    assert (task.max_new_tokens, task.num_symbols, task.num_decisions) == (32, 3, 3)
    assert task.decisive_tokens == 3
    assert task.random_return == pytest.approx(2 / 3)
    env = gym.make_vec("marlhf/CreditSum-v0", num_envs=2, vectorization_mode="vector_entry_point")
    assert isinstance(env, BatchedTokenEnv) and env.task.name == "CreditSum"


def test_only_the_leading_tokens_are_scored_and_only_at_the_horizon() -> None:
    task = CreditSumTask(horizon=5, num_symbols=3, num_decisions=2)
    tok = task.codec.tokens.index
    prompts = [Prompt(task.codec.encode("3="), {"target": 3})] * 3
    scripts = torch.tensor(
        [
            [tok("1"), tok("2"), tok("0"), tok("0"), tok("0")],  # sum 3: score 1
            [tok("1"), tok("2"), tok("2"), tok("2"), tok("1")],  # same decisions, other filler
            [tok("0"), tok("0"), tok("2"), tok("2"), tok("2")],  # sum 0: 1 - 3/4
        ]
    )
    env = BatchedTokenEnv(task, num_envs=3)
    env.reset(options={"prompts": prompts})
    rewards = []
    for t in range(5):
        _, r, terminated, truncated, _ = env.step(scripts[:, t])
        rewards.append(r)
    table = torch.stack(rewards, dim=1)
    assert torch.equal(table[:, :4], torch.zeros(3, 4))
    assert table[:, 4].tolist() == [1.0, 1.0, 0.25]
    assert bool(truncated.all()) and not bool(terminated.any())


def test_a_non_digit_decision_scores_zero() -> None:
    task = CreditSumTask(horizon=3, num_symbols=2, num_decisions=2)
    tok = task.codec.tokens.index
    env = BatchedTokenEnv(task, num_envs=1)
    env.reset(options={"prompts": [Prompt(task.codec.encode("0="), {"target": 0})]})
    for t in (tok("="), tok("0"), tok("0")):
        _, r, *_ = env.step(torch.tensor([t]))
    assert float(r[0]) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"num_symbols": 1}, "num_symbols"),
        ({"num_decisions": 0}, "num_decisions"),
        ({"horizon": 2, "num_decisions": 3}, "horizon"),
        ({"num_symbols": 11}, "num_symbols"),
        ({"num_decisions": 9, "horizon": 9}, "num_decisions"),
    ],
)
def test_bad_arguments_are_named(kwargs, field) -> None:
    with pytest.raises(ValueError, match=field):
        CreditSumTask(**kwargs)
