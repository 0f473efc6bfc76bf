"""GuessTheNumber at the text level: feedback, rewards, limits, the documented optimum and random
returns (checked against enumeration and simulation), state keys and clones, bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from marlhf.envs.core.registration import available_tasks, env_ids, task_factory
from marlhf.envs.multiturn.protocol import TextEnvError, as_text_env
from marlhf.envs.multiturn.task import check_multiturn_task
from marlhf.envs.multiturn.tasks.guess_number import (
    GuessTheNumberEnv,
    GuessTheNumberTask,
    iid_policy_return,
    optimal_value,
    parse_guess,
)


def play(env: GuessTheNumberEnv, seed: int, policy) -> tuple[float, int, bool, bool]:
    """Run one episode; ``policy(history)`` sees only (guess, feedback) pairs."""
    checked = as_text_env(env)
    checked.reset(seed=seed)
    history: list[tuple[str, str]] = []
    total, turns = 0.0, 0
    while True:
        action = policy(history)
        obs, reward, terminated, truncated, _ = checked.step(action)
        history.append((action, obs))
        total += reward
        turns += 1
        if terminated or truncated:
            return total, turns, terminated, truncated


def bisection(low: int, high: int):
    """Midpoint binary search that reads only the feedback text."""

    def policy(history: list[tuple[str, str]]) -> str:
        lo, hi = low, high
        for guess, feedback in history:
            if feedback == "higher":
                lo = int(guess) + 1
            elif feedback == "lower":
                hi = int(guess) - 1
        return str((lo + hi) // 2)

    return policy


def seed_for_target(env: GuessTheNumberEnv, target: int) -> int:
    for seed in range(10_000):
        env.reset(seed=seed)
        if env.target == target:
            return seed
    raise AssertionError(f"no seed draws {target}")


def test_feedback_rewards_and_termination() -> None:
    env = GuessTheNumberEnv(low=1, high=8, max_turns=4, wrong_cost=0.1)
    obs, info = env.reset(seed=seed_for_target(env, 6))
    assert obs == "Guess a number from 1 to 8."
    assert info == {"low": 1, "high": 8, "max_turns": 4}
    assert env.step("4")[:4] == ("higher", -0.1, False, False)
    assert env.step(" 7\n")[:4] == ("lower", -0.1, False, False)
    obs, reward, terminated, truncated, info = env.step("6")
    assert (obs, reward, terminated, truncated) == ("correct", 1.0, True, False)
    assert info == {"guess": 6, "feedback": "correct", "turn": 3}


def test_invalid_guesses_cost_and_the_turn_limit_truncates() -> None:
    env = GuessTheNumberEnv(low=1, high=8, max_turns=3, wrong_cost=0.25)
    env.reset(seed=seed_for_target(env, 2))
    for text in ("nine", "9", ""):
        obs, reward, terminated, truncated, info = env.step(text)
        assert obs == "invalid" and reward == -0.25 and not terminated
    assert truncated and info["turn"] == 3
    with pytest.raises(TextEnvError, match=r"GuessTheNumber\.step called after the episode"):
        env.step("2")


def test_parse_guess() -> None:
    assert parse_guess(" 12 ") == 12
    assert parse_guess("+3") == 3
    assert parse_guess("3 4") is None
    assert parse_guess("3.0") is None
    assert parse_guess("") is None


def test_targets_are_seeded_and_uniform() -> None:
    env = GuessTheNumberEnv(low=3, high=7)
    draws = []
    for seed in range(2000):
        env.reset(seed=seed)
        draws.append(env.target)
    env.reset(seed=11)
    first = env.target
    env.reset(seed=11)
    assert env.target == first
    counts = np.bincount(draws, minlength=8)[3:8]
    assert counts.sum() == 2000 and counts.min() > 330  # uniform: 400 each, sd ~18


def test_documented_optimum_is_reached_by_bisection_on_every_target() -> None:
    env = GuessTheNumberEnv()
    assert env.optimal_return == pytest.approx(1 - 0.1 * (21 / 8 - 1))  # the module docstring
    returns = [play(env, seed_for_target(env, t), bisection(1, 8))[0] for t in range(1, 9)]
    assert np.mean(returns) == pytest.approx(env.optimal_return)


@pytest.mark.parametrize(("n", "turns", "cost"), [(5, 2, 0.0), (6, 3, 0.2), (7, 3, 0.1)])
def test_optimal_value_matches_brute_force_over_deterministic_strategies(
    n: int, turns: int, cost: float
) -> None:
    def best(cands: tuple[int, ...], k: int) -> float:
        # the best expected return over every adaptive strategy (guesses among all n numbers)
        if not cands or k == 0:
            return 0.0
        out = -np.inf
        for g in range(n):
            value = 0.0
            for side in ([c for c in cands if c < g], [c for c in cands if c > g]):
                if side:
                    value += len(side) / len(cands) * (best(tuple(side), k - 1) - cost)
            value += (g in cands) / len(cands)
            out = max(out, value)
        return out

    assert optimal_value(n, turns, cost) == pytest.approx(best(tuple(range(n)), turns))


def test_the_env_follows_its_optimal_action_to_the_optimum() -> None:
    env = GuessTheNumberEnv(low=1, high=12, max_turns=3, wrong_cost=0.05)
    total = 0.0
    for target in range(1, 13):
        env.reset(seed=seed_for_target(env, target))
        while True:
            _, reward, terminated, truncated, _ = env.step(env.optimal_action())
            total += reward
            if terminated or truncated:
                break
    assert total / 12 == pytest.approx(env.optimal_return)
    assert env.optimal_return < 1.0  # 3 turns cannot always find one of 12


def test_random_guess_return_matches_simulation() -> None:
    env = GuessTheNumberEnv()
    rng = np.random.default_rng(0)
    returns = [play(env, seed, lambda h: str(rng.integers(1, 9)))[0] for seed in range(6000)]
    se = np.std(returns) / np.sqrt(len(returns))
    assert abs(np.mean(returns) - env.random_guess_return) < 3.5 * se
    assert env.random_guess_return == pytest.approx(iid_policy_return(1 / 8, 4, 0.1))


def test_state_key_and_clone() -> None:
    env = GuessTheNumberEnv()
    env.reset(seed=seed_for_target(env, 5))
    start = env.state_key()
    env.step("2")
    assert env.state_key() == (5, 1, 3, 8)
    twin = env.clone()
    assert twin.state_key() == env.state_key()
    assert twin.step("6") == env.step("6")
    twin.step("5")
    assert twin.turns.done and not env.turns.done  # independent copies
    env.reset(seed=seed_for_target(env, 5))
    assert env.state_key() == start


def test_identical_histories_give_identical_keys_and_different_ones_differ() -> None:
    keys = {}
    env = GuessTheNumberEnv()
    seed = seed_for_target(env, 7)
    for first, second in itertools.product("1234", "56"):
        env.reset(seed=seed)
        env.step(first)
        env.step(second)
        keys[(first, second)] = env.state_key()
    assert keys[("1", "5")] == keys[("2", "5")]  # the same knowledge: target in [6, 8]
    assert keys[("1", "5")] != keys[("1", "6")]  # [6, 8] vs [7, 8]
    env.reset(seed=seed)
    env.step("1")
    env.step("5")
    assert env.state_key() == keys[("1", "5")]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"low": 5, "high": 5}, "high"),
        ({"high": 2000}, "high"),
        ({"max_turns": 0}, "max_turns"),
        ({"wrong_cost": -0.5}, "wrong_cost"),
        ({"low": 1.5}, "low"),
    ],
)
def test_bad_arguments_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"GuessTheNumber: {field}=.*valid"):
        GuessTheNumberEnv(**kwargs)


def test_non_string_action_is_an_error() -> None:
    env = GuessTheNumberEnv()
    env.reset(seed=0)
    with pytest.raises(TypeError, match=r"GuessTheNumber\.step: action must be a str"):
        env.step(3)  # type: ignore[arg-type]


# ---- the token-level task ----


def test_task_passes_the_checker_with_one_token_per_number_and_feedback() -> None:
    task = GuessTheNumberTask()
    check_multiturn_task(task)
    env = task.make_env()
    prompt, _ = env.reset(seed=0)
    assert len(task.encode_observation(prompt)) == task.max_prompt_len == 1
    assert task.max_obs_tokens == 1 and task.max_turn_tokens == 2 and task.max_turns == 4
    allowed = np.flatnonzero(task.action_mask()).tolist()
    assert sorted(task.codec.decode([i]) for i in allowed) == ["", *map(str, range(1, 9))]
    assert task.end_of_turn_id in allowed
    assert task.optimal_return == pytest.approx(0.8375)


def uniform_token_episode(task: GuessTheNumberTask, seed: int, rng: np.random.Generator) -> float:
    """One episode of the uniform token policy, turns cut as the driver cuts them."""
    env = task.make_env()
    env.reset(seed=seed)
    allowed = np.flatnonzero(task.action_mask()).tolist()
    total = 0.0
    while True:
        ids: list[int] = []
        while len(ids) < task.max_turn_tokens:
            ids.append(allowed[int(rng.integers(len(allowed)))])
            if ids[-1] == task.end_of_turn_id:
                break
        text = task.decode_action([i for i in ids if i != task.end_of_turn_id])
        _, reward, terminated, truncated, _ = env.step(text)
        total += reward
        if terminated or truncated:
            return total


@pytest.mark.parametrize("kwargs", [{}, {"low": 1, "high": 12, "max_turn_tokens": 3}])
def test_random_return_is_exact_for_the_symbol_codec(kwargs: dict) -> None:
    task = GuessTheNumberTask(**kwargs)
    rng = np.random.default_rng(0)
    returns = [uniform_token_episode(task, seed, rng) for seed in range(6000)]
    se = np.std(returns) / np.sqrt(len(returns))
    assert abs(np.mean(returns) - task.random_return) < 3.5 * se


def test_random_return_by_hand_at_the_defaults() -> None:
    # a turn is 9 equally likely first tokens (8 numbers, <eot>); a number is valid only when
    # <eot> follows: P(valid) = 8/81, P(hit) = 1/81
    p = 1 / 81
    expected = sum((1 - p) ** t * (p - (1 - p) * 0.1) for t in range(4))
    assert GuessTheNumberTask().random_return == pytest.approx(expected)


def test_task_with_a_text_codec(bpe_codec) -> None:
    task = GuessTheNumberTask(codec=bpe_codec)
    check_multiturn_task(task)
    assert task.end_of_turn_id == bpe_codec.eos_token_id and task.action_mask().sum() > 100
    assert -0.4 <= task.random_return < -0.39  # random tokens rarely spell a number


def test_task_is_registered_under_its_name() -> None:
    assert "GuessTheNumber" in available_tasks()
    assert "marlhf/GuessTheNumber-v0" in env_ids()
    task = task_factory("GuessTheNumber")(high=6, max_turns=3)
    assert isinstance(task, GuessTheNumberTask) and task.make_env().high == 6


def test_task_bad_arguments_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"GuessTheNumber: max_turn_tokens=0; valid"):
        GuessTheNumberTask(max_turn_tokens=0)
    with pytest.raises(ValueError, match=r"GuessTheNumber: high=1; valid"):
        GuessTheNumberTask(high=1)
