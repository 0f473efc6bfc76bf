"""The MultiTurnTask contract: its checker and the episode budget it implies."""

from __future__ import annotations

from typing import Any

import pytest

from marlhf.envs.multiturn.task import MultiTurnTask, check_multiturn_task
from marlhf.tokenization import SymbolCodec


class Echo:
    """Answers every turn with the turn's text; ends after two turns."""

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        self.turn = 0
        return "a", {}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        self.turn += 1
        return action, float(len(action)), self.turn >= 2, False, {}


class EchoTask(MultiTurnTask):
    def __init__(self, **overrides: Any) -> None:
        self.name = "Echo"
        self.codec = SymbolCodec(["a", "b"], eos="<eot>")
        self.end_of_turn_id = 1
        self.max_turns = 3
        self.max_turn_tokens = 4
        self.max_prompt_len = 2
        self.max_obs_tokens = 5
        self.optimal_return = 8.0
        self.random_return = 0.0
        for key, value in overrides.items():
            setattr(self, key, value)

    def make_env(self) -> Echo:
        return Echo()


def test_budget_is_turns_plus_observations_between_them() -> None:
    task = EchoTask()
    check_multiturn_task(task)
    assert task.max_new_tokens == 3 * 4 + 2 * 5
    assert EchoTask(max_episode_tokens=7).max_new_tokens == 7


def test_an_episode_that_never_ends_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"never ends.*max_turns"):
        check_multiturn_task(EchoTask(max_turns=None))
    check_multiturn_task(EchoTask(max_turns=None, max_episode_tokens=9))


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_turns", 0), ("max_turn_tokens", -1), ("end_of_turn_id", 9), ("end_of_turn_id", 0)],
)
def test_bad_fields_are_named(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=rf"'Echo'.*{field}"):
        check_multiturn_task(EchoTask(**{field: value}))


def test_missing_attribute_is_named() -> None:
    task = EchoTask()
    del task.max_obs_tokens
    with pytest.raises(TypeError, match="max_obs_tokens"):
        check_multiturn_task(task)
