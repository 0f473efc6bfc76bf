"""Generalised advantage estimation over tokens or macro-action segments, and its helpers.

One code path serves token-level PPO and MA-PPO (docs/method.md, step 5). Token-level PPO calls
:func:`compute_gae` with ``starts = mask``: every token is its own segment, every aggregation is
the identity, and the result is bitwise the plain per-token GAE.

For a row with segments ``tau = 0 .. n-1`` (a macro action is a run of tokens that begins at a
``starts`` column):

- segment reward ``R_tau``: the sum (paper) or the mean (released code) of the token rewards;
- segment value ``V_tau``: the mean (released code), first, last or position-weighted value;
- ``delta_tau = R_tau + d_tau * V_{tau+1} - V_tau`` and
  ``A_tau = delta_tau + d_tau * lambda * A_{tau+1}``, with ``d_tau = gamma`` (one discount per
  macro step, released code) or ``gamma ** len_tau`` (per token, the SMDP discount);
- ``G_tau = A_tau + V_tau``; every token of segment ``tau`` gets ``A_tau`` and ``G_tau``.

The last segment of each row bootstraps from 0: the episode has ended. That holds for responses
that stopped at EOS and for responses cut at ``max_new_tokens`` alike, because the task's score
is given on the last real token either way, so nothing after it is left to estimate.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.distributed
from torch import Tensor

from marlhf.options.base import validate_starts
from marlhf.options.segments import (
    broadcast_to_tokens,
    position_in_segment,
    segment_lengths,
    segment_mask,
    segment_reduce,
)
from marlhf.parallel import distributed as dist_utils

RewardAgg = Literal["sum", "mean"]
ValueAgg = Literal["mean", "first", "last", "position"]
Discount = Literal["segment", "token"]
REWARD_AGGREGATIONS: tuple[str, ...] = get_args(RewardAgg)
VALUE_AGGREGATIONS: tuple[str, ...] = get_args(ValueAgg)
DISCOUNTS: tuple[str, ...] = get_args(Discount)


@dataclass
class GAEResult:
    """Advantages and returns per token and per segment.

    :param advantages: ``float[B, T]``, each token carries its segment's advantage; 0 on padding.
    :param returns: ``float[B, T]``, each token carries its segment's return
        ``G = A + V_seg`` (the value target); 0 on padding.
    :param seg_advantages: ``float[B, S]`` segment advantages; 0 where a row has no segment.
    :param seg_returns: ``float[B, S]`` segment returns; 0 where a row has no segment.
    :param seg_values: ``float[B, S]`` aggregated segment values; 0 where a row has no segment.
    :param seg_mask: ``bool[B, S]`` True for the segments that exist in each row.
    """

    advantages: Tensor
    returns: Tensor
    seg_advantages: Tensor
    seg_returns: Tensor
    seg_values: Tensor
    seg_mask: Tensor


def check_choice(where: str, name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise ``ValueError`` naming ``name``, the bad ``value`` and the valid ``choices``."""
    if value not in choices:
        raise ValueError(f"{where}: {name}={value!r} is not valid; choose one of {choices}")


def check_finite(where: str, name: str, x: Tensor, mask: Tensor | None = None) -> None:
    """Raise ``ValueError`` naming the tensor and the first non-finite entry (on ``mask`` only).

    :param mask: only these entries are checked; ``None`` checks all of them.
    """
    bad = ~torch.isfinite(x)
    if mask is not None:
        bad = bad & mask
    if bool(bad.any()):
        index = tuple(int(i) for i in bad.nonzero()[0])
        value = float(x[index])
        place = f"row {index[0]}, column {index[1]}" if len(index) == 2 else f"index {index}"
        raise ValueError(f"{where}: {name} has a non-finite value ({value}) at {place}")


def _check_unit_interval(where: str, name: str, value: float) -> None:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{where}: {name}={value!r} must be a number in [0, 1]")


def _check_token_tensors(where: str, floats: dict[str, Tensor], bools: dict[str, Tensor]) -> None:
    """All tensors ``[B, T]`` with one shape and device; ``floats`` floating, ``bools`` bool."""
    tensors = {**floats, **bools}
    for name, x in tensors.items():
        if not isinstance(x, Tensor):
            raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2:
            raise ValueError(f"{where}: {name} must be 2-D [B, T], got shape {tuple(x.shape)}")
    ref_name, ref = next(iter(tensors.items()))
    for name, x in tensors.items():
        if x.shape != ref.shape:
            raise ValueError(
                f"{where}: {name} has shape {tuple(x.shape)} but {ref_name} has "
                f"{tuple(ref.shape)}; all must be [B, T]"
            )
        if x.device != ref.device:
            raise ValueError(f"{where}: {name} is on {x.device} but {ref_name} on {ref.device}")
    for name, x in floats.items():
        if not x.is_floating_point():
            raise TypeError(f"{where}: {name} must be a floating tensor, got {x.dtype}")
    for name, x in bools.items():
        if x.dtype != torch.bool:
            raise TypeError(f"{where}: {name} must have dtype torch.bool, got {x.dtype}")


def compute_gae(
    rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    starts: Tensor,
    *,
    gamma: float = 1.0,
    gae_lambda: float = 0.95,
    reward_agg: str = "sum",
    value_agg: str = "mean",
    discount: str = "segment",
) -> GAEResult:
    """GAE over macro-action segments, vectorised over the batch (see the module docstring).

    The recursion runs backwards over the segment axis; rows with fewer segments contribute
    zeros past their end, so their last segment bootstraps from 0 (terminal). The arithmetic
    runs in the inputs' common dtype, at least float32.

    :param rewards: ``float[B, T]`` per-token rewards (task reward plus KL shaping); ignored on
        padding.
    :param values: ``float[B, T]`` per-token value estimates; ignored on padding (anything,
        NaN included, may sit there).
    :param mask: ``bool[B, T]`` real response tokens, a prefix of each row (right padding).
    :param starts: ``bool[B, T]`` macro-action starts; the first real token of each non-empty
        row starts a segment and padding never does (checked by
        :func:`marlhf.options.validate_starts`). ``starts = mask`` gives token-level GAE.
    :param gamma: discount factor in ``[0, 1]``, default 1.0 (the paper's).
    :param gae_lambda: GAE bias/variance trade-off in ``[0, 1]``, default 0.95.
    :param reward_agg: segment reward: ``"sum"`` (default, the paper) or ``"mean"`` (released
        code; it divides the KL penalty by the segment length, effectively beta / n).
    :param value_agg: segment value: ``"mean"`` (default, released code), ``"first"``,
        ``"last"`` or ``"position"`` (weights 1, 1/2, 1/3, ... from the segment's first token).
    :param discount: ``"segment"`` (default, released code: one ``gamma`` per macro step) or
        ``"token"`` (SMDP: the step from segment ``tau`` to ``tau + 1`` is discounted by
        ``gamma ** len_tau`` and, with ``reward_agg="sum"``, the ``k``-th reward inside a segment
        by ``gamma ** k``; with ``"mean"`` the in-segment mean stays undiscounted). Both are
        identical at ``gamma = 1``.
    :return: a :class:`GAEResult`.
    :raises ValueError: on an unknown aggregation or discount, ``gamma`` or ``gae_lambda``
        outside ``[0, 1]``, mismatched shapes or devices, or a non-finite reward or value on a
        real token (the message names the tensor and the first bad row and column).
    :raises TypeError: on non-floating rewards/values or non-bool mask/starts.
    :raises marlhf.options.SegmentationError: when ``starts`` breaks the segment invariants.
    """
    where = "compute_gae"
    check_choice(where, "reward_agg", reward_agg, REWARD_AGGREGATIONS)
    check_choice(where, "value_agg", value_agg, VALUE_AGGREGATIONS)
    check_choice(where, "discount", discount, DISCOUNTS)
    _check_unit_interval(where, "gamma", gamma)
    _check_unit_interval(where, "gae_lambda", gae_lambda)
    _check_token_tensors(
        where, {"rewards": rewards, "values": values}, {"mask": mask, "starts": starts}
    )
    validate_starts(starts, mask, name=where)
    check_finite(where, "rewards", rewards, mask)
    check_finite(where, "values", values, mask)

    dtype = torch.promote_types(torch.promote_types(rewards.dtype, values.dtype), torch.float32)
    rewards = rewards.to(dtype)
    values = values.to(dtype)
    seg_mask = segment_mask(starts, mask)

    if discount == "token" and reward_agg == "sum":
        # SMDP return of a segment: sum_k gamma**k r_{t+k}; the weights are exactly 1 at gamma=1.
        pos = position_in_segment(starts, mask).to(torch.float64)
        rewards = rewards * torch.pow(float(gamma), pos).to(dtype)
    seg_rewards = segment_reduce(rewards, starts, mask, reward_agg)  # type: ignore[arg-type]
    seg_values = segment_reduce(values, starts, mask, value_agg)  # type: ignore[arg-type]
    zeros = torch.zeros_like(seg_values)
    seg_rewards = torch.where(seg_mask, seg_rewards, zeros)
    seg_values = torch.where(seg_mask, seg_values, zeros)

    # Past a row's last segment everything is 0, so V_{tau+1} = A_{tau+1} = 0 there: terminal.
    next_values = torch.zeros_like(seg_values)
    next_values[:, :-1] = seg_values[:, 1:]
    step_discount: float | Tensor
    trace_discount: float | Tensor
    if discount == "segment":
        step_discount = float(gamma)
        trace_discount = float(gamma) * float(gae_lambda)
    else:
        # float64 first, so a length-1 segment rounds exactly as the scalar path does.
        lengths = segment_lengths(starts, mask).to(torch.float64)
        discount64 = torch.pow(float(gamma), lengths)
        step_discount = discount64.to(dtype)
        trace_discount = (discount64 * float(gae_lambda)).to(dtype)
    deltas = seg_rewards + step_discount * next_values - seg_values

    # The recursion walks the segment axis; [S, B] makes each step a contiguous row.
    deltas_sb = deltas.t().contiguous()
    trace_sb = trace_discount if isinstance(trace_discount, float) else trace_discount.t()
    advantages_sb = torch.zeros_like(deltas_sb)
    running = torch.zeros_like(deltas_sb[0])
    for tau in range(deltas_sb.shape[0] - 1, -1, -1):
        trace = trace_sb if isinstance(trace_sb, float) else trace_sb[tau]
        running = deltas_sb[tau] + trace * running
        advantages_sb[tau] = running
    seg_advantages = torch.where(seg_mask, advantages_sb.t(), zeros)
    seg_returns = torch.where(seg_mask, seg_advantages + seg_values, zeros)

    return GAEResult(
        advantages=broadcast_to_tokens(seg_advantages, starts, mask),
        returns=broadcast_to_tokens(seg_returns, starts, mask),
        seg_advantages=seg_advantages,
        seg_returns=seg_returns,
        seg_values=seg_values,
        seg_mask=seg_mask,
    )


def _masked_moments(x: Tensor, mask: Tensor, where: str) -> tuple[Tensor, Tensor, int]:
    """Masked mean, unbiased variance and count; at least two real entries are required."""
    _check_token_like(where, x, mask)
    count = int(mask.sum())
    if count < 2:
        raise ValueError(f"{where}: needs at least 2 real (mask=True) entries, got {count}")
    zeros = torch.zeros_like(x)
    mean = torch.where(mask, x, zeros).sum() / count
    centred = torch.where(mask, x - mean, zeros)
    var = (centred * centred).sum() / (count - 1)
    return mean, var, count


def _check_token_like(where: str, x: Tensor, mask: Tensor) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"{where}: x must be a floating torch.Tensor, got {getattr(x, 'dtype', x)}")
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError(
            f"{where}: mask must be a bool torch.Tensor, got {getattr(mask, 'dtype', mask)}"
        )
    if x.shape != mask.shape:
        raise ValueError(
            f"{where}: x has shape {tuple(x.shape)} but mask has {tuple(mask.shape)}; "
            "they must match"
        )


def whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, *, eps: float = 1e-8) -> Tensor:
    """Normalise ``x`` to zero mean and unit variance over its real entries (0 on padding).

    Used for optional reward or advantage normalisation. The variance is the unbiased one.

    :param x: ``float[...]`` values to normalise.
    :param mask: ``bool[...]`` of the same shape; only these entries set the statistics.
    :param shift_mean: when False, the mean is added back (scale only, as for rewards).
    :param eps: added to the variance before the square root, default 1e-8.
    With fewer than two real entries there is no spread to scale by: the raw ``x`` is kept on the
    real entry (as SB3 skips normalising a batch of one), so a one-token minibatch still learns
    from the sign and size of its advantage instead of a zero.
    """
    _check_token_like("whiten", x, mask)
    if int(mask.sum()) < 2:
        return torch.where(mask, x, torch.zeros_like(x))
    mean, var, _ = _masked_moments(x, mask, "whiten")
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(mask, out, torch.zeros_like(out))


def global_whiten(x: Tensor, mask: Tensor, *, eps: float = 1e-8) -> Tensor:
    """Zero mean, unit variance over the real entries of every rank (0 on padding), as
    :func:`whiten` computes it on all rows in one process: with fewer than two real entries over
    all ranks there is no spread, and ``x`` is kept as it is."""
    if not (dist_utils.initialized() and torch.distributed.get_world_size() > 1):
        return whiten(x, mask, eps=eps)
    count = int(dist_utils.global_count(mask))
    if count < 2:
        return torch.where(mask, x, torch.zeros_like(x))
    mean, var, _ = dist_utils.global_moments(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    return torch.where(mask, out, torch.zeros_like(out))


def explained_variance(pred: Tensor, target: Tensor, mask: Tensor) -> float:
    """``1 - Var[target - pred] / Var[target]`` over the real entries (as SB3's, masked).

    1 is a perfect prediction, 0 no better than the mean, negative worse. NaN when the target
    has zero variance or fewer than two entries are real (then the ratio is undefined); being a
    diagnostic for the logs, it never raises on such batches.

    :param pred: ``float[...]`` predictions (values).
    :param target: ``float[...]`` targets (returns), same shape.
    :param mask: ``bool[...]`` real entries, same shape.
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"explained_variance: pred has shape {tuple(pred.shape)} but target has "
            f"{tuple(target.shape)}; they must match"
        )
    _check_token_like("explained_variance", target, mask)
    if int(mask.sum()) < 2:
        return float("nan")
    _, var_target, _ = _masked_moments(target, mask, "explained_variance")
    _, var_error, _ = _masked_moments(target - pred, mask, "explained_variance")
    if float(var_target) == 0.0:
        return float("nan")
    return float(1.0 - var_error / var_target)
