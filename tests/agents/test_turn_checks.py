"""Checks before training: turn-level estimators on one-turn envs, and env methods missing."""

from __future__ import annotations

from typing import Any

import pytest

from marlhf.algorithms.turn_checks import check_estimator_env, check_estimator_task
from marlhf.credit.turn_credit import TurnInputError


class _TextEnv:
    name = "Plain"

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        return "q", {}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        return "", 0.0, True, False, {}


class _KeyedEnv(_TextEnv):
    name = "Keyed"

    def state_key(self) -> int:
        return 0

    def clone(self) -> _KeyedEnv:
        return self


class _MultiTurnEnv:
    """What the checks read of the batched multi-turn env: turn_record, max_turns, envs."""

    def __init__(self, envs: list[Any], max_turns: int = 3) -> None:
        from marlhf.envs.multiturn.protocol import as_text_env

        self.envs = [as_text_env(e) for e in envs]
        self.max_turns = max_turns

    def turn_record(self) -> None:
        return None


def test_env_checks_name_the_estimator_the_env_and_what_is_missing() -> None:
    single = object()
    with pytest.raises(
        TurnInputError, match=r"estimator 'gigpo' is turn-level but object is a one-turn env"
    ):
        check_estimator_env("gigpo", single)
    check_estimator_env("grpo", single)  # a sequence-level estimator needs nothing
    with pytest.raises(TurnInputError, match=r"'rebn' is turn-level .* max_turns=1"):
        check_estimator_env("rebn", _MultiTurnEnv([_KeyedEnv()], max_turns=1))
    plain = _MultiTurnEnv([_KeyedEnv(), _TextEnv()])
    with pytest.raises(
        TurnInputError, match=r"'gigpo' needs state_key\(\) from the env, but .* Plain has none"
    ):
        check_estimator_env("gigpo", plain)
    with pytest.raises(TurnInputError, match=r"'grpo \+ 0.5 \* gigpo_step' needs state_key\(\)"):
        check_estimator_env("grpo + 0.5 * gigpo_step", plain)
    check_estimator_env("turn_mc", plain)  # continuations replay the env: no clone() needed
    check_estimator_env("mt_grpo_fixed", plain)  # needs turns only
    with pytest.raises(
        TurnInputError, match=r"'turn_potential' scores log p\(gold \| s\), .*Keyed has no gold\(\)"
    ):
        check_estimator_env("turn_potential", plain)
    keyed = _MultiTurnEnv([_KeyedEnv(), _KeyedEnv()])
    for name in ("gigpo", "turn_mc", "turn_gae"):
        check_estimator_env(name, keyed)


def test_task_check_needs_a_multiturn_id() -> None:
    with pytest.raises(TurnInputError, match=r"'mt_grpo' is turn-level but task marlhf/Reverse-v0"):
        check_estimator_task("mt_grpo", "marlhf/Reverse-v0")
    check_estimator_task("mt_grpo", "marlhf/ToolLookup-v0")
    check_estimator_task("grpo", "marlhf/Reverse-v0")
