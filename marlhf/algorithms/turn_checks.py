"""Checks before training: a turn-level estimator needs a multi-turn task, and the env methods
its inputs come from (``state_key()`` for GiGPO's anchor groups, ``gold()`` for potentials).

:func:`check_estimator_task` runs in ``marlhf compare``'s validation (nothing is built yet);
:func:`check_estimator_env` when an algorithm gets its env (``set_env``).
"""

from __future__ import annotations

from typing import Any

from marlhf.credit.estimators import get_estimator
from marlhf.credit.turn_credit import TurnInputError
from marlhf.credit.turn_potentials import FIELDS as POTENTIAL_FIELDS
from marlhf.credit.turn_potentials import has_gold
from marlhf.envs.core.registration import MULTITURN_ENV_ENTRY_POINT, register_envs
from marlhf.envs.multiturn.protocol import env_name, has_state_key


def check_estimator_task(estimator: str, env_id: str) -> None:
    """Before anything is built: a turn-level estimator needs a multi-turn task id.

    :raises TurnInputError: naming the estimator and the task, when ``env_id`` is a registered
        one-turn task (an unregistered id is left to the env builder's own error).
    """
    if "turns" not in get_estimator(estimator).requires:
        return
    import gymnasium

    register_envs()
    entry = gymnasium.registry.get(env_id)
    if entry is not None and entry.vector_entry_point != MULTITURN_ENV_ENTRY_POINT:
        raise TurnInputError(
            f"estimator {estimator!r} is turn-level but task {env_id} has one turn: turn-level "
            "credit is undefined there; use a multi-turn task (marlhf/ToolLookup-v0, "
            "marlhf/GuessTheNumber-v0, ...) or a sequence-level estimator such as grpo"
        )


def check_estimator_env(estimator: str, env: Any) -> None:
    """Before training: the env can give what the estimator declares of the turns.

    :raises TurnInputError: a turn-level estimator on a one-turn env, or ``state_key()``
        missing from the env's text envs; each message names the estimator, the env and what
        is missing. (Monte-Carlo values from turn starts replay the env from its seed and the
        episode's tokens, so they need no ``clone()``; a replay that does not reproduce the
        episode is an error of the env.)
    """
    spec = get_estimator(estimator)
    if "turns" not in spec.requires:
        return
    where = type(env).__name__
    task = getattr(env, "task", None)
    if task is not None:
        where = f"{where} of task {getattr(task, 'name', type(task).__name__)!r}"
    if not callable(getattr(env, "turn_record", None)):
        raise TurnInputError(
            f"estimator {estimator!r} is turn-level but {where} is a one-turn env (no "
            "turn_record()): turn-level credit is undefined with one turn; use a multi-turn "
            "task (marlhf.envs.multiturn) or a sequence-level estimator such as grpo"
        )
    if getattr(env, "max_turns", None) == 1:
        raise TurnInputError(
            f"estimator {estimator!r} is turn-level but {where} has max_turns=1: turn-level "
            "credit is undefined with one turn; raise max_turns or use grpo"
        )
    texts = list(getattr(env, "envs", []))
    if "turn_state_keys" in spec.requires:
        lacking = [env_name(t) for t in texts if not has_state_key(getattr(t, "env", t))]
        if lacking:
            raise TurnInputError(
                f"estimator {estimator!r} needs state_key() from the env, but {where}'s text "
                f"env {lacking[0]} has none; implement state_key() or choose an estimator "
                "that does not need it (mt_grpo_fixed, turn_gae, rebn)"
            )
    if spec.requires & set(POTENTIAL_FIELDS):
        lacking = [env_name(t) for t in texts if not has_gold(t)]
        if lacking:
            raise TurnInputError(
                f"estimator {estimator!r} scores log p(gold | s), but {where}'s text env "
                f"{lacking[0]} has no gold(); implement gold() -> str (the answer the agent "
                "should give) or choose another estimator"
            )
