"""GuessTheNumber: information seeking, one guess per turn, "higher"/"lower" feedback.

The env draws a target uniformly from ``[low, high]``. Each turn the agent writes a number
(the turn's whole text, surrounding white space ignored); the env answers ``correct`` (the
episode terminates, reward ``+1``), ``higher`` (the target is higher than the guess),
``lower``, or ``invalid`` (the text is not an integer in the range). A wrong or invalid guess
costs ``wrong_cost`` (default 0.1). After ``max_turns`` turns without the target the episode is
truncated (a turn limit, not an end of the game's dynamics).

Returns (exact, computed by :func:`optimal_value` and :func:`iid_policy_return`, checked by the
tests against enumeration and simulation):

- optimum: dynamic programming over the interval of targets still consistent with the feedback
  (binary search is optimal when ``max_turns`` covers its depth); at the defaults (1..8, 4
  turns, cost 0.1) it is ``1 - 0.1 * (21/8 - 1) = 0.8375``;
- random guess (a uniform number of the range each turn, feedback ignored): 0.1241 at the
  defaults;
- uniform token policy of :class:`GuessTheNumberTask` (its
  ``random_return``): the same formula with the probability that a random turn spells a valid
  number.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Hashable
from typing import Any

import numpy as np

from marlhf.envs.core.tasks import resolve_codec
from marlhf.envs.multiturn.task import MultiTurnTask
from marlhf.envs.multiturn.tasks.common import (
    TurnCounter,
    check_action,
    check_float,
    check_int,
    end_of_turn_token,
    uniform_turn_texts,
)
from marlhf.tokenization import SymbolCodec, TokenCodec

__all__ = [
    "FEEDBACK",
    "GuessTheNumberEnv",
    "GuessTheNumberTask",
    "iid_policy_return",
    "optimal_guess",
    "optimal_value",
]

#: The env's answers: target higher than the guess, lower, hit, or not a number of the range.
FEEDBACK = ("higher", "lower", "correct", "invalid")
_NUMBER = re.compile(r"\s*([+-]?\d+)\s*")
#: The largest range the env accepts (the optimum's dynamic programme is cubic in it).
MAX_RANGE = 1000


def parse_guess(text: str) -> int | None:
    """The integer ``text`` spells (surrounding white space ignored), else None."""
    match = _NUMBER.fullmatch(text)
    return int(match.group(1)) if match else None


def _value_table(n: int, turns: int, cost: float) -> dict[tuple[int, int], tuple[float, int]]:
    # best[(m, k)] = (value, offset of the best guess) for m equally likely targets, k turns
    best: dict[tuple[int, int], tuple[float, int]] = {}
    for k in range(turns + 1):
        for m in range(n + 1):
            if m == 0 or k == 0:
                best[(m, k)] = (0.0, 0)
                continue
            options = []
            for g in range(m):  # guess the (g+1)-th smallest consistent number
                below, above = g, m - 1 - g
                value = 1.0 / m
                for side in (below, above):
                    if side:
                        value += side / m * (best[(side, k - 1)][0] - cost)
                options.append((value, g))
            best[(m, k)] = max(options, key=lambda o: (o[0], -o[1]))
    return best


@functools.lru_cache(maxsize=32)
def _table(n: int, turns: int, cost: float) -> dict[tuple[int, int], tuple[float, int]]:
    return _value_table(n, turns, cost)


def optimal_value(n: int, turns: int, cost: float) -> float:
    """The optimal expected return with ``n`` equally likely targets and ``turns`` turns left
    (reward 1 for the hit, ``-cost`` per miss); the value depends only on the interval's size."""
    return _table(n, turns, cost)[(n, turns)][0]


def optimal_guess(lo: int, hi: int, turns_left: int, cost: float) -> int:
    """An optimal guess when the target is known to lie in ``[lo, hi]`` (smallest on ties)."""
    m = hi - lo + 1
    return lo + _table(m, turns_left, cost)[(m, turns_left)][1]


def iid_policy_return(p_hit: float, turns: int, cost: float) -> float:
    """Expected return of a policy whose turns are independent of the feedback: each turn hits
    with probability ``p_hit`` (reward 1, the end) and otherwise costs ``cost``."""
    per_turn = p_hit - (1.0 - p_hit) * cost
    return sum((1.0 - p_hit) ** t * per_turn for t in range(turns))


class GuessTheNumberEnv:
    """Guess a number in ``[low, high]`` within ``max_turns`` turns (see the module docstring).

    :param low: the smallest target (default 1).
    :param high: the largest target (default 8).
    :param max_turns: the turn limit (default 4: binary search always finds one of 8).
    :param wrong_cost: the cost of a wrong or invalid guess, in ``[0, 1]`` (default 0.1).
    """

    name = "GuessTheNumber"

    def __init__(
        self, low: int = 1, high: int = 8, max_turns: int = 4, wrong_cost: float = 0.1
    ) -> None:
        where = self.name
        self.low = check_int(where, "low", low, 0, 10**9)
        self.high = check_int(where, "high", high, self.low + 1, self.low + MAX_RANGE - 1)
        self.max_turns = check_int(where, "max_turns", max_turns, 1, 64)
        self.wrong_cost = check_float(where, "wrong_cost", wrong_cost, 0.0, 1.0)
        self.turns = TurnCounter(where, self.max_turns)
        self.target = self.low
        self.lo, self.hi = self.low, self.high

    @property
    def size(self) -> int:
        """How many targets the range holds."""
        return self.high - self.low + 1

    @property
    def prompt(self) -> str:
        """The first observation."""
        return f"Guess a number from {self.low} to {self.high}."

    @property
    def optimal_return(self) -> float:
        """The optimum's expected return over uniform targets (dynamic programming)."""
        return optimal_value(self.size, self.max_turns, self.wrong_cost)

    @property
    def random_guess_return(self) -> float:
        """Expected return of a uniformly random number of the range every turn."""
        return iid_policy_return(1.0 / self.size, self.max_turns, self.wrong_cost)

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        """Draw the target from ``seed`` (uniform over the range) and start the episode."""
        self.target = int(np.random.default_rng(seed).integers(self.low, self.high + 1))
        self.lo, self.hi = self.low, self.high
        self.turns.start()
        return self.prompt, {"low": self.low, "high": self.high, "max_turns": self.max_turns}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """One guess: ``(feedback, reward, terminated, truncated, info)``."""
        check_action(self.name, action)
        self.turns.advance()
        guess = parse_guess(action)
        if guess is None or not self.low <= guess <= self.high:
            feedback = "invalid"
        elif guess == self.target:
            feedback = "correct"
        elif guess < self.target:
            feedback = "higher"
            self.lo = max(self.lo, guess + 1)
        else:
            feedback = "lower"
            self.hi = min(self.hi, guess - 1)
        terminated = feedback == "correct"
        reward = 1.0 if terminated else -self.wrong_cost
        truncated = self.turns.finish(terminated)
        info = {"guess": guess, "feedback": feedback, "turn": self.turns.turn}
        return feedback, reward, terminated, truncated, info

    def gold(self) -> str:
        """The right guess (the potential-based estimators score ``log p(gold | s)``)."""
        return str(self.target)

    def state_key(self) -> Hashable:
        """``(target, turns used, lowest and highest target still consistent)``: equal for
        states with the same future dynamics and the same knowledge."""
        return (self.target, self.turns.turn, self.lo, self.hi)

    def clone(self) -> GuessTheNumberEnv:
        """An independent copy at the current state."""
        return copy.deepcopy(self)

    def optimal_action(self) -> str:
        """The optimal guess now (uses only what the feedback revealed, never the target)."""
        return str(
            optimal_guess(self.lo, self.hi, self.max_turns - self.turns.turn, self.wrong_cost)
        )


class GuessTheNumberTask(MultiTurnTask):
    """GuessTheNumber for the token-level driver.

    With the default codec every number of the range, the prompt and each feedback word is one
    symbol, and the agent may write numbers and the end-of-turn token (``<eot>``): a turn is
    ``"5" <eot>``. ``random_return`` is exact for that codec (every turn of the uniform token
    policy enumerated); with ``codec``/``tokenizer`` it is a seeded Monte-Carlo estimate.

    :param low: see :class:`GuessTheNumberEnv`; :param high: ditto; :param max_turns: ditto;
    :param wrong_cost: ditto.
    :param max_turn_tokens: agent tokens per turn, end of turn included (default: 2 with the
        symbol codec, 6 with a given codec).
    :param codec: a token codec (its EOS ends turns); :param tokenizer: or a tokenizer / its
        folder (see :func:`~marlhf.envs.core.tasks.resolve_codec`). Default: the symbol codec above.
    """

    def __init__(
        self,
        low: int = 1,
        high: int = 8,
        max_turns: int = 4,
        wrong_cost: float = 0.1,
        max_turn_tokens: int | None = None,
        codec: TokenCodec | None = None,
        tokenizer: Any = None,
    ) -> None:
        self.env_kwargs: dict[str, Any] = {
            "low": low,
            "high": high,
            "max_turns": max_turns,
            "wrong_cost": wrong_cost,
        }
        probe = GuessTheNumberEnv(**self.env_kwargs)  # validates the arguments
        self.name = "GuessTheNumber"
        symbols = codec is None and tokenizer is None
        if symbols:
            words = [str(i) for i in range(probe.low, probe.high + 1)]
            self.codec: TokenCodec = SymbolCodec([*words, probe.prompt, *FEEDBACK], eos="<eot>")
            self._allowed = [self.codec.encode(w)[0] for w in words]
        else:
            self.codec = resolve_codec(codec, tokenizer)
            self._allowed = []
        self.end_of_turn_id = end_of_turn_token(self.name, self.codec)
        self.max_turns = probe.max_turns
        default_turn = len(str(probe.high)) + 1 if symbols else 6
        self.max_turn_tokens = check_int(
            self.name,
            "max_turn_tokens",
            default_turn if max_turn_tokens is None else max_turn_tokens,
            1,
            256,
        )
        self.max_prompt_len = len(self.codec.encode(probe.prompt))
        self.max_obs_tokens = max(len(self.codec.encode(w)) for w in FEEDBACK)
        self.optimal_return = probe.optimal_return
        self._probe = probe

    def make_env(self) -> GuessTheNumberEnv:
        return GuessTheNumberEnv(**self.env_kwargs)

    def action_mask(self) -> np.ndarray:
        if not self._allowed:
            return super().action_mask()
        mask = np.zeros(self.codec.vocab_size, dtype=bool)
        mask[[*self._allowed, self.end_of_turn_id]] = True
        return mask

    @functools.cached_property
    def random_return(self) -> float:  # type: ignore[override]
        """Expected return of the uniform policy over :meth:`action_mask` (see the class)."""
        texts = uniform_turn_texts(
            self.codec,
            np.flatnonzero(self.action_mask()).tolist(),
            self.end_of_turn_id,
            self.max_turn_tokens,
        )
        probe = self._probe
        p_valid = sum(
            p
            for t, p in texts.items()
            if (g := parse_guess(t)) is not None and probe.low <= g <= probe.high
        )
        return iid_policy_return(p_valid / probe.size, probe.max_turns, probe.wrong_cost)
