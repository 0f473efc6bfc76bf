"""Helpers shared by the multi-turn tasks: argument checks, the end-of-turn token, the attributes a
retry task takes from its single-turn source, the one-turn action distribution of the uniform
token policy, and a turn counter that refuses steps after the episode ended."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from marlhf.envs.core.tasks import Task
from marlhf.envs.multiturn.protocol import TextEnvError
from marlhf.envs.multiturn.task import MultiTurnTask
from marlhf.tokenization import TokenCodec

#: Above this many token sequences per turn the uniform policy's turn is sampled, not enumerated.
ENUMERATION_LIMIT = 200_000


def check_int(where: str, name: str, value: object, low: int, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]`` (``high`` None: no upper bound), else a ValueError
    naming ``where``, the field and the valid range."""
    number = (
        int(value) if not isinstance(value, bool) and isinstance(value, (int, np.integer)) else None
    )
    if number is None or number < low or (high is not None and number > high):
        valid = f"an int >= {low}" if high is None else f"an int in [{low}, {high}]"
        raise ValueError(f"{where}: {name}={value!r}; valid: {valid}")
    return number


def check_float(where: str, name: str, value: object, low: float, high: float) -> float:
    """``value`` as a finite float in ``[low, high]``, else a ValueError naming the field."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{where}: {name}={value!r}; valid: a number in [{low}, {high}]")
    number = float(value)
    if not low <= number <= high:
        raise ValueError(f"{where}: {name}={value!r}; valid: a number in [{low}, {high}]")
    return number


def check_action(where: str, action: object) -> str:
    """The agent's turn must be a str (a TypeError naming the env otherwise)."""
    if not isinstance(action, str):
        raise TypeError(
            f"{where}.step: action must be a str (the agent's turn), got {type(action).__name__}"
        )
    return action


def end_of_turn_token(where: str, codec: TokenCodec) -> int:
    """The codec's EOS id, which ends the agent's turns; a ValueError naming ``where`` when the
    codec has none."""
    eos = codec.eos_token_id
    if eos is None:
        raise ValueError(f"{where}: the codec has no EOS token to end turns with")
    return int(eos)


def adopt_source(task: MultiTurnTask, source: Task, max_turns: int) -> None:
    """Set the token-level attributes a retry task takes from its single-turn ``source``: the
    codec, its EOS as the end of turn, the source's horizon as the tokens per turn and its
    longest prompt; and the turn limit ``max_turns``. ``task.name`` must be set (for errors)."""
    task.codec = source.codec
    task.end_of_turn_id = end_of_turn_token(task.name, task.codec)
    task.max_turns = max_turns
    task.max_turn_tokens = source.max_new_tokens
    task.max_prompt_len = source.max_prompt_len


def uniform_turn_texts(
    codec: TokenCodec,
    allowed_ids: Sequence[int],
    end_of_turn_id: int,
    max_turn_tokens: int,
    samples: int = 20_000,
    seed: int = 0,
) -> dict[str, float]:
    """The distribution of one turn's text under the uniform policy over ``allowed_ids``.

    A turn is a sequence of tokens drawn uniformly from ``allowed_ids``; it ends after the
    end-of-turn token (which is not part of the text) or after ``max_turn_tokens`` tokens. The
    text is ``codec.decode`` of the tokens before the end of turn. Exact (by enumeration) while
    the number of sequences is at most :data:`ENUMERATION_LIMIT`, else a seeded Monte-Carlo
    estimate from ``samples`` turns.

    :returns: ``{text: probability}`` (probabilities sum to 1).
    """
    ids = sorted({int(i) for i in allowed_ids})
    if not ids:
        raise ValueError("uniform_turn_texts: allowed_ids is empty")
    k = len(ids)
    words = [i for i in ids if i != end_of_turn_id]
    n_sequences = sum(len(words) ** n for n in range(max_turn_tokens + 1))
    out: dict[str, float] = {}
    if n_sequences <= ENUMERATION_LIMIT:
        eot = end_of_turn_id in ids
        for n in range(max_turn_tokens + 1):
            # n word tokens, then the end of turn (when n < max) or the length limit (n == max)
            closed = n == max_turn_tokens
            if not closed and not eot:
                continue
            prob = (1.0 / k) ** n * (1.0 if closed else 1.0 / k)
            for seq in itertools.product(words, repeat=n):
                text = codec.decode(list(seq))
                out[text] = out.get(text, 0.0) + prob
        return out
    rng = np.random.default_rng(seed)
    draws = rng.integers(k, size=(samples, max_turn_tokens))
    for row in draws:
        turn: list[int] = []
        for j in row:
            if ids[j] == end_of_turn_id:
                break
            turn.append(ids[j])
        text = codec.decode(turn)
        out[text] = out.get(text, 0.0) + 1.0 / samples
    return out


class TurnCounter:
    """The turn bookkeeping every env here shares: turns used, the limit, and the episode's end.

    :param where: the env's name for errors.
    :param max_turns: the turn limit.
    """

    def __init__(self, where: str, max_turns: int) -> None:
        self.where = where
        self.max_turns = max_turns
        self.turn = 0
        self.done = True  # until reset

    def start(self) -> None:
        self.turn = 0
        self.done = False

    def copy_from(self, other: TurnCounter) -> None:
        """Take ``other``'s turns used and whether its episode ended (for an env's ``clone``)."""
        self.turn, self.done = other.turn, other.done

    def advance(self) -> None:
        """Count one turn; a step before ``reset`` or after the end is an error."""
        if self.done:
            raise TextEnvError(
                f"{self.where}.step called after the episode ended (or before reset); "
                "call reset(seed) first"
            )
        self.turn += 1

    def finish(self, terminated: bool) -> bool:
        """Close the turn: returns ``truncated`` (the turn limit reached without terminating)."""
        truncated = not terminated and self.turn >= self.max_turns
        self.done = terminated or truncated
        return truncated
