"""``MultiTurnTask``: what the token-level driver needs to run a text-level multi-turn env.

A multi-turn task is a factory of :class:`~marlhf.envs.multiturn.protocol.TextEnv` objects plus
the token-level facts the driver cannot guess: the codec, the token that ends an agent turn, and
the limits that make every episode end. Subclasses set the attributes in ``__init__`` and
implement :meth:`MultiTurnTask.make_env`::

    class Guess(MultiTurnTask):
        def __init__(self):
            self.name = "Guess"
            self.codec = SymbolCodec(list("0123456789"), eos="<eot>")
            self.end_of_turn_id = self.codec.eos_token_id
            self.max_turns, self.max_turn_tokens = 4, 2
            self.max_prompt_len, self.max_obs_tokens = 8, 4
            self.optimal_return, self.random_return = 1.0, 0.1

        def make_env(self):
            return GuessEnv()

Episode layout (what the agents see): the first observation (``reset``) is the prompt, left-padded
to ``max_prompt_len`` tokens. After it, agent turns and the env's answers alternate in one
right-padded "response" of at most :attr:`MultiTurnTask.max_new_tokens` tokens: the agent samples
tokens until ``end_of_turn_id`` (kept, it is an action) or ``max_turn_tokens``; the turn's text
(without the end-of-turn token) goes to ``env.step``; unless the episode ended, the answer is
tokenised (:meth:`MultiTurnTask.encode_observation`) and appended as *forced* tokens, which are
context, not actions.

An episode ends when the env says so (``terminated`` or ``truncated``), after ``max_turns`` turns
(truncated), or when the next turn would not fit in ``max_new_tokens`` (truncated).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import numpy as np

from marlhf.envs.core.tasks import MultiTurnBase
from marlhf.tokenization import TokenCodec


class MultiTurnTask(MultiTurnBase):
    """A multi-turn task: text envs and the token-level facts that run them.

    :ivar name: the task's name (errors, reports, the env id ``marlhf/<name>-v0``).
    :ivar codec: the token codec of observations and actions.
    :ivar end_of_turn_id: the token that ends an agent turn (may be the codec's EOS).
    :ivar max_turns: agent turns per episode at most (``None``: only the env and the token
        budget end an episode; then set ``max_new_tokens``).
    :ivar max_turn_tokens: agent tokens per turn at most (the end-of-turn token included).
    :ivar max_prompt_len: tokens of the first observation at most (``P``).
    :ivar max_obs_tokens: tokens of any later observation at most; a longer one is an error.
    :ivar optimal_return: expected episode return of an optimal policy.
    :ivar random_return: expected episode return of the uniform policy over :meth:`action_mask`.
    :ivar max_episode_tokens: optional cap on the episode's tokens after the prompt (agent and
        env tokens together); ``None`` (default): the bound ``max_turns`` turns can reach.
    """

    name: str
    codec: TokenCodec
    end_of_turn_id: int
    max_turns: int | None
    max_turn_tokens: int
    max_prompt_len: int
    max_obs_tokens: int
    optimal_return: float
    random_return: float
    max_episode_tokens: int | None = None

    @abstractmethod
    def make_env(self) -> Any:
        """A fresh text env (anything with the protocol's shape); the driver calls its
        ``reset(seed=...)`` at each episode start and ``step(text)`` after each agent turn."""

    def encode_observation(self, text: str) -> list[int]:
        """Token ids of an observation (override for a chat template); default: the codec."""
        return list(self.codec.encode(text))

    def decode_action(self, ids: list[int]) -> str:
        """The text sent to ``env.step`` for one agent turn (end-of-turn token removed)."""
        return self.codec.decode(ids)

    def action_mask(self) -> np.ndarray:
        """``bool[vocab]``: tokens the agent may sample (default: all but pad)."""
        mask = np.ones(self.codec.vocab_size, dtype=bool)
        mask[self.codec.pad_token_id] = False
        return mask

    @property
    def max_new_tokens(self) -> int:
        """``T``: the episode's tokens after the prompt at most (agent and env tokens)."""
        if self.max_episode_tokens is not None:
            return int(self.max_episode_tokens)
        turns = int(self.max_turns or 0)
        return turns * self.max_turn_tokens + max(turns - 1, 0) * self.max_obs_tokens

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, max_turns={self.max_turns}, "
            f"max_turn_tokens={self.max_turn_tokens}, max_new_tokens={self.max_new_tokens})"
        )


def _positive_int(where: str, attr: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{where}: `{attr}`={value!r} must be an int >= 1")


def check_multiturn_task(task: MultiTurnTask) -> None:
    """Raise if ``task`` lacks an attribute of the contract or holds an invalid value.

    An episode must end: ``max_turns`` or ``max_episode_tokens`` is required.
    """
    where = f"multi-turn task {getattr(task, 'name', type(task).__name__)!r}"
    if not isinstance(task, MultiTurnTask):
        raise TypeError(f"expected a MultiTurnTask, got {type(task).__name__}")
    required = ("name", "codec", "end_of_turn_id", "max_turns", "max_turn_tokens")
    for attr in (*required, "max_prompt_len", "max_obs_tokens"):
        if not hasattr(task, attr):
            raise TypeError(f"{where}: missing attribute `{attr}` (set it in __init__)")
    if not isinstance(task.codec, TokenCodec):
        raise TypeError(f"{where}: `codec` must be a TokenCodec, got {type(task.codec).__name__}")
    if task.max_turns is None and task.max_episode_tokens is None:
        raise ValueError(
            f"{where}: an episode that never ends: set `max_turns` (a turn limit) or "
            "`max_episode_tokens` (a token limit)"
        )
    if task.max_turns is not None:
        _positive_int(where, "max_turns", task.max_turns)
    if task.max_episode_tokens is not None:
        _positive_int(where, "max_episode_tokens", task.max_episode_tokens)
    for attr in ("max_turn_tokens", "max_prompt_len", "max_obs_tokens"):
        _positive_int(where, attr, getattr(task, attr))
    vocab = task.codec.vocab_size
    eot = task.end_of_turn_id
    if isinstance(eot, bool) or not isinstance(eot, int | np.integer) or not 0 <= eot < vocab:
        raise ValueError(f"{where}: `end_of_turn_id`={eot!r} must be a token id in [0, {vocab})")
    if eot == task.codec.pad_token_id:
        raise ValueError(f"{where}: `end_of_turn_id`={eot} is the pad token; choose another")
    mask = np.asarray(task.action_mask())
    if mask.dtype != np.bool_ or mask.shape != (vocab,):
        raise ValueError(
            f"{where}: action_mask() must be bool[{vocab}], got {mask.dtype}{list(mask.shape)}"
        )
