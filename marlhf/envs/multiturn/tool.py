"""``ToolLookup``: a toy tool-use MDP, small enough to enumerate exactly.

A hidden answer ``x`` is drawn from ``{0, .., n_answers - 1}`` by the episode's seed. The first
observation is ``q`` (the question, the same for every ``x``). Each agent turn is one token:

- ``call``: the tool answers with the observation ``r x`` (two forced tokens) and the turn's
  reward is ``-tool_cost``;
- ``a<k>``: the agent answers ``k``; the turn's reward is 1 if ``k == x`` else 0, and the episode
  terminates.

After ``max_turns`` turns without an answer the episode is truncated. The policy decides how
many turns to take: answering at once is right with probability ``1 / n_answers``; calling the
tool first costs ``tool_cost`` and makes the answer certain.

Documented returns (defaults ``n_answers = 3``, ``tool_cost = 0.1``, ``max_turns = 3``):

- optimal: call once, then answer: ``1 - tool_cost = 0.9``;
- random (uniform over the ``n_answers + 1`` tokens each turn; the random policy ignores the
  tool's answer, so each answer is right with probability ``1 / n_answers``): with
  ``p = 1 / (n_answers + 1)`` the chance of a call, ``V_last = -p c + (1 - p) / n`` and
  ``V_k = p (-c + V_{k+1}) + (1 - p) / n``: ``0.2953125`` for the defaults
  (:func:`tool_random_return`; ``tests/envs/multiturn/test_tool.py`` checks it against rollouts).

Registered as ``marlhf/ToolLookup-v0``; ``state_key()`` is ``(x, revealed, turn)`` and
``clone()`` copies the state, so every turn-level estimator and the Monte-Carlo truth run on it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from marlhf.envs.core.registration import register_task
from marlhf.envs.multiturn.task import MultiTurnTask
from marlhf.tokenization import SymbolCodec


def tool_random_return(n_answers: int, tool_cost: float, max_turns: int) -> float:
    """The uniform policy's expected return (see the module docstring)."""
    p = 1.0 / (n_answers + 1)
    value = 0.0  # of the turns after the one being valued (none after the last)
    for _ in range(max_turns):
        value = p * (-tool_cost + value) + (1.0 - p) / n_answers
    return value


class ToolLookupEnv:
    """The text env of :class:`ToolLookupTask` (one episode; ``reset`` draws ``x``)."""

    name = "ToolLookupEnv"

    def __init__(self, n_answers: int, tool_cost: float) -> None:
        self.n_answers = n_answers
        self.tool_cost = tool_cost
        self.x = 0
        self.revealed = False
        self.turn = 0

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        self.x = int(np.random.default_rng(seed).integers(self.n_answers))
        self.revealed = False
        self.turn = 0
        return "q", {}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        self.turn += 1
        if action == "call":
            self.revealed = True
            return f"r{self.x}", -self.tool_cost, False, False, {}
        if action.startswith("a") and action[1:].isdigit():
            return "", float(int(action[1:]) == self.x), True, False, {}
        return "", 0.0, True, False, {"invalid": action}

    def state_key(self) -> tuple[int, bool, int]:
        return self.x, self.revealed, self.turn

    def gold(self) -> str:
        """The right answer (the potential-based estimators score ``log p(gold | s)``)."""
        return f"a{self.x}"

    def clone(self) -> ToolLookupEnv:
        copy = ToolLookupEnv(self.n_answers, self.tool_cost)
        copy.x, copy.revealed, copy.turn = self.x, self.revealed, self.turn
        return copy


class ToolLookupTask(MultiTurnTask):
    """When to call a tool, when to answer (see the module docstring).

    :param n_answers: possible hidden answers (2..9).
    :param tool_cost: the reward of a tool call is ``-tool_cost`` (>= 0).
    :param max_turns: agent turns at most (>= 1).
    """

    def __init__(self, n_answers: int = 3, tool_cost: float = 0.1, max_turns: int = 3) -> None:
        if isinstance(n_answers, bool) or not isinstance(n_answers, int) or not 2 <= n_answers <= 9:
            raise ValueError(f"ToolLookup: n_answers={n_answers!r} must be an int in 2..9")
        if not tool_cost >= 0:
            raise ValueError(f"ToolLookup: tool_cost={tool_cost!r} must be >= 0")
        if isinstance(max_turns, bool) or not isinstance(max_turns, int) or max_turns < 1:
            raise ValueError(f"ToolLookup: max_turns={max_turns!r} must be an int >= 1")
        self.name = "ToolLookup"
        answers = [f"a{k}" for k in range(n_answers)]
        digits = [str(k) for k in range(n_answers)]
        self.codec = SymbolCodec(["call", *answers, "q", "r", *digits], eos="<eot>")
        self.n_answers, self.tool_cost = n_answers, float(tool_cost)
        self.end_of_turn_id = int(self.codec.eos_token_id or 1)
        self.max_turns = max_turns
        self.max_turn_tokens = 1
        self.max_prompt_len = 1
        self.max_obs_tokens = 2
        self.optimal_return = 1.0 - self.tool_cost
        self.random_return = tool_random_return(n_answers, self.tool_cost, max_turns)

    def make_env(self) -> ToolLookupEnv:
        return ToolLookupEnv(self.n_answers, self.tool_cost)

    def action_mask(self) -> np.ndarray:
        """``call`` and the answers (each turn is one of them)."""
        mask = np.zeros(self.codec.vocab_size, dtype=bool)
        mask[2 : 3 + self.n_answers] = True
        return mask

    def encode_observation(self, text: str) -> list[int]:
        return list(self.codec.encode(text))


register_task("ToolLookup", ToolLookupTask, multiturn=True)
