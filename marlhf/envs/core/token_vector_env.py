"""What the two batched token envs share.

:class:`TokenVectorEnv`, the base of :class:`~marlhf.envs.BatchedTokenEnv` (single-turn) and
:class:`~marlhf.envs.multiturn.env.MultiTurnTokenEnv`, sets up the attributes both derive the
same way from their task (codec ids, lengths, Gymnasium spaces, device, sampler seed, action
masks) and begins a reset as both do (reseed, check the options, read ``group_size``);
:func:`observation_space` is the single-row observation space of both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from marlhf.envs.core.reset_options import group_size
from marlhf.models import resolve_device
from marlhf.tokenization import TokenCodec


def observation_space(vocab_size: int, seq_len: int) -> spaces.Dict:
    """The single-row observation space: ``input_ids`` and ``attention_mask``, both ``int64[L]``."""
    return spaces.Dict(
        {
            "input_ids": spaces.Box(0, vocab_size - 1, shape=(seq_len,), dtype=np.int64),
            "attention_mask": spaces.Box(0, 1, shape=(seq_len,), dtype=np.int64),
        }
    )


class TokenTask(Protocol):
    """What :meth:`TokenVectorEnv._set_up` reads of a task (single- or multi-turn)."""

    @property
    def codec(self) -> TokenCodec: ...

    @property
    def max_prompt_len(self) -> int: ...

    @property
    def max_new_tokens(self) -> int: ...

    def action_mask(self) -> np.ndarray: ...


class TokenVectorEnv(VectorEnv):
    """A vector env of ``num_envs`` token rows, without autoreset (see :meth:`_set_up`)."""

    metadata: dict[str, Any] = {  # noqa: RUF012 (Gymnasium API)
        "autoreset_mode": AutoresetMode.DISABLED,
        "render_modes": [],
    }
    #: Whether :meth:`step` checks that every action lies in ``[0, vocab_size)`` (one device
    #: sync a step; a bad id raises a ``ValueError`` naming it before any state changes). On by
    #: default; :meth:`trusted_actions` turns it off for a block.
    validate_actions: bool = True

    @contextlib.contextmanager
    def trusted_actions(self) -> Iterator[None]:
        """Skip the range check of the actions inside the block (restored on exit, also on an
        error): for a caller whose ids are in range by construction, such as a policy sampling
        over the env's vocabulary, which checks the ids of a whole rollout once instead
        (:func:`~marlhf.envs.core.action_checks.check_action_range`). Type, dtype, shape and
        device are still checked at every step."""
        before = self.validate_actions
        self.validate_actions = False
        try:
            yield
        finally:
            self.validate_actions = before

    def _where(self) -> str:
        """The env as error messages name it."""
        return type(self).__name__

    def _begin_reset(
        self, seed: int | None, options: dict[str, Any] | None, valid: Sequence[str]
    ) -> tuple[dict[str, Any], int]:
        """Reseed (``VectorEnv.reset``), check the reset ``options``' names against ``valid``
        and read their ``group_size``.

        :returns: ``(options, K)``: the options (``{}`` for ``None``) and the group size.
        """
        super().reset(seed=seed)
        options = options or {}
        unknown = set(options) - set(valid)
        if unknown:
            raise ValueError(
                f"{self._where()}: unknown reset options {sorted(unknown)}; valid: {list(valid)}"
            )
        return options, group_size(options.get("group_size", 1), self.num_envs, self._where())

    def _set_up(
        self, task: TokenTask, num_envs: int, device: str | torch.device, seed: int | None
    ) -> None:
        """Set the attributes derived from ``task``: ``codec``, ``num_envs``, ``device``,
        ``vocab_size``, ``pad_token_id``, ``eos_token_id``, ``max_prompt_len``,
        ``max_new_tokens``, ``seq_len`` (``P + N``), the four Gymnasium spaces, the sampler's
        seed (when ``seed`` is not ``None``), ``_task_mask`` (the task's ``action_mask()``) and
        ``_done_mask`` (pad only: what a finished row may take).

        :param task: the env's task (already checked).
        :param num_envs: ``B``, the number of rows (already checked).
        :param device: torch device of every tensor.
        :param seed: seed of the env's sampler, or ``None``.
        """
        self.codec = task.codec
        self.num_envs = num_envs
        self.device = resolve_device(device)
        self.vocab_size = int(self.codec.vocab_size)
        self.pad_token_id = int(self.codec.pad_token_id)
        eos = self.codec.eos_token_id
        self.eos_token_id: int | None = None if eos is None else int(eos)
        self.max_prompt_len = int(task.max_prompt_len)
        self.max_new_tokens = int(task.max_new_tokens)
        self.seq_len = self.max_prompt_len + self.max_new_tokens
        self.single_observation_space = observation_space(self.vocab_size, self.seq_len)
        self.single_action_space = spaces.Discrete(self.vocab_size)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        if seed is not None:
            self._np_random, self._np_random_seed = seeding.np_random(seed)
        self._task_mask = torch.as_tensor(task.action_mask(), device=self.device)
        self._done_mask = torch.zeros(self.vocab_size, dtype=torch.bool, device=self.device)
        self._done_mask[self.pad_token_id] = True
