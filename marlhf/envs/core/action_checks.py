"""Checks of the actions :meth:`~marlhf.envs.BatchedTokenEnv.step` takes: type, dtype, shape,
device and vocabulary range; each error names the value and what would be valid."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


def check_actions(
    actions: object,
    num_envs: int,
    vocab_size: int,
    device: torch.device,
    where: Callable[[], str],
    check_range: bool = True,
) -> torch.Tensor:
    """``actions`` as ``int64[num_envs]`` token ids in ``[0, vocab_size)`` on ``device``.

    A numpy integer array (e.g. ``action_space.sample()``) is copied to ``device``. The range
    check is one fused ``aminmax`` and one device synchronisation, before any state changes.

    :param where: names the env in an error message (called only to raise one).
    :param check_range: False skips the range check (its operations and device sync) for a
        caller whose ids are in range by construction; type, dtype, shape and device are
        checked either way (on the host, no device work).
    """
    if isinstance(actions, np.ndarray):  # e.g. action_space.sample(): moved to the device
        if not np.issubdtype(actions.dtype, np.integer):
            raise TypeError(
                f"{where()}: numpy actions dtype {actions.dtype}; valid: an integer dtype"
            )
        actions = torch.as_tensor(actions.astype(np.int64, copy=False), device=device)
    if not isinstance(actions, torch.Tensor):
        raise TypeError(
            f"{where()}: actions must be a torch.Tensor int64[{num_envs}] on "
            f"{device} or a numpy integer array, got {type(actions).__name__}"
        )
    if actions.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{where()}: actions dtype {actions.dtype}; valid: torch.int64 (or int32)")
    if tuple(actions.shape) != (num_envs,):
        raise ValueError(f"{where()}: actions shape {tuple(actions.shape)}; expected ({num_envs},)")
    if actions.device != device:
        raise ValueError(f"{where()}: actions on device {actions.device}; expected {device}")
    actions = actions.long()
    if not check_range:
        return actions
    check_action_range(actions, vocab_size, where)
    return actions


def check_action_range(actions: torch.Tensor, vocab_size: int, where: Callable[[], str]) -> None:
    """Raise a ``ValueError`` naming where ``actions`` (token ids ``[B]``, or ``[B, N]``: a
    rollout's) lie outside ``[0, vocab_size)``, and the valid range; one ``aminmax`` and one
    device sync when all are in range.

    :param where: names the env in the error message (called only to raise one).
    """
    device = actions.device
    low, high = torch.aminmax(actions)
    if device.type == "cpu":
        out_of_range = low.item() < 0 or high.item() >= vocab_size
    else:
        bounds = torch.stack((low, high)).tolist()
        out_of_range = bounds[0] < 0 or bounds[1] >= vocab_size
    if out_of_range:
        out_of_vocab = (actions < 0) | (actions >= vocab_size)
        if actions.dim() == 1:
            rows = out_of_vocab.nonzero().flatten().tolist()
            raise ValueError(
                f"{where()}: actions {actions[rows[:5]].tolist()} at rows {rows[:5]} are "
                f"outside the vocabulary; valid token ids are 0..{vocab_size - 1}"
            )
        at = out_of_vocab.nonzero()[:5]
        raise ValueError(
            f"{where()}: token ids {actions[tuple(at.t())].tolist()} at (row, column) "
            f"{at.tolist()} are outside the vocabulary; valid token ids are 0..{vocab_size - 1}"
        )
