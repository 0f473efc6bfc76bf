"""Tasks and reward functions: what a text environment asks and how it scores the answers.

A :class:`Task` draws prompts (seeded, with per-prompt metadata) and owns a
:class:`RewardFunction`. Reward functions score a whole batch at once:

- ``mode = "terminal"``: called once per episode, on the rows that just finished, with their
  whole responses; returns ``float[R]``. The environment puts the score on the step of each
  row's last real token (the step where it terminates or truncates).
- ``mode = "dense"``: called on every step with every row; returns ``float[R]``, the reward of
  the token each row just appended. Rows that did not append a token (``batch.active`` False)
  get 0 whatever the function returns.

Reward models, execution-based rewards and programmatic rewards are all reward functions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from marlhf.models import default_codec, load_tokenizer, pad_with_eos
from marlhf.tokenization import HFCodec, TokenCodec

RewardMode = Literal["dense", "terminal"]


@dataclass
class Prompt:
    """One prompt.

    :param ids: token ids of the prompt, without padding.
    :param metadata: per-prompt data the reward needs (target, references, unit tests).
    :param text: the prompt's text, when known (display only).
    """

    ids: list[int]
    metadata: dict[str, Any] = field(default_factory=dict)
    text: str | None = None


@dataclass
class RewardBatch:
    """The rows a reward function scores.

    :param prompts: one :class:`Prompt` per row being scored.
    :param response_ids: ``int64[R, N]`` responses, right-padded with ``codec.pad_token_id``.
    :param response_mask: ``bool[R, N]`` True on real response tokens (a prefix of each row).
    :param codec: the task's codec (decode, special ids).
    :param prompt_ids: ``int64[R, P]`` the prompts, left-padded with ``codec.pad_token_id``
        (lets dense rewards read the prompt without a Python loop over rows).
    :param prompt_mask: ``bool[R, P]`` True on real prompt tokens (a suffix of each row).
    :param active: ``bool[R]`` rows that appended a token on this step (dense mode); ``None``
        in terminal mode, where every row just finished.
    :param rows: ``int64[R]`` the environment rows these are (``None`` when all rows, in order).
    """

    prompts: list[Prompt]
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    codec: TokenCodec
    prompt_ids: torch.Tensor | None = None
    prompt_mask: torch.Tensor | None = None
    active: torch.Tensor | None = None
    rows: torch.Tensor | None = None

    @property
    def lengths(self) -> torch.Tensor:
        """``int64[R]``: response tokens so far per row."""
        return self.response_mask.sum(dim=1)

    def response_lists(self) -> list[list[int]]:
        """Each row's real response tokens as a Python list (for text-based rewards)."""
        ids = self.response_ids.tolist()
        lengths = self.lengths.tolist()
        return [row[:n] for row, n in zip(ids, lengths, strict=True)]

    def response_texts(self) -> list[str]:
        """Each row's decoded response."""
        return [self.codec.decode(row) for row in self.response_lists()]


class RewardFunction(ABC):
    """Scores a batch of responses; see the module docstring for the two modes."""

    mode: ClassVar[RewardMode]

    @abstractmethod
    def __call__(self, batch: RewardBatch) -> torch.Tensor:
        """Return ``float[R]`` (one reward per row of ``batch``)."""


class MultiTurnBase(ABC):
    """The base of :class:`~marlhf.envs.multiturn.task.MultiTurnTask`, whose contract lives there.

    Registration tells a multi-turn task from a :class:`Task` with it, without importing the
    multi-turn layer above the env core (docs/design.md, "Layout").

    :ivar name: the task's name (errors, reports, the env id ``marlhf/<name>-v0``).
    """

    name: str


class Task(ABC):
    """A source of prompts with a reward.

    Subclasses set the attributes below in their ``__init__`` and implement
    :meth:`sample_prompts`.

    :ivar name: the task's name (used in errors and reports).
    :ivar codec: the token codec (toy tasks use :class:`~marlhf.tokenization.SymbolCodec`).
    :ivar max_prompt_len: ``P``, the longest prompt in tokens.
    :ivar max_new_tokens: ``N``, the horizon: responses are truncated after ``N`` tokens.
    :ivar reward_fn: the task's reward function.
    :ivar optimal_return: the expected episode return of an optimal policy.
    :ivar random_return: the expected episode return of the uniform policy over
        :meth:`action_mask` (exact where a formula exists, else a documented estimate).
    """

    name: str
    codec: TokenCodec
    max_prompt_len: int
    max_new_tokens: int
    reward_fn: RewardFunction
    optimal_return: float
    random_return: float

    @abstractmethod
    def sample_prompts(self, rng: np.random.Generator, n: int) -> list[Prompt]:
        """Draw ``n`` prompts using only ``rng`` for randomness."""

    def action_mask(self) -> np.ndarray:
        """``bool[vocab]``: the tokens this task allows as actions (default: all but pad)."""
        mask = np.ones(self.codec.vocab_size, dtype=bool)
        mask[self.codec.pad_token_id] = False
        return mask

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, vocab={self.codec.vocab_size}, "
            f"max_prompt_len={self.max_prompt_len}, max_new_tokens={self.max_new_tokens})"
        )


def check_task(task: Task) -> None:
    """Raise if ``task`` lacks an attribute of the contract or holds an invalid value."""
    where = f"task {getattr(task, 'name', type(task).__name__)!r}"
    if not isinstance(task, Task):
        raise TypeError(f"expected a marlhf.envs.Task, got {type(task).__name__}")
    for attr in ("name", "codec", "max_prompt_len", "max_new_tokens", "reward_fn"):
        if not hasattr(task, attr):
            raise TypeError(f"{where}: missing attribute `{attr}` (set it in __init__)")
    if not isinstance(task.codec, TokenCodec):
        raise TypeError(f"{where}: `codec` must be a TokenCodec, got {type(task.codec).__name__}")
    for attr in ("max_prompt_len", "max_new_tokens"):
        value = getattr(task, attr)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{where}: `{attr}`={value!r} must be an int >= 1")
    if not isinstance(task.reward_fn, RewardFunction):
        raise TypeError(
            f"{where}: `reward_fn` must be a RewardFunction, got {type(task.reward_fn).__name__}"
        )
    if getattr(task.reward_fn, "mode", None) not in ("dense", "terminal"):
        raise ValueError(
            f"{where}: reward_fn.mode={getattr(task.reward_fn, 'mode', None)!r}; "
            "valid: 'dense' or 'terminal'"
        )
    mask = np.asarray(task.action_mask())
    if mask.dtype != np.bool_ or mask.shape != (task.codec.vocab_size,):
        raise ValueError(
            f"{where}: action_mask() must be bool[{task.codec.vocab_size}], "
            f"got {mask.dtype}{list(mask.shape)}"
        )
    if not mask.any():
        raise ValueError(f"{where}: action_mask() allows no token")


def check_rewards(
    rewards: object, n_rows: int, task_name: str, device: torch.device
) -> torch.Tensor:
    """Validate a reward function's output: a finite real ``float[n_rows]`` tensor.

    :returns: the rewards as ``float32`` on ``device``.
    """
    where = f"task {task_name!r}: reward_fn"
    if not isinstance(rewards, torch.Tensor):
        raise TypeError(f"{where} returned {type(rewards).__name__}; expected a torch.Tensor")
    if rewards.dtype == torch.bool or rewards.is_complex():
        raise TypeError(f"{where} returned dtype {rewards.dtype}; expected a real float tensor")
    if tuple(rewards.shape) != (n_rows,):
        raise ValueError(
            f"{where} returned shape {tuple(rewards.shape)}; expected ({n_rows},), "
            "one reward per row of the batch"
        )
    rewards = rewards.to(device=device, dtype=torch.float32)
    return rewards


def nonfinite_message(task_name: str, rewards: torch.Tensor) -> str:
    """The error text for rewards holding NaN or inf (called only after a check found some)."""
    bad = (~torch.isfinite(rewards)).nonzero().flatten().tolist()
    values = rewards[bad].tolist()
    return (
        f"task {task_name!r}: reward_fn returned non-finite rewards {values[:5]} at rows "
        f"{bad[:5]}; rewards must be finite floats"
    )


def resolve_codec(codec: TokenCodec | None = None, tokenizer: Any = None) -> TokenCodec:
    """The codec a task uses (shared by every task whose prompts are text).

    :param codec: a ready :class:`~marlhf.tokenization.TokenCodec` (wins when given).
    :param tokenizer: a ``transformers`` tokenizer, or the path of a local folder holding one
        (loaded with ``local_files_only=True``); its pad token defaults to its EOS token.
    :returns: ``codec``, else an :class:`~marlhf.tokenization.HFCodec` of ``tokenizer``, else
        :func:`marlhf.models.default_codec`: a 1024-token byte-level BPE trained on part of the
        standard library (cached in ``$MARLHF_CACHE``; a few seconds the first time).
    """
    if codec is not None and tokenizer is not None:
        raise ValueError("give either `codec` or `tokenizer`, not both")
    if codec is not None:
        if not isinstance(codec, TokenCodec):
            raise TypeError(f"`codec` must be a TokenCodec, got {type(codec).__name__}")
        return codec
    if tokenizer is None:
        return default_codec()
    if isinstance(tokenizer, str | Path):
        tokenizer = load_tokenizer(tokenizer, field="tokenizer")
    return HFCodec(pad_with_eos(tokenizer, "tokenizer"))
