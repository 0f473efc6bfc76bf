"""The turn structure of a multi-turn rollout, as the env records it."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import torch


@dataclass
class TurnRecord:
    """The turn structure of one rollout, in the episode layout ``[B, T]`` (``T`` =
    ``max_new_tokens``; agent and forced tokens interleaved, right-padded).

    :param is_action: ``bool[B, T]`` tokens the agent sampled (False on forced and padding).
    :param turn_ids: ``int64[B, T]`` the turn of each token (an answer carries its turn's
        index); -1 on padding.
    :param turn_rewards: ``float32[B, K]`` each turn's reward (0 past ``num_turns``).
    :param num_turns: ``int64[B]`` turns each row played.
    :param turn_state_keys: per row, the env's ``state_key()`` at the start of each turn
        (``None`` when the env has none).
    :param terminated: ``bool[B]`` the env ended the episode.
    :param truncated: ``bool[B]`` a limit ended it (bootstrap only here).
    """

    is_action: torch.Tensor
    turn_ids: torch.Tensor
    turn_rewards: torch.Tensor
    num_turns: torch.Tensor
    turn_state_keys: list[list[Hashable]] | None
    terminated: torch.Tensor
    truncated: torch.Tensor
