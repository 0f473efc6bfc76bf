"""reasoning-gym with retry turns at the text level: feedback, score-difference rewards, limits,
the optimum by a scripted policy, state keys and clones, the one-turn case, bad input."""

from __future__ import annotations

import pytest

from marlhf.envs.builtin.reasoning import ReasoningGymTask
from marlhf.envs.multiturn.protocol import TextEnvError, as_text_env
from marlhf.envs.multiturn.task import check_multiturn_task
from marlhf.envs.multiturn.tasks.reasoning_retry import (
    DEFAULT_FEEDBACK,
    ReasoningRetryEnv,
    ReasoningRetryTask,
)
from tests.extras import NEEDS_REASONING_GYM

pytestmark = NEEDS_REASONING_GYM


@pytest.fixture(scope="module")
def task(bpe_codec) -> ReasoningRetryTask:
    return ReasoningRetryTask(size=20, codec=bpe_codec)


def solution(task: ReasoningRetryTask, env: ReasoningRetryEnv) -> str:
    return task.source.solution(task.source.prompt(env.index))


def test_task_passes_the_checker_and_uses_the_single_turn_questions(task) -> None:
    check_multiturn_task(task)
    env = task.make_env()
    prompt, info = env.reset(seed=3)
    assert prompt == task.source.prompt(info["index"]).text
    assert len(task.encode_observation(prompt)) <= task.max_prompt_len
    assert len(task.encode_observation(DEFAULT_FEEDBACK)) <= task.max_obs_tokens
    assert (task.max_turns, task.optimal_return, task.random_return) == (3, 1.0, 0.0)


def test_wrong_answers_get_feedback_then_the_right_one_ends_it(task) -> None:
    env = as_text_env(task.make_env())
    env.reset(seed=3)
    right = solution(task, env.env)
    assert env.step("nonsense")[:4] == (DEFAULT_FEEDBACK, 0.0, False, False)
    obs, reward, terminated, truncated, info = env.step(right)
    assert (obs, reward, terminated, truncated) == ("Correct.", 1.0, True, False)
    assert info == {"score": 1.0, "turn": 2}
    with pytest.raises(TextEnvError, match="called after the episode ended"):
        env.step(right)


def test_optimum_reached_by_answering_right_first_with_gold(task) -> None:
    env = task.make_env()
    returns = []
    for seed in range(10):
        env.reset(seed=seed)
        assert env.gold() == solution(task, env)
        returns.append(env.step(env.gold())[1])
    assert returns == [task.optimal_return] * 10


def test_turn_limit_truncates_and_retry_cost_is_charged(task) -> None:
    env = ReasoningRetryEnv(task.source, max_turns=2, retry_cost=0.25)
    env.reset(seed=0)
    assert env.step("x")[1:4] == (-0.25, False, False)
    assert env.step("y")[1:4] == (-0.25, False, True)


def test_rewards_are_score_differences_with_partial_credit() -> None:
    # fraction_simplification's verifier gives 0.01 to any text and 0.05 to a wrong fraction
    source = ReasoningGymTask(dataset="fraction_simplification", size=10)
    env = ReasoningRetryEnv(source, max_turns=3)
    env.reset(seed=0)
    right = source.solution(source.prompt(env.index))
    scores, rewards = [], []
    for answer in ("cat", "1/2", right):
        _, reward, terminated, _, info = env.step(answer)
        scores.append(info["score"])
        rewards.append(reward)
    assert terminated and 0 < scores[0] < scores[1] < scores[2] == 1.0
    assert rewards == pytest.approx([scores[0], scores[1] - scores[0], 1.0 - scores[1]])
    assert sum(rewards) == pytest.approx(1.0)  # the return is the last answer's score


def test_one_turn_is_the_single_turn_task(task) -> None:
    env = ReasoningRetryEnv(task.source, max_turns=1)
    rewards = []
    for seed, answer in [(0, "12"), (1, "-3"), (2, ""), (3, None)]:
        env.reset(seed=seed)
        answer = solution(task, env) if answer is None else answer  # (the last one is right)
        _, reward, terminated, truncated, _ = env.step(answer)
        assert reward == task.source.reward_fn.score(answer, env.entry)
        assert terminated or truncated
        rewards.append(reward)
    assert rewards[-1] == 1.0
    # Partial credit passes through as the single-turn task's score (not only 0 or 1).
    source = ReasoningGymTask(dataset="fraction_simplification", size=10)
    env = ReasoningRetryEnv(source, max_turns=1)
    env.reset(seed=0)
    _, reward, _, truncated, _ = env.step("cat")
    assert reward == source.reward_fn.score("cat", env.entry) > 0 and truncated


def test_state_key_and_clone(task) -> None:
    env = task.make_env()
    env.reset(seed=4)
    env.step("wrong")
    twin = env.clone()
    assert twin.state_key() == env.state_key() == (env.index, 1, 0.0)
    right = solution(task, env)
    assert twin.step(right) == env.step(right)
    assert twin.source is env.source  # the questions are shared, not copied
    # With partial credit the score so far is part of the state, and the clone keeps it (a
    # fresh env's score is 0, so the wrong answer above could not show that).
    source = ReasoningGymTask(dataset="fraction_simplification", size=10)
    env = ReasoningRetryEnv(source, max_turns=3)
    env.reset(seed=0)
    env.step("cat")
    twin = env.clone()
    assert twin.state_key() == env.state_key() == (env.index, 1, env.score) and env.score > 0
    right = source.solution(source.prompt(env.index))
    assert twin.step(right) == env.step(right)
    assert env.score == 1.0


def test_bad_input(task) -> None:
    with pytest.raises(ValueError, match=r"max_turns=0; valid"):
        ReasoningRetryEnv(task.source, max_turns=0)
    with pytest.raises(ValueError, match=r"feedback=''; valid"):
        ReasoningRetryEnv(task.source, feedback="")
    with pytest.raises(ValueError, match=r"retry_cost=2; valid"):
        ReasoningRetryEnv(task.source, retry_cost=2)
    with pytest.raises(TypeError, match="source must be a ReasoningGymTask"):
        ReasoningRetryEnv(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dataset='nope' is not a reasoning-gym dataset"):
        ReasoningRetryTask(dataset="nope")
    env = task.make_env()
    env.reset(seed=0)
    with pytest.raises(TypeError, match=r"step: action must be a str"):
        env.step(None)
