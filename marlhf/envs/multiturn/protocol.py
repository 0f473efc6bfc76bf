"""The text-level multi-turn environment protocol (see ``docs/multiturn.md``).

A multi-turn environment speaks text, Gym-style, one *turn* per ``step``:

- ``reset(seed) -> (observation: str, info: dict)``: the first observation (the prompt).
- ``step(action: str) -> (observation: str, reward: float, terminated: bool, truncated: bool,
  info: dict)``: the agent's whole turn in, the environment's answer out.

Optional:

- ``state_key() -> Hashable``: a key of the environment's state, equal for identical states
  (GiGPO's anchor groups).
- ``clone() -> TextEnv``: an independent copy at the current state (Monte-Carlo values from
  turn starts).

GEM's environments (``gem.make(...)``) have this shape already, so they plug in unchanged;
:func:`as_text_env` checks any object's shape and wraps it with the errors below. The token-level
driver lives beside this module; this module knows nothing about tokens.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class TextEnv(Protocol):
    """What a multi-turn environment implements (``state_key``/``clone`` are optional)."""

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]: ...

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]: ...


class TextEnvError(ValueError):
    """A multi-turn environment broke the protocol (the message names the env and the field)."""


def env_name(env: object) -> str:
    """A short name for error messages: the env's ``name`` attribute, else its class name."""
    name = getattr(env, "name", None)
    return name if isinstance(name, str) and name else type(env).__name__


def has_state_key(env: object) -> bool:
    return callable(getattr(env, "state_key", None))


def has_clone(env: object) -> bool:
    return callable(getattr(env, "clone", None))


def check_observation(env: object, observation: object, where: str) -> str:
    if not isinstance(observation, str):
        raise TextEnvError(
            f"{env_name(env)}.{where} returned an observation of type "
            f"{type(observation).__name__}; a multi-turn env's observation must be a str"
        )
    return observation


def check_step_result(env: object, result: object) -> tuple[str, float, bool, bool, dict[str, Any]]:
    """Validate one ``step`` result: a 5-tuple, str observation, finite reward, bool flags."""
    if not isinstance(result, tuple) or len(result) != 5:
        raise TextEnvError(
            f"{env_name(env)}.step must return (observation, reward, terminated, truncated, info);"
            f" got {type(result).__name__}"
            + (f" of length {len(result)}" if isinstance(result, tuple) else "")
        )
    observation, reward, terminated, truncated, info = result
    check_observation(env, observation, "step")
    try:
        value = float(reward)
    except (TypeError, ValueError):
        raise TextEnvError(
            f"{env_name(env)}.step returned reward {reward!r}; it must be a finite number"
        ) from None
    if not math.isfinite(value):
        raise TextEnvError(f"{env_name(env)}.step returned reward {value}; it must be finite")
    return observation, value, bool(terminated), bool(truncated), dict(info or {})


def check_reset_result(env: object, result: object) -> tuple[str, dict[str, Any]]:
    if not isinstance(result, tuple) or len(result) != 2:
        raise TextEnvError(
            f"{env_name(env)}.reset must return (observation, info); got {type(result).__name__}"
        )
    observation, info = result
    check_observation(env, observation, "reset")
    return observation, dict(info or {})


class CheckedTextEnv:
    """Any object with the protocol's shape, its results validated on every call.

    ``state_key`` and ``clone`` are forwarded when the wrapped env has them; asking for one the
    env lacks is a :class:`TextEnvError` naming the env and the method (estimators that need
    them check :attr:`can_state_key` / :attr:`can_clone` first).
    """

    def __init__(self, env: Any):
        for method in ("reset", "step"):
            if not callable(getattr(env, method, None)):
                raise TextEnvError(
                    f"{env_name(env)} has no {method}(); a multi-turn env needs reset(seed) and "
                    "step(action: str)"
                )
        self.env = env
        self.name = env_name(env)

    @property
    def can_state_key(self) -> bool:
        return has_state_key(self.env)

    @property
    def can_clone(self) -> bool:
        return has_clone(self.env)

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        return check_reset_result(self.env, self.env.reset(seed=seed))

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        return check_step_result(self.env, self.env.step(action))

    def state_key(self) -> Hashable:
        if not self.can_state_key:
            raise TextEnvError(f"{self.name} has no state_key(); this estimator needs it")
        key: Hashable = self.env.state_key()
        return key

    def clone(self) -> CheckedTextEnv:
        if not self.can_clone:
            raise TextEnvError(f"{self.name} has no clone(); this estimator needs it")
        return CheckedTextEnv(self.env.clone())


def as_text_env(env: Any) -> CheckedTextEnv:
    """Wrap ``env`` (a :class:`TextEnv`, a GEM env, any object of that shape) with checks."""
    return env if isinstance(env, CheckedTextEnv) else CheckedTextEnv(env)
